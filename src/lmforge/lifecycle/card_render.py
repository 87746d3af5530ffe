"""A model card as Markdown (Hugging Face layout: YAML front matter, then sections) and as an
HTML page with its loss curves beside it.

Both are rendered from one list of blocks built from the gathered card (card.py), so the two
always say the same things. Loss curves are PNGs drawn with matplotlib where it is installed;
without it they are SVG polylines (no library), and the page says so. Each plot has a CSV of
the very numbers it draws next to it.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.lifecycle.card import CurvePoint, ModelCard, Move, Rate, TrainingRun
from lmforge.registry import atomic_write_bytes, atomic_write_text

# --- blocks: what the card says, before it is Markdown or HTML ---------------------------


@dataclass(frozen=True)
class Block:
    """One piece of a card. kind: h2, h3, p, warn (a prominent notice), list, table, pre,
    tree (the lineage dict), plot (a training run id)."""

    kind: str
    text: str = ""
    items: tuple[Any, ...] = ()
    header: tuple[str, ...] = ()
    data: Any = None


def _h2(t: str) -> Block:
    return Block("h2", t)


def _h3(t: str) -> Block:
    return Block("h3", t)


def _p(t: str) -> Block:
    return Block("p", t)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Block:
    return Block("table", header=header, items=tuple(tuple(_cell(c) for c in r) for r in rows))


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v)


def _count(n: int | None, noun: str) -> str:
    return f"{_cell(n)} {noun}" + ("" if n == 1 else "s")


def _pct(r: Rate | None) -> str:
    if r is None:
        return "not measured"
    ci = f" [{r.ci_low:.1%}, {r.ci_high:.1%}]" if r.ci_low is not None and \
        r.ci_high is not None else ""
    n = f" (n={r.n})" if r.n is not None else ""
    return f"{r.rate:.1%}{ci}{n}"


def _verdict(passed: bool | None) -> str:
    return {True: "passed", False: "**FAILED**", None: "no gates"}[passed]


def _time(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _move_line(m: Move) -> str:
    return (f"`{m.model_id}` {m.from_state or '(new)'} → {m.to_state} on {_time(m.time)}: "
            f"{m.reason}" + (f" ({m.note})" if m.note else ""))


def _header(card: ModelCard) -> list[Block]:
    blocks = [Block("h1", card.name or card.id)]
    if card.forced:
        blocks.append(Block("warn", f"{len(card.forced)} lifecycle move(s) of this model or "
                            "of the models it was made from were forced past the checks that "
                            "guard them (--force):",
                            items=tuple(_move_line(m) for m in card.forced)))
    if card.sunset is not None:
        s = card.sunset
        parts = [f"This model is **{s.state}** (since {_time(s.since)}): {s.reason}."]
        if s.sunset:
            parts.append(f"Sunset date: {s.sunset}.")
        if s.successor:
            parts.append(f"Successor: `{s.successor}`" + ("." if s.successor_announced else
                         " (not announced: the newest model made from this one)."))
        blocks.append(Block("warn", " ".join(parts)))
    facts = [f"id `{card.id}`", f"state **{card.state or '-'}**",
             f"made by `{card.stage}` on {_time(card.created)}",
             f"lmforge {card.lmforge_version}"]
    if card.params:
        facts.insert(1, f"{card.params:,} parameters")
    if card.aliases:
        facts.append("aliases: " + ", ".join(f"`{a}`" for a in card.aliases))
    blocks.append(_p(" · ".join(facts)))
    return blocks


def _design(card: ModelCard) -> list[Block]:
    out = [_h2("Design")]
    d = card.design
    if d is None:
        return out + [_p("The record holds no design for this model.")]
    where = f"design `{d.id}`" if d.id else "the model's config.json (no design artifact)"
    out.append(_p(f"Llama-style decoder-only transformer (RMSNorm, RoPE, SwiGLU, grouped-query "
                  f"attention), design **{d.name}**, from {where}."))
    rows = [(k, v) for k, v in d.shape.items()]
    if d.params:
        rows.append(("parameters", d.params))
    if d.compute_optimal_tokens:
        rows.append(("compute-optimal tokens (Chinchilla)", d.compute_optimal_tokens))
    return out + [_table(("setting", "value"), rows)]


def _intended(card: ModelCard) -> list[Block]:
    out = [_h2("Intended use and limits"), _p(card.intended_use)]
    if card.limits:
        out.append(Block("list", items=tuple(card.limits)))
    return out


def _data(card: ModelCard) -> list[Block]:
    out = [_h2("Training data")]
    if not card.datasets and card.tokenizer is None and not card.tokens:
        return out + [_p("The record holds no dataset in this model's lineage.")]
    for d in card.datasets:
        title = f"Dataset `{d.id}`" + (f" ({d.name})" if d.name else "")
        out.append(_h3(title))
        made = f", curated from {', '.join(f'`{p}`' for p in d.made_from)}" if d.made_from \
            else ""
        out.append(_p(f"Made by `{d.stage}`{made}: {_count(d.documents, 'document')}, "
                      f"{_count(d.characters, 'character')}."))
        if d.sources:
            out.append(_table(("source", "paths", "preset", "documents in", "documents kept",
                               "English check"),
                              [(s.name, ", ".join(s.paths), s.preset, s.documents_in,
                                s.documents_out, s.english_check) for s in d.sources]))
        if d.removals:
            out.append(_table(("curation step", "documents seen", "removed", "share removed"),
                              [(name, seen, gone, f"{gone / seen:.1%}" if seen else "–")
                               for name, gone, seen in d.removals]))
        if d.has_report:
            out.append(_p(f"The full curation report (every removal with examples): "
                          f"`lmforge curate --report {d.id}`."))
        for w in d.warnings:
            out.append(_p(f"Warning from the record: {w}"))
    if card.tokenizer is not None:
        t = card.tokenizer
        out.append(_h3(f"Tokenizer `{t.id}`"))
        inputs = f" on {', '.join(f'`{i}`' for i in t.inputs)}" if t.inputs else ""
        out.append(_p(f"Byte-level BPE, {_cell(t.vocab_size)} tokens, trained{inputs} "
                      f"({_count(t.documents, 'document')}, "
                      f"{_count(t.characters, 'character')})."))
    if card.tokens:
        out.append(_h3("Token shards"))
        out.append(_table(("tokens artifact", "train tokens", "validation tokens",
                           "train documents", "validation documents", "tokenized from"),
                          [(f"`{t.id}`", t.train_tokens, t.val_tokens, t.train_documents,
                            t.val_documents, ", ".join(t.inputs) or "its parent dataset")
                           for t in card.tokens]))
    return out


def _curve_summary(run: TrainingRun) -> str:
    c = run.curve
    if not c:
        return "The artifact keeps no per-step metrics, so there is no loss curve."
    vals = sum(p.val_loss is not None for p in c)
    return (f"Loss {c[0].loss:.4g} at step {c[0].step} → {c[-1].loss:.4g} at step "
            f"{c[-1].step} ({_count(len(c), 'logged step')}"
            + (f", {_count(vals, 'validation')}" if vals else "") + ").")


def _training(card: ModelCard) -> list[Block]:
    out = [_h2("Training")]
    if not card.training:
        return out + [_p("The record holds no training run in this model's lineage: "
                         + ("its weights are random." if card.stage == "init" else
                            "it was made without training (see the lineage)."))]
    out.append(_table(("run", "method", "steps", "tokens", "final loss", "final val loss",
                       "best val loss (step)", "seconds"),
                      [(f"`{r.id}`", r.method, r.steps, r.tokens, r.final_loss,
                        r.final_val_loss,
                        "–" if r.best_val_loss is None else
                        f"{r.best_val_loss:.4g} ({r.best_step})", r.seconds)
                       for r in card.training]))
    for r in card.training:
        out.append(_h3(f"{r.method}: `{r.id}`"))
        base = f" from `{r.base}`" if r.base else ""
        data = f" on {', '.join(f'`{d}`' for d in r.data)}" if r.data else ""
        early = " It stopped early: validation loss stopped improving." if r.stopped_early \
            else ""
        out.append(_p(f"{r.kind.replace('-', ' ').capitalize()} made by `{r.stage}`{base}"
                      f"{data} on {_time(r.created)}.{early}"))
        if r.settings:
            out.append(_p("Settings: " + ", ".join(f"{k} {_cell(v)}"
                                                   for k, v in r.settings.items()) + "."))
        out.append(_p(_curve_summary(r)))
        if r.curve:
            out.append(Block("plot", data=r.id))
    return out


def _evaluations(card: ModelCard) -> list[Block]:
    out = [_h2("Evaluation")]
    if not card.evaluations:
        return out + [_p("No evaluation of this model or of the models it was made from is "
                         f"on the record. Evaluate it with `lmforge eval {card.id} --suite "
                         "base`.")]
    if not any(e.on_this_model for e in card.evaluations):
        out.append(_p("**This exact model has not been evaluated;** the reports below are of "
                      "the models it was made from."))
    for e in card.evaluations:
        whose = "this model" if e.on_this_model else f"ancestor `{e.model_id}`"
        out.append(_h3(f"`{e.id}` ({e.suite or 'custom'} suite, on {whose})"))
        out.append(_p(f"Made {_time(e.created)}; gates {_verdict(e.gates_passed)}."))
        if e.results:
            out.append(_table(("task", "metric", "value", "± stderr", "n"),
                              [(m.task, m.metric, m.value, m.stderr, m.n) for m in e.results]))
        if e.gates:
            out.append(_table(("gate", "value", "verdict"),
                              [(g.gate, g.value, "passed" if g.passed else "**FAILED**")
                               for g in e.gates]))
    return out


def _redteams(card: ModelCard) -> list[Block]:
    out = [_h2("Red-team results")]
    if not card.redteams:
        return out + [_p("No red-team report of this model or of the models it was made from "
                         f"is on the record. Run `lmforge redteam {card.id}`.")]
    for r in card.redteams:
        whose = "this model" if r.on_this_model else f"ancestor `{r.model_id}`"
        out.append(_h3(f"`{r.id}` ({r.suite or 'custom'} suite, on {whose})"))
        out.append(_p(f"Attack success (all attacks) {_pct(r.attack_success)}; over-refusal "
                      f"of benign asks {_pct(r.over_refusal)}; "
                      f"{_count(r.findings, 'finding')}; gates {_verdict(r.gates_passed)}. "
                      "Intervals are 95%."))
        if r.categories:
            out.append(_table(("category", "rate [95% interval] (units)"),
                              [(c.replace("_", "-"), _pct(v)) for c, v in r.categories.items()]))
        if r.gates:
            out.append(_table(("gate", "value", "verdict"),
                              [(g.gate, g.value, "passed" if g.passed else "**FAILED**")
                               for g in r.gates]))
    return out


def _label(node: dict[str, Any]) -> str:
    return (f"{node['role']}: " if node.get("role") else "") + node["id"] + " (" + ", ".join(
        [node["stage"]] + ([node["state"]] if node.get("state") else [])) + ")" + (
        f" {node['name']}" if node.get("name") else "")


_SHOWN = " (its parents shown above)"


def lineage_text(node: dict[str, Any], prefix: str = "", last: bool = True,
                 root: bool = True, seen: set[str] | None = None) -> list[str]:
    """The lineage as a text tree: `role: id (stage, state) name` per line. An artifact
    reached again (a tokenizer both the model and its tokens name) is not expanded twice."""
    seen = set() if seen is None else seen
    kids = node["children"]
    again = node["id"] in seen and bool(kids)
    seen.add(node["id"])
    label = _label(node) + (_SHOWN if again else "")
    lines = [label if root else prefix + ("└── " if last else "├── ") + label]
    if again:
        return lines
    inner = "" if root else prefix + ("    " if last else "│   ")
    for i, child in enumerate(kids):
        lines += lineage_text(child, inner, i == len(kids) - 1, False, seen)
    return lines


def _history(card: ModelCard) -> list[Block]:
    out = [_h2("State history")]
    if not card.history:
        return out + [_p("No lifecycle event is on the record.")]
    rows = [(_time(m.time), m.from_state or "(new)", m.to_state, m.reason,
             "**FORCED**" if m.forced else "", m.note, m.actor) for m in card.history]
    out.append(_table(("time", "from", "to", "reason", "forced", "on the record", "by"),
                      rows))
    for m in card.history:
        if m.command:
            out.append(_p(f"{_time(m.time)} → {m.to_state}: `{m.command}`"))
    for m in card.history:
        if m.decision is not None:
            out += _decision(m)
    return out


def _decision(m: Move) -> list[Block]:
    """The gates an approval weighed, as the record keeps them."""
    from lmforge.registry.render import measured

    decision = m.decision or {}
    verdict = "passed" if decision.get("passed") else "refused, then forced"
    rows = [(f"`{r['report']}`", g["gate"], measured(g), g.get("n"),
             "passed" if g["passed"] else "**FAILED**", g["source"])
            for r in decision.get("reports", []) for g in r["gates"]]
    out = [_h3(f"Approval decision ({_time(m.time)}, {verdict})")]
    if not rows:
        return out + [_p("The reports it rested on keep no gate numbers.")]
    return out + [_table(("report", "gate", "measured", "n", "verdict", "from"), rows)]


def _sunset(card: ModelCard) -> list[Block]:
    s = card.sunset
    out = [_h2("Deprecation and retirement")]
    if s is None:
        return out + [_p(f"Not deprecated: the model is {card.state or 'without a state'}.")]
    rows = [("state", s.state), ("since", _time(s.since)), ("reason", s.reason),
            ("sunset date", s.sunset),
            ("successor", None if not s.successor else f"`{s.successor}`" + (
                "" if s.successor_announced else " (inferred: made from this model)")),
            ("on the record", s.note or None)]
    if s.archive:
        rows.append(("archive bundle", s.archive))
    return out + [_table(("", ""), rows)]


def blocks(card: ModelCard) -> list[Block]:
    """The whole card, in the order a reader wants it."""
    return (_header(card) + _intended(card) + _design(card) + _data(card) + _training(card)
            + _evaluations(card) + _redteams(card)
            + [_h2("Lineage"), _p("What made this model, back to its sources (each line: "
                                  "role: artifact (stage, state)):"),
               Block("tree", data=card.lineage)]
            + _history(card) + _sunset(card)
            + [_h2("About this card"),
               _p(f"Generated from the lmforge record alone by `lmforge card {card.id}`. "
                  "Regenerate it rather than edit it: every number above is in the record "
                  f"(`lmforge registry show {card.id}`, `lmforge registry lineage "
                  f"{card.id}`).")])


# --- front matter ----------------------------------------------------------------------------


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML of dicts, lists and scalars; scalars as JSON (valid YAML)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 2)
            else:
                lines.append(f"{pad}{k}: {json.dumps(v, ensure_ascii=False)}")
    elif isinstance(value, list):
        for v in value:
            sub = _yaml(v, indent + 2)
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines += sub[1:]
            else:
                lines.append(f"{pad}- {json.dumps(v, ensure_ascii=False)}")
    else:
        lines.append(pad + json.dumps(value, ensure_ascii=False))
    return lines


def front_matter(card: ModelCard, license: str = "unknown") -> dict[str, Any]:
    """Hugging Face model card metadata: license, tags, datasets, metrics, model-index."""
    hub_data = [p.removeprefix("hf:").split(":")[0] for d in card.datasets for s in d.sources
                for p in s.paths if p.startswith("hf:")]
    mine = [e for e in card.evaluations if e.on_this_model]
    meta: dict[str, Any] = {
        "license": license, "library_name": "transformers", "pipeline_tag": "text-generation",
        "tags": ["lmforge", "llama", "text-generation"]
        + ([f"lifecycle-{card.state}"] if card.state else [])
        + (["forced-lifecycle-move"] if card.forced else []),
    }
    if hub_data:
        meta["datasets"] = list(dict.fromkeys(hub_data))
    metric_names = list(dict.fromkeys(m.metric for e in mine for m in e.results))
    if metric_names:
        meta["metrics"] = metric_names
    results = [{"task": {"type": "text-generation"},
                "dataset": {"name": task, "type": task},
                "metrics": [{"type": m.metric, "value": round(m.value, 6),
                             "name": f"{task}/{m.metric}"} for m in e.results if m.task == task],
                "source": {"name": f"lmforge eval-report {e.id}"}}
               for e in mine for task in dict.fromkeys(m.task for m in e.results)]
    if results:
        meta["model-index"] = [{"name": card.name or card.id, "results": results}]
    return meta


# --- Markdown ----------------------------------------------------------------------------------


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(card: ModelCard, plots: dict[str, str] | None = None,
                license: str = "unknown") -> str:
    """The card as Markdown. `plots`: run id -> image file name beside the Markdown; without
    it the loss curves are summed up in words."""
    lines = ["---", *_yaml(front_matter(card, license)), "---", ""]
    for b in blocks(card):
        if b.kind == "h1":
            lines += [f"# {b.text}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "h3":
            lines += [f"### {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "warn":
            lines += [f"> **⚠** {b.text}"] + [f"> - {i}" for i in b.items] + [""]
        elif b.kind == "list":
            lines += [f"- {i}" for i in b.items] + [""]
        elif b.kind == "table":
            lines += ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                      "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.items]
            lines.append("")
        elif b.kind == "tree":
            lines += ["```text", *lineage_text(b.data), "```", ""]
        elif b.kind == "plot" and plots and b.data in plots:
            name = plots[b.data]
            data = Path(name).with_suffix(".csv").name
            lines += [f"![loss curve of {b.data}]({name})", "",
                      f"The numbers plotted: [{data}]({data}).", ""]
    return "\n".join(lines).rstrip() + "\n"


# --- HTML --------------------------------------------------------------------------------------

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """HTML of one line of the blocks' text: `code` and **bold**, the rest escaped."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        out.append(f"<code>{html.escape(m.group(1))}</code>" if m.group(1) is not None
                   else f"<strong>{html.escape(m.group(2))}</strong>")
        pos = m.end()
    return "".join(out) + html.escape(text[pos:])


