"""The `summary` step: one screen on the whole lifecycle a recipe just ran, and `card`, the
card of a model written where the run can point at it.

`summary` prints every step before it (its artifact, its result cut to one line, and its
seconds, or `cached` for a step skipped as unchanged), the total time, and the models named
in its `models` setting with their state history, e.g. the retired predecessor
`tuned -> approved -> deployed -> deprecated -> retired` and the deployed successor.
It reads the steps' results from the run (ctx.history), so it is always the last step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from lmforge.errors import LmforgeError
from lmforge.registry import Workspace
from lmforge.stage import Outcome, check_keys

SCREEN_WIDTH = 120  # lifecycle_view's default width; the step prints at the console's own


def state_path(ws: Workspace, model_id: str) -> str:
    """`initialized -> pretrained` ...: every state the model went through, in order."""
    states: list[str] = []
    for event in ws.history(model_id):
        for s in (event.from_state, event.to_state):
            if s and (not states or states[-1] != s):
                states.append(s)
    return " -> ".join(states) or str(ws.state_of(model_id))


def _seconds(r: Any) -> str:
    return "cached" if r.skipped else f"{r.seconds:.1f}"


def duration_text(seconds: float) -> str:
    """'8 min 32 s' (whole seconds; minutes never rounded up)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s"


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def lifecycle_view(ws: Workspace, history: list[Any], models: list[str],
                   width: int = SCREEN_WIDTH) -> Group:
    """The table of steps and the models' states (`history`: the run's StepResults), each
    row one line of at most `width` characters."""
    steps = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    name_w = max([4, *(len(r.name) for r in history)])
    art_w = max([8, *(len(r.artifact or "-") for r in history)])
    result_w = max(width - name_w - art_w - 8 - 3 * 2, 20)  # 8: seconds; 2 between columns
    steps.add_column("step", no_wrap=True, min_width=name_w)
    steps.add_column("artifact", no_wrap=True, min_width=art_w)
    steps.add_column("result", no_wrap=True, max_width=result_w)
    steps.add_column("s", justify="right", no_wrap=True, min_width=6)
    for r in history:
        steps.add_row(r.name, r.artifact or "-", _cut(r.summary, result_w), _seconds(r))
    ran = [r for r in history if not r.skipped]
    total = sum(r.seconds for r in ran)
    cached = len(history) - len(ran)
    head = Text(f"{len(history)} steps, {duration_text(total)}"
                + (f" ({cached} cached, their time not counted)" if cached else ""),
                style="bold")
    named = {r.artifact: r.name for r in reversed(history) if r.artifact}
    states = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in ("model", "step", "states", "aliases"):
        states.add_column(col, no_wrap=col != "states")
    for ref in models:
        rec = ws.record(ref, kind="model")
        states.add_row(rec.id, named.get(rec.id, ""), state_path(ws, rec.id),
                       ", ".join(ws.aliases_of(rec.id)))
    return Group(head, steps, Text(""), states)


def run_summary(ctx: Any, name: str, params: dict[str, Any]) -> Any:
    """A recipe step (not a seam: it reads the run's own results)."""
    from lmforge.lifecycle.stages import StepOutput

    check_keys(params, f"step '{name}'", optional=("models",))
    models = params.get("models", [])
    models = [models] if isinstance(models, str) else list(models)
    # The console's own width (80 when writing to a file or pipe unless COLUMNS says more):
    # a wider panel would be cropped on the right, and the seconds column with it.
    width = ctx.console.width
    ctx.console.print(Panel(lifecycle_view(ctx.ws, list(ctx.history), models, width - 4),
                            title="lifecycle", width=width))
    total = sum(r.seconds for r in ctx.history if not r.skipped)
    return StepOutput(None, f"{len(ctx.history)} steps in {total:.0f} s")


# ---- card ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardSettings:
    model: str
    out: str | None = None  # default: <workspace>/cards/<model id>/card.md
    license: str = "unknown"

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> CardSettings:
        check_keys(values, where, required=("model",), optional=("out", "license"))
        values = dict(values)
        if values.get("out"):
            values["out"] = str(base_dir / values["out"])
        return cls(**values)


def run_card(ws: Workspace, s: CardSettings, show_progress: bool = True) -> Outcome:
    """card.md (loss curves beside it), regenerated from the record every run: by default in
    <workspace>/cards/<model id>/."""
    from lmforge.lifecycle.card import gather
    from lmforge.lifecycle.card_render import write_markdown

    card = gather(ws, s.model)
    model_id = ws.record(s.model, kind="model").id
    out = Path(s.out) if s.out else ws.root / "cards" / model_id / "card.md"
    if out.is_dir():
        raise LmforgeError(f"{out} is a folder", hint="out = \"card.md\" (a file name)")
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = write_markdown(card, out, s.license)
    curves = len(plots.files) if plots else 0
    return Outcome(None, f"{out} ({curves} loss curve(s) beside it)")
