"""Token shards: exact round trips, a split fixed by (seed, id), windows across shards, errors,
and the tokenize stage's lineage."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.documents import Document, write_documents_jsonl
from lmforge.data.read import read_documents
from lmforge.data.shards import (
    INDEX_FILE,
    TokenShards,
    bits_per_byte,
    split_key,
    token_dtype,
    tokenize_to_shards,
)
from lmforge.data.stage import DOCUMENTS_FILE, tokenize_stage
from lmforge.errors import LmforgeError
from lmforge.registry import Workspace
from lmforge.tokenizer import BOS_ID, Tokenizer, train_tokenizer

WORDS = ("the cat sat on a mat while naïve robots compute déjà vu 你好 😀 "
         "def f(x): return x + 1 <|bos|> literal").split()


def make_docs(n: int, seed: int = 0) -> list[Document]:
    """Documents of fixed words (some multi-byte, one spelling a special token) and random
    syllable words, so a BPE has plenty to merge."""
    rng = random.Random(seed)

    def word() -> str:
        if rng.random() < 0.5:
            return rng.choice(WORDS)
        return "".join(rng.choice("bdklmnprst") + rng.choice("aeiou") for _ in range(3))

    docs = []
    for i in range(n):
        lines = [" ".join(word() for _ in range(rng.randint(1, 12)))
                 for _ in range(rng.randint(1, 4))]
        docs.append(Document(f"doc-{i}", "\n".join(lines), "gen", {}))
    return docs


@pytest.fixture(scope="module")
def tok_file(tmp_path_factory) -> Path:
    tok = train_tokenizer([d.text for d in make_docs(400, seed=1)], 400, show_progress=False)
    return tok.save(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def tokenize(docs, tok_file, out, **kw):
    kw = {"workers": 1, "show_progress": False, **kw}
    return tokenize_to_shards(docs, tok_file, out, **kw)


def split_texts(out: Path, split: str, tok: Tokenizer) -> list[str]:
    """A split's documents, decoded: its stream cut at each BOS."""
    shards = TokenShards(out, split)
    ids = shards.get(0, shards.tokens)
    if not len(ids):
        return []
    assert ids[0] == BOS_ID
    starts = np.flatnonzero(ids == BOS_ID).tolist() + [len(ids)]
    return [tok.decode(ids[a + 1:b].tolist()) for a, b in zip(starts, starts[1:])]


def test_round_trip_reproduces_documents_in_order(tok_file, tmp_path):
    docs = make_docs(80)
    index = tokenize(docs, tok_file, tmp_path, val_fraction=0.2, shard_tokens=97)
    tok = Tokenizer.load(tok_file)
    val = [d for d in docs if split_key(0, d.id) < 0.2]
    train = [d for d in docs if split_key(0, d.id) >= 0.2]
    assert 0 < len(val) < len(docs)
    assert split_texts(tmp_path, "train", tok) == [d.text for d in train]
    assert split_texts(tmp_path, "val", tok) == [d.text for d in val]
    # the stream is exactly [BOS] + encode(text) per document
    expected = [t for d in train for t in [BOS_ID, *tok.encode(d.text)]]
    assert TokenShards(tmp_path, "train").get(0, len(expected)).tolist() == expected
    for name, split in (("train", train), ("val", val)):
        info = index["splits"][name]
        assert info["documents"] == len(split)
        assert info["bytes"] == sum(len(d.text.encode()) for d in split)
        assert all(s["tokens"] <= 97 for s in info["shards"])
    assert index["val_bytes"] == index["splits"]["val"]["bytes"]
    assert index["dtype"] == "uint16" and index["vocab_size"] == 400 and index["bos_id"] == BOS_ID


def test_output_does_not_depend_on_workers_or_order(tok_file, tmp_path):
    docs = make_docs(300)
    tokenize(docs, tok_file, tmp_path / "one", workers=1, shard_tokens=1000)
    tokenize(iter(docs), tok_file, tmp_path / "two", workers=2, shard_tokens=1000)
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert len([f for f in files if f.startswith("train_")]) > 1
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    shuffled = docs[:]
    random.Random(5).shuffle(shuffled)
    tokenize(shuffled, tok_file, tmp_path / "shuffled")
    tok = Tokenizer.load(tok_file)
    assert sorted(split_texts(tmp_path / "one", "val", tok)) == \
        sorted(split_texts(tmp_path / "shuffled", "val", tok))


