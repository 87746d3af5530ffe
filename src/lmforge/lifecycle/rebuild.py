"""Running one recorded stage again, from its artifact's manifest alone.

A manifest keeps the stage that made the artifact, its settings, its parents by id, and (under
metrics["rerun"], see lmforge/rerun.py) the local inputs' hashes, the folder it ran in and the
training thread count. Each rebuilder turns those back into the stage's settings type and calls
the same run function the CLI verb and the recipe step call, in a scratch workspace where each
parent id stands for its rebuilt (or original) artifact.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Workspace
from lmforge.rerun import RERUN_KEY, local_files
from lmforge.train.settings import TrainSettings

READS_FILES = ("files", "tokenizer", "tokenize", "finetune", "curate")  # may read paths
REBUILT_METHODS = ("domain", "sft", "reward", "dpo", "rlhf")  # methods reproduce can run


class CannotRebuild(Exception):
    """The record lacks what the stage needs to run again; the message says what."""


@dataclass
class Job:
    ws: Workspace  # the scratch workspace the stage runs in
    original: Artifact
    ids: dict[str, str]  # original id -> id of the artifact that stands for it in `ws`
    original_root: Path  # the original workspace's folder (paths into it are artifacts)
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, Any]:
        return self.original.settings

    @property
    def rerun(self) -> dict[str, Any]:
        return self.original.metrics.get(RERUN_KEY) or {}

    def parent(self, role: str) -> str:
        ref = self.original.parents.get(role)
        if not isinstance(ref, str):
            raise CannotRebuild(f"the record names no single {role!r} parent")
        return self.ids[ref]

    def parent_list(self, role: str) -> list[str]:
        refs = self.original.parents.get(role, [])
        return [self.ids[r] for r in ([refs] if isinstance(refs, str) else refs)]

    def setting(self, key: str) -> Any:
        if key not in self.settings:
            raise CannotRebuild(f"setting {key!r} is not in the record")
        return self.settings[key]

    def is_local(self, ref: str) -> bool:
        """Whether an input reference was a path (not a dataset): the record says so when it
        hashed its inputs; older records are read against the files here."""
        if "input_files" in self.rerun:
            return ref in self.rerun["input_files"]
        return local_files(ref) is not None

    def datasets_as_rebuilt(self, refs: list[str], data_ids: list[str]) -> list[str]:
        """`refs` with every non-path reference replaced, in order, by the rebuilt dataset
        that stands for it (a stage lists its dataset parents in the order of its inputs)."""
        out, queue = [], list(data_ids)
        for ref in refs:
            if self.is_local(ref):
                out.append(ref)
            elif queue:
                out.append(queue.pop(0))
            else:
                raise CannotRebuild(f"input {ref!r} is no local file and no dataset parent "
                                    f"stands for it in the record")
        if queue:
            raise CannotRebuild("the record lists more dataset parents than dataset inputs")
        return out

    def train_settings(self) -> TrainSettings:
        names = {f.name for f in dataclasses.fields(TrainSettings)}
        values = {k: v for k, v in self.settings.items() if k in names}
        device = self.rerun.get("device")
        if values.get("device", "auto") == "auto" and device:
            values["device"] = device  # "auto" here may pick another device than it did then
            self.notes.append(f"trained on {device} (settings said auto): rebuilt on {device}")
        try:
            return TrainSettings(**values)
        except (TypeError, LmforgeError) as e:
            raise CannotRebuild(f"the recorded training settings do not load: {e}") from None


@contextmanager
def recorded_threads(job: Job) -> Iterator[None]:
    """Train with the thread count the original used (float sums split by thread): the
    record's, else one thread, said in the notes."""
    before = torch.get_num_threads()
    threads = job.rerun.get("torch_threads")
    if not isinstance(threads, int) or threads < 1:
        threads = 1
        job.notes.append("thread count not recorded: rebuilt with 1 torch thread")
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- one rebuilder per stage ------------------------------------------------------------


def _corpus(job: Job) -> Artifact:
    from lmforge.data.stage import register_pydocs

    return register_pydocs(job.ws)


