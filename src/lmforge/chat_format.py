"""The chat layout's text: which words go between the role tokens, tools and tool calls included.

The tokenizer owns the role tokens (`<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`);
this module decides the text of each turn, so `Tokenizer.render_chat`, the Jinja template
that `transformers`' `apply_chat_template` runs, the data loader and the engine all agree.

Tool calling follows OpenAI's message shapes and writes them as plain text, so every lmforge
tokenizer (whose special ids are fixed) can carry it:

    <|system|>{system prompt}\\n\\n{TOOLS_HEADER}\\n{function JSON, one per line}<|end|>
    <|user|>What does math.sqrt do?<|end|>
    <|assistant|><tool_call>{"name": "docstring", "arguments": {"name": "math.sqrt"}}
                 </tool_call><|end|>                            (one line: wrapped here)
    <|user|><tool_response>Return the square root of x.</tool_response><|end|>
    <|assistant|>math.sqrt: Return the square root of x.<|end|>

Without a system message the tools block is a system turn of its own. A tool result is a user
turn (the model did not write it, so SFT does not train on it) wrapped in <tool_response>.
Arguments given as a JSON string are written as given, a mapping as `json.dumps` writes it
(what Jinja's `tojson` in `transformers` writes too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from lmforge.errors import LmforgeError

ROLES = ("system", "user", "assistant", "tool")
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
# Short on purpose: the tools block is read on every turn by models with small contexts;
# the call format itself is learned in SFT (and documented above).
TOOLS_HEADER = "You can call these tools:"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)
ROLES_HINT = ("roles are system, user, assistant and tool; an assistant turn has content, "
              "tool_calls or both")


# ---- checking ------------------------------------------------------------------------------

def tool_function(tool: Any, where: str = "tool") -> dict:
    """The function object of one OpenAI tool ({"type": "function", "function": {...}}, or
    the function object itself), checked: a name, and optional description and parameters."""
    if not isinstance(tool, dict):
        raise LmforgeError(f"{where} is a {type(tool).__name__}, not an object",
                           hint='a tool is {"type": "function", "function": {"name": ...}}')
    fn = tool.get("function", tool)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
            or not _NAME.fullmatch(fn["name"]):
        raise LmforgeError(f"{where} has no valid function name (letters, digits, _ . -)",
                           hint='a tool is {"type": "function", "function": {"name": ...}}')
    if "parameters" in fn and not isinstance(fn["parameters"], dict):
        raise LmforgeError(f"{where} ({fn['name']}): parameters must be a JSON schema object")
    return fn


def _call_parts(call: Any, where: str) -> tuple[str, Any]:
    """(name, arguments) of one tool call, {"function": {"name", "arguments"}} or flat."""
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
            or not _NAME.fullmatch(fn["name"]):
        raise LmforgeError(f"{where} has no valid function name",
                           hint='a tool call is {"type": "function", "function": {"name": '
                                '"...", "arguments": "{...}"}}')
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{where} ({fn['name']}): arguments are not valid JSON ({e.msg})"
                               ) from None
        if not isinstance(parsed, dict):
            raise LmforgeError(f"{where} ({fn['name']}): arguments must be a JSON object")
    elif not isinstance(args, dict):
        raise LmforgeError(f"{where} ({fn['name']}): arguments must be a JSON object or a "
                           "string holding one")
    return fn["name"], args


def validate_tools(tools: Any) -> list[dict]:
    """The function objects of a `tools` list (empty for None)."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise LmforgeError(f"tools must be a list, not {type(tools).__name__}")
    return [tool_function(t, f"tool {i}") for i, t in enumerate(tools)]


