"""The curation report: stats.json checks, funnel numbers, terminal/Markdown output, PNG."""

import copy
import json
import re
import sys

import pytest
from rich.console import Console

from lmforge.curate.report import (
    funnel_rows,
    load_stats,
    render_report,
    report_markdown,
    save_funnel_png,
    validate_stats,
)
from lmforge.errors import LmforgeError


def _counts(d_in, c_in, d_out, c_out, reasons=None):
    c = {"documents_in": d_in, "characters_in": c_in, "documents_out": d_out,
         "characters_out": c_out}
    if reasons is not None:
        c["reasons"] = reasons
    return c


def _reason(count, *examples):
    return {"count": count, "examples": [{"id": i, "excerpt": e} for i, e in examples]}


@pytest.fixture
def stats():
    return {
        "sources": {"web": _counts(1000, 500_000, 600, 330_000),
                    "books": _counts(10, 90_000, 0, 0)},
        "steps": [
            {"name": "read", "by_source": {
                "web": _counts(1000, 500_000, 990, 499_000, {"read:invalid_json": {
                    "count": 10, "examples": [{"id": "web:a.jsonl:3", "excerpt": "{broken",
                                               "where": "a.jsonl:3"}]}}),
                "books": _counts(10, 90_000, 10, 90_000)}},
            {"name": "gopher_quality", "by_source": {
                "web": _counts(990, 499_000, 800, 420_000, {
                    "gopher_quality:too_few_words": _reason(
                        150, ("web:a.jsonl:7", "Buy now!\n  Cheap [bold]pills[/bold]"),
                        ("web:a.jsonl:9", "x"), ("web:a.jsonl:11", "y"),
                        ("web:a.jsonl:12", "fourth example not shown")),
                    "gopher_quality:symbol_ratio": _reason(40, ("web:b.jsonl:1", "### ###"))}),
                "books": _counts(10, 90_000, 0, 0, {
                    "gopher_quality:too_few_words": _reason(10, ("books:1", "short"))})}},
            {"name": "pii", "by_source": {"web": _counts(800, 420_000, 800, 419_000)},
             "replaced": {"email": 3, "phone": 1, "ip": 0, "credit_card": 0}},
            {"name": "near_dedup", "by_source": {"web": _counts(800, 419_000, 600, 330_000, {
                "near_dedup:duplicate": _reason(200, ("web:c.jsonl:2", "copy of c:1"))})}},
            {"name": "decontaminate", "by_source": {"web": _counts(600, 330_000, 600, 330_000)},
             "eval_items_found": {"hellaswag": [12, 40]}},
            {"name": "balance", "by_source": {"web": _counts(600, 330_000, 600, 330_000)},
             "mixture": {"by": "tokens", "sources": {"web": {
                 "size_before": 80_000, "size_after": 80_000, "share_before": 1.0,
                 "share_after": 1.0, "effective_repeat": 1.0}}}},
        ],
        "read_errors": {"count": 10, "examples": [
            {"file": "a.jsonl", "line": 3, "reason": "invalid JSON (Expecting ',' delimiter)"},
            {"file": "b.bin", "line": None, "reason": "binary file"}]},
        "warnings": ["source 'books': no documents survived (removed by gopher_quality)"],
        "settings": {"workers": 2}, "seconds": 12.3, "workers": 2,
    }


def test_funnel_rows_numbers(stats):
    rows = funnel_rows(stats)
    total = [r for r in rows if r["source"] is None]
    assert [r["step"] for r in total] == ["read", "gopher_quality", "pii", "near_dedup",
                                          "decontaminate", "balance"]
    gq = total[1]
    assert (gq["documents_in"], gq["documents_out"], gq["documents_removed"]) == (1000, 800, 200)
    assert gq["documents_removed_pct"] == pytest.approx(20.0)
    assert gq["characters_removed"] == 589_000 - 420_000
    assert gq["characters_removed_pct"] == pytest.approx(100 * 169_000 / 589_000)
    # Reasons merge across sources, most frequent first.
    assert gq["top_reasons"] == [("gopher_quality:too_few_words", 160),
                                 ("gopher_quality:symbol_ratio", 40)]
    books = next(r for r in rows if r["step"] == "gopher_quality" and r["source"] == "books")
    assert books["documents_removed_pct"] == 100.0
    assert [r["source"] for r in rows if r["step"] == "read"] == [None, "web", "books"]
    pii = total[2]
    assert pii["documents_removed"] == 0 and pii["characters_removed"] == 1000
    assert funnel_rows({"sources": {}, "steps": [{"name": "x", "by_source": {
        "s": _counts(0, 0, 0, 0)}}]})[0]["documents_removed_pct"] == 0.0