def _files(job: Job) -> Artifact:
    from lmforge.data.stage import register_files

    paths = job.original.metrics.get("paths")
    if not paths:
        raise CannotRebuild("the record does not list the files that were read")
    return register_files(job.ws, paths, job.setting("text_field"),
                          name=job.original.name or "files", split=job.setting("split"))


def _design(job: Job) -> Artifact:
    from lmforge.design.spec import from_dict
    from lmforge.design.stage import register_design

    design = from_dict(job.settings, where=f"design {job.original.id}")
    return register_design(job.ws, design)[0]


def _tokenizer(job: Job) -> Artifact:
    from lmforge.data.stage import train_tokenizer_stage

    inputs = job.datasets_as_rebuilt(list(job.setting("inputs")), job.parent_list("data"))
    return train_tokenizer_stage(job.ws, inputs, job.setting("vocab_size"),
                                 job.setting("min_frequency"), job.setting("text_field"),
                                 show_progress=False)


def _tokenize(job: Job) -> Artifact:
    from lmforge.data.stage import tokenize_stage

    def one(prefix: str) -> str | None:
        if f"{prefix}data" in job.original.parents:
            return job.parent(f"{prefix}data")
        inputs = job.settings.get(f"{prefix}inputs")
        return inputs[0] if inputs else None

    data = one("")
    if data is None:
        raise CannotRebuild("the record names neither a dataset parent nor an input path")
    return tokenize_stage(job.ws, data, job.parent("tokenizer"), job.setting("val_fraction"),
                          job.setting("seed"), workers=1, show_progress=False,
                          val_data=one("val_"))


def _init(job: Job) -> Artifact:
    from lmforge.model.stage import InitSettings
    from lmforge.model.stage import run as run_init

    s = InitSettings(design=job.parent("design"), tokenizer=job.parent("tokenizer"),
                     scheme=job.setting("scheme"), seed=job.setting("seed"))
    return made(run_init(job.ws, s, show_progress=False))


def _pretrain(job: Job) -> Artifact:
    from lmforge.train.stage import PretrainSettings
    from lmforge.train.stage import run as run_pretrain

    s = PretrainSettings(job.parent("base"), job.parent("data"), job.train_settings())
    with recorded_threads(job):
        return made(run_pretrain(job.ws, s, show_progress=False))


def _finetune(job: Job) -> Artifact:
    from lmforge.train.finetune import FinetuneSettings, lora_options
    from lmforge.train.finetune import run as run_finetune

    method = job.setting("method")
    if method not in REBUILT_METHODS:
        raise CannotRebuild(f"reproduce does not rebuild {method} fine-tunes yet "
                            f"(it rebuilds {', '.join(REBUILT_METHODS)})")
    if method in ("reward", "dpo"):
        from lmforge.lifecycle.rebuild_tuning import rebuild_preferences

        return rebuild_preferences(job, method)
    if method == "rlhf":
        from lmforge.lifecycle.rebuild_tuning import rebuild_rlhf

        return rebuild_rlhf(job)
    data, val_data = list(job.setting("data")), list(job.settings.get("val_data", []))
    data_ids = job.parent_list("data")
    if method == "domain":
        both = job.datasets_as_rebuilt(data + val_data, data_ids)
        data, val_data = both[:len(data)], both[len(data):]
    else:  # sft: a training-set artifact was read as its file inside the workspace
        data = [artifact_file_as_id(job, ref) for ref in data]
    rerun = job.rerun
    for key, default in (("text_field", "text"), ("prompts", [])):
        if key not in rerun:
            job.notes.append(f"{key} not recorded: assumed {default!r}")
    lora = job.settings.get("lora")
    s = FinetuneSettings(
        model=job.parent("base"), method=method, data=tuple(data), train=job.train_settings(),
        val_data=tuple(val_data), val_fraction=job.setting("val_fraction"),
        replay=job.setting("replay"), text_field=rerun.get("text_field", "text"),
        prompts=tuple(rerun.get("prompts", ())),
        lora=lora_options(lora, f"LoRA of {job.original.id}") if lora else ())
    with recorded_threads(job):
        return made(run_finetune(job.ws, s, show_progress=False,
                                 before_register=_lifecycle(job, "feedback_parent")))


