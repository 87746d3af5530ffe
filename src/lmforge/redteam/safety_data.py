"""The loop back as a recipe step: `stage = "safety-data"` turns a red-team report's findings
into training data that a `finetune` step reads by reference:

    [steps.safety-data]
    stage = "safety-data"
    report = "@redteam"
    retain = true          # the benign asks the model answered, with its own answers
    benign_ratio = 1.0     # ... repeated to as many as the refusals
    [steps.safety]
    stage = "finetune"
    model = "@sft"
    method = "sft"
    data = ["@safety-data"]

It is `lmforge redteam to-dataset` (loop_back.to_dataset, the same code) registering its
output: a `chat-dataset` of conversations (refusals for the attacks that worked), or with
`pairs = true` a `preference-dataset` for `method = "dpo"`. Only the report's `seen` split is
used by default, so a red-team step after tuning measures held-out prompts no training saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.training_sets import CHAT_KIND, PREFERENCE_KIND, register_records
from lmforge.errors import LmforgeError
from lmforge.redteam.loop_back import SPLITS, answered_benign, load_report, to_dataset
from lmforge.redteam.mutators import ATTACKS
from lmforge.registry import Workspace
from lmforge.stage import Outcome, check_keys


@dataclass(frozen=True)
class SafetyDataSettings:
    report: str  # a redteam-report (id, prefix or alias)
    split: str = "seen"
    retain: bool = True
    benign_ratio: float | None = 1.0  # with retain (the loop's test chose 1.0)
    pairs: bool = False  # preference pairs (for dpo) instead of conversations (for sft)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise LmforgeError(f"unknown split {self.split!r}",
                               hint="seen (held-out prompts then measure the fix), heldout "
                                    "or all")
        if self.benign_ratio is not None and not self.benign_ratio >= 0:
            raise LmforgeError(f"benign_ratio must be >= 0, not {self.benign_ratio}",
                               hint="1.0: as many benign answers as refusals")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path
                  ) -> SafetyDataSettings:
        check_keys(values, where, required=("report",),
                   optional=("split", "retain", "benign_ratio", "pairs"))
        for key in ("retain", "pairs"):
            if key in values and not isinstance(values[key], bool):
                raise LmforgeError(f"{where}: {key} must be true or false, not "
                                   f"{values[key]!r}")
        return cls(**values)


def counts(report: dict[str, Any], split: str) -> dict[str, int]:
    """How many attack findings each split holds: what was used, and what was kept out."""
    found = [f for f in report["findings"] if f["category"] in ATTACKS]
    return {"findings_used": sum(split in ("all", f["split"]) for f in found),
            "findings_kept_out": sum(split not in ("all", f["split"]) for f in found)}


def run(ws: Workspace, s: SafetyDataSettings, show_progress: bool = True) -> Outcome:
    """Register the report's findings of `s.split` as a chat (or preference) dataset."""
    report, report_id = load_report(ws, s.report)
    retain = s.retain
    sft, pairs = to_dataset(report, s.split, retain, s.benign_ratio if retain else None)
    records = pairs if s.pairs else sft
    if not records:
        raise LmforgeError(f"{report_id}: no {s.split} findings lmforge can answer"
                           + (" and no benign asks the model answered" if retain else "")
                           + ": nothing to tune on",
                           hint="red-team with more prompts or categories (limit, attempts), "
                                "or set retain = true")
    refusals = len(to_dataset(report, s.split)[0])
    metrics: dict[str, Any] = {"records": len(records), "refusals": refusals,
                               "benign_answers": len(sft) - refusals,
                               "distinct_benign_asks": len(answered_benign(report, s.split))
                               if retain else 0, **counts(report, s.split)}
    kind = PREFERENCE_KIND if s.pairs else CHAT_KIND
    settings = {"split": s.split, "retain": retain, "benign_ratio": s.benign_ratio,
                "pairs": s.pairs}
    art = register_records(ws, kind, records, stage="safety-data",
                           parents={"report": report_id}, settings=settings, metrics=metrics,
                           name="safety-pairs" if s.pairs else "safety-chat")
    what = (f"{len(records)} preference pairs" if s.pairs else
            f"{refusals} refusals + {len(sft) - refusals} benign answers")
    return Outcome(art, f"{what} from the {s.split} split of {report_id} "
                        f"({metrics['findings_kept_out']} findings of other splits kept out)",
                   metrics)

