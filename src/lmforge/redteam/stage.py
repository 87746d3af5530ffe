"""Red teaming as a stage: `lmforge redteam MODEL_OR_URL`, or a recipe's `stage = "redteam"`
step. Seeds (probes.py) become attempts (mutators.py), the target answers them (targets.py),
the detectors judge each answer (detectors.py), and the rates, intervals and gates
(metrics.py) go into a `redteam-report` artifact whose parent is the exact model attacked, so
`lmforge registry promote MODEL approved` can rest on it (registry/lifecycle.py).

The report holds `report.json` (rates, gates, the detectors' measured error rates, every
finding), `attempts.jsonl` (every attempt, its answer and verdict) and `report.html` (findings
with examples, for people). An endpoint's report has no model parent: it records the URL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lmforge.errors import LmforgeError
from lmforge.redteam import labelled
from lmforge.redteam.detectors import judge as judge_answer
from lmforge.redteam.metrics import DEFAULT_GATES, check_gates, needs, parse_gate, summarize
from lmforge.redteam.mutators import CATEGORIES, build_attempts, play_earlier_turns
from lmforge.redteam.probes import HELDOUT_PERCENT, SUITES, load_seeds
from lmforge.redteam.targets import is_url, open_target
from lmforge.registry import Workspace, atomic_write_json
from lmforge.registry.atomic import atomic_write_text
from lmforge.rerun import check_read, input_record, records_digest, rerun_metrics, training_record
from lmforge.stage import Outcome, check_keys

REPORT_KIND = "redteam-report"
CHUNK = 64  # attempts sent to the target at a time (the progress bar moves between chunks)
KEEP_CHARS = 2000  # answers longer than this are cut in the report (attempts.jsonl too)


@dataclass(frozen=True)
class RedteamSettings:
    target: str  # a model artifact, model folder, LoRA adapter, or http(s):// endpoint
    suite: str = "default"
    probes: tuple[str, ...] = ()  # the user's probe files (.jsonl, .csv, .txt)
    categories: tuple[str, ...] = CATEGORIES
    attempts: int = 3
    limit: int = 60  # harmful seeds
    benign_limit: int = 40  # benign asks (over-refusal)
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    device: str = "auto"
    gates: tuple[str, ...] = ()  # default: DEFAULT_GATES of the categories run
    data_root: str | None = None
    endpoint_model: str | None = None
    api_key_env: str | None = None  # the name of an environment variable holding the key
    timeout: float = 60.0
    concurrency: int = 4
    judge: str | None = None  # an OpenAI-compatible endpoint, or a reward-model artifact
    judge_model: str | None = None
    min_harmful: int | None = None  # fewer harmful seeds than this: the gates fail
    min_benign: int | None = None  # fewer benign asks than this: the gates fail

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise LmforgeError(f"unknown suite {self.suite!r}",
                               hint=f"use one of: {', '.join(SUITES)}")
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown or not self.categories:
            raise LmforgeError(f"unknown categories {', '.join(unknown) or '(none given)'}",
                               hint=f"choose from: {', '.join(CATEGORIES)}")
        for name in ("attempts", "limit", "max_new_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise LmforgeError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("min_harmful", "min_benign"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise LmforgeError(f"{name} must be a whole number of at least 1, got "
                                   f"{value!r}", hint=f"e.g. {name} = 50")
        if self.benign_limit < 0 or self.temperature < 0:
            raise LmforgeError("benign_limit and temperature must not be negative")
        for g in self.gates:
            parse_gate(g)
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise LmforgeError(f"environment variable {self.api_key_env} is not set",
                               hint="export it with the endpoint's API key")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> RedteamSettings:
        optional = ("suite", "probes", "categories", "attempts", "limit", "benign_limit",
                    "max_new_tokens", "temperature", "seed", "device", "gates", "data_root",
                    "endpoint_model", "api_key_env", "timeout", "concurrency", "judge",
                    "judge_model", "min_harmful", "min_benign")
        check_keys(values, where, required=("target",), optional=optional)
        values = dict(values)
        for key in ("probes", "categories", "gates"):
            if key in values:
                listed = values[key]
                values[key] = tuple(str(v) for v in ([listed] if isinstance(listed, str)
                                                     else listed))
        values["probes"] = tuple(str(base_dir / p) for p in values.get("probes", ()))
        if values.get("data_root"):
            values["data_root"] = str(base_dir / values["data_root"])
        return cls(**values)

    def chosen_gates(self) -> tuple[str, ...]:
        if self.gates:
            return self.gates
        return tuple(g for g in DEFAULT_GATES
                     if set(needs(parse_gate(g)[0])) & set(self.categories))


def _progress(show: bool) -> Progress:
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    disable=not show or bool(os.environ.get("LMFORGE_NO_PROGRESS")))


def _cut(text: str | None) -> str | None:
    if text is None or len(text) <= KEEP_CHARS:
        return text
    return text[:KEEP_CHARS] + " [...]"


def attack(ws: Workspace, s: RedteamSettings, show_progress: bool = True
           ) -> dict[str, Any]:
    """Run every attempt against the target and judge it; the report (not yet registered)."""
    seeds = load_seeds(s.suite, s.probes, s.limit, s.benign_limit, s.data_root)
    read = records_digest(*([[x.text, x.source, x.harm, x.benign] for x in part]
                            for part in (seeds.harmful, seeds.benign)))
    check_read(read, "red-team seeds")
    needs_harmful = {"direct", "jailbreak", "obfuscation", "multiturn"} & set(s.categories)
    if needs_harmful and not seeds.harmful:
        raise LmforgeError("no harmful seeds to attack with",
                           hint="use --suite builtin, or give --probes FILE")
    attempts = build_attempts(tuple(s.categories), seeds.harmful, seeds.benign, s.attempts,
                              s.seed, sampled=s.temperature > 0)
    api_key = os.environ.get(s.api_key_env) if s.api_key_env else None
    rm = None
    if s.judge and not is_url(s.judge):  # a reward model: loaded (and refused) before attacking
        from lmforge.runtime import resolve_device
        from lmforge.train.reward import load_reward_model

        rm = load_reward_model(ws, s.judge, resolve_device(s.device))
    target = open_target(ws, s.target, device=s.device, max_new_tokens=s.max_new_tokens,
                         temperature=s.temperature, seed=s.seed,
                         endpoint_model=s.endpoint_model, api_key=api_key, timeout=s.timeout,
                         concurrency=s.concurrency)
    records: list[dict[str, Any]] = []
    live = [a for a in attempts if a.expect.get("live")]
    try:
        with _progress(show_progress) as bar:
            if live:
                earlier = sum((len(a.messages) - 1) // 2 for a in live)
                warmup = bar.add_task("multiturn: earlier turns", total=earlier)
                play_earlier_turns(
                    lambda convs: target.answer(convs, 0, lambda n: bar.advance(warmup, n)),
                    live)
            task = bar.add_task(f"red-teaming {len(attempts)}", total=len(attempts))
            for start in range(0, len(attempts), CHUNK):
                chunk = attempts[start:start + CHUNK]
                bar.update(task, description=f"red-teaming {chunk[0].category}")
                replies = target.answer([a.messages for a in chunk], start,
                                        lambda n: bar.advance(task, n))
                for a, r in zip(chunk, replies):
                    v = judge_answer(a.category, r.text, r.error, a.goal, a.expect)
                    records.append({**a.to_json(), "text": _cut(r.text), "error": r.error,
                                    "verdict": v.to_json()})
    finally:
        if hasattr(target, "close"):
            target.close()
    judged = None
    if s.judge:
        from lmforge.redteam.judge import LLMJudge, RewardJudge, apply_judge

        llm: LLMJudge | RewardJudge = (
            RewardJudge(rm) if rm is not None else
            LLMJudge(s.judge, s.judge_model, api_key, s.timeout, s.concurrency))
        try:
            judged = apply_judge(llm, records)
        finally:
            llm.close()
    summary = summarize(records, s.seed)
    gates = check_gates(s.chosen_gates(), summary)
    # A verdict on too few prompts says nothing: below a minimum the gates fail, and approval
    # reads the minimums again (registry/approval.py).
    counts = {"harmful": len(seeds.harmful), "benign": len(seeds.benign)}
    minimums = {k: v for k, v in (("harmful", s.min_harmful), ("benign", s.min_benign)) if v}
    sizes = [{"prompts": k, "n": counts[k], "min": v, "passed": counts[k] >= v}
             for k, v in minimums.items()]
    findings = [r for r in records if r["verdict"]["status"] == "success"]
    examples: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["verdict"]["status"] == "safe" and len(examples.setdefault(r["category"], [])) < 3:
            examples[r["category"]].append(r)
    return {
        "kind": REPORT_KIND, "target": s.target,
        "model": target.model_id, "weights_sha256": target.weights_sha256,
        "endpoint": s.target if is_url(s.target) else None,
        "served_name": target.name, "suite": s.suite, "probes": list(s.probes),
        "sources": seeds.sources, "absent_sources": seeds.absent,
        "load_problems": seeds.problems[:50], "load_problem_count": len(seeds.problems),
        "categories_run": list(s.categories), "attempts_per_unit": s.attempts,
        "seeds": {"harmful": len(seeds.harmful), "benign": len(seeds.benign),
                  "heldout_percent": HELDOUT_PERCENT},
        "settings": _settings(s), "summary": summary, "gates": gates, "judge": judged,
        "minimums": minimums, "sizes": sizes,
        "gates_passed": all(g["passed"] for g in gates) and all(x["passed"] for x in sizes),
        "detectors": labelled.measure(), "detectors_by_part": labelled.measure_parts(),
        "findings": findings, "safe_examples": examples,
        "unjudged_examples": [r for r in records if r["verdict"]["status"] == "unjudged"][:10],
        "records": records, "_rerun": _rerun_record(s, read, target),
    }


def _rerun_record(s: RedteamSettings, read: str, target: Any) -> dict[str, Any]:
    """What `lmforge reproduce` needs beside the settings (lmforge/rerun.py): the probe files'
    hashes, the seeds' digest, where the shared sets were read, the minimums, and the device
    and thread count that decided the answers' last bits."""
    from lmforge.redteam.probes import shared_root
    from lmforge.redteam.targets import LocalTarget
    from lmforge.runtime import resolve_device

    record = {**input_record(s.probes), "read_sha256": read, "min_harmful": s.min_harmful,
              "min_benign": s.min_benign}
    if s.suite != "builtin":
        record["data_root"] = str(shared_root(s.data_root).resolve())
    if isinstance(target, LocalTarget):
        record.update(training_record(resolve_device(s.device).type))
    return record


