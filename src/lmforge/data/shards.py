"""Token shards: pretraining data as flat binary arrays of token ids, read by memory map.

Layout of a shards folder:
- `train_000.bin`, `train_001.bin`, ..., `val_000.bin`, ...: raw little-endian uint16 (vocab
  <= 65536) or uint32 arrays. Each document is `[BOS] + encode(text)`; documents follow one
  another, so BOS separates them. A split is one long stream cut into shards of
  `shard_tokens` tokens (the last one shorter); documents may straddle two shards.
- `index.json`: dtype, vocab size, BOS id, the tokenizer's sha256, the split settings, and per
  split its token, document and UTF-8 byte counts, its largest token id and its shards.

The train/validation split is by document: a document is in validation iff a hash of
(seed, document id) falls below `val_fraction`, so it does not depend on input order or on
the number of workers. With two documents or more, validation gets at least one.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import multiprocessing
import os
import re
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from lmforge.data.documents import Document
from lmforge.errors import LmforgeError
from lmforge.registry import atomic_write_json, sha256_file
from lmforge.registry.atomic import fsync_dir
from lmforge.tokenizer import Tokenizer

INDEX_FILE = "index.json"
FORMAT = "lmforge-token-shards"
SPLITS = ("train", "val")
_SHARD_NAME = re.compile(r"^(train|val)_\d+\.bin$")
# Work handed to a worker at a time: small enough to balance load, large enough that
# pickling and queueing cost little next to tokenizing.
CHUNK_CHARS = 256_000
CHUNK_DOCS = 1024


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian unsigned dtype that holds every id below `vocab_size`."""
    dtype = np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")
    # Every id is < vocab_size, so no id can overflow the dtype: guaranteed here, once.
    assert vocab_size - 1 <= np.iinfo(dtype).max
    return dtype


def split_key(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, document id): the split's coin."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# Bits per byte makes losses comparable across tokenizers: the model's total loss on the
# validation split, in bits, divided by the UTF-8 bytes of the text it encodes:
#     bpb = loss_nats * val_tokens / (ln 2 * val_bytes) = loss_nats / (ln 2 * bytes_per_token)
# where loss_nats is the mean next-token loss over all val tokens (BOS tokens are predicted
# too: they carry the document boundaries, and count no bytes).
def bytes_per_token(index: Mapping[str, Any], split: str = "val") -> float:
    """UTF-8 bytes of text per token in a split of a shards index (BOS tokens included)."""
    info = index["splits"][split]
    if info["tokens"] == 0:
        raise LmforgeError(f"the {split} split holds no tokens, so it has no bytes per token",
                           hint="tokenize with a val_fraction above 0 and two documents or more")
    return info["bytes"] / info["tokens"]


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Mean next-token loss in nats -> bits per UTF-8 byte of text (see the formula above)."""
    return loss_nats / (math.log(2) * bytes_per_token)


# -- writing ------------------------------------------------------------------------------

@dataclass
class _Shard:
    path: Path  # a temporary name until the split is finished
    tokens: int = 0
    max_token_id: int = -1


class _SplitWriter:
    """Appends documents' tokens to one split, cutting the stream into shard files.

    It remembers one candidate document (the lowest or highest split key seen), so that a
    split left empty at the end can take that document over from the other split.
    """

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int,
                 keep_lowest: bool):
        self.out_dir, self.split, self.dtype = out_dir, split, dtype
        self.shard_tokens, self.keep_lowest = shard_tokens, keep_lowest
        self.shards: list[_Shard] = []
        self.tokens = self.documents = self.bytes = 0
        self._file: Any = None
        # (key, start, length, bytes) of the candidate document
        self.candidate: tuple[float, int, int, int] | None = None

    def add(self, ids: np.ndarray, n_bytes: int, key: float) -> None:
        better = self.candidate is None or (
            key < self.candidate[0] if self.keep_lowest else key > self.candidate[0])
        if better:
            self.candidate = (key, self.tokens, len(ids), n_bytes)
        self.write(ids)
        self.documents += 1
        self.bytes += n_bytes

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None:
                fd, tmp = tempfile.mkstemp(dir=self.out_dir, suffix=".tmp",
                                           prefix=f".{self.split}_{len(self.shards):03d}.")
                self._file = os.fdopen(fd, "wb")
                self.shards.append(_Shard(Path(tmp)))
            shard = self.shards[-1]
            room = self.shard_tokens - shard.tokens
            piece, ids = ids[:room], ids[room:]
            self._file.write(piece.astype(self.dtype, copy=False).tobytes())
            shard.tokens += len(piece)
            shard.max_token_id = max(shard.max_token_id, int(piece.max()))
            self.tokens += len(piece)
            if shard.tokens == self.shard_tokens:
                self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def take_candidate(self) -> tuple[np.ndarray, int, float]:
        """Remove the candidate document from the stream; return its tokens, bytes and key.

        Shards before the one where it starts are untouched; the rest are rewritten without
        it. This runs at most once per call of `tokenize_to_shards`, and only for tiny splits.
        """
        assert self.candidate is not None
        key, start, length, n_bytes = self.candidate
        end = start + length
        self._close_file()
        first = start // self.shard_tokens
        old, self.shards = self.shards[first:], self.shards[:first]
        self.tokens = first * self.shard_tokens
        taken, offset = [], self.tokens
        for shard in old:
            data = np.fromfile(shard.path, dtype=self.dtype)
            lo, hi = offset, offset + len(data)
            self.write(data[:max(0, min(start, hi) - lo)])
            taken.append(data[max(0, start - lo):max(0, min(end, hi) - lo)])
            self.write(data[max(0, end - lo):])
            offset = hi
            shard.path.unlink()
        self.documents -= 1
        self.bytes -= n_bytes
        self.candidate = None
        return np.concatenate(taken), n_bytes, key

    def finish(self) -> list[dict[str, Any]]:
        """Give the shard files their final names; return their index entries."""
        self._close_file()
        entries = []
        for i, shard in enumerate(self.shards):
            name = f"{self.split}_{i:03d}.bin"
            os.replace(shard.path, self.out_dir / name)
            shard.path = self.out_dir / name
            entries.append({"file": name, "tokens": shard.tokens,
                            "max_token_id": shard.max_token_id})
        return entries

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for shard in self.shards:
            shard.path.unlink(missing_ok=True)


# -- tokenizing in worker processes -------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(tokenizer_file: str, dtype: str) -> None:
    # The pool is the parallelism: each worker tokenizes on one core, so `workers` means
    # what it says and processes do not fight over threads.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker["tok"] = Tokenizer.load(tokenizer_file)
    _worker["dtype"] = np.dtype(dtype)


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> ([BOS] + ids of each, concatenated; each document's token count)."""
    tok: Tokenizer = _worker["tok"]
    encoded = tok.encode_batch(texts)
    flat: list[int] = []
    for ids in encoded:
        flat.append(tok.bos_id)
        flat.extend(ids)
    lengths = np.array([len(ids) + 1 for ids in encoded], dtype=np.int64)
    return np.array(flat, dtype=_worker["dtype"]), lengths