def test_render_report_shows_reasons_examples_and_extras(stats):
    console = Console(record=True, width=200)
    render_report(stats, console, examples=3)
    out = console.export_text()
    assert "gopher_quality:too_few_words" in out and "150" in out
    # Examples: id and excerpt on one line, markup shown literally, at most `examples`.
    assert "web:a.jsonl:7: Buy now! Cheap [bold]pills[/bold]" in out
    assert "web:a.jsonl:11: y" in out and "fourth example not shown" not in out
    assert re.search(r"read\s+│\s+1,010 → 1,000\s+│\s+10\s+│\s+1\.0%", out)
    assert re.search(r"email\s+│\s+3", out)
    assert re.search(r"hellaswag\s+│\s+2\s+│\s+12, 40", out)
    assert "Mixture (by tokens)" in out and "Read errors (10)" in out
    assert "b.bin" in out and "no documents survived" in out
    assert "Funnel: books" in out  # per-source funnels when there are several sources
    fewer = Console(record=True, width=200)
    render_report(stats, fewer, examples=1)
    assert "web:a.jsonl:9" not in fewer.export_text()


def test_render_report_for_one_source(stats):
    console = Console(record=True, width=200)
    render_report(stats, console, source="books")
    out = console.export_text()
    assert "Funnel: books" in out and "books:1: short" in out
    assert "web:a.jsonl:7" not in out
    with pytest.raises(LmforgeError, match="no source 'news'.*books"):
        render_report(stats, Console(record=True), source="news")


def test_report_markdown(stats):
    md = report_markdown(stats, examples=2)
    assert md.startswith("# Curation report")
    assert "| gopher_quality | 1,000 → 800 | 200 | 20.0% |" in md
    assert "web:a.jsonl:7: Buy now! Cheap [bold]pills[/bold]<br>web:a.jsonl:9: x |" in md
    assert "web:a.jsonl:11" not in md
    assert "- source 'books': no documents survived" in md


def test_funnel_png_is_written_and_deterministic(stats, tmp_path):
    first = save_funnel_png(stats, tmp_path / "funnel.png", title="test run")
    data = first.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert b"Software" not in data and b"tIME" not in data
    save_funnel_png(stats, tmp_path / "again.png", title="test run")
    assert (tmp_path / "again.png").read_bytes() == data
    changed = copy.deepcopy(stats)
    changed["steps"][3]["by_source"]["web"]["documents_out"] = 500
    save_funnel_png(changed, tmp_path / "changed.png", title="test run")
    assert (tmp_path / "changed.png").read_bytes() != data


def test_funnel_png_needs_matplotlib(stats, tmp_path, monkeypatch):
    for module in ("matplotlib", "matplotlib.style", "matplotlib.figure",
                   "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(LmforgeError, match="pip install matplotlib"):
        save_funnel_png(stats, tmp_path / "f.png")


@pytest.mark.parametrize("breakage, message", [
    (lambda s: s.pop("steps"), "stats.json: missing key 'steps'"),
    (lambda s: s["steps"][2].pop("by_source"), "steps[2] ('pii'): missing key 'by_source'"),
    (lambda s: s["steps"][1]["by_source"]["web"].pop("documents_out"),
     "steps[1] ('gopher_quality').by_source['web']: missing key 'documents_out'"),
    (lambda s: s["sources"]["web"].update(characters_in="many"),
     "sources['web'].characters_in: expected int, got str"),
    (lambda s: s["steps"][1]["by_source"]["web"]["reasons"]["gopher_quality:symbol_ratio"]
     .pop("count"), "reasons['gopher_quality:symbol_ratio']: missing key 'count'"),
    (lambda s: s["steps"][5]["mixture"]["sources"]["web"].pop("effective_repeat"),
     "mixture.sources['web']: missing key 'effective_repeat'"),
    (lambda s: s.update(warnings="oops"), "warnings: expected list, got str"),
])
def test_validate_stats_names_the_problem(stats, breakage, message):
    validate_stats(stats, "stats.json")  # the good one passes
    breakage(stats)
    with pytest.raises(LmforgeError, match=re.escape(message)):
        validate_stats(stats, "stats.json")


def test_load_stats(stats, tmp_path):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats), encoding="utf-8")
    assert load_stats(path) == stats
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(LmforgeError, match="not readable JSON"):
        load_stats(path)
    with pytest.raises(LmforgeError, match="no such file"):
        load_stats(tmp_path / "missing.json")
