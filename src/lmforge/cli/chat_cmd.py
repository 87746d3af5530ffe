"""`lmforge chat`: a multi-turn conversation with a model in the terminal (or over a pipe)."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from lmforge.cli.app import app, err_console, workspace
from lmforge.engine.chat import ChatSession, load_chat_model
from lmforge.engine.sampling import SamplingParams
from lmforge.engine.tools import ToolEvent, builtin_tools
from lmforge.errors import LmforgeError
from lmforge.runtime import resolve_device

_CHAT_HELP = """Chat with a model: history, a system prompt, replies streamed as they are written.

\b
  lmforge chat MODEL                         # talk; Ctrl-D or /exit ends
  lmforge chat MODEL --system "Answer in one sentence."
  lmforge chat MODEL --temperature 0         # greedy, repeatable
  lmforge chat MODEL --temperature 0.7 --top-p 0.9 --seed 1 --max-tokens 200
  printf 'What is a cat?\\nAnd a dog?\\n' | lmforge chat MODEL   # a pipe
  lmforge chat MODEL --tools docstring      # offer a tool; calls are run and shown

\b
While chatting:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (/system alone removes it)
  /exit           end (so do Ctrl-D and Ctrl-C)
  //TEXT          send a message that starts with "/"

MODEL is a model id, alias, or model folder whose tokenizer has lmforge's chat template \
(every model built with `lmforge init` has it). A reply ends at the model's end-of-turn \
token or after --max-tokens tokens. When the conversation outgrows the model's context, the \
oldest turns are dropped (the system prompt stays) and a note says so. Piped input is one \
message per line; each reply goes to stdout \
and ends with a newline; notes go to stderr.

With --tools, the model is offered the named built-in tools (docstring: the embedded \
corpus's documentation of a standard-library name). When it calls one, the call and the \
result are shown on stderr, the result is fed back, and the model goes on answering.
"""

_COMMANDS = "/reset, /system TEXT, /exit"


def _read(prompt: str | None) -> str | None:
    """The next line from stdin, None at end of input."""
    if prompt is not None:
        try:
            return input(prompt)  # a terminal: line editing, and the prompt on stdout
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n") if line else None


def _command(session: ChatSession, line: str) -> bool:
    """Run a /command; False when the session should end."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        err_console.print("[dim](conversation cleared)[/]", highlight=False)
    elif name == "/system":
        session.system = arg.strip() or None
        err_console.print("[dim](system prompt " + ("set" if session.system else "removed")
                          + ")[/]", highlight=False)
    else:
        err_console.print(f"[dim](unknown command {escape(name)}; commands: {_COMMANDS}; "
                          "//TEXT sends TEXT starting with /)[/]", highlight=False)
    return True


# Control characters other than newline and tab become U+FFFD on a terminal: a model's
# output must not be able to send escape sequences to it. A pipe gets the text as written.
_TERMINAL_SAFE = {c: "\ufffd" for c in (*range(0x20), 0x7F) if c not in (0x09, 0x0A)}


def _show_tool(event: ToolEvent) -> None:
    args = ", ".join(f"{k}={v!r}" for k, v in event.arguments.items())
    result = event.result if len(event.result) <= 200 else event.result[:199] + "…"
    err_console.print(f"[dim](called {escape(event.name)}({escape(args)}) -> "
                      f"{escape(result)})[/]", highlight=False)


def _reply(session: ChatSession, text: str, interactive: bool) -> None:
    if interactive:
        sys.stdout.write("\n")
    safe = sys.stdout.isatty()
    for piece in session.send(text):
        sys.stdout.write(piece.translate(_TERMINAL_SAFE) if safe else piece)
        sys.stdout.flush()
    sys.stdout.write("\n\n" if interactive else "\n")
    sys.stdout.flush()
    if session.notice:
        err_console.print(f"[dim]({escape(session.notice)})[/]", highlight=False)


def _loop(session: ChatSession, interactive: bool) -> None:
    while True:
        line = _read("you> " if interactive else None)
        if line is None:
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/") and not text.startswith("//"):
            if not _command(session, text):
                return
            continue
        try:
            _reply(session, text[1:] if text.startswith("//") else text, interactive)
        except LmforgeError as e:  # one message too long: say so and keep the session
            sys.stdout.write("\n")
            err_console.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False)
            if e.hint:
                err_console.print(f"  [bold]fix:[/] {escape(e.hint)}", highlight=False)


@app.command("chat", rich_help_panel="Use and move models", help=_CHAT_HELP)
def chat(
    model: str = typer.Argument(..., help="Model artifact id/prefix/alias, or a model folder."),
    system: str = typer.Option(None, "--system", "-s", help="System prompt for the whole "
                                                              "conversation."),
    temperature: float = typer.Option(0.8, help="0 for greedy decoding."),
    top_k: int = typer.Option(0, help="Sample among the k likeliest tokens (0 = off)."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass (1 = off)."),
    max_tokens: int = typer.Option(256, help="Most tokens in one reply."),
    seed: int = typer.Option(None, help="Seed for reproducible sampling (turn N uses "
                                        "seed + N)."),
    max_context: int = typer.Option(None, help="Tokens of history + reply kept (default: the "
                                               "model's context)."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or "
                                            "mps."),
    tools: list[str] = typer.Option([], "--tools", help="Repeatable. A built-in tool to "
                                                        "offer: docstring."),
) -> None:
    params = SamplingParams(temperature, top_k, top_p, max_tokens, seed)
    offered = builtin_tools(tools)
    net, tok, label = load_chat_model(workspace(), model, resolve_device(device))
    session = ChatSession(net, tok, params, system or None, max_context, tools=offered,
                          on_tool=_show_tool)
    interactive = sys.stdin.isatty()
    if interactive:
        err_console.print(f"[dim]chatting with {escape(label)} (context "
                          f"{session.max_context} tokens). Commands: {_COMMANDS}; Ctrl-D "
                          "ends.[/]", highlight=False)
    try:
        _loop(session, interactive)
    except KeyboardInterrupt:  # Ctrl-C ends the chat like /exit, without a traceback
        sys.stdout.write("\n")
