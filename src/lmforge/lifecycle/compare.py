"""Side-by-side samples from several models: what each writes after the same prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from lmforge.engine.chat import ChatSession
from lmforge.engine.generate import complete
from lmforge.engine.sampling import SamplingParams
from lmforge.engine.tools import ToolEvent, builtin_tools
from lmforge.model.io import load_model
from lmforge.registry import Workspace
from lmforge.stage import Outcome, check_keys


@dataclass(frozen=True)
class CompareSettings:
    models: list[str]
    prompt: str = "What does os.path.join do?"
    max_tokens: int = 48
    seed: int = 0
    temperature: float = 0.7
    tools: tuple[str, ...] = ()  # built-in tools offered to tuned models (e.g. "docstring")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> CompareSettings:
        check_keys(values, where, required=("models",),
                   optional=("prompt", "max_tokens", "seed", "temperature", "tools"))
        values = dict(values)
        if isinstance(values.get("tools"), str):
            values["tools"] = [values["tools"]]
        values["tools"] = tuple(values.get("tools", ()))
        builtin_tools(values["tools"])  # an unknown tool stops the recipe before it runs
        return cls(**values)


def sample_text(ws: Workspace, model_ref: str, prompt: str, max_tokens: int, seed: int,
                temperature: float = 0.7, tools: tuple[str, ...] = ()) -> str:
    """What the model writes after the prompt: a tuned (chat) model is asked in a user turn
    (with `tools` offered; each call it makes is run and shown) and answers until its end
    of turn; a base model continues the text."""
    model, tok, art = load_model(ws, model_ref)
    params = SamplingParams(temperature=temperature, top_k=40, max_new_tokens=max_tokens,
                            seed=seed)
    if art is not None and ws.state_of(art.id) == "tuned":
        calls: list[ToolEvent] = []
        session = ChatSession(model, tok, params, tools=builtin_tools(tools),
                              on_tool=calls.append)
        reply = "".join(session.send(prompt))
        shown = "".join(f"\n→ calls {e.name}({_arguments(e.arguments)})\n  ← {e.result}"
                        for e in calls)
        return shown + "\n→ " + reply
    return complete(model, tok, prompt, params)


def _arguments(arguments: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())


def run(ws: Workspace, s: CompareSettings, show_progress: bool = True) -> Outcome:
    """A table of what each model writes after the prompt (same seed for all)."""
    texts = {m: sample_text(ws, m, s.prompt, s.max_tokens, s.seed, s.temperature, s.tools)
             for m in s.models}
    table = Table(title=f"after {s.prompt!r}", show_lines=True)
    for m in s.models:
        rec = ws.record(m)
        table.add_column(f"{rec.id}\n({ws.state_of(rec.id) or rec.stage})", ratio=1)
    table.add_row(*(s.prompt + texts[m] for m in s.models))
    return Outcome(None, "samples side by side", details=texts, show=table)
