"""Tools a chat model may call, and running one call.

A `Tool` is a Python function with the OpenAI description the model reads (name, what it
does, a JSON schema of its arguments). The chat session stops generating at a tool call,
runs it with `run_call`, feeds the result back as a tool message and lets the model go on;
nanochat's calculator is the anchor for this loop. A failing call (an unknown tool, a
missing argument, the function raising) becomes a result the model reads, not a crash.

The built-in tool is `docstring(name)`: the embedded corpus's documentation of a Python
standard-library name, which the quickstart's SFT teaches the model to call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError

MAX_RESULT_CHARS = 400  # a tool result is read by a small model with a small context


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    run: Callable[..., str]

    def spec(self) -> dict:
        """The OpenAI tool object offered to the model."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolEvent:
    """A call the model made in a chat turn, and what the tool answered."""

    name: str
    arguments: dict
    result: str


def run_call(tools: Mapping[str, Tool], call: dict) -> str:
    """The result text of one parsed call ({"name", "arguments"}); errors become text."""
    tool = tools.get(call["name"])
    if tool is None:
        return f"error: no tool named {call['name']!r} (tools: {', '.join(sorted(tools))})"
    required = tool.parameters.get("required", [])
    missing = [k for k in required if k not in call["arguments"]]
    if missing:
        return f"error: {tool.name} needs the argument(s) {', '.join(missing)}"
    try:
        result = tool.run(**call["arguments"])
    except TypeError as e:  # an argument the function does not take
        return f"error: {tool.name}: {e}"
    except Exception as e:  # noqa: BLE001 - a tool's failure is the model's to read
        return f"error: {tool.name} failed ({type(e).__name__}: {e})"
    text = str(result)
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS - 1] + "…"


def _docstring(name: str) -> str:
    from lmforge.data.corpora.pydocs_chat import docstring_text

    return docstring_text(str(name))


def docstring_tool() -> Tool:
    return Tool(
        name="docstring",
        description="Documentation of a Python standard-library name.",
        parameters={"type": "object", "properties": {"name": {"type": "string"}},
                    "required": ["name"]},
        run=_docstring,
    )


BUILTIN_TOOLS: dict[str, Callable[[], Tool]] = {"docstring": docstring_tool}


def builtin_tools(names: Sequence[str]) -> list[Tool]:
    """The built-in tools of these names; an unknown name is one clear error."""
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown:
        raise LmforgeError(f"unknown tool {unknown[0]!r}",
                           hint=f"built-in tools: {', '.join(sorted(BUILTIN_TOOLS))}")
    return [BUILTIN_TOOLS[n]() for n in dict.fromkeys(names)]


def tool_specs(tools: Sequence[Tool]) -> list[dict[str, Any]] | None:
    return [t.spec() for t in tools] or None
