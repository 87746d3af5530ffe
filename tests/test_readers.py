"""Readers behind `read_documents`: every format, split modes, tolerant and strict reading,
optional dependencies, Hugging Face datasets from a local folder (never the network)."""

import gzip
import json
import re
import sys
from pathlib import Path

import pytest

from lmforge.data.hub import parse_spec, read_hub_dataset
from lmforge.data.read import read_documents
from lmforge.data.readers import ReadErrors
from lmforge.errors import LmforgeError


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _zst(path, data: bytes):
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    return path


def _parquet(path, columns, row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


# --- formats ----------------------------------------------------------------------------------

STORY = "Title\n\nFirst block\nstill first.\n\n\n  \nSecond block.<|endoftext|>Third\n"


@pytest.mark.parametrize("split, texts, lines", [
    ("file", ["Title\n\nFirst block\nstill first.\n\n\n  \nSecond block.<|endoftext|>Third"],
     [1]),
    ("blank_line", ["Title", "First block\nstill first.", "Second block.<|endoftext|>Third"],
     [1, 3, 8]),
    ("eot", ["Title\n\nFirst block\nstill first.\n\n\n  \nSecond block.", "Third"], [1, 8]),
    ("auto", ["Title\n\nFirst block\nstill first.\n\n\n  \nSecond block.", "Third"], [1, 8]),
])
def test_text_split_modes(tmp_path, split, texts, lines):
    (tmp_path / "s.txt").write_text(STORY, encoding="utf-8")
    docs = list(read_documents(tmp_path / "s.txt", split=split))
    assert [d.text for d in docs] == texts
    assert [d.meta["line"] for d in docs] == lines
    assert [d.id for d in docs] == [f"s:s.txt:{i}" for i in range(len(texts))]
    assert {d.source for d in docs} == {"s"}


def test_line_split_keeps_paragraphs_and_cuts_at_single_newlines(tmp_path):
    # TinyStories' train text: stories joined by one newline, paragraphs by a blank line.
    text = ("Lily found a needle.\n\nShe gave it to Mom.\nBeep was a car.\n\n\n"
            "Beep went fast.\n\nThe end.\nA one-line story.\n\n")
    (tmp_path / "s.txt").write_text(text, encoding="utf-8")
    docs = list(read_documents(tmp_path / "s.txt", split="line"))
    assert [d.text for d in docs] == ["Lily found a needle.\n\nShe gave it to Mom.",
                                      "Beep was a car.\n\n\nBeep went fast.\n\nThe end.",
                                      "A one-line story."]
    assert [d.meta["line"] for d in docs] == [1, 4, 10]
    # Without blank lines, every line is a document.
    (tmp_path / "l.txt").write_text("one\ntwo\nthree\n", encoding="utf-8")
    assert [d.text for d in read_documents(tmp_path / "l.txt", split="line")] == \
        ["one", "two", "three"]


def test_unknown_split_is_refused(tmp_path):
    (tmp_path / "s.txt").write_text("x", encoding="utf-8")
    with pytest.raises(LmforgeError, match="unknown split 'para'"):
        list(read_documents(tmp_path / "s.txt", split="para"))


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.jsonl.zst"])
def test_jsonl_plain_gzip_zstd(tmp_path, name):
    recs = [{"text": "héllo", "url": "u1"}, {"text": "world", "id": 7}, {"text": "  "},
            {"text": "third", "source": "wiki"}]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode()
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif name.endswith(".zst"):
        _zst(path, data)
    else:
        path.write_bytes(data)
    docs = list(read_documents(path))
    assert [d.text for d in docs] == ["héllo", "world", "third"]
    assert [d.id for d in docs] == ["d:" + name + ":1", "7", "wiki:" + name + ":4"]
    assert [d.source for d in docs] == ["d", "d", "wiki"]
    assert docs[0].meta == {"url": "u1"}
    # A caller's source name wins over the record's and the file's.
    assert {d.source for d in read_documents(path, source="web")} == {"web"}


def test_zstd_text_multi_frame_and_blocks(tmp_path):
    import zstandard

    c = zstandard.ZstdCompressor()
    big = ("word " * 50_000).encode()  # spans several read blocks
    path = tmp_path / "t.txt.zst"
    path.write_bytes(c.compress(b"one<|endoftext|>") + c.compress(big + b"\n<|endoftext|>two"))
    docs = list(read_documents(path))
    assert [len(d.text) for d in docs] == [3, len(big) - 1, 3]
    assert docs[0].id == "t:t.txt.zst:0" and docs[2].text == "two"


def test_parquet_rows_batches_and_meta(tmp_path):
    n = 2500  # several row groups and read batches
    path = _parquet(tmp_path / "p.parquet", {
        "content": [f"doc {i}" for i in range(n)], "score": [i / 10 for i in range(n)],
        "tags": [["a"]] * n}, row_group_size=700)
    docs = list(read_documents(path, text_field="content", source="pq"))
    assert len(docs) == n and docs[1234].text == "doc 1234"
    assert docs[0].id == "pq:p.parquet:1" and docs[0].source == "pq"
    assert docs[5].meta == {"score": 0.5}  # scalar columns only: the list column is left out
    with pytest.raises(LmforgeError, match=re.escape(
            "p.parquet: no column 'text' (columns: content, score, tags)")):
        list(read_documents(path))


def test_folder_and_glob_include_new_formats(tmp_path):
    root = tmp_path / "mix"
    (root / "sub").mkdir(parents=True)
    _parquet(root / "a.parquet", {"text": ["from parquet"]})
    _zst(root / "sub" / "b.jsonl.zst", b'{"text": "from zstd"}\n')
    (root / "c.txt.gz").write_bytes(gzip.compress(b"from gzip text"))
    (root / "skip.csv").write_text("x", encoding="utf-8")
    docs = list(read_documents(root))
    assert [(d.id, d.text) for d in docs] == [
        ("mix:a.parquet:1", "from parquet"), ("mix:c.txt.gz:0", "from gzip text"),
        ("mix:sub/b.jsonl.zst:1", "from zstd")]
    globbed = list(read_documents(str(root / "**" / "*.zst")))
    assert [d.id for d in globbed] == ["mix:sub/b.jsonl.zst:1"]


# --- tolerant and strict reading --------------------------------------------------------------

def _bad_inputs(folder):
    folder.mkdir()
    _jsonl(folder / "a.jsonl", [{"text": "good 1"}, {"text": "good 2"}])
    with open(folder / "a.jsonl", "a", encoding="utf-8") as f:
        f.write('{"text": "broken"\n')                  # line 3: invalid JSON
        f.write('{"text": "good 4"}\n')
        f.write('{"body": "wrong field"}\n')            # line 5: no field "text"
        f.write('{"text": "bin\\u0000ary"}\n')          # line 6: NUL in the text
        f.write('[1, 2]\n')                             # line 7: not an object
        f.write('{"text": "good 8"}\n')
    (folder / "b.txt").write_bytes(b"\x00\x01\x02PNG-ish" * 100)       # a binary file
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n' * 50)[:30])
    (folder / "d.txt").write_text("", encoding="utf-8")                  # an empty file
    (folder / "e.txt").write_bytes(b"ok line\ncaf\xe9\n\nfine block\n")  # latin-1 on line 2
    return folder


def test_tolerant_reading_counts_problems_with_file_and_line(tmp_path):
    folder = _bad_inputs(tmp_path / "in")
    errors = ReadErrors()
    docs = list(read_documents(folder, split="blank_line", errors=errors))
    assert [d.text for d in docs] == ["good 1", "good 2", "good 4", "good 8", "fine block"]
    assert docs[-1].id == "in:e.txt:1"  # the dropped block keeps its number
    got = [(r["file"].rsplit("/", 1)[-1], r["line"], r["kind"]) for r in errors.records]
    assert got == [
        ("a.jsonl", 3, "invalid_json"), ("a.jsonl", 5, "missing_field"),
        ("a.jsonl", 6, "binary"), ("a.jsonl", 7, "not_object"),
        ("b.txt", None, "binary"), ("c.jsonl.gz", None, "corrupt"),
        ("d.txt", None, "no_documents"), ("e.txt", 2, "not_utf8"),
    ]
    assert errors.count == 8 and errors.by_source == {"in": {
        "invalid_json": 1, "missing_field": 1, "binary": 2, "not_object": 1, "corrupt": 1,
        "no_documents": 1, "not_utf8": 1}}
    first = errors.records[0]
    assert first["reason"].startswith("invalid JSON") and first["excerpt"] == '{"text": "broken"'
    assert errors.records[6]["reason"] == "no documents"
    assert errors.to_dict(examples=2) == {"count": 8, "examples": errors.records[:2]}


def test_error_examples_are_capped_but_counted(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("not json\n" * 30 + '{"text": "ok"}\n', encoding="utf-8")
    errors = ReadErrors(max_examples=5)
    assert [d.text for d in read_documents(path, errors=errors)] == ["ok"]
    assert errors.count == 30 and len(errors.records) == 5 and errors.records[4]["line"] == 5


@pytest.mark.parametrize("name, content, expected", [
    ("a.jsonl", b'{"text": "a"}\n{"text": "b"}\n{oops\n', "a.jsonl:3: invalid JSON"),
    ("a.jsonl", b'{"text": "a"}\n\n\n\n{"body": "b"}\n',
     "a.jsonl:5: no field 'text' (fields: body)"),
    ("b.txt", b"\x00\x01binary", "b.txt: binary file (NUL byte"),
    ("e.txt", b"fine\ncaf\xe9\n", "e.txt:2: not UTF-8"),
    ("c.jsonl.gz", gzip.compress(b'{"text": "x"}\n' * 50)[:30], "c.jsonl.gz: corrupt or truncated"),
    ("t.jsonl.zst", b"not zstd at all", "t.jsonl.zst: corrupt zstd data"),
    ("d.txt", b"  \n", "no documents with text"),
])
def test_strict_reading_raises_with_file_and_line(tmp_path, name, content, expected):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(LmforgeError, match=re.escape(expected)):
        list(read_documents(tmp_path / name))


def test_truncated_zstd_is_an_error(tmp_path):
    import zstandard

    data = zstandard.ZstdCompressor(write_checksum=True).compress(b'{"text": "x"}\n' * 5000)
    (tmp_path / "t.jsonl.zst").write_bytes(data[:-2])
    with pytest.raises(LmforgeError, match="truncated zstd"):
        list(read_documents(tmp_path / "t.jsonl.zst"))


def test_empty_glob_and_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmforgeError, match="holds no"):
        list(read_documents(tmp_path / "empty"))
    errors = ReadErrors()
    assert list(read_documents([str(tmp_path / "*.jsonl")], errors=errors)) == []
    assert errors.records[0]["kind"] == "no_documents" and errors.records[0]["line"] is None
    with pytest.raises(LmforgeError, match="does not exist"):  # a typo stops even tolerant runs
        list(read_documents(tmp_path / "missing.txt", errors=ReadErrors()))


def test_unreadable_file_is_recorded(tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "locked.jsonl", [{"text": "x"}])
    real_open = open

    def deny(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    errors = ReadErrors()
    assert list(read_documents(path, errors=errors)) == []
    assert errors.records[0]["kind"] == "unreadable" and "Permission denied" in \
        errors.records[0]["reason"]
    with pytest.raises(LmforgeError, match="locked.jsonl: cannot read"):
        list(read_documents(path))


# --- optional packages ------------------------------------------------------------------------

@pytest.mark.parametrize("name, modules, package", [
    ("d.jsonl.zst", ["zstandard"], "zstandard"),
    ("d.parquet", ["pyarrow", "pyarrow.parquet"], "pyarrow"),
])
def test_missing_optional_package_says_what_to_install(tmp_path, monkeypatch, name, modules,
                                                       package):
    (tmp_path / name).write_bytes(b"whatever")
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    for errors in (None, ReadErrors()):  # a missing package is never just a bad file
        with pytest.raises(LmforgeError, match=f"pip install {package}"):
            list(read_documents(tmp_path / name, errors=errors))


def test_missing_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(LmforgeError, match="pip install datasets"):
        list(read_documents("hf:some/dataset:train"))


# --- Hugging Face datasets (local only) -------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    return datasets


def test_parse_spec():
    assert parse_spec("hf:roneneldan/TinyStories:train") == ("roneneldan/TinyStories", None,
                                                             "train", 0, None)
    assert parse_spec("hf:/data/set") == ("/data/set", None, "train", 0, None)
    assert parse_spec("hf:wikitext:wikitext-2-raw-v1:test") == ("wikitext", "wikitext-2-raw-v1",
                                                                "test", 0, None)
    assert parse_spec("hf:roneneldan/TinyStories:validation[464:696]") == (
        "roneneldan/TinyStories", None, "validation", 464, 696)
    assert parse_spec("hf:/data/set[:10]") == ("/data/set", None, "train", 0, 10)
    assert parse_spec("hf:C:\\data\\set:test[5:]") == ("C:\\data\\set", None, "test", 5, None)
    with pytest.raises(LmforgeError, match="not a dataset reference"):
        parse_spec("hf::train")
    with pytest.raises(LmforgeError, match=re.escape("rows must be [START:STOP]")):
        parse_spec("hf:x:train[-5:]")
    with pytest.raises(LmforgeError, match=re.escape("rows must be [START:STOP]")):
        list(read_documents("hf:x:train[1:2:3]"))  # checked before anything is read


def test_hf_row_range_of_a_local_folder(tmp_path, offline):
    folder = tmp_path / "tiny"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"text": f"story {i}"} for i in range(10)])
    docs = list(read_documents(f"hf:{folder}:train[3:6]"))
    # Ids keep the row's index in the split, so a range's ids match the whole split's.
    assert [(d.id, d.text) for d in docs] == [
        ("tiny:train:3", "story 3"), ("tiny:train:4", "story 4"), ("tiny:train:5", "story 5")]
    assert [d.text for d in read_documents(f"hf:{folder}:train[8:]")] == ["story 8", "story 9"]
    assert len(list(read_documents(f"hf:{folder}[:4]"))) == 4


