"""How far a rebuilt artifact is from the original: file by file through the manifests' sha256,
and for weights that differ, per tensor and on a fixed probe input.

A rebuilt file can differ from the original without anything being computed differently:
a training log holds wall-clock timings, and text written by a stage may name the ids of its
inputs, which differ when an input was rebuilt with different timings. Such files are
compared again with the timings left out and the rebuilt inputs' ids read as the originals'
("equivalent"); everything else must be bit-identical.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lmforge.registry import Artifact, sha256_file

TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".toml", ".txt", ".csv", ".html")
# Keys of logs that measure the clock, not the computation.
TIMING_KEYS = frozenset({"tokens_per_s", "mfu", "elapsed_s", "elapsed", "seconds", "time",
                         "train_seconds", "created"})


def is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith(("_seconds", "_per_s"))


@dataclass
class FileDiff:
    path: str
    # identical | equivalent | differs | missing | extra | corrupted
    status: str
    detail: str = ""
    max_abs: float | None = None  # weights: the largest |rebuilt - original| of any element


@dataclass
class TensorDiff:
    max_abs: float
    max_rel: float  # max_abs over the largest |original| of the tensor
    worst: list[tuple[str, float, float]]  # the tensors furthest apart: (name, abs, rel)
    problems: list[str]  # names or shapes that do not match


def tensor_diff(original: Path, rebuilt: Path) -> TensorDiff:
    """Per-tensor max absolute and relative difference between two safetensors files."""
    a, b = load_file(str(original)), load_file(str(rebuilt))
    problems = [f"{k} only in the original" for k in sorted(set(a) - set(b))]
    problems += [f"{k} only in the rebuilt" for k in sorted(set(b) - set(a))]
    rows: list[tuple[str, float, float]] = []
    for name in sorted(set(a) & set(b)):
        x, y = a[name].double(), b[name].double()
        if x.shape != y.shape:
            problems.append(f"{name}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
            continue
        if x.numel() == 0:
            continue
        diff = (x - y).abs().max().item()
        scale = x.abs().max().item()
        rows.append((name, diff, diff / scale if scale > 0 else diff))
    rows.sort(key=lambda r: -r[1] if not math.isnan(r[1]) else -math.inf)
    nan = [r for r in rows if math.isnan(r[1])]
    worst = (nan + [r for r in rows if not math.isnan(r[1])])[:3]
    max_abs = math.nan if nan else max((r[1] for r in rows), default=0.0)
    max_rel = math.nan if nan else max((r[2] for r in rows), default=0.0)
    return TensorDiff(max_abs, max_rel, worst, problems)


def probe_logits_diff(original: Path, rebuilt: Path, tokens: int = 32) -> float:
    """The largest |logit| difference of two model folders on one fixed input (token ids
    1, 2, 3, ... within the vocabulary), on the CPU in fp32."""
    from lmforge.model.io import load_model_dir

    outputs = []
    for folder in (original, rebuilt):
        model, _ = load_model_dir(folder)
        model.eval()
        d = model.design
        ids = (torch.arange(min(tokens, d.context_length)) % (d.vocab_size - 1) + 1)[None]
        with torch.no_grad():
            outputs.append(model(ids).double())
    return (outputs[0] - outputs[1]).abs().max().item()


def _normalized(text: str, suffix: str, rebuilt_ids: dict[str, str]) -> Any:
    for new, old in rebuilt_ids.items():
        text = text.replace(new, old)
    if suffix == ".jsonl":
        return [_without_timings(json.loads(line)) for line in text.splitlines() if line.strip()]
    if suffix == ".json":
        return _without_timings(json.loads(text))
    return text


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _equivalent(original: Path, rebuilt: Path, rebuilt_ids: dict[str, str]) -> bool:
    suffix = original.suffix
    try:
        return (_normalized(original.read_text(encoding="utf-8"), suffix, rebuilt_ids)
                == _normalized(rebuilt.read_text(encoding="utf-8"), suffix, rebuilt_ids))
    except (UnicodeDecodeError, ValueError):
        return False


def _weights_detail(original: Path, rebuilt: Path) -> tuple[str, float]:
    try:
        t = tensor_diff(original, rebuilt)
    except Exception as e:  # a damaged file: safetensors raises its own error types
        return f"cannot be read as tensors ({e})", math.nan
    parts = [f"max abs {t.max_abs:.3g}, max rel {t.max_rel:.3g}"]
    if t.worst and t.max_abs:
        parts.append("furthest: " + ", ".join(f"{n} {a:.3g}" for n, a, _ in t.worst if a))
    parts += t.problems[:3]
    return "; ".join(parts), (math.inf if t.problems else t.max_abs)


def compare_artifacts(original: Artifact, rebuilt: Artifact,
                      rebuilt_ids: dict[str, str]) -> list[FileDiff]:
    """Every file of either artifact, compared. `rebuilt_ids` maps the ids of rebuilt inputs
    (and the rebuilding workspace's folder) to the originals' ids they stand for (and the
    original workspace's folder): text naming them is read with the originals'."""
    out: list[FileDiff] = []
    for rel in sorted(set(original.files) | set(rebuilt.files)):
        if rel not in rebuilt.files:
            out.append(FileDiff(rel, "missing", "the rebuilt artifact has no such file"))
            continue
        if rel not in original.files:
            out.append(FileDiff(rel, "extra", "only the rebuilt artifact has it"))
            continue
        recorded, new = original.files[rel]["sha256"], rebuilt.files[rel]["sha256"]
        path, new_path = original.path / rel, rebuilt.path / rel
        on_disk = sha256_file(path) if path.is_file() else None
        weights = rel.endswith(".safetensors")
        if on_disk != recorded:
            detail = ("the original's file is gone" if on_disk is None else
                      f"the original's file changed since it was registered (sha256 "
                      f"{recorded[:12]}… recorded, {on_disk[:12]}… on disk)")
            detail += "; the rebuilt one matches the record" if new == recorded else \
                "; the rebuilt one differs from the record too"
            max_abs = None
            if weights and on_disk is not None:
                text, max_abs = _weights_detail(path, new_path)
                detail += f"; on disk vs rebuilt: {text}"
            out.append(FileDiff(rel, "corrupted", detail, max_abs))
        elif new == recorded:
            out.append(FileDiff(rel, "identical"))
        elif weights:
            text, max_abs = _weights_detail(path, new_path)
            out.append(FileDiff(rel, "differs", text, max_abs))
        elif rel.endswith(TEXT_SUFFIXES) and _equivalent(path, new_path, rebuilt_ids):
            out.append(FileDiff(rel, "equivalent", "differs only in timings or in the ids of "
                                                   "rebuilt inputs"))
        else:
            out.append(FileDiff(rel, "differs", f"sha256 {recorded[:12]}… recorded, "
                                                f"{new[:12]}… rebuilt"))
    return out
