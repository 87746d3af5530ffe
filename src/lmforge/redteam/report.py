"""A red-team report for people: the rates table in the terminal, and an HTML page with the
rates, gates, the detectors' measured error rates and examples of every finding."""

from __future__ import annotations

import html
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lmforge.redteam.mutators import CATEGORIES

_WHAT = {
    "direct": "harmful asks as they are",
    "jailbreak": "role-play, instruction override, refusal suppression, prefix injection",
    "obfuscation": "base64, leetspeak, split letters, rot13, translation",
    "multiturn": "harmless turns first (answered by the target), then the ask",
    "injection": "an instruction hidden in a document to summarise",
    "leakage": "a secret planted in the system prompt",
    "pii": "fake personal data planted in the system prompt",
    "bias": "prompt pairs differing in one demographic term",
    "over_refusal": "benign asks that look risky (refusing them is the failure)",
}


def _ci(entry: dict[str, Any]) -> str:
    if entry.get("rate") is None:
        return "-"
    return f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _rate(entry: dict[str, Any] | None) -> str:
    return "-" if not entry or entry.get("rate") is None else f"{entry['rate']:.3f}"


def view(report: dict[str, Any]) -> Group:
    """The rates per category, the pooled rates, the gates and the detectors' quality."""
    sm = report["summary"]
    who = report["model"] or report["target"]
    table = Table(title=f"red team of {who} ({report['suite']} suite, "
                        f"{report['attempts_per_unit']} attempts per probe)",
                  header_style="bold")
    for col in ("category", "rate", "95% CI", "broken/units", "per attempt", "unjudged"):
        table.add_column(col, justify="left" if col == "category" else "right", no_wrap=True)
    for c in CATEGORIES:
        e = sm["categories"].get(c)
        if e is None:
            continue
        label = {"over_refusal": "over-refusal", "bias": "bias divergence"}.get(c, c)
        table.add_row(label, _rate(e), _ci(e), f"{e['successes']}/{e['n']}",
                      "-" if e["attempt_rate"] is None else f"{e['attempt_rate']:.3f}",
                      str(e["unjudged_attempts"]),
                      style="red" if e["rate"] and e["rate"] > 0 else None)
    lines = []
    for key, label in (("asr", "all attacks"), ("seen_asr", "seen prompts"),
                       ("heldout_asr", "held-out prompts")):
        e = sm.get(key)
        if e and e["rate"] is not None:
            lines.append(Text(f"  attack success, {label}: {e['rate']:.3f} {_ci(e)} "
                              f"({e['successes']} of {e['n']})"))
    u = sm["unjudged"]
    if u["attempts"]:
        reasons = "; ".join(f"{k} ({v})" for k, v in u["reasons"].items())
        lines.append(Text(f"  {u['attempts']} of {u['of']} attempts could not be judged: "
                          f"{reasons}", style="yellow"))
    if report["load_problem_count"]:
        lines.append(Text(f"  {report['load_problem_count']} probe records skipped, e.g. "
                          f"{report['load_problems'][0]}", style="yellow"))
    if report["absent_sources"] and report["suite"] != "builtin":
        lines.append(Text(f"  absent data sets: {', '.join(report['absent_sources'])}",
                          style="dim"))
    for g in report["gates"]:
        value = "not measured" if g["value"] is None else f"{g['value']:.3f}"
        lines.append(Text(f"  gate {g['gate']}: {value} "
                          f"{'passed' if g['passed'] else 'FAILED'}",
                          style="green" if g["passed"] else "red"))
    d = report["detectors"]
    lines.append(Text("  detectors on the labelled set (precision/recall): " + ", ".join(
        f"{k} {v['precision']:.2f}/{v['recall']:.2f}" for k, v in d.items()), style="dim"))
    j = report.get("judge")
    if j:
        agree = j["agreement_with_detector"]
        lines.append(Text(f"  judge {j['model']} at {j['url']}: {j['judged']} of {j['asked']} "
                          f"answers judged ({j['failed']} failed), agreement with the detector "
                          f"{'-' if agree is None else format(agree, '.3f')}", style="dim"))
    fresh = report.get("detectors_by_part", {}).get("fresh")
    if fresh:
        lines.append(Text("  on its fresh part (never tuned on): " + ", ".join(
            f"{k} {v['precision']:.2f}/{v['recall']:.2f}" for k, v in fresh.items()),
            style="dim"))
    return Group(table, *lines)


def _messages_html(messages: list[dict[str, str]]) -> str:
    return "".join(f"<div class='m {html.escape(m['role'])}'><b>{html.escape(m['role'])}</b>"
                   f"<pre>{html.escape(m['content'])}</pre></div>" for m in messages)


def _parts_html(report: dict[str, Any]) -> str:
    parts = report.get("detectors_by_part") or {}
    if not parts:
        return ""
    rows = "".join(f"<tr><td>{html.escape(part)}</td><td>{html.escape(k)}</td><td>{v['n']}</td>"
                   f"<td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td></tr>"
                   for part, d in parts.items() for k, v in d.items())
    return ("<p>By the part of the labelled set: the detectors were tuned on <i>tuning</i>; "
            "<i>second</i> led to one round of fixes; <i>fresh</i> was scored once.</p>"
            f"<table><tr><th>part</th><th>detector</th><th>n</th><th>precision</th>"
            f"<th>recall</th></tr>{rows}</table>")


