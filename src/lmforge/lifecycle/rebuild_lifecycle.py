"""Running a red-team, safety-data or feedback-snapshot stage again from its record (see
rebuild.py), and the feedback fine-tune that reads a snapshot.

A red-team report is a function of the model attacked, the seeds, the attack settings and the
device and thread count that generated the answers: the seeds' digest and those facts are under
metrics["rerun"], and the stage checks the digest before attacking. Safety data is a function
of its report alone. A feedback snapshot reads the server's store in the original workspace:
the store is copied (SQLite's online backup, as a server may be writing it) into the scratch
workspace under the stand-in model's id, and the snapshot goes on only if it reads the same
rows the original read (its `read_sha256`); otherwise "the feedback store changed".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.lifecycle.rebuild import CannotRebuild, Job, made, recorded_threads
from lmforge.registry import Artifact

# Red-team settings that need what is not in the record: a service outside the registry.
_UNREBUILT_JUDGE = ("the report's answers were judged by {judge}, which is not in its lineage "
                    "(reproduce rebuilds reports judged by the detectors alone)")


def rebuild_redteam(job: Job) -> Artifact:
    """The same attacks on the model's stand-in, with the recorded device and threads."""
    from lmforge.redteam.stage import RedteamSettings, run

    if "model" not in job.original.parents:
        raise CannotRebuild("the report attacked an endpoint or a model folder outside the "
                            "registry, which the record cannot bring back")
    if job.settings.get("judge"):
        raise CannotRebuild(_UNREBUILT_JUDGE.format(judge=job.settings["judge"]))
    rerun = job.rerun
    missing = [k for k in ("read_sha256", "device", "torch_threads") if k not in rerun]
    if missing:
        raise CannotRebuild(f"the record lacks {', '.join(missing)} (made before lmforge "
                            f"recorded them): the seeds and the answers' last bits cannot be "
                            f"checked")
    s = job.settings
    try:
        settings = RedteamSettings(
            target=_target(job), suite=s["suite"], probes=tuple(s["probes"]),
            categories=tuple(s["categories"]), attempts=s["attempts"], limit=s["limit"],
            benign_limit=s["benign_limit"], max_new_tokens=s["max_new_tokens"],
            temperature=s["temperature"], seed=s["seed"], device=rerun["device"],
            gates=tuple(s["gates"]), data_root=rerun.get("data_root"),
            endpoint_model=s.get("endpoint_model"), min_harmful=rerun.get("min_harmful"),
            min_benign=rerun.get("min_benign"))
    except KeyError as e:
        raise CannotRebuild(f"the record lacks the red-team setting {e}") from None
    except LmforgeError as e:
        raise CannotRebuild(f"the recorded red-team settings do not load: {e.message}"
                            ) from None
    with recorded_threads(job):
        return made(run(job.ws, settings, show_progress=False))


def _target(job: Job) -> str:
    """How the report names its target, here: the stand-in's id where the original named the
    model by id; an alias the user typed is set on the stand-in, so the report reads the same."""
    named, original = job.settings["target"], job.original.parents["model"]
    stand_in = job.ids[original]
    if named == original:
        return stand_in
    if original.startswith(named):  # an id prefix: it still names the stand-in if the same
        if stand_in == original:
            return named
    else:
        try:
            job.ws.set_alias(named, stand_in, reason="lmforge reproduce")
            return named
        except LmforgeError:
            pass
    job.notes.append(f"the report named its target {named!r}; the rebuilt one names "
                     f"{stand_in}")
    return stand_in


def rebuild_safety_data(job: Job) -> Artifact:
    """The same split of the (rebuilt) report's findings."""
    from lmforge.redteam.safety_data import SafetyDataSettings, run

    s = job.settings
    try:
        settings = SafetyDataSettings(report=job.parent("report"), split=s["split"],
                                      retain=s["retain"], benign_ratio=s["benign_ratio"],
                                      pairs=s["pairs"])
    except KeyError as e:
        raise CannotRebuild(f"the record lacks the safety-data setting {e}") from None
    return made(run(job.ws, settings, show_progress=False))


def rebuild_snapshot(job: Job) -> Artifact:
    """The same rules over the same stores, read again: their rows must be the ones read."""
    from lmforge.lifecycle.feedback_data import FeedbackRules, snapshot
    from lmforge.serve.feedback import store_path

    rerun = job.rerun
    if "read_sha256" not in rerun:
        raise CannotRebuild("the record lacks a digest of the feedback rows read (made before "
                            "lmforge kept one): whether the store still holds them cannot be "
                            "checked")
    try:
        rules = FeedbackRules(**job.setting("rules"))
    except TypeError as e:
        raise CannotRebuild(f"the recorded feedback rules do not load ({e})") from None
    also = job.original.parents.get("also", [])
    originals = [job.original.parents["model"], *([also] if isinstance(also, str) else also)]
    read = _stores_read(job)
    models = []
    for model_id in originals:
        source = store_path(job.original_root, model_id)
        if not source.is_file():
            if str(source.relative_to(job.original_root)) in read:
                raise CannotRebuild(f"the feedback store it read, {source}, is gone")
        else:
            copy_store(source, store_path(job.ws.root, job.ids[model_id]))
        models.append(job.ws.resolve(job.ids[model_id], kind="model", verify=False))
    extra = [Path(p) for p in rerun.get("extra_stores", [])]
    gone = [p for p in extra if not p.is_file()]
    if gone:
        raise CannotRebuild(f"the feedback store it read, {gone[0]}, is gone")
    art, _ = snapshot(job.ws, models[0], rules, models[1:], extra)
    return art


def _stores_read(job: Job) -> set[str]:
    import json

    from lmforge.lifecycle.feedback_data import REPORT_FILE

    try:
        report = json.loads(job.original.file(REPORT_FILE).read_text(encoding="utf-8"))
    except (LmforgeError, OSError, ValueError):
        return set()
    return set(report.get("stores", []))


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy of a feedback store a server may be writing (SQLite's online backup
    reads one committed state; a file copy could catch half a write)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    except sqlite3.Error as e:
        raise CannotRebuild(f"the feedback store {source} cannot be read ({e})") from None
    finally:
        src.close()
        dst.close()


def feedback_parent(job: Job):
    """The before_register hook that names the stand-in snapshot as the rebuilt successor's
    `feedback` parent, as lifecycle/feedback_tune.py does (None for other fine-tunes)."""
    original = job.original.parents.get("feedback")
    if not isinstance(original, str):
        return None
    job.notes.append("the successor's evaluations and promotion decision are not repeated: "
                     "its files are compared; the decision stays in the original's metrics")

    def name_snapshot(folder: Path, metrics: dict, parents: dict) -> None:
        parents["feedback"] = job.ids[original]

    return name_snapshot