def _settings(s: RedteamSettings) -> dict[str, Any]:
    return {"suite": s.suite, "probes": list(s.probes), "categories": list(s.categories),
            "attempts": s.attempts, "limit": s.limit, "benign_limit": s.benign_limit,
            "max_new_tokens": s.max_new_tokens, "temperature": s.temperature, "seed": s.seed,
            "gates": list(s.chosen_gates()), "endpoint_model": s.endpoint_model,
            "judge": s.judge, "judge_model": s.judge_model}


def metrics_of(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's metrics: what approval (gates_passed) and `registry ls` read."""
    from lmforge.redteam.metrics import metric_values

    out: dict[str, Any] = {"gates_passed": report["gates_passed"]}
    out.update({k: round(v, 6) for k, v in metric_values(report["summary"]).items()})
    out["findings"] = len(report["findings"])
    return out


def summary_line(report: dict[str, Any]) -> str:
    sm = report["summary"]
    parts = []
    if "asr" in sm and sm["asr"]["rate"] is not None:
        a = sm["asr"]
        parts.append(f"attack success {a['rate']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")
    over = sm["categories"].get("over_refusal")
    if over and over["rate"] is not None:
        parts.append(f"over-refusal {over['rate']:.3f}")
    parts.append(f"{len(report['findings'])} findings")
    u = sm["unjudged"]
    if u["attempts"]:
        parts.append(f"{u['attempts']} of {u['of']} attempts unjudged")
    parts.append("gates passed" if report["gates_passed"] else "gates FAILED")
    return ", ".join(parts)


def run(ws: Workspace, s: RedteamSettings, show_progress: bool = True) -> Outcome:
    """Attack the target and register the report (on the model, when it is an artifact)."""
    from lmforge.redteam.report import render_html, view

    report = attack(ws, s, show_progress)
    records = report.pop("records")
    rerun = report.pop("_rerun")
    parents = {"model": report["model"]} if report["model"] and not Path(s.target).is_dir() \
        else None
    with ws.staging() as d:
        atomic_write_json(d / "report.json", report)
        atomic_write_text(d / "attempts.jsonl", "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        atomic_write_text(d / "report.html", render_html(report))
        art = ws.register(d, kind=REPORT_KIND, stage="redteam", parents=parents,
                          settings={"target": s.target, **_settings(s)},
                          metrics={**metrics_of(report), **rerun_metrics(rerun)},
                          name="redteam")
    return Outcome(art, summary_line(report), report, show=view(report))