def test_data_modules_import_no_circle():
    """documents <- files, hub <- read: the reading modules import downwards only."""
    import ast

    import lmforge.data

    root = Path(lmforge.data.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[path.stem] = {
            node.module.rsplit(".", 1)[1] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            and node.module.startswith("lmforge.data.")}
    assert "hub" not in graph["documents"] and "read" not in graph["documents"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m}))
                   for m in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, set())] == []


def test_hf_local_folder_of_jsonl(tmp_path, offline):
    folder = tmp_path / "tiny"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"text": "one", "n": 1}, {"text": "two", "n": 2, "id": "x"},
                                    {"text": "", "n": 3}, {"text": "four", "n": 4}])
    docs = list(read_documents(f"hf:{folder}:train"))
    assert [(d.id, d.text, d.source) for d in docs] == [
        ("tiny:train:0", "one", "tiny"), ("x", "two", "tiny"), ("tiny:train:3", "four", "tiny")]
    assert docs[0].meta == {"n": 1}
    with pytest.raises(LmforgeError, match="cannot load split 'test'"):
        list(read_hub_dataset(str(folder), split="test"))


def test_hf_saved_dataset_and_bad_rows(tmp_path, offline):
    ds = offline.Dataset.from_dict({"story": ["a tale", None, "another"], "lang": ["en"] * 3})
    offline.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
    errors = ReadErrors()
    docs = list(read_documents(f"hf:{tmp_path / 'saved'}:validation", text_field="story",
                               source="stories", errors=errors))
    assert [(d.id, d.text, d.meta) for d in docs] == [
        ("stories:validation:0", "a tale", {"lang": "en"}),
        ("stories:validation:2", "another", {"lang": "en"})]
    assert [(r["line"], r["kind"]) for r in errors.records] == [(1, "not_string")]
    with pytest.raises(LmforgeError, match=re.escape("validation:1: field 'story' is NoneType")):
        list(read_hub_dataset(str(tmp_path / "saved"), "validation", "story"))
    with pytest.raises(LmforgeError, match="no column 'text'"):
        list(read_hub_dataset(str(tmp_path / "saved"), "validation"))
    with pytest.raises(LmforgeError, match="no split 'train'"):
        list(read_hub_dataset(str(tmp_path / "saved")))