def _chunks(docs: Iterable[Document], seed: int
            ) -> Iterator[tuple[list[tuple[float, int]], list[str]]]:
    """Documents -> (each one's (split key, UTF-8 bytes), their texts), a chunk at a time."""
    meta: list[tuple[float, int]] = []
    texts: list[str] = []
    chars = 0
    for doc in docs:
        meta.append((split_key(seed, doc.id), len(doc.text.encode("utf-8"))))
        texts.append(doc.text)
        chars += len(doc.text)
        if chars >= CHUNK_CHARS or len(texts) >= CHUNK_DOCS:
            yield meta, texts
            meta, texts, chars = [], [], 0
    if texts:
        yield meta, texts


def _encode_in_order(docs: Iterable[Document], seed: int, tokenizer_file: Path,
                     dtype: np.dtype, workers: int
                     ) -> Iterator[tuple[list[tuple[float, int]], np.ndarray, np.ndarray]]:
    """Tokenize chunks over worker processes, yielding results in input order.

    Like `Pool.imap`, but with at most a few chunks in flight (`imap` reads the whole input
    ahead into its queue, and a corpus need not fit in memory), and on an executor that
    reports a dead worker instead of waiting for it forever.
    """
    # spawn: the same behaviour on every OS, and no fork of a process that holds threads.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker,
                               initargs=(str(tokenizer_file), dtype.str))
    try:
        pending: deque = deque()
        for meta, texts in _chunks(docs, seed):
            pending.append((meta, pool.submit(_encode_chunk, texts)))
            if len(pending) >= 2 * workers:
                meta, future = pending.popleft()
                yield meta, *future.result()
        while pending:
            meta, future = pending.popleft()
            yield meta, *future.result()
    except BrokenProcessPool:
        raise LmforgeError(
            "a tokenizer worker process died before finishing (see its error above)",
            hint="in a script, call this under `if __name__ == \"__main__\":` (workers are "
                 "started with spawn, which imports the main module); if memory ran out, "
                 "use fewer workers") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _DocsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} docs/s" if speed else "", style="progress.data.speed")


