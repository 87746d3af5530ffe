"""Judged comparison as a stage: `lmforge eval compare A B C --judge RM`, or a recipe's
`stage = "judge"` step. The models answer the same held-out prompts, the reward model scores
the answers (eval/judge.py), and the win rates are registered as a `judge-report` artifact
whose parents are the models compared and the judge, so the record says which models beat
which, on what prompts, and by whose judgement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lmforge.curate.config import resolve_path
from lmforge.errors import LmforgeError
from lmforge.registry import Workspace, atomic_write_json
from lmforge.stage import Outcome, check_keys

REPORT_KIND = "judge-report"


@dataclass(frozen=True)
class JudgeSettings:
    models: tuple[str, ...]  # the first is the baseline the others are compared with
    judge: str  # a reward-model artifact
    prompts: tuple[str, ...] = ()  # prompt files; default: the pydocs-chat held-out questions
    fallback: tuple[str, ...] = ()  # read instead of `prompts` when none of its paths exists
    limit: int = 500
    max_new_tokens: int = 64
    temperature: float = 0.0  # greedy: each model's one best answer
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.limit < 1 or self.max_new_tokens < 1:
            raise LmforgeError(f"limit ({self.limit}) and max_new_tokens "
                               f"({self.max_new_tokens}) must be at least 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> JudgeSettings:
        optional = ("prompts", "fallback", "limit", "max_new_tokens", "temperature", "seed",
                    "device")
        check_keys(values, where, required=("models", "judge"), optional=optional)
        values = dict(values)
        for key in ("models", "prompts", "fallback"):
            listed = values.get(key, ())
            values[key] = tuple(str(v) for v in ([listed] if isinstance(listed, str)
                                                 else listed))
        for key in ("prompts", "fallback"):
            values[key] = tuple(resolve_path(p, base_dir) for p in values[key])
        return cls(**values)


def summary(report: dict[str, Any]) -> str:
    parts = [f"{r['model']} {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
             + (" better" if r["beats"] else " worse" if r["loses_to"] else "")
             for r in report["rows"]]
    left_out = report.get("left_out_too_long", 0)
    return (f"win rates against {report['models'][0]['model']}: " + ", ".join(parts)
            + (f" ({left_out} prompts too long for the context left out)" if left_out else "")
            + "".join(f"; {n}" for n in report.get("notes", [])))


def judged_view(report: dict[str, Any]) -> Group:
    """The win-rate table (each model against the first) and one line per model."""
    first = report["models"][0]["model"]
    table = Table(title=f"win rates against {first}, judged by {report['judge']} on "
                        f"{report['prompts']} prompts ({', '.join(report['prompt_source'])})",
                  header_style="bold")
    kl = "KL" if report["temperature"] > 0 else "log-ratio"
    for col in ("model", "win rate", "95% CI", "W/T/L", "Δ reward", kl, "verdict"):
        table.add_column(col, justify="left" if col in ("model", "verdict") else "right",
                         no_wrap=True)
    for r in report["rows"]:
        verdict = "better" if r["beats"] else "worse" if r["loses_to"] else "no difference"
        table.add_row(r["model"], f"{r['win_rate']:.3f}",
                      f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                      f"{r['wins']}/{r['ties']}/{r['losses']}", f"{r['mean_reward_delta']:+.3f}",
                      f"{r['kl']:.2f}" if "kl" in r else "-", verdict,
                      style={"better": "green", "worse": "red"}.get(verdict))
    lines = [Text(f"  {m['model']}: mean reward {m['mean_reward']:.3f}, {m['ended']:.0%} "
                  f"answers ended, {m['mean_length']:.1f} tokens") for m in report["models"]]
    note = Text(f"ties count half; {kl}: {report['kl_kind']} (log p_model - log p_{first}, "
                "summed over the answer, mean over prompts)", style="dim")
    return Group(table, *lines, note)


def run(ws: Workspace, s: JudgeSettings, show_progress: bool = True) -> Outcome:
    """Judge the models and register the report (report.json) on them and the judge."""
    from lmforge.data.files import with_fallback
    from lmforge.eval.judge import judge_models

    prompts, note = with_fallback(list(s.prompts), list(s.fallback))
    report = judge_models(ws, s.models, s.judge, prompts, limit=s.limit,
                          max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                          seed=s.seed, device=s.device)
    if note:
        report["notes"] = [note]
    ids = [m["model"] for m in report["models"]]
    registered = [i for i in ids if not Path(i).is_dir()]  # a plain folder is no artifact
    parents: dict[str, str | list[str]] = {"judge": report["judge"]}
    if ids[0] in registered:
        parents["baseline"] = ids[0]
    others = [i for i in ids[1:] if i in registered and i != ids[0]]
    if others:
        parents["models"] = list(dict.fromkeys(others))
    with ws.staging() as d:
        atomic_write_json(d / "report.json", report)
        art = ws.register(d, kind=REPORT_KIND, stage="eval", parents=parents,
                          settings={"models": ids, "prompts": report["prompt_source"],
                                    "limit": s.limit, "max_new_tokens": s.max_new_tokens,
                                    "temperature": s.temperature, "seed": s.seed},
                          metrics={f"{r['model']}/win_rate": r["win_rate"]
                                   for r in report["rows"]},
                          name="judged-compare")
    return Outcome(art, summary(report), report, show=judged_view(report))