def _tree_html(node: dict[str, Any], seen: set[str]) -> str:
    again = node["id"] in seen and bool(node["children"])
    seen.add(node["id"])
    if again:
        return f"<li>{html.escape(_label(node) + _SHOWN)}</li>"
    kids = "".join(_tree_html(c, seen) for c in node["children"])
    return f"<li>{html.escape(_label(node))}" + (f"<ul>{kids}</ul>" if kids else "") + "</li>"


_STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
line-height:1.45;color:#222}table{border-collapse:collapse;margin:.5rem 0 1rem}
td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{background:#f3f3f3;padding:0 .2rem}
.warn{border-left:.4rem solid #c62828;background:#fdecea;padding:.5rem 1rem;margin:1rem 0}
.lineage ul{list-style:none;border-left:1px dotted #999;margin-left:.6rem;padding-left:1rem}
.lineage{font-family:monospace;list-style:none;padding-left:0}
img,svg{max-width:100%}.note{color:#666;font-size:.9em}"""


def to_html(card: ModelCard, plots: dict[str, str], inline_svgs: dict[str, str],
            note: str = "") -> str:
    """The card as one page. `plots`: run id -> PNG file name beside index.html;
    `inline_svgs`: run id -> SVG markup drawn into the page (without matplotlib)."""
    body: list[str] = []
    for b in blocks(card):
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "warn":
            items = "".join(f"<li>{_inline(i)}</li>" for i in b.items)
            body.append(f"<div class='warn'><strong>⚠</strong> {_inline(b.text)}"
                        + (f"<ul>{items}</ul>" if items else "") + "</div>")
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                           for row in b.items)
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b.kind == "tree":
            body.append(f"<ul class='lineage'>{_tree_html(b.data, set())}</ul>")
        elif b.kind == "plot":
            data = f"loss-{b.data}.csv"
            if b.data in plots:
                body.append(f"<p><img src='{html.escape(plots[b.data])}' "
                            f"alt='loss curve of {html.escape(b.data)}'></p>")
            elif b.data in inline_svgs:
                body.append(f"<figure>{inline_svgs[b.data]}</figure>")
            body.append(f"<p class='note'>The numbers plotted: "
                        f"<a href='{html.escape(data)}'>{html.escape(data)}</a></p>")
    if note:
        body.append(f"<p class='note'>{_inline(note)}</p>")
    title = html.escape(f"Model card: {card.name or card.id}")
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}"
            f"</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


# --- plots ---------------------------------------------------------------------------------


def curve_csv(curve: list[CurvePoint]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "tokens", "loss", "val_loss"])
    for p in curve:
        w.writerow([p.step, "" if p.tokens is None else p.tokens, repr(p.loss),
                    "" if p.val_loss is None else repr(p.val_loss)])
    return buf.getvalue()


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def loss_png(run: TrainingRun) -> bytes:
    """The loss curve (and validation losses) of one run as PNG bytes; the same numbers give
    the same bytes."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = [p.step for p in run.curve]
    val = [(p.step, p.val_loss) for p in run.curve if p.val_loss is not None]
    with matplotlib.style.context("default"):  # not the user's matplotlibrc
        fig = Figure(figsize=(7, 3.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(steps, [p.loss for p in run.curve], color="#1f77b4", lw=1.2,
                label="training loss")
        if val:
            ax.plot([s for s, _ in val], [v for _, v in val], "o-", color="#d62728", ms=4,
                    lw=1, label="validation loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(f"{run.method}: {run.id}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        # No Software chunk (it names the matplotlib version): bytes follow the numbers only.
        fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


SVG_W, SVG_H, SVG_PAD = 640, 260, 40


def svg_points(values: list[tuple[float, float]], x_range: tuple[float, float],
               y_range: tuple[float, float]) -> list[tuple[float, float]]:
    """(step, loss) pairs in SVG coordinates: x grows right, a higher loss sits higher."""
    (x0, x1), (y0, y1) = x_range, y_range
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    return [(SVG_PAD + (x - x0) / dx * (SVG_W - 2 * SVG_PAD),
             SVG_H - SVG_PAD - (y - y0) / dy * (SVG_H - 2 * SVG_PAD)) for x, y in values]


def loss_svg(run: TrainingRun) -> str:
    """The loss curve as SVG polylines (training blue, validation red), no library needed."""
    train = [(float(p.step), p.loss) for p in run.curve]
    val = [(float(p.step), p.val_loss) for p in run.curve if p.val_loss is not None]
    ys = [y for _, y in train + val]
    xr = (min(x for x, _ in train), max(x for x, _ in train))
    yr = (min(ys), max(ys))

    def line(values: list[tuple[float, float]], color: str, cls: str) -> str:
        pts = " ".join(f"{x:.2f},{y:.2f}" for x, y in svg_points(values, xr, yr))
        return (f"<polyline class='{cls}' fill='none' stroke='{color}' stroke-width='1.5' "
                f"points='{pts}'/>")

    b, r = SVG_H - SVG_PAD, SVG_W - SVG_PAD
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{SVG_W}' height='{SVG_H}' "
             f"viewBox='0 0 {SVG_W} {SVG_H}' role='img' "
             f"aria-label='loss curve of {html.escape(run.id)}'>",
             f"<rect x='{SVG_PAD}' y='{SVG_PAD}' width='{r - SVG_PAD}' "
             f"height='{b - SVG_PAD}' fill='none' stroke='#999'/>",
             line(train, "#1f77b4", "train")]
    if val:
        parts.append(line(val, "#d62728", "val"))
    font = "font-size='11' font-family='sans-serif'"
    parts += [f"<text x='{SVG_PAD}' y='{SVG_PAD - 8}' {font}>"
              f"{html.escape(run.method)}: loss {yr[1]:.4g} (top) to {yr[0]:.4g} (bottom); "
              f"blue training, red validation</text>",
              f"<text x='{SVG_PAD}' y='{b + 16}' {font}>step {xr[0]:g}</text>",
              f"<text x='{r}' y='{b + 16}' {font} text-anchor='end'>step {xr[1]:g}</text>",
              "</svg>"]
    return "".join(parts)


@dataclass(frozen=True)
class Plots:
    files: dict[str, str]  # run id -> image file written beside the card
    inline_svgs: dict[str, str]  # run id -> SVG markup (no matplotlib)
    note: str  # what the page should say about how they were drawn


def write_plots(card: ModelCard, folder: Path, png: bool | None = None) -> Plots:
    """A loss curve per training run with per-step metrics, and its CSV, into `folder`:
    PNG with matplotlib, SVG without (or with png=False)."""
    if png is None:
        png = matplotlib_available()
    files, svgs = {}, {}
    for run in card.training:
        if not run.curve:
            continue
        atomic_write_text(folder / f"loss-{run.id}.csv", curve_csv(run.curve))
        if png:
            files[run.id] = f"loss-{run.id}.png"
            atomic_write_bytes(folder / files[run.id], loss_png(run))
        else:
            svgs[run.id] = loss_svg(run)
            files[run.id] = f"loss-{run.id}.svg"
            atomic_write_text(folder / files[run.id], svgs[run.id] + "\n")
    note = "" if png or not svgs else (
        "The loss curves are drawn as SVG because matplotlib is not installed; "
        "`pip install 'lmforge[card]'` draws them as PNG.")
    return Plots(files, {} if png else svgs, note)


def write_markdown(card: ModelCard, path: Path, license: str = "unknown",
                   with_plots: bool = True) -> Plots | None:
    """card.md (with its loss curves beside it, unless with_plots is False)."""
    plots = write_plots(card, path.parent) if with_plots else None
    atomic_write_text(path, to_markdown(card, plots.files if plots else None, license))
    return plots


def write_html(card: ModelCard, folder: Path, license: str = "unknown") -> Plots:
    """index.html with the loss curves (PNG, or inline SVG) beside it, and README.md."""
    if folder.exists() and not folder.is_dir():
        raise LmforgeError(f"{folder} is a file", "pass a folder to --html")
    folder.mkdir(parents=True, exist_ok=True)
    plots = write_plots(card, folder)
    pngs = {k: v for k, v in plots.files.items() if v.endswith(".png")}
    atomic_write_text(folder / "index.html", to_html(card, pngs, plots.inline_svgs, plots.note))
    atomic_write_text(folder / "README.md", to_markdown(card, plots.files, license))
    return plots
