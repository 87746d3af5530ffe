"""Basic cleaning: normalization, length bounds, exact dedup, statistics, and the stage."""

from __future__ import annotations

import json

import pytest

from lmforge.data.clean import clean_documents, normalize_text
from lmforge.data.documents import Document, load_documents_jsonl, write_documents_jsonl
from lmforge.data.stage import DOCUMENTS_FILE, clean_stage
from lmforge.errors import LmforgeError
from lmforge.registry import Workspace

LONG = "The quick brown fox jumps over the lazy dog, again and again. " * 2


def doc(i: int, text: str) -> Document:
    return Document(f"d{i}", text, "test", {"n": i})


def test_normalize_nfc_whitespace_and_blank_lines():
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # NFD -> NFC
    assert normalize_text("a  \t\nb \r\nc\rd") == "a\nb\nc\nd"
    assert normalize_text("a\n\n\n\n\n\nb") == "a\n\n\nb"  # at most two blank lines
    assert normalize_text("a\n\nb\n\n\nc") == "a\n\nb\n\n\nc"  # one or two are kept
    assert normalize_text("\n\n  \n    indented\n\n") == "    indented"


def test_dedup_keeps_the_first_in_input_order():
    docs = [doc(0, LONG), doc(1, LONG + " different"), doc(2, LONG + "   \n"),
            doc(3, LONG.replace("fox", "fox\u0301")), doc(4, LONG.replace("fox", "f\u00f2x")),
            doc(5, LONG.replace("fox", "fo\u0300x"))]
    kept, stats = clean_documents(docs, min_chars=10)
    # d2 is d0 with trailing whitespace; d5 is the NFD spelling of d4
    assert [d.id for d in kept] == ["d0", "d1", "d3", "d4"]
    assert stats["removed"]["duplicate"] == 2
    assert kept[0].meta == {"n": 0} and kept[0].source == "test"


def test_length_bounds_are_inclusive_and_measured_after_normalizing():
    docs = [doc(0, "x" * 9), doc(1, "y" * 10), doc(2, "z" * 20), doc(3, "w" * 21),
            doc(4, "v" * 9 + " " * 50)]
    kept, stats = clean_documents(docs, min_chars=10, max_chars=20)
    assert [d.id for d in kept] == ["d1", "d2"]
    assert stats["removed"] == {"too_short": 2, "too_long": 1, "duplicate": 0}


def test_stats_add_up():
    docs = [doc(i, (LONG * (i % 4)) + f" {i % 5}") for i in range(40)] + [doc(99, "tiny")]
    kept, stats = clean_documents(docs, min_chars=64, max_chars=300)
    assert stats["input"] == len(docs)
    assert stats["kept"] == len(kept)
    assert stats["input"] == stats["kept"] + sum(stats["removed"].values())
    assert stats["characters_in"] == sum(len(d.text) for d in docs)
    assert stats["characters_out"] == sum(len(d.text) for d in kept)
    assert all(v > 0 for v in stats["removed"].values())


def test_deterministic():
    docs = [doc(i, f"{LONG} {i % 7}\n\n\n\n\ntail  ") for i in range(30)]
    first = clean_documents(docs)
    second = clean_documents(list(docs))
    assert [d.to_dict() for d in first[0]] == [d.to_dict() for d in second[0]]
    assert first[1] == second[1]


def test_bad_bounds_are_user_errors():
    with pytest.raises(LmforgeError, match="larger than max_chars"):
        clean_documents([], min_chars=10, max_chars=5)
    with pytest.raises(LmforgeError, match="min_chars"):
        clean_documents([], min_chars=-1)


def _dataset(ws: Workspace, docs: list[Document]) -> str:
    with ws.staging() as d:
        write_documents_jsonl(docs, d / DOCUMENTS_FILE)
        return ws.register(d, kind="dataset", stage="corpus").id


def test_clean_stage_registers_a_child_dataset(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    parent = _dataset(ws, [doc(0, LONG), doc(1, LONG), doc(2, "short"), doc(3, LONG + "!")])
    art = clean_stage(ws, parent)
    assert art.kind == "dataset" and art.stage == "clean"
    assert art.parents == {"data": parent}
    assert art.settings == {"min_chars": 64, "max_chars": 100_000}
    stats = json.loads(art.file("stats.json").read_text())
    assert stats["kept"] == 2 and stats["removed"]["duplicate"] == 1
    assert art.metrics["documents"] == 2
    assert [d.id for d in load_documents_jsonl(art.file(DOCUMENTS_FILE))] == ["d0", "d3"]
    assert clean_stage(ws, parent).id == art.id  # same input and settings, same artifact


def test_clean_stage_refuses_to_remove_everything(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    parent = _dataset(ws, [doc(0, "short"), doc(1, "also short")])
    with pytest.raises(LmforgeError, match="removed every document"):
        clean_stage(ws, parent)