def test_small_inputs_still_get_a_validation_document(tok_file, tmp_path):
    tok = Tokenizer.load(tok_file)
    docs = make_docs(5)
    # No document falls below 1e-9: the lowest split key goes to validation.
    index = tokenize(docs, tok_file, tmp_path / "a", val_fraction=1e-9, shard_tokens=7)
    lowest = min(docs, key=lambda d: split_key(0, d.id))
    assert split_texts(tmp_path / "a", "val", tok) == [lowest.text]
    assert split_texts(tmp_path / "a", "train", tok) == [d.text for d in docs if d is not lowest]
    assert index["splits"]["val"]["documents"] == 1
    # Everything falls below 0.999...: the highest key goes back to train.
    tokenize(docs, tok_file, tmp_path / "b", val_fraction=1 - 1e-12, shard_tokens=7)
    highest = max(docs, key=lambda d: split_key(0, d.id))
    assert split_texts(tmp_path / "b", "train", tok) == [highest.text]
    assert split_texts(tmp_path / "b", "val", tok) == [d.text for d in docs if d is not highest]
    # One document trains; val_fraction=0 means no validation at all.
    assert tokenize(docs[:1], tok_file, tmp_path / "c")["splits"]["val"]["documents"] == 0
    index = tokenize(docs, tok_file, tmp_path / "d", val_fraction=0)
    assert index["splits"]["val"] == {"tokens": 0, "documents": 0, "bytes": 0, "shards": [],
                                      "max_token_id": -1}
    assert TokenShards(tmp_path / "d", "val").tokens == 0


def test_get_across_shard_boundaries(tok_file, tmp_path):
    tokenize(make_docs(40), tok_file, tmp_path, shard_tokens=50)
    shards = TokenShards(tmp_path, "train")
    files = sorted(tmp_path.glob("train_*.bin"))
    assert len(files) > 3
    full = np.concatenate([np.fromfile(f, dtype="<u2") for f in files])
    assert shards.tokens == len(full) and shards.dtype == np.uint16
    for start, length in [(0, 50), (45, 10), (30, 130), (49, 1), (50, 1), (0, len(full))]:
        window = shards.get(start, length)
        assert window.dtype == np.uint16 and window.tolist() == full[start:start + length].tolist()
    assert shards.get(len(full), 0).tolist() == []
    with pytest.raises(IndexError):
        shards.get(len(full) - 5, 6)


def test_dtype_follows_vocab_size(tmp_path):
    assert token_dtype(300) == np.uint16 and token_dtype(2**16) == np.uint16
    assert token_dtype(2**16 + 1) == np.uint32
    # A real uint32 dataset: a tokenizer whose added tokens have ids past 65535.
    tok = train_tokenizer(["hello world, some text here"] * 3, 300, show_progress=False)
    tok.inner.add_tokens([f"<x{i:05d}>" for i in range(66_000)])
    tok_file = tok.save(tmp_path / "tokenizer.json")
    docs = [Document("a", "hello <x65999> world", "t", {}), Document("b", "<x00001>", "t", {})]
    index = tokenize(docs, tok_file, tmp_path / "out", val_fraction=0)
    assert index["dtype"] == "uint32" and index["max_token_id"] > 2**16
    shards = TokenShards(tmp_path / "out", "train")
    assert shards.dtype == np.uint32
    assert Tokenizer.load(tok_file).decode(shards.get(0, shards.tokens).tolist()) == \
        "<|bos|>hello <x65999> world<|bos|><x00001>"


def test_check_vocab(tok_file, tmp_path):
    index = tokenize(make_docs(30), tok_file, tmp_path)
    shards = TokenShards(tmp_path, "train")
    shards.check_vocab(400)
    shards.check_vocab(512)  # a padded embedding is fine
    with pytest.raises(LmforgeError, match=f"token ids up to {index['max_token_id']} but the "
                                           "model's vocab is 300; retokenize"):
        shards.check_vocab(300)


def test_bits_per_byte(tok_file, tmp_path):
    tokenize(make_docs(100), tok_file, tmp_path, val_fraction=0.3)
    val = TokenShards(tmp_path, "val")
    loss = 1.7
    expected = loss * val.tokens / (np.log(2) * val.index["val_bytes"])
    assert bits_per_byte(loss, val.bytes_per_token) == pytest.approx(expected)


