"""Run lmforge's multiple-choice tasks through lm-evaluation-harness's own machinery, offline.

`write_task_yamls` writes, for each lmforge task, its items as JSONL and an lm-eval task
YAML that reads them with `dataset_path: json`, so lm-eval builds the requests
(context, " " + choice) and computes acc / acc_norm with its own code on exactly the items
lmforge scores. `run_lm_eval` runs `lm_eval.simple_evaluate` on those tasks with either
lmforge's adapter (`backend="lmforge"`) or lm-eval's Hugging Face backend (`backend="hf"`,
on an exported model folder) and returns a JSON-able dict with the per-item
log-likelihoods, so two runs can be compared item by item.

The same YAMLs work on the command line:

    python -m lmforge.eval.lm_eval_adapter --model lmforge --model_args pretrained=PATH \\
        --include_path YAML_DIR --tasks lmforge_hellaswag

Few-shot prompts are not written: lm-eval draws its examples with its own sampler, so only
zero-shot runs are item-for-item comparable with lmforge's runner.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.eval.tasks import MCItem, MultipleChoiceTask
from lmforge.registry import atomic_write_text

TASK_PREFIX = "lmforge_"  # keeps our YAML tasks apart from lm-eval's built-in ones
BACKENDS = ("lmforge", "hf")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def lm_eval_task_name(name: str) -> str:
    """The lm-eval task name under which an lmforge task's YAML is written."""
    return name if name.startswith(TASK_PREFIX) else TASK_PREFIX + name


def write_mc_task(name: str, items: Sequence[MCItem], out_dir: str | Path,
                  target_delimiter: str = " ") -> Path:
    """Write `items` as `<out_dir>/<task>.jsonl` and an lm-eval YAML task over it.

    Plain items become lm-eval's usual form (doc_to_text: context, doc_to_choice: choices,
    doc_to_target: gold). Items with a `suffix` (WinoGrande's partial scoring) become its
    "multiple input" form: one context per choice (context + choice), the shared suffix as
    the scored target, and the gold index as doc_to_text, as lm-eval's winogrande does.
    Returns the YAML's path.
    """
    task = lm_eval_task_name(name)
    if not _NAME.match(task):
        raise LmforgeError(f"task name {name!r} cannot be an lm-eval task name",
                           hint="use letters, digits, '_', '-' and '.' only")
    if not items:
        raise LmforgeError(f"task '{name}' has no items to write",
                           hint="load the task's items first (task.load_items())")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with_suffix = {item.suffix is not None for item in items}
    if len(with_suffix) > 1:
        raise LmforgeError(f"task '{name}': some items have a suffix and some do not",
                           hint="one task's items must all use the same scoring form")
    multiple_input = with_suffix == {True}
    lines = []
    for item in items:
        if not 0 <= item.gold < len(item.choices):
            raise LmforgeError(f"task '{name}' item {item.index}: gold {item.gold} is out of "
                               f"range for {len(item.choices)} choices")
        record: dict[str, Any] = {"index": item.index, "gold": item.gold}
        if multiple_input:
            record |= {"contexts": [item.context + c for c in item.choices],
                       "suffix": item.suffix}
        else:
            record |= {"context": item.context, "choices": list(item.choices)}
        lines.append(json.dumps(record, ensure_ascii=False))
    data = out / f"{task}.jsonl"
    atomic_write_text(data, "\n".join(lines) + "\n")
    fields = ({"doc_to_text": "gold", "doc_to_choice": "contexts", "doc_to_target": "suffix"}
              if multiple_input else
              {"doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "gold"})
    config = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        **fields,
        "target_delimiter": target_delimiter,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0, "source": "lmforge"},
    }
    import yaml  # a dependency of lm-eval, so present wherever the YAML is of use

    path = out / f"{task}.yaml"
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def write_task_yamls(tasks: Iterable[MultipleChoiceTask], out_dir: str | Path) -> list[str]:
    """Write every task's items (after its `limit`) and YAML; return the lm-eval task names."""
    names = []
    for task in tasks:
        if task.kind != "multiple_choice":
            raise LmforgeError(f"task '{task.name}' is {task.kind}; only multiple_choice tasks "
                               "can be written as lm-eval YAMLs here")
        if task.num_fewshot:
            raise LmforgeError(f"task '{task.name}' asks for {task.num_fewshot}-shot prompts",
                               hint="lm-eval samples few-shot examples its own way; compare "
                                    "zero-shot (num_fewshot = 0)")
        write_mc_task(task.name, task.load_items(), out_dir, task.target_delimiter)
        names.append(lm_eval_task_name(task.name))
    return names