def artifact_file_as_id(job: Job, ref: str) -> str:
    """A path into the original workspace's artifacts/<kind>/<id>/ -> the id standing for
    that artifact here (a feedback snapshot, which training reads as a file and not by id:
    the same file of its stand-in); any other reference unchanged."""
    path = Path(ref)
    artifacts = job.original_root / "artifacts"
    if path.is_absolute() and path.is_relative_to(artifacts):
        parts = path.relative_to(artifacts).parts
        if len(parts) >= 3 and parts[1] in job.ids:
            if parts[0] == "feedback-snapshot":
                here = job.ws.resolve(job.ids[parts[1]], verify=False)
                return str(here.path.joinpath(*parts[2:]))
            return job.ids[parts[1]]
    return ref


def _curate(job: Job) -> Artifact:
    from lmforge.curate.config import CurationConfig
    from lmforge.curate.sources import EMBEDDED, is_path
    from lmforge.curate.stage import curate_prepared, prepare_config

    try:
        cfg = CurationConfig.from_settings(job.settings)
    except (KeyError, TypeError) as e:
        raise CannotRebuild(f"the recorded curation settings do not load ({e!r})") from None
    refs = list(dict.fromkeys(p for src in cfg.sources for p in src.paths
                              if p != EMBEDDED and not is_path(p)))
    named = job.rerun.get("datasets")
    if named is None:  # before lmforge recorded it: parents are the refs' ids, in their order
        parents = job.original.parents.get("data", [])
        if len(parents) != len(refs):
            raise CannotRebuild("the record does not say which dataset artifact each source "
                                "named (made before lmforge recorded it)")
        named = dict(zip(refs, parents))
    missing = [r for r in refs if r not in named or named[r] not in job.ids]
    if missing:
        raise CannotRebuild(f"the record names no dataset artifact for source {missing[0]!r}")
    sources = [dataclasses.replace(src, paths=[job.ids[named[p]] if p in named else p
                                               for p in src.paths]) for src in cfg.sources]
    tokenizer = job.parent_list("tokenizer")
    cfg = dataclasses.replace(cfg, sources=sources,
                              balance_tokenizer=tokenizer[0] if tokenizer else None)
    if any(p.startswith("hf:") for src in sources for p in src.paths) and \
            "read_sha256" not in job.rerun:
        job.notes.append("the record holds no digest of the documents read (made before "
                         "lmforge kept one): a change in a hub dataset shows only as a "
                         "difference")
    with recorded_eval_root(job, bool(cfg.decontaminate.builtin)):
        return curate_prepared(job.ws, prepare_config(job.ws, cfg), show_progress=False)


@contextmanager
def recorded_eval_root(job: Job, needed: bool) -> Iterator[None]:
    """Read the built-in evaluation sets from the folder the original read them from."""
    from lmforge.data.eval_root import ENV

    root = job.rerun.get("eval_data_root")
    if not needed or root is None:
        if needed:
            job.notes.append("the folder of the built-in evaluation sets is not recorded: "
                             "read from today's")
        yield
        return
    before = os.environ.get(ENV)
    os.environ[ENV] = root
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def _lifecycle(job: Job, name: str) -> Any:
    """rebuild_lifecycle's `name`(job); imported here, since that module imports this one."""
    from lmforge.lifecycle import rebuild_lifecycle

    return getattr(rebuild_lifecycle, name)(job)


def made(outcome: Any) -> Artifact:
    if outcome.artifact is None:
        raise CannotRebuild("the stage made no artifact when run again")
    return outcome.artifact


REBUILDERS: dict[str, Callable[[Job], Artifact]] = {
    "corpus": _corpus, "files": _files, "design": _design, "tokenizer": _tokenizer,
    "tokenize": _tokenize, "init": _init, "pretrain": _pretrain, "finetune": _finetune,
    "curate": _curate,
    "redteam": lambda job: _lifecycle(job, "rebuild_redteam"),
    "safety-data": lambda job: _lifecycle(job, "rebuild_safety_data"),
    "feedback": lambda job: _lifecycle(job, "rebuild_snapshot"),
}
