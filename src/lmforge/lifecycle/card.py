"""A model card's content, gathered from the record alone: the model's lineage (design,
tokenizer, data, every training run), the eval and red-team reports made of it or of its
ancestors, and its lifecycle events. Nothing here is typed in by hand or guessed: a section
the record has nothing for stays empty, and the renderers (card_render.py) say so.

The artifacts' files that the card reads (training_metrics.jsonl, stats.json, report.json,
config.json) are checked against their manifest's sha256 first, so a card never shows
numbers from a file edited after registration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Event, Workspace, sha256_file

TRAINING_STAGES = ("pretrain", "finetune")
METRICS_FILE = "training_metrics.jsonl"
# States past service: the card leads with them.
SUNSET_STATES = ("deprecated", "retired", "archived")


@dataclass(frozen=True)
class DesignInfo:
    """The model's shape: from its design artifact, or from config.json when the record has
    none (an imported checkpoint)."""

    id: str | None
    name: str
    shape: dict[str, Any]
    params: int | None
    compute_optimal_tokens: int | None = None


@dataclass(frozen=True)
class SourceInfo:
    """One source of a curated dataset, from input to output."""

    name: str
    paths: list[str]
    preset: str | None
    documents_in: int | None
    documents_out: int | None
    english_check: bool


@dataclass(frozen=True)
class DatasetInfo:
    id: str
    stage: str  # corpus, files or curate
    name: str | None
    documents: int | None
    characters: int | None
    made_from: list[str]
    sources: list[SourceInfo] = field(default_factory=list)
    # (curation step, documents removed, documents it saw), in pipeline order
    removals: list[tuple[str, int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    has_report: bool = False  # report.md / funnel.png in the artifact


@dataclass(frozen=True)
class TokenizerInfo:
    id: str
    vocab_size: int | None
    documents: int | None
    characters: int | None
    inputs: list[str]


@dataclass(frozen=True)
class TokensInfo:
    id: str
    train_tokens: int | None
    val_tokens: int | None
    train_documents: int | None
    val_documents: int | None
    inputs: list[str] = field(default_factory=list)  # files tokenized without a dataset id


@dataclass(frozen=True)
class CurvePoint:
    step: int
    loss: float
    tokens: int | None
    val_loss: float | None


@dataclass(frozen=True)
class TrainingRun:
    """One training stage in the lineage; `curve` comes from the training_metrics.jsonl the
    stage copied into its artifact (empty where the artifact has none)."""

    id: str
    kind: str
    stage: str
    name: str | None
    method: str  # pretrain, domain, sft, dpo, reward, rlhf, ...
    created: str
    base: str | None
    data: list[str]
    steps: int | None
    tokens: int | None
    final_loss: float | None
    final_val_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    seconds: float | None
    stopped_early: bool
    settings: dict[str, Any]
    curve: list[CurvePoint]


@dataclass(frozen=True)
class GateResult:
    gate: str
    value: float | None
    passed: bool


@dataclass(frozen=True)
class MetricResult:
    task: str
    metric: str
    value: float
    stderr: float | None
    n: int | None


@dataclass(frozen=True)
class Evaluation:
    id: str
    model_id: str  # the model evaluated: this one or an ancestor
    on_this_model: bool
    suite: str | None
    created: str
    gates_passed: bool | None  # None: the report had no gates
    gates: list[GateResult]
    results: list[MetricResult]


@dataclass(frozen=True)
class Rate:
    """A rate over n units with its 95% interval, as the red-team report keeps it."""

    rate: float
    ci_low: float | None
    ci_high: float | None
    n: int | None


@dataclass(frozen=True)
class RedTeam:
    id: str
    model_id: str
    on_this_model: bool
    suite: str | None
    created: str
    attack_success: Rate | None
    over_refusal: Rate | None
    categories: dict[str, Rate]
    gates_passed: bool | None
    gates: list[GateResult]
    findings: int | None


@dataclass(frozen=True)
class Move:
    model_id: str
    time: str
    from_state: str | None
    to_state: str
    reason: str
    forced: bool
    note: str
    actor: str = ""  # user@host and command line, where the record keeps them
    command: str = ""
    sunset: str | None = None  # a deprecation's announced date and successor
    successor: str | None = None
    decision: dict[str, Any] | None = None  # an approval's gates (registry/approval.py)

    @classmethod
    def of(cls, e: Event) -> Move:
        # getattr: workspaces written before events kept who, how, sunset and successor.
        return cls(e.artifact_id, e.time, e.from_state, e.to_state, e.reason, e.forced, e.note,
                   getattr(e, "actor", "") or "", getattr(e, "command", "") or "",
                   getattr(e, "sunset", None), getattr(e, "successor", None),
                   getattr(e, "decision", None))


@dataclass(frozen=True)
class Sunset:
    """Deprecation / retirement / archive, from the move that made the model so."""

    state: str
    since: str  # when it was first deprecated (or retired, with no deprecation recorded)
    reason: str
    note: str
    sunset: str | None  # the announced sunset date
    successor: str | None  # as announced; else the newest model made from this one
    archive: str | None = None  # where an archived model's bundle lies
    successor_announced: bool = False  # False: the successor is inferred from the lineage


@dataclass
class ModelCard:
    id: str
    name: str | None
    stage: str
    state: str | None
    created: str
    lmforge_version: str
    params: int | None
    aliases: list[str]
    design: DesignInfo | None
    tokenizer: TokenizerInfo | None
    datasets: list[DatasetInfo]
    tokens: list[TokensInfo]
    training: list[TrainingRun]
    evaluations: list[Evaluation]
    redteams: list[RedTeam]
    lineage: dict[str, Any]
    history: list[Move]  # this model's moves, oldest first
    ancestor_forced: list[Move]  # forced moves of the models it was made from
    sunset: Sunset | None
    intended_use: str = ""
    limits: list[str] = field(default_factory=list)

    @property
    def forced(self) -> list[Move]:
        return [m for m in self.history if m.forced] + self.ancestor_forced


# -- reading the record -------------------------------------------------------------------


def verified_text(art: Artifact, rel: str) -> str:
    """A file of an artifact, refused if it no longer matches its registered sha256."""
    path = art.file(rel)
    if sha256_file(path) != art.files[rel]["sha256"]:
        raise LmforgeError(f"artifact {art.id}: {rel} changed after registration",
                           "restore the artifact folder from a backup (`lmforge registry "
                           f"show {art.id}` lists its checksums)")
    return path.read_text(encoding="utf-8")


def _verified_json(art: Artifact, rel: str) -> Any:
    try:
        return json.loads(verified_text(art, rel))
    except json.JSONDecodeError as e:
        raise LmforgeError(f"artifact {art.id}: {rel} is not valid JSON ({e})",
                           "restore the artifact folder from a backup") from None


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a lineage tree, the root first, each id once."""
    seen: dict[str, dict[str, Any]] = {}
    stack = [node]
    while stack:
        n = stack.pop(0)
        if n["id"] not in seen:
            seen[n["id"]] = n
            stack.extend(n["children"])
    return list(seen.values())