def validate_messages(messages: object) -> list[dict]:
    """Check OpenAI-style chat messages; the error names the offending message."""
    if not isinstance(messages, list) or not messages:
        raise LmforgeError("messages must be a non-empty list of {'role', 'content'} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise LmforgeError(f"message {i} is {type(m).__name__}, not an object")
        role = m.get("role")
        if role not in ROLES:
            raise LmforgeError(f"message {i}: unknown role {role!r}", hint=ROLES_HINT)
        calls = m.get("tool_calls") or []
        if calls and role != "assistant":
            raise LmforgeError(f"message {i} ({role}) has tool_calls; only assistant turns "
                               "call tools")
        if not isinstance(calls, list):
            raise LmforgeError(f"message {i}: tool_calls must be a list")
        for j, call in enumerate(calls):
            _call_parts(call, f"message {i}, tool call {j}")
        content = m.get("content")
        if content is None and calls:
            continue  # OpenAI sends content null beside tool calls
        if "content" not in m:
            raise LmforgeError(f"message {i} ({role}) has no 'content'")
        if not isinstance(content, str):
            raise LmforgeError(f"message {i} ({role}): content is "
                               f"{type(content).__name__}, not a string")
    return messages


# ---- rendering -----------------------------------------------------------------------------

def tools_block(tools: list[dict]) -> str:
    """The system text that offers `tools` (their function objects, one JSON per line)."""
    lines = [json.dumps(tool_function(t), ensure_ascii=False) for t in tools]
    return "\n".join([TOOLS_HEADER, *lines])


def tool_call_text(call: dict) -> str:
    """One call as the model writes it: <tool_call>{"name": ..., "arguments": {...}}</tool_call>."""
    name, args = _call_parts(call, "tool call")
    raw = call.get("function", call).get("arguments", {})
    text = raw if isinstance(raw, str) else json.dumps(args, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}{{"name": "{name}", "arguments": {text}}}{TOOL_CALL_CLOSE}'


def chat_turns(messages: list[dict], tools: list[dict] | None = None
               ) -> list[tuple[str, str]]:
    """(role token's role, turn text) for each turn of a conversation; the role is system,
    user or assistant (a tool result is a user turn)."""
    validate_messages(messages)
    block = tools_block(tools) if tools else None
    turns: list[tuple[str, str]] = []
    if block is not None and messages[0]["role"] != "system":
        turns.append(("system", block))
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            turns.append(("user", TOOL_RESPONSE_OPEN + content + TOOL_RESPONSE_CLOSE))
        elif role == "assistant":
            turns.append(("assistant", content + "".join(
                tool_call_text(c) for c in m.get("tool_calls") or [])))
        elif role == "system" and i == 0 and block is not None:
            turns.append(("system", content + "\n\n" + block))
        else:
            turns.append((role, content))
    return turns


# The same layout for `transformers`' apply_chat_template (HF compiles it with trim_blocks
# and lstrip_blocks; every tag here strips its own whitespace, so neither changes anything).
# `{% generation %}` marks what SFT trains on, so `return_assistant_tokens_mask` matches ours.
CHAT_TEMPLATE_JINJA = (
    "{{- '<|bos|>' -}}"
    "{%- if tools -%}"
    "{%- set ns = namespace(block='" + TOOLS_HEADER.replace("'", "\\'") + "') -%}"
    "{%- for tool in tools -%}"
    "{%- set ns.block = ns.block + '\n' + ((tool.function if tool.function is defined "
    "else tool) | tojson) -%}"
    "{%- endfor -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|system|>' + ns.block + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{- raise_exception('unknown role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>' -}}"
    "{%- generation -%}"
    "{{- message['content'] or '' -}}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{{- '<tool_call>{\"name\": \"' + fn.name + '\", \"arguments\": ' + (fn.arguments if "
    "fn.arguments is string else (fn.arguments | tojson)) + '}</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|end|>' -}}"
    "{%- endgeneration -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|user|><tool_response>' + message['content'] + '</tool_response><|end|>' -}}"
    "{%- elif message['role'] == 'system' and loop.first and tools -%}"
    "{{- '<|system|>' + message['content'] + '\n\n' + ns.block + '<|end|>' -}}"
    "{%- else -%}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


# ---- reading the model's calls ---------------------------------------------------------------

@dataclass
class ParsedReply:
    """An assistant reply split into its text and its tool calls. `malformed` says the reply
    tried to call (it holds <tool_call>) but a call is not valid JSON of the right shape, or
    is cut off; such a reply keeps its whole text as content and no calls."""

    content: str
    calls: list[dict] = field(default_factory=list)  # {"name": str, "arguments": dict}
    malformed: str | None = None

    def openai_tool_calls(self, prefix: str = "call") -> list[dict]:
        """The calls in OpenAI's response shape (arguments as a JSON string)."""
        return [{"id": f"{prefix}_{i}", "type": "function",
                 "function": {"name": c["name"],
                              "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                for i, c in enumerate(self.calls)]


def parse_tool_calls(text: str) -> ParsedReply:
    """The tool calls a model wrote, as `chat_turns` renders them."""
    if TOOL_CALL_OPEN not in text:
        return ParsedReply(text)
    calls = []
    for m in _CALL.finditer(text):
        try:
            body = json.loads(m.group(1))
        except json.JSONDecodeError as e:
            return ParsedReply(text, malformed=f"a call is not valid JSON ({e.msg})")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) \
                or not isinstance(body.get("arguments", {}), dict):
            return ParsedReply(text, malformed='a call is not {"name": ..., "arguments": {...}}')
        calls.append({"name": body["name"], "arguments": body.get("arguments", {})})
    if text.count(TOOL_CALL_OPEN) != len(calls):
        return ParsedReply(text, malformed="a call is not closed with </tool_call>")
    return ParsedReply(_CALL.sub("", text).strip(), calls)
