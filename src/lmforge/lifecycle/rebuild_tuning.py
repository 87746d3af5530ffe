"""Running a reward-model, DPO or RLHF fine-tune again from its record (see rebuild.py).

Their settings hold the method's own knobs (DPO's loss and beta, RLHF's whole `rl` table); the
models they read (a DPO or RLHF reference, RLHF's reward model) are parents, so each stands
for its rebuilt artifact here. Pairs and prompts read from outside the workspace are checked
twice: local files by sha256 before the stage starts (reproduce.py), and every record read,
from wherever, by the stage itself against the record's `read_sha256` (lmforge/rerun.py).
"""

from __future__ import annotations

from lmforge.lifecycle.rebuild import (
    CannotRebuild,
    Job,
    artifact_file_as_id,
    made,
    recorded_threads,
)
from lmforge.lifecycle.rebuild_lifecycle import feedback_parent
from lmforge.registry import Artifact


def _optional_parent(job: Job, role: str) -> str | None:
    return job.parent(role) if role in job.original.parents else None


def _note_unchecked_reads(job: Job, what: str) -> None:
    if "read_sha256" not in job.rerun:
        job.notes.append(f"the record holds no digest of the {what} read (made before lmforge "
                         f"kept one): a change in built-in or hub data shows only as a "
                         f"difference")


def rebuild_preferences(job: Job, method: str) -> Artifact:
    """A reward model or a DPO fine-tune (a model, or a LoRA adapter) from preference pairs."""
    from lmforge.train.finetune import FinetuneSettings, lora_options
    from lmforge.train.finetune import run as run_finetune

    # A preference-dataset artifact was read as its file inside the original workspace.
    data = tuple(artifact_file_as_id(job, ref) for ref in job.setting("data"))
    val_data = tuple(artifact_file_as_id(job, ref) for ref in job.settings.get("val_data", []))
    extra = {}
    if method == "dpo":
        extra = {"beta": job.setting("beta"), "dpo_loss": job.setting("loss"),
                 "label_smoothing": job.setting("label_smoothing"),
                 "sft_weight": job.setting("sft_weight"),
                 "reference": _optional_parent(job, "reference")}
    lora = job.settings.get("lora")
    s = FinetuneSettings(model=job.parent("base"), method=method, data=data,
                         train=job.train_settings(), val_data=val_data,
                         val_fraction=job.setting("val_fraction"),
                         lora=lora_options(lora, f"LoRA of {job.original.id}") if lora else (),
                         **extra)
    _note_unchecked_reads(job, "preference pairs")
    with recorded_threads(job):
        return made(run_finetune(job.ws, s, show_progress=False,
                                 before_register=feedback_parent(job)))


def rebuild_rlhf(job: Job) -> Artifact:
    """A policy tuned by RLHF against its (rebuilt) reward model."""
    from lmforge.train.finetune import FinetuneSettings
    from lmforge.train.finetune import run as run_finetune

    rerun = job.rerun
    missing = [key for key in ("val_data", "val_fraction") if key not in rerun]
    if missing:  # they pick the held-out prompts, whose rewards are in the training log
        raise CannotRebuild(f"the record does not hold {' and '.join(missing)}, which pick "
                            f"the held-out prompts (made before lmforge recorded them)")
    rl = dict(job.setting("rl"))
    algo = rl.pop("algo", "ppo")
    s = FinetuneSettings(model=job.parent("base"), method="rlhf",
                         data=tuple(job.setting("data")), train=job.train_settings(),
                         val_data=tuple(rerun["val_data"]), val_fraction=rerun["val_fraction"],
                         reward=job.parent("reward"),
                         reference=_optional_parent(job, "reference"), algo=algo,
                         rl=tuple(sorted(rl.items())))
    _note_unchecked_reads(job, "prompts")
    with recorded_threads(job):
        return made(run_finetune(job.ws, s, show_progress=False))
