"""Documents on disk and the embedded default corpus (Python's own documentation)."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from lmforge.data import Document, load_documents_jsonl, read_documents, write_documents_jsonl
from lmforge.data.corpora import build_pydocs_corpus, corpus_stats
from lmforge.errors import LmforgeError


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    return build_pydocs_corpus()


# --- the embedded corpus ------------------------------------------------------------------

def test_corpus_is_deterministic_and_sorted(corpus):
    again = build_pydocs_corpus()
    assert [d.to_dict() for d in again] == [d.to_dict() for d in corpus]
    ids = [d.id for d in corpus]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_corpus_has_textwrap_dedent(corpus):
    doc = next(d for d in corpus if d.id == "stdlib-docstrings:textwrap.dedent")
    assert doc.text.startswith("textwrap.dedent(text)\n\nRemove any common leading whitespace")
    assert doc.source == "stdlib-docstrings"
    assert doc.meta == {
        "module": "textwrap", "object": "textwrap.dedent", "kind": "function",
        "summary": "Remove any common leading whitespace from every line in `text`.",
    }


def test_corpus_covers_topics_classes_methods_and_c_modules(corpus):
    by_id = {d.id: d for d in corpus}
    topic = by_id["pydoc-topics:if"]
    assert topic.meta == {"topic": "if"} and "if" in topic.text
    assert by_id["stdlib-docstrings:textwrap.TextWrapper"].meta["kind"] == "class"
    assert by_id["stdlib-docstrings:textwrap.TextWrapper.wrap"].meta["kind"] == "method"
    assert by_id["stdlib-docstrings:textwrap"].meta["kind"] == "module"
    sqrt = by_id["stdlib-docstrings:math.sqrt"]  # a C extension or built-in module
    assert sqrt.meta["summary"] == "Return the square root of x."
    assert "stdlib-docstrings:builtins.str.split" in by_id


def test_corpus_documents_are_well_formed(corpus):
    assert len(corpus) > 1000
    for doc in corpus:
        assert isinstance(doc.id, str) and doc.id
        assert isinstance(doc.text, str) and doc.text.strip()
        assert doc.source in ("pydoc-topics", "stdlib-docstrings")
        assert isinstance(doc.meta, dict)
        if doc.source == "stdlib-docstrings":
            assert set(doc.meta) == {"module", "object", "kind", "summary"}
            assert doc.meta["kind"] in ("module", "class", "function", "method")
            assert doc.text.startswith(doc.meta["object"])


def test_corpus_skips_tests_and_gui_tools(corpus):
    modules = {d.meta.get("module", "") for d in corpus}
    banned = ("test", "idlelib", "turtledemo", "lib2to3.tests")
    assert not [m for m in modules if m.split(".")[0] in banned or ".tests" in m]


def test_corpus_stats(corpus):
    stats = corpus_stats(corpus)
    assert stats["documents"] == len(corpus)
    assert stats["characters"] == sum(len(d.text) for d in corpus)
    assert set(stats["by_source"]) == {"pydoc-topics", "stdlib-docstrings"}
    assert sum(s["documents"] for s in stats["by_source"].values()) == len(corpus)


# --- reading files ------------------------------------------------------------------------

def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_read_txt_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph.\n\nSecond paragraph.\n", encoding="utf-8")
    docs = list(read_documents([tmp_path / "a.txt"]))
    assert [d.text for d in docs] == ["First paragraph.\n\nSecond paragraph."]
    assert docs[0].source == "a" and docs[0].id == "a:a.txt:0"


def test_read_txt_splits_on_endoftext(tmp_path):
    text = "Once upon a time.\n<|endoftext|>\nThe end.\n\nReally.<|endoftext|>\n<|endoftext|>\nLast"
    (tmp_path / "stories.txt").write_text(text, encoding="utf-8")
    docs = list(read_documents(tmp_path / "stories.txt", source="tiny"))
    assert [d.text for d in docs] == ["Once upon a time.", "The end.\n\nReally.", "Last"]
    assert [d.id for d in docs] == ["tiny:stories.txt:0", "tiny:stories.txt:1",
                                    "tiny:stories.txt:2"]


def test_read_jsonl_and_gzip(tmp_path):
    recs = [{"text": "héllo", "url": "u1"}, {"text": "world", "id": "w", "meta": {"lang": "en"}}]
    plain = _jsonl(tmp_path / "d.jsonl", recs)
    with gzip.open(tmp_path / "d2.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in recs) + "\n\n")
    for path in (plain, tmp_path / "d2.jsonl.gz"):
        docs = list(read_documents([path]))
        assert [d.text for d in docs] == ["héllo", "world"]
        assert docs[0].meta == {"url": "u1"} and docs[1].meta == {"lang": "en"}
        assert docs[1].id == "w"
        assert docs[0].source == path.name.split(".")[0]


def test_read_jsonl_custom_text_field(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"story": "a tale", "text": 3}])
    assert [d.text for d in read_documents([path], text_field="story")] == ["a tale"]


def test_read_folder_recursive_sorted_and_glob(tmp_path):
    root = tmp_path / "data"
    (root / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "z.md").write_text("# Z", encoding="utf-8")
    (root / "b" / "a.txt").write_text("A", encoding="utf-8")
    (root / ".hidden" / "x.txt").write_text("hidden", encoding="utf-8")
    (root / "notes.csv").write_text("skipped", encoding="utf-8")
    _jsonl(root / "b" / "c.jsonl", [{"text": "C"}])
    docs = list(read_documents([root]))
    assert [d.text for d in docs] == ["A", "C", "# Z"]
    assert {d.source for d in docs} == {"data"}
    assert [d.id for d in docs] == [d.id for d in read_documents([root])]
    globbed = list(read_documents([str(root / "**" / "*.txt")]))
    assert [(d.id, d.text) for d in globbed] == [("data:b/a.txt:0", "A")]


@pytest.mark.parametrize("content, expected", [
    ('{"text": "ok"}\n{"text": "broken"\n', "d.jsonl:2: invalid JSON"),
    ('{"text": "ok"}\n\n[1, 2]\n', "d.jsonl:3: expected a JSON object"),
    ('{"body": "x", "title": "t"}\n', "d.jsonl:1: no field 'text' (fields: body, title)"),
    ('{"text": ["x"]}\n', "d.jsonl:1: field 'text' is list"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, content, expected):
    (tmp_path / "d.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(LmforgeError, match=re.escape(expected)):
        list(read_documents([tmp_path / "d.jsonl"]))


def test_read_user_mistakes(tmp_path):
    with pytest.raises(LmforgeError, match="does not exist"):
        list(read_documents([tmp_path / "missing.txt"]))
    (tmp_path / "x.csv").write_bytes(b"PAR1")
    with pytest.raises(LmforgeError, match="unsupported file type"):
        list(read_documents([tmp_path / "x.csv"]))
    with pytest.raises(LmforgeError, match="no .txt"):
        list(read_documents([str(tmp_path / "*.nothing")]))
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    with pytest.raises(LmforgeError, match="no documents"):
        list(read_documents([tmp_path / "empty.txt"]))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LmforgeError, match="not UTF-8"):
        list(read_documents([tmp_path / "latin1.txt"]))
    with pytest.raises(LmforgeError, match="no input"):
        list(read_documents([]))


# --- writing and loading ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz"])
def test_write_and_load_round_trip(tmp_path, name, corpus):
    docs = corpus[:50] + [Document("x", "emoji 😀\nand\u2028separator", "s", {"k": [1, 2]})]
    path = tmp_path / "out" / name
    assert write_documents_jsonl(docs, path) == len(docs)
    assert [d.to_dict() for d in load_documents_jsonl(path)] == [d.to_dict() for d in docs]
    first = path.read_bytes()
    write_documents_jsonl(docs, path)  # same documents, same bytes (gzip without a timestamp)
    assert path.read_bytes() == first
    assert sorted(p.name for p in path.parent.iterdir()) == [name]  # no temporary files left
    assert [d.text for d in read_documents([path])] == [d.text for d in docs]


def test_load_rejects_non_document_records(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": "t", "source": "s", "meta": {}},
                                            {"id": "b", "text": "t"}])
    with pytest.raises(LmforgeError, match="bad.jsonl:2: not a document record"):
        list(load_documents_jsonl(path))
    with pytest.raises(LmforgeError, match="no such file"):
        list(load_documents_jsonl(tmp_path / "nope.jsonl"))


def test_corpus_does_not_depend_on_hooks_the_program_installed(monkeypatch):
    import sys

    from lmforge.data.corpora.pydocs import build_pydocs_corpus

    monkeypatch.setattr(sys, "excepthook", lambda *a: None)  # as CLI frameworks do
    ids = {d.id for d in build_pydocs_corpus()}
    assert "stdlib-docstrings:sys.excepthook" in ids