def _offline() -> None:
    """No hub lookups: the tasks read local files and the models are local folders."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    # Modules imported earlier read the variables already; set their flags too.
    import sys
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True


def make_lm(model_or_path: Any, backend: str = "lmforge", batch_size: int = 32,
            add_bos: bool = True, device: str = "cpu", workspace: str | Path | None = None):
    """The lm-eval `LM` for a backend (an `LM` instance given is used as it is).

    lmforge: an `LmforgeLM`, a (Transformer, Tokenizer) pair, or a model path / artifact ref.
    hf: lm-eval's `HFLM` on an HF model folder (e.g. from
    `lmforge export MODEL --format hf --out DIR`), fp32, with `add_bos_token=add_bos` so both
    backends condition on the same tokens.
    """
    if backend not in BACKENDS:
        raise LmforgeError(f"unknown lm-eval backend '{backend}'",
                           hint=f"choose one of: {', '.join(BACKENDS)}")
    _offline()
    from lm_eval.api.model import LM

    if isinstance(model_or_path, LM):  # built by the caller (e.g. once, for timing runs)
        return model_or_path
    if backend == "hf":
        if not isinstance(model_or_path, str | Path) or not Path(model_or_path).is_dir():
            raise LmforgeError(f"the hf backend needs a model folder, got {model_or_path!r}",
                               hint="export the model first: lmforge export MODEL --format hf "
                                    "--out DIR")
        try:
            from lm_eval.models.huggingface import HFLM
        except ImportError as e:
            raise LmforgeError(f"lm-eval's HF backend cannot be imported ({e})",
                               hint="pip install 'lm_eval[hf]' (it needs accelerate)") from None
        return HFLM(pretrained=str(model_or_path), device=device, dtype="float32",
                    batch_size=batch_size, add_bos_token=add_bos)
    from lmforge.eval.lm_eval_adapter import LmforgeLM

    if isinstance(model_or_path, tuple):
        model, tokenizer = model_or_path
        return LmforgeLM(model=model, tokenizer=tokenizer, batch_size=batch_size,
                         add_bos=add_bos)
    return LmforgeLM(pretrained=model_or_path, workspace=workspace, batch_size=batch_size,
                     device=device, add_bos=add_bos)


def run_lm_eval(model_or_path: Any, task_yaml_dir: str | Path, tasks: Sequence[str],
                limit: int | None = None, batch_size: int = 32, backend: str = "lmforge",
                add_bos: bool = True, device: str = "cpu") -> dict:
    """`lm_eval.simple_evaluate` on YAML tasks in `task_yaml_dir`, zero-shot, offline.

    Returns {"backend", "tasks": {name: {"n", "metrics": {metric: {"value", "stderr"}},
    "items": [{"index", "loglikelihoods", "pred", "gold", "scores"}]}}, "seconds"}, items
    in the order of the task's file.
    """
    yaml_dir = Path(task_yaml_dir)
    if not yaml_dir.is_dir():
        raise LmforgeError(f"{yaml_dir}: no such folder of task YAMLs",
                           hint="write them first with write_task_yamls")
    lm = make_lm(model_or_path, backend, batch_size, add_bos, device)
    import lm_eval
    from lm_eval.tasks import TaskManager

    names = [lm_eval_task_name(t) for t in tasks]
    # include_defaults=False: index only our YAMLs, not lm-eval's thousands (seconds saved).
    manager = TaskManager(include_path=str(yaml_dir), include_defaults=False)
    missing = [n for n in names if n not in manager.all_tasks]
    if missing:
        raise LmforgeError(f"{yaml_dir}: no lm-eval task named {', '.join(missing)}",
                           hint=f"tasks there: {', '.join(manager.all_tasks) or 'none'}")
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=0, limit=limit,
                                  batch_size=batch_size, task_manager=manager,
                                  # >0 or lm-eval skips stderrs; a mean's is closed-form,
                                  # so no bootstrap runs for acc / acc_norm.
                                  log_samples=True, bootstrap_iters=1000,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    seconds = time.perf_counter() - start
    return {"backend": backend, "tasks": {n: _task_result(out, n) for n in names},
            "seconds": seconds}


def _task_result(out: dict, name: str) -> dict:
    results = out["results"][name]
    metrics = {}
    for metric in ("acc", "acc_norm"):
        value = results.get(f"{metric},none")
        if value is not None:
            stderr = results.get(f"{metric}_stderr,none")
            metrics[metric] = {"value": float(value),
                               "stderr": float(stderr) if isinstance(stderr, int | float)
                               else None}
    items = []
    for sample in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        items.append({"index": sample["doc"].get("index", sample["doc_id"]),
                      "loglikelihoods": lls,
                      "pred": max(range(len(lls)), key=lls.__getitem__),
                      # not sample["target"]: that is the suffix in the multiple-input form
                      "gold": int(sample["doc"]["gold"]),
                      "scores": {m: float(sample[m]) for m in ("acc", "acc_norm")
                                 if m in sample}})
    return {"n": len(items), "metrics": metrics, "items": items}