def _ids(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _design(arts: list[Artifact], model: Artifact) -> DesignInfo | None:
    design = next((a for a in arts if a.kind == "design"), None)
    if design is not None:
        shape = dict(design.settings)
        name = shape.pop("name", None) or design.name or "custom"
        return DesignInfo(design.id, name, shape, design.metrics.get("params"),
                          design.metrics.get("compute_optimal_tokens"))
    if "config.json" not in model.files:
        return None
    from lmforge.model.hf_config import hf_config_to_design

    d = hf_config_to_design(_verified_json(model, "config.json"), f"{model.id} config.json")
    shape = d.to_dict()
    shape.pop("name", None)
    return DesignInfo(None, model.name or "imported", shape, model.metrics.get("params"))


def _english_check(source: dict[str, Any]) -> bool:
    """Whether a curation source ran the English-language filter (every preset has one;
    a source's filters can switch it off)."""
    from lmforge.curate.filters import PRESETS

    preset = PRESETS.get(source.get("preset") or "", {})
    override = (source.get("filters") or {}).get("language", {})
    return "language" in preset and override not in (False, None)


def _dataset(art: Artifact) -> DatasetInfo:
    m = art.metrics
    made_from = _ids(art.parents.get("data"))
    if art.stage != "curate":
        return DatasetInfo(art.id, art.stage, art.name, m.get("documents"), m.get("characters"),
                           made_from, warnings=list(m.get("warnings", [])))
    counts = m.get("sources", {})
    sources = [SourceInfo(s["name"], list(s.get("paths", [])), s.get("preset"),
                          counts.get(s["name"], {}).get("documents_in"),
                          counts.get(s["name"], {}).get("documents_out"), _english_check(s))
               for s in art.settings.get("sources", [])]
    removals = []
    if "stats.json" in art.files:
        for step in _verified_json(art, "stats.json").get("steps", []):
            seen = sum(c["documents_in"] for c in step["by_source"].values())
            kept = sum(c["documents_out"] for c in step["by_source"].values())
            removals.append((step["name"], seen - kept, seen))
    return DatasetInfo(art.id, art.stage, art.name, m.get("documents"), m.get("characters"),
                       made_from, sources, removals, list(m.get("warnings", [])),
                       "report.md" in art.files)


def read_curve(art: Artifact) -> list[CurvePoint]:
    """The loss per step (and validation loss where measured) of a training artifact."""
    if METRICS_FILE not in art.files:
        return []
    points = []
    for line in verified_text(art, METRICS_FILE).splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill is left out, as the training log reader does
        if isinstance(r, dict) and isinstance(r.get("loss"), (int, float)) and "step" in r:
            val = r.get("val_loss")
            points.append(CurvePoint(int(r["step"]), float(r["loss"]), r.get("tokens"),
                                     float(val) if isinstance(val, (int, float)) else None))
    return points


# Training settings worth a line on the card (the rest stay in `lmforge registry show`).
_RUN_SETTINGS = ("optimizer", "lr", "schedule", "warmup_steps", "batch_tokens", "seq_len",
                 "micro_batch", "weight_decay", "seed", "replay", "beta", "loss", "algo",
                 "lora")


def _training_run(art: Artifact) -> TrainingRun:
    m, s = art.metrics, art.settings
    curve = read_curve(art)
    vals = [(p.val_loss, p.step) for p in curve if p.val_loss is not None]
    best = min(vals) if vals else None
    data = [str(d) for d in _ids(s.get("data"))] if art.stage == "finetune" \
        else _ids(art.parents.get("data"))
    return TrainingRun(
        id=art.id, kind=art.kind, stage=art.stage, name=art.name,
        method=m.get("method") or s.get("method") or art.stage, created=art.created,
        base=next(iter(_ids(art.parents.get("base"))), None), data=data,
        steps=m.get("steps"), tokens=m.get("tokens"),
        final_loss=curve[-1].loss if curve else m.get("train_loss"),
        final_val_loss=vals[-1][0] if vals else m.get("val_loss"),
        best_val_loss=best[0] if best else None, best_step=best[1] if best else
        m.get("best_step"), seconds=m.get("train_seconds"),
        stopped_early=bool(m.get("stopped_early")),
        settings={k: s[k] for k in _RUN_SETTINGS if s.get(k) is not None}, curve=curve)


def _evaluation(art: Artifact, model_id: str, mine: bool) -> Evaluation:
    report = _verified_json(art, "report.json") if "report.json" in art.files else {}
    results: list[MetricResult] = []
    for task, entry in (report.get("tasks") or {}).items():
        for name, v in (entry.get("metrics") or {}).items():
            if isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
                results.append(MetricResult(task, name, float(v["value"]), v.get("stderr"),
                                            entry.get("n")))
    if not results:  # a report of another shape (a judged comparison): its flat numbers
        for key, v in sorted(art.metrics.items()):
            if "/" in key and isinstance(v, (int, float)) and not isinstance(v, bool):
                task, _, name = key.partition("/")
                results.append(MetricResult(task, name, float(v), None, None))
    gates = [GateResult(f"{g['metric']} {g['op']} {g['threshold']:g}", g.get("value"),
                        bool(g.get("passed")))
             for g in (report.get("gates") or {}).get("results", [])]
    return Evaluation(art.id, model_id, mine, art.settings.get("suite"), art.created,
                      art.metrics.get("gates_passed"), gates, results)


def _rate(entry: dict[str, Any] | None) -> Rate | None:
    if not entry or entry.get("rate") is None:
        return None
    return Rate(float(entry["rate"]), entry.get("ci_low"), entry.get("ci_high"), entry.get("n"))


def _redteam(art: Artifact, model_id: str, mine: bool) -> RedTeam:
    report = _verified_json(art, "report.json") if "report.json" in art.files else {}
    summary = report.get("summary") or {}
    categories = {c: r for c, e in (summary.get("categories") or {}).items()
                  if (r := _rate(e)) is not None}
    m = art.metrics
    asr = _rate(summary.get("asr"))
    if asr is None and isinstance(m.get("asr"), (int, float)):
        asr = Rate(float(m["asr"]), None, None, None)
    over = categories.get("over_refusal")
    if over is None and isinstance(m.get("over_refusal"), (int, float)):
        over = Rate(float(m["over_refusal"]), None, None, None)
    gates = [GateResult(g["gate"], g.get("value"), bool(g.get("passed")))
             for g in report.get("gates", [])]
    return RedTeam(art.id, model_id, mine, art.settings.get("suite"), art.created, asr, over,
                   categories, m.get("gates_passed"), gates, m.get("findings"))


def _sunset(ws: Workspace, model_id: str, state: str | None, history: list[Move]
            ) -> Sunset | None:
    if state not in SUNSET_STATES:
        return None
    moves = [m for m in history if m.to_state in SUNSET_STATES]
    deprecations = [m for m in moves if m.to_state == "deprecated"]
    first = (deprecations or moves or [None])[0]
    latest = deprecations[-1] if deprecations else None
    successor = latest.successor if latest else None
    if successor is None:  # not announced: the newest model made from this one, if any
        newer = ws.children(model_id, kind="model")
        successor = newer[0].id if newer else None
    archive_of = getattr(ws, "archive_of", None)  # registries that keep archive locations
    where = archive_of(model_id) if archive_of is not None and state == "archived" else None
    return Sunset(state, first.time if first else "",
                  "; ".join(dict.fromkeys(m.reason for m in moves)),
                  "; ".join(dict.fromkeys(m.note for m in moves if m.note)),
                  latest.sunset if latest else None, successor,
                  where["bundle"] if where else None,
                  successor_announced=bool(latest and latest.successor))


def gather(ws: Workspace, ref: str) -> ModelCard:
    """Everything the record says about the model `ref` names, as plain data."""
    model = ws.resolve(ref, kind="model", verify=False)
    tree = ws.lineage(model.id)
    nodes = _walk(tree)
    arts = [model] + [ws.resolve(n["id"], verify=False) for n in nodes[1:]]
    arts_by_created = sorted(arts, key=lambda a: (a.created, a.id))
    models = [a for a in arts if a.kind == "model"]
    evaluations, redteams = [], []
    for m in models:
        mine = m.id == model.id
        for child in ws.children(m.id):
            if child.kind == "eval-report":
                evaluations.append(_evaluation(ws.resolve(child.id, verify=False), m.id, mine))
            elif child.kind == "redteam-report":
                redteams.append(_redteam(ws.resolve(child.id, verify=False), m.id, mine))
    # This model's reports first, then its ancestors'; oldest first within each.
    evaluations.sort(key=lambda e: (not e.on_this_model, e.created, e.id))
    redteams.sort(key=lambda r: (not r.on_this_model, r.created, r.id))
    tokenizer = next((a for a in arts if a.kind == "tokenizer"), None)
    history = [Move.of(e) for e in ws.history(model.id)]
    ancestor_forced = [Move.of(e) for a in models if a.id != model.id
                       for e in ws.history(a.id) if e.forced]
    state = ws.state_of(model.id)
    design = _design(arts, model)
    card = ModelCard(
        id=model.id, name=model.name, stage=model.stage, state=state, created=model.created,
        lmforge_version=model.manifest.get("lmforge_version", "?"),
        params=model.metrics.get("params") or (design.params if design else None),
        aliases=ws.aliases_of(model.id), design=design,
        tokenizer=None if tokenizer is None else TokenizerInfo(
            tokenizer.id, tokenizer.metrics.get("vocab_size"),
            tokenizer.metrics.get("documents"), tokenizer.metrics.get("characters"),
            [str(i) for i in tokenizer.settings.get("inputs", [])]),
        datasets=[_dataset(a) for a in arts_by_created if a.kind == "dataset"],
        tokens=[TokensInfo(a.id, a.metrics.get("train_tokens"), a.metrics.get("val_tokens"),
                           a.metrics.get("train_documents"), a.metrics.get("val_documents"),
                           [str(i) for i in a.settings.get("inputs", [])])
                for a in arts_by_created if a.kind == "tokens"],
        training=[_training_run(a) for a in arts_by_created
                  if a.stage in TRAINING_STAGES and "steps" in a.metrics],
        evaluations=evaluations, redteams=redteams, lineage=tree, history=history,
        ancestor_forced=ancestor_forced, sunset=_sunset(ws, model.id, state, history))
    card.intended_use, card.limits = intended_use(card)
    return card


# -- the generated paragraph ----------------------------------------------------------------


def _data_words(card: ModelCard) -> str:
    names = []
    for d in card.datasets:
        if d.stage == "curate":
            names.extend(s.name for s in d.sources)
        elif d.id not in {p for x in card.datasets for p in x.made_from}:
            names.append(d.name or d.id)
    names += [i for t in card.tokens for i in t.inputs]  # files tokenized directly
    names = list(dict.fromkeys(names))
    return ", ".join(names) if names else "data the record does not name"


def _english(card: ModelCard) -> bool | None:
    """True when every curated source passed the English check; None when not recorded."""
    sources = [s for d in card.datasets for s in d.sources]
    if sources:
        return all(s.english_check for s in sources)
    if card.datasets and all(d.stage == "corpus" and d.name == "pydocs" for d in card.datasets):
        return True  # the embedded corpus: the English documentation shipped with Python
    return None


def intended_use(card: ModelCard) -> tuple[str, list[str]]:
    """A paragraph on what the model is for, and the limits the record shows."""
    shape = card.design.shape if card.design else {}
    size = f"{card.params:,}-parameter" if card.params else "decoder-only"
    n = shape.get("n_layers")
    layers = f", {n} layer{'' if n == 1 else 's'}" if n else ""
    context = f", a context of {shape['context_length']:,} tokens" \
        if "context_length" in shape else ""
    pretrain = [r for r in card.training if r.method == "pretrain"]
    tuning = [r for r in card.training if r.method != "pretrain" and r.kind == "model"]
    pre_tokens = sum(r.tokens or 0 for r in pretrain)
    text = f"{card.name or card.id} is a {size} Llama-style language model{layers}{context}"
    if pretrain:
        text += f", pretrained on {pre_tokens:,} tokens of {_data_words(card)}"
    elif card.stage == "import":
        text += ", imported from a checkpoint: the record holds no training run of it"
    elif card.stage == "init":
        text += " with random weights: it has not been trained, and its output is random"
    text += "."
    if tuning:
        text += " It was then tuned by " + ", then ".join(
            f"{r.method} ({r.steps or 0} steps)" for r in tuning) + "."
    limits: list[str] = []
    english = _english(card)
    if english:
        limits.append("Its training text passed an English-language check: expect it to "
                      "work in English only.")
    elif english is False:
        unchecked = [s.name for d in card.datasets for s in d.sources if not s.english_check]
        limits.append(f"Not all of its training text passed an English-language check (not: "
                      f"{', '.join(unchecked)}); the record does not say which languages "
                      "that text holds.")
    else:
        limits.append("The record does not say which languages its data holds.")
    optimal = card.design.compute_optimal_tokens if card.design else None
    if pretrain and optimal and pre_tokens < optimal:
        limits.append(f"It saw {100 * pre_tokens / optimal:.2g}% of the compute-optimal tokens "
                      f"for its "
                      f"size ({optimal:,}, about 20 per parameter): it is undertrained, useful "
                      "for study and tests rather than for answers to rely on.")
    if not any(r.method in ("sft", "dpo", "rlhf") for r in tuning):
        limits.append("It is not instruction-tuned: it continues text rather than following "
                      "instructions.")
    mine = [r for r in card.redteams if r.on_this_model]
    if not mine:
        limits.append("No red-team report of this model exists: its behaviour on harmful "
                      "requests is unmeasured, so treat it as not safety-tuned.")
    else:
        r = mine[-1]
        asr = f"attack success {r.attack_success.rate:.1%}" if r.attack_success else \
            "attack success not measured"
        verdict = {True: "passed", False: "FAILED", None: "had no"}[r.gates_passed]
        limits.append(f"Red-teamed ({r.id}): {asr}; it {verdict} its red-team gates.")
    if not [e for e in card.evaluations if e.on_this_model]:
        limits.append("This exact model has not been evaluated.")
    elif any(e.gates_passed is False for e in card.evaluations if e.on_this_model):
        limits.append("At least one evaluation of this model failed its gates.")
    if any(m.forced and m.to_state == "approved" for m in card.history):
        limits.append("Its approval was forced past the release checks (see the state "
                      "history).")
    if card.sunset is not None:
        s = card.sunset
        when = f", sunset {s.sunset}" if s.sunset else ""
        after = f"; use {s.successor} instead" if s.successor else ""
        limits.append(f"It is {s.state} ({s.reason}{when}){after}: do not build on it.")
    return text, limits