@contextmanager
def _progress(show: bool) -> Iterator[Callable[[int, int], None]]:
    """An `update(documents, tokens)` callback, drawing a rich progress line if `show`."""
    if not show:
        yield lambda documents, tokens: None
        return
    columns = [SpinnerColumn(), TextColumn("tokenizing"),
               TextColumn("{task.completed:,.0f} documents"), _DocsPerSecond(),
               TextColumn("{task.fields[tokens]:,} tokens"), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("tokenize", total=None, tokens=0)
        counts = [0]

        def update(documents: int, tokens: int) -> None:
            counts[0] += tokens
            progress.update(task, advance=documents, tokens=counts[0])

        yield update


def _file_of(tokenizer_path: Path) -> Path:
    return tokenizer_path / "tokenizer.json" if tokenizer_path.is_dir() else tokenizer_path


def tokenize_to_shards(docs: Iterable[Document], tokenizer_path: str | Path,
                       out_dir: str | Path, val_fraction: float = 0.05, seed: int = 0,
                       shard_tokens: int = 50_000_000, workers: int = 0,
                       show_progress: bool = True,
                       val_docs: Iterable[Document] | None = None) -> dict[str, Any]:
    """Tokenize documents into train/val shards in `out_dir`; return the index it writes.

    Validation is either `val_fraction` of `docs` (by document, see `split_key`), or, given
    `val_docs` (a corpus's own validation split), exactly those documents, with every one
    of `docs` trained on; `val_fraction` must then be 0.
    The output bytes depend only on the documents, the tokenizer, `val_fraction`, `seed`
    and `shard_tokens`, never on `workers` (0 means one per CPU).
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0 <= val_fraction < 1:
        raise LmforgeError(f"val_fraction must be in [0, 1), not {val_fraction!r}",
                           hint="0.05 keeps one document in twenty for validation")
    if val_docs is not None and val_fraction:
        raise LmforgeError(f"a separate validation set was given and val_fraction is "
                           f"{val_fraction}: validation would come from both",
                           hint="set val_fraction to 0 with a validation set, or drop the set")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LmforgeError(f"seed must be an integer, not {seed!r}")
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise LmforgeError(f"shard_tokens must be a positive integer, not {shard_tokens!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise LmforgeError(f"workers must be 0 (one per CPU) or more, not {workers!r}")
    workers = workers or os.cpu_count() or 1
    tokenizer_file = _file_of(Path(tokenizer_path))
    tok = Tokenizer.load(tokenizer_file)
    dtype = token_dtype(tok.vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Train keeps its lowest-key document ready to give to an empty val, and val its
    # highest-key one for an empty train: the documents nearest the other side of the cut.
    train = _SplitWriter(out_dir, "train", dtype, shard_tokens, keep_lowest=True)
    val = _SplitWriter(out_dir, "val", dtype, shard_tokens, keep_lowest=False)
    try:
        with _progress(show_progress) as update:
            passes = [(docs, lambda key: val if key < val_fraction else train)]
            if val_docs is not None:
                passes.append((val_docs, lambda key: val))
            for pass_docs, split_of in passes:
                for meta, ids, lengths in _encode_in_order(pass_docs, seed, tokenizer_file,
                                                           dtype, workers):
                    ends = np.cumsum(lengths).tolist()
                    for (key, n_bytes), start, end in zip(meta, [0, *ends[:-1]], ends):
                        split_of(key).add(ids[start:end], n_bytes, key)
                    update(len(meta), len(ids))
        if train.documents + val.documents == 0:
            raise LmforgeError("no documents to tokenize",
                               hint="check that the dataset or input files hold documents")
        if val_docs is not None and (train.documents == 0 or val.documents == 0):
            empty = "training data" if train.documents == 0 else "validation set"
            raise LmforgeError(f"the {empty} holds no documents",
                               hint="check that its dataset or input files hold documents")
        if train.documents == 0:  # training needs data more than validation does
            train.add(*val.take_candidate())
        elif val.documents == 0 and train.documents >= 2 and val_fraction > 0:
            val.add(*train.take_candidate())
        split_entries = {"train": train.finish(), "val": val.finish()}
    except BaseException:
        train.abort()
        val.abort()
        raise

    splits = {}
    for name, writer in (("train", train), ("val", val)):
        shards = split_entries[name]
        splits[name] = {"tokens": writer.tokens, "documents": writer.documents,
                        "bytes": writer.bytes, "shards": shards,
                        "max_token_id": max((s["max_token_id"] for s in shards), default=-1)}
    index = {
        "format": FORMAT, "version": 1, "dtype": dtype.name, "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id, "tokenizer_sha256": sha256_file(tokenizer_file),
        "val_fraction": val_fraction, "val_set": val_docs is not None, "seed": seed,
        "shard_tokens": shard_tokens,
        "max_token_id": max(s["max_token_id"] for s in splits.values()),
        "val_bytes": splits["val"]["bytes"], "splits": splits,
    }
    # Shards left by an earlier run into the same folder would look like part of this one.
    current = {s["file"] for s in (*splits["train"]["shards"], *splits["val"]["shards"])}
    for path in out_dir.iterdir():
        if _SHARD_NAME.match(path.name) and path.name not in current:
            path.unlink()
    fsync_dir(out_dir)
    atomic_write_json(out_dir / INDEX_FILE, index)  # last: the index vouches for the shards
    return index


# -- reading ------------------------------------------------------------------------------

def load_index(directory: str | Path) -> dict[str, Any]:
    """Read and check a shards folder's index.json."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise LmforgeError(f"{path}: no token shards index there",
                           hint="tokenize the data first (`lmforge tokenize`), or check the path")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmforgeError(f"{path}: corrupt index ({e})",
                           hint="tokenize the data again") from None
    ok = (isinstance(index, dict) and index.get("format") == FORMAT
          and index.get("dtype") in ("uint16", "uint32")
          and isinstance(index.get("vocab_size"), int)
          and isinstance(index.get("splits"), dict)
          and all(isinstance(s, dict) and isinstance(s.get("shards"), list)
                  and isinstance(s.get("tokens"), int) for s in index["splits"].values()))
    if not ok:
        raise LmforgeError(f"{path}: not a token shards index (missing or malformed fields)",
                           hint="tokenize the data again")
    return index