def test_user_errors(tok_file, tmp_path):
    with pytest.raises(LmforgeError, match="no documents"):
        tokenize([], tok_file, tmp_path / "empty")
    with pytest.raises(LmforgeError, match="val_fraction"):
        tokenize(make_docs(3), tok_file, tmp_path / "x", val_fraction=1.5)
    with pytest.raises(LmforgeError, match="index.json"):
        TokenShards(tmp_path / "nowhere", "train")
    tokenize(make_docs(30), tok_file, tmp_path / "ok")
    with pytest.raises(LmforgeError, match="no split 'test'"):
        TokenShards(tmp_path / "ok", "test")
    (tmp_path / "ok" / "train_000.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(LmforgeError, match="train_000.bin: shard should hold"):
        TokenShards(tmp_path / "ok", "train")
    (tmp_path / "ok" / INDEX_FILE).write_text("{not json")
    with pytest.raises(LmforgeError, match="index.json: corrupt index"):
        TokenShards(tmp_path / "ok", "train")


def test_a_separate_validation_set_is_all_of_validation(tok_file, tmp_path):
    tok = Tokenizer.load(tok_file)
    train_docs, val_docs = make_docs(30, seed=2), make_docs(4, seed=3)
    index = tokenize(train_docs, tok_file, tmp_path / "a", val_fraction=0, val_docs=val_docs)
    assert split_texts(tmp_path / "a", "train", tok) == [d.text for d in train_docs]
    assert split_texts(tmp_path / "a", "val", tok) == [d.text for d in val_docs]
    assert index["val_set"] is True and index["splits"]["val"]["documents"] == 4
    # Validation from two places at once, or an empty side, is refused before any shard.
    with pytest.raises(LmforgeError, match="validation would come from both"):
        tokenize(train_docs, tok_file, tmp_path / "b", val_fraction=0.1, val_docs=val_docs)
    with pytest.raises(LmforgeError, match="validation set holds no documents"):
        tokenize(train_docs, tok_file, tmp_path / "c", val_fraction=0, val_docs=[])
    with pytest.raises(LmforgeError, match="training data holds no documents"):
        tokenize([], tok_file, tmp_path / "d", val_fraction=0, val_docs=val_docs)
    assert not list((tmp_path / "d").glob("*.bin"))


def test_retokenizing_into_a_folder_removes_stale_shards(tok_file, tmp_path):
    tokenize(make_docs(60), tok_file, tmp_path, shard_tokens=50)
    index = tokenize(make_docs(3), tok_file, tmp_path, shard_tokens=50)
    listed = {s["file"] for split in index["splits"].values() for s in split["shards"]}
    assert {p.name for p in tmp_path.glob("*.bin")} == listed
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_tokenize_stage_records_lineage(tok_file, tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    docs = make_docs(50)
    with ws.staging() as d:
        write_documents_jsonl(docs, d / DOCUMENTS_FILE)
        dataset = ws.register(d, kind="dataset", stage="corpus")
    with ws.staging() as d:
        Tokenizer.load(tok_file).save(d / "tokenizer.json")
        tokenizer = ws.register(d, kind="tokenizer", stage="tokenizer")
    art = tokenize_stage(ws, dataset.id, tokenizer.id, val_fraction=0.1, seed=3, workers=1,
                         show_progress=False)
    assert art.kind == "tokens" and art.stage == "tokenize"
    assert art.parents == {"data": dataset.id, "tokenizer": tokenizer.id}
    assert art.settings == {"val_fraction": 0.1, "seed": 3}
    train, val = TokenShards(art.path, "train"), TokenShards(art.path, "val")
    assert art.metrics["train_tokens"] == train.tokens and art.metrics["val_tokens"] == val.tokens
    assert art.metrics["train_documents"] + art.metrics["val_documents"] == len(docs)
    assert {"index.json", "train_000.bin", "val_000.bin"} <= set(art.files)
    assert ws.lineage(art.id)  # the registry knows where it came from
    # The worker count changes nothing, so the same artifact comes back.
    again = tokenize_stage(ws, dataset.id, tokenizer.id, val_fraction=0.1, seed=3, workers=2,
                           show_progress=False)
    assert again.id == art.id
    # A file input has no dataset id: the stage records the path in its settings.
    path = tmp_path / "docs.jsonl"
    write_documents_jsonl(docs, path)
    from_file = tokenize_stage(ws, str(path), tokenizer.id, workers=1, show_progress=False)
    assert from_file.parents == {"tokenizer": tokenizer.id}
    assert from_file.settings["inputs"] == [str(path)]
    with pytest.raises(LmforgeError):
        tokenize_stage(ws, dataset.id, dataset.id, show_progress=False)  # not a tokenizer
    # A separate validation dataset: a second parent, and val_fraction defaults to 0.
    with ws.staging() as d:
        write_documents_jsonl(make_docs(5, seed=9), d / DOCUMENTS_FILE)
        held_out = ws.register(d, kind="dataset", stage="corpus")
    split = tokenize_stage(ws, dataset.id, tokenizer.id, workers=1, show_progress=False,
                           val_data=held_out.id)
    assert split.parents == {"data": dataset.id, "val_data": held_out.id,
                             "tokenizer": tokenizer.id}
    assert split.settings == {"val_fraction": 0.0, "seed": 0}
    assert split.metrics["train_documents"] == len(docs)
    assert split.metrics["val_documents"] == 5


def test_tinystories(shared_data, tmp_path):
    folder = shared_data / "tinystories"
    docs = list(read_documents(str(folder / "*.txt")))
    tok = train_tokenizer((d.text for d in docs), 500, show_progress=False)
    tok_file = tok.save(tmp_path / "tokenizer.json")
    t0 = time.perf_counter()
    index = tokenize(docs, tok_file, tmp_path / "out", workers=2)
    seconds = time.perf_counter() - t0
    train, val = index["splits"]["train"], index["splits"]["val"]
    assert train["tokens"] + val["tokens"] > 300_000
    assert train["documents"] + val["documents"] == len(docs) and val["documents"] >= 1
    assert train["bytes"] + val["bytes"] == sum(len(d.text.encode()) for d in docs)
    print(f"\nTinyStories: {len(docs)} documents, {train['tokens'] + val['tokens']:,} tokens "
          f"in {seconds:.2f} s with 2 workers; "
          f"{TokenShards(tmp_path / 'out', 'val').bytes_per_token:.2f} bytes/token")
    assert json.loads((tmp_path / "out" / INDEX_FILE).read_text()) == index