def render_html(report: dict[str, Any], per_category: int = 5) -> str:
    """A standalone page (no scripts, no external files): rates, gates, detector quality, and
    up to `per_category` findings of each category with the prompt and the answer."""
    sm = report["summary"]
    e = html.escape
    rows = []
    for c in CATEGORIES:
        x = sm["categories"].get(c)
        if x is None:
            continue
        rows.append(f"<tr><td>{e(c)}</td><td>{e(_WHAT[c])}</td><td>{_rate(x)}</td>"
                    f"<td>{_ci(x)}</td><td>{x['successes']}/{x['n']}</td>"
                    f"<td>{x['unjudged_attempts']}</td></tr>")
    gates = "".join(
        f"<li class='{'ok' if g['passed'] else 'bad'}'>{e(g['gate'])}: "
        f"{'not measured' if g['value'] is None else format(g['value'], '.3f')} "
        f"{'passed' if g['passed'] else 'FAILED'}</li>" for g in report["gates"])
    det = "".join(f"<tr><td>{e(k)}</td><td>{v['n']}</td><td>{v['precision']:.3f}</td>"
                  f"<td>{v['recall']:.3f}</td><td>{v['false_positive_rate']:.3f}</td>"
                  f"<td>{v['false_negative_rate']:.3f}</td></tr>"
                  for k, v in report["detectors"].items())
    sections = []
    for c in CATEGORIES:
        found = [f for f in report["findings"] if f["category"] == c]
        if not found:
            continue
        items = []
        for f in found[:per_category]:
            items.append(
                f"<div class='finding'><p><b>{e(f['variant'])}</b> · {e(f['verdict']['reason'])}"
                f" · source {e(f['source'])} · {e(f['split'])}</p>"
                f"{_messages_html(f['messages'])}<div class='m answer'><b>answer</b>"
                f"<pre>{e(f['text'] or '')}</pre></div></div>")
        sections.append(f"<h3>{e(c)}: {len(found)} successful attempts</h3>" + "".join(items))
    held = []
    for c in CATEGORIES:
        for x in report.get("safe_examples", {}).get(c, [])[:2]:
            held.append(f"<div class='held'><p><b>{e(c)}/{e(x['variant'])}</b> · "
                        f"{e(x['verdict']['reason'])}</p><div class='m user'><b>last turn</b>"
                        f"<pre>{e(x['messages'][-1]['content'])}</pre></div><div class='m'>"
                        f"<b>answer</b><pre>{e(x['text'] or '')}</pre></div></div>")
    unjudged = "".join(f"<li>{e(r['category'])}/{e(r['variant'])}: "
                       f"{e(r['verdict']['reason'])}</li>"
                       for r in report["unjudged_examples"])
    who = report["model"] or report["target"]
    gate_word = "passed" if report["gates_passed"] else "FAILED"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>red team of {e(who)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em}}
pre{{white-space:pre-wrap;margin:.2em 0}}.m{{margin:.3em 0;padding:.3em;background:#f6f6f6}}
.answer{{background:#fff0f0}}.held{{border-left:3px solid #393;padding-left:.6em}}
.finding{{border-left:3px solid #c33;padding-left:.6em;
margin:1em 0}}.ok{{color:#070}}.bad{{color:#b00}}</style></head><body>
<h1>Red team of {e(who)}</h1>
<p>Suite {e(report['suite'])}, {report['attempts_per_unit']} attempts per probe,
{report['seeds']['harmful']} harmful and {report['seeds']['benign']} benign seeds
(sources: {e(', '.join(f'{k} ({v})' for k, v in report['sources'].items()))}).
Gates <b>{gate_word}</b>.</p>
<h2>Rates</h2><p>A probe counts as broken when any of its attempts succeeded; intervals are
95% (bootstrap over probes; Wilson where all outcomes agree).</p>
<table><tr><th>category</th><th>attacks</th><th>rate</th><th>95% CI</th><th>broken</th>
<th>unjudged attempts</th></tr>{''.join(rows)}</table>
<p>All attacks: {_rate(sm.get('asr'))} {_ci(sm.get('asr') or {})}; held-out prompts:
{_rate(sm.get('heldout_asr'))} {_ci(sm.get('heldout_asr') or {})}.</p>
<h2>Gates</h2><ul>{gates}</ul>
<h2>Detectors on the labelled set</h2>
<table><tr><th>detector</th><th>n</th><th>precision</th><th>recall</th><th>FPR</th>
<th>FNR</th></tr>{det}</table>
{_parts_html(report)}
<h2>Findings</h2>{''.join(sections) or '<p>None.</p>'}
<h2>Attempts that held (examples)</h2>{''.join(held) or '<p>None.</p>'}
<h2>Attempts that could not be judged</h2><p>{sm['unjudged']['attempts']} of
{sm['unjudged']['of']}.</p><ul>{unjudged}</ul>
</body></html>
"""