class TokenShards:
    """One split of a shards folder as a single token array, memory-mapped read-only."""

    def __init__(self, directory: str | Path, split: str = "train"):
        self.directory = Path(directory)
        self.index = load_index(self.directory)
        if split not in self.index["splits"]:
            have = ", ".join(sorted(self.index["splits"]))
            raise LmforgeError(f"{self.directory}: no split {split!r} (it has: {have})")
        self.split = split
        info = self.index["splits"][split]
        self.dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        self.vocab_size: int = self.index["vocab_size"]
        self.bos_id: int = self.index.get("bos_id", 0)
        self.documents: int = info.get("documents", 0)
        self.bytes: int = info.get("bytes", 0)
        self.max_token_id: int = info.get("max_token_id", self.vocab_size - 1)
        self._arrays: list[np.memmap] = []
        self._starts: list[int] = []
        total = 0
        for entry in info["shards"]:
            path = self.directory / entry["file"]
            expected = entry["tokens"] * self.dtype.itemsize
            size = path.stat().st_size if path.is_file() else None
            if size != expected:
                found = "it is missing" if size is None else f"it has {size:,} bytes"
                raise LmforgeError(f"{path}: shard should hold {expected:,} bytes but {found}",
                                   hint="the shards folder is incomplete; tokenize again")
            self._arrays.append(np.memmap(path, dtype=self.dtype, mode="r"))
            self._starts.append(total)
            total += entry["tokens"]
        if total != info["tokens"]:
            raise LmforgeError(f"{self.directory / INDEX_FILE}: the {split} shards hold "
                               f"{total:,} tokens but the index says {info['tokens']:,}",
                               hint="tokenize the data again")
        self.tokens = total

    def __len__(self) -> int:
        return self.tokens

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.directory)!r}, {self.split!r}: {self.tokens:,} tokens, "
                f"{len(self._arrays)} shards, {self.dtype.name})")

    @property
    def bytes_per_token(self) -> float:
        return bytes_per_token(self.index, self.split)

    def get(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split, across shard boundaries (a copy)."""
        if start < 0 or length < 0 or start + length > self.tokens:
            raise IndexError(f"window [{start}, {start + length}) is outside the "
                             f"{self.tokens:,} tokens of the {self.split} split")
        out = np.empty(length, dtype=self.dtype)
        i = bisect.bisect_right(self._starts, start) - 1
        done = 0
        while done < length:
            array, offset = self._arrays[i], start + done - self._starts[i]
            n = min(length - done, len(array) - offset)
            out[done:done + n] = array[offset:offset + n]
            done += n
            i += 1
        return out

    def check_vocab(self, model_vocab_size: int) -> None:
        """Fail clearly when this data holds ids the model has no embedding for."""
        where = self.directory
        max_id = self.index.get("max_token_id", self.vocab_size - 1)  # over both splits
        if max_id >= model_vocab_size:
            raise LmforgeError(
                f"dataset {where} has token ids up to {max_id} but the "
                f"model's vocab is {model_vocab_size}; retokenize with the model's tokenizer")
        if self.vocab_size > model_vocab_size:
            raise LmforgeError(
                f"dataset {where} was tokenized with a vocab of {self.vocab_size} but the "
                f"model's vocab is {model_vocab_size}; retokenize with the model's tokenizer")
