"""Exact and near-duplicate detection: exact keys, MinHash signatures, LSH clustering.

Workers compute per-document things in parallel (`exact_key`, `minhash_signatures`); the
main process clusters all signatures at once (`near_duplicate_clusters`), one band at a time
over plain numpy arrays, so a million documents cost little more than their signatures.

The MinHash follows FineWeb/datatrove's scheme (word 5-grams of simplified text, 14 bands of
8 rows) with datasketch's "affine32" permutations: each 32-bit shingle hash is pre-mixed with
the MurmurHash3 finalizer, then permuted as `a*h + b mod 2^32` (`a` odd, so a bijection).
Shingles are hashed by combining cached 64-bit word hashes in numpy instead of one SHA-1 per
shingle; with the same shingle hashes the signatures are bit-identical to
`datasketch.MinHash(num_perm, seed)` (tests check it), and ~3-4x faster than datasketch's own
SHA-1-per-shingle path on TinyStories-size documents (bench/dedup_memory.py measures both).
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.stage import check_keys

_U32 = np.uint32
_U64 = np.uint64

# ---------------------------------------------------------------------------------------
# Exact duplicates


def exact_key(text: str) -> bytes:
    """16-byte digest of `text` with whitespace collapsed and lowercased.

    Copies that differ only in line wrapping, indentation or capitalisation (re-flowed
    paragraphs, an all-caps title) teach a model nothing new, so they share a key.
    Punctuation and digits are kept: there a change can be a real difference, and the
    near-duplicate step catches the rest. 128 bits keep accidental collisions out of reach
    (birthday bound ~2^64 documents).
    """
    canon = " ".join(text.split()).lower()
    return hashlib.blake2b(canon.encode("utf-8"), digest_size=16).digest()


# ---------------------------------------------------------------------------------------
# Words and n-gram hashes (shared with decontamination)

# ASCII punctuation -> space and ASCII digits -> "0" in one `str.translate` pass (twice as fast
# as a regex); other scripts go through the Unicode-aware regexes below.
_ASCII_PUNCT = str.maketrans({**{c: " " for c in string.punctuation},
                              **{c: "0" for c in string.digits}})
_ASCII_PUNCT_ONLY = str.maketrans({c: " " for c in string.punctuation})
_NON_WORD = re.compile(r"[^\w\s]|_")
_DIGIT = re.compile(r"\d")
_MARKS = re.compile("[\u0300-\u036f]")  # combining diacritics left by NFKD


def simplify_words(text: str, numbers: bool = True) -> list[str]:
    """Words of `text` the way FineWeb's `simplify_text` sees them (datatrove.utils.text):
    lowercase, diacritics dropped, punctuation turned into spaces, whitespace-split; with
    `numbers`, every digit becomes "0" (so "page 12" and "page 13" match; datatrove maps
    digit runs, which differs only in keeping the number's length)."""
    text = text.lower().translate(_ASCII_PUNCT if numbers else _ASCII_PUNCT_ONLY)
    if not text.isascii():
        text = _MARKS.sub("", unicodedata.normalize("NFKD", text))
        text = _NON_WORD.sub(" ", text)
        if numbers:
            text = _DIGIT.sub("0", text)
    return text.split()


# Word -> 64-bit hash. Python's own hash() is salted per process, so a keyed digest is used
# and cached: natural text reuses a small vocabulary, so nearly every lookup is a hit.
_WORD_CACHE: dict[str, int] = {}
_WORD_CACHE_MAX = 1 << 21  # ~250 MB at most; cleared (not evicted) when full


def _word_hash(word: str) -> int:
    h = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
    if len(_WORD_CACHE) >= _WORD_CACHE_MAX:
        _WORD_CACHE.clear()
    _WORD_CACHE[word] = h
    return h


def word_hashes(words: Sequence[str]) -> np.ndarray:
    """uint64 hash of each word, deterministic across processes and runs."""
    cache = _WORD_CACHE
    return np.array([cache[w] if w in cache else _word_hash(w) for w in words], dtype=_U64)


_M64 = _U64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: a standard multiplicative mix


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every run of `n` consecutive word hashes (order matters); a sequence
    shorter than `n` gives one hash of the whole sequence, which equals the hash of that
    same sequence taken as a `len(words)`-gram of a longer text."""
    k = min(n, len(words))
    return _window_hashes(words, k)


def _window_hashes(words: np.ndarray, k: int) -> np.ndarray:
    # A polynomial in an odd multiplier over random 64-bit word hashes (two sequences that
    # differ anywhere differ by an invertible term), then one avalanche. The window length
    # seeds it, so "a b" and the first two words of "a b c" hash apart.
    count = len(words) - k + 1
    h = np.full(count, k, dtype=_U64)
    for j in range(k):
        h = h * _M64 + words[j:j + count]
    return _fmix64(h)


# ---------------------------------------------------------------------------------------
# MinHash settings


@dataclass(frozen=True)
class MinHashSettings:
    # FineWeb's MinHash dedup: word 5-grams, 14 buckets x 8 hashes, seed 1
    # (datatrove MinhashConfig defaults; Penedo et al. 2024, "The FineWeb Datasets", sec. 3.4).
    ngram: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def threshold(self) -> float:
        """Jaccard similarity detected with ~50% probability: (1/b)^(1/r) (Leskovec,
        Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3.4). 14x8 gives ~0.72."""
        return (1.0 / self.bands) ** (1.0 / self.rows)


_MINHASH_KEYS = {"ngram": (1, 64), "bands": (1, 512), "rows": (1, 64), "seed": (0, 2**32 - 1)}


def check_minhash_settings(d: dict[str, Any], where: str) -> MinHashSettings:
    """MinHash settings from a recipe table (keys ngram, bands, rows, seed; all optional)."""
    check_keys(d, f"{where} (MinHash)", optional=_MINHASH_KEYS)
    values: dict[str, int] = {}
    for key, (low, high) in _MINHASH_KEYS.items():
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise LmforgeError(f"{where}: {key} must be an integer from {low} to {high}, "
                               f"not {v!r}", hint="FineWeb uses ngram 5, bands 14, rows 8")
        values[key] = v
    settings = MinHashSettings(**values)
    if settings.num_perm > 1024:
        raise LmforgeError(f"{where}: bands x rows = {settings.num_perm} permutations is too many",
                           hint="at most 1024; FineWeb uses 14 x 8 = 112")
    return settings


# ---------------------------------------------------------------------------------------
# Signatures


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def permutations(settings: MinHashSettings) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) parameters of the `num_perm` permutations, drawn exactly as datasketch 2's
    affine32 scheme draws them from the seed (so signatures can be checked against it)."""
    gen = np.random.RandomState(settings.seed)
    a = gen.randint(0, 1 << 31, settings.num_perm, dtype=_U32) * _U32(2) + _U32(1)
    b = gen.randint(0, 1 << 32, settings.num_perm, dtype=_U32)
    return a, b


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """uint32 hashes of the word n-grams of `text` after FineWeb's simplification; a text of
    fewer than `ngram` words is one shingle (so short texts still get a signature)."""
    return (ngram_hashes(word_hashes(simplify_words(text)), ngram) >> _U64(32)).astype(_U32)


# Shingles per numpy block: a [num_perm, block] uint32 array is ~14 MB at 112 permutations.
_BLOCK_SHINGLES = 1 << 15


def minhash_signatures(texts: Sequence[str], settings: MinHashSettings) -> np.ndarray:
    """[len(texts), num_perm] uint32 MinHash signatures, the same in every process and run.

    Equal to `datasketch.MinHash(num_perm, seed)` (affine32) fed with `shingle_hashes`.
    Work is done on blocks of documents: their words are hashed once, n-grams hashed over the
    whole block, then permuted in one broadcast and reduced to per-document minima.
    """
    a, b = permutations(settings)
    out = np.empty((len(texts), settings.num_perm), dtype=_U32)
    block: list[np.ndarray] = []
    size = first = 0
    for i, text in enumerate(texts):
        words = word_hashes(simplify_words(text))
        if len(words) > _BLOCK_SHINGLES:  # a very long document: alone, in slices
            if block:
                out[first:i] = _block_minima(*_block_shingles(block, settings.ngram), a, b).T
            out[i] = _long_minima(_block_shingles([words], settings.ngram)[0], a, b)
            first, block, size = i + 1, [], 0
            continue
        block.append(words)
        size += len(words)
        if size >= _BLOCK_SHINGLES:
            out[first:i + 1] = _block_minima(*_block_shingles(block, settings.ngram), a, b).T
            first, block, size = i + 1, [], 0
    if block:
        out[first:] = _block_minima(*_block_shingles(block, settings.ngram), a, b).T
    return out


def _block_shingles(words: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """The uint32 shingle hashes of a block of documents, concatenated, and where each
    document's run starts. Equal to `shingle_hashes` per document, hashed in one pass."""
    lens = np.array([len(w) for w in words], dtype=np.int64)
    out_lens = np.maximum(lens - n + 1, 1)
    starts = np.concatenate(([0], np.cumsum(out_lens)[:-1]))
    shingles = np.empty(int(out_lens.sum()), dtype=_U64)
    long = lens >= n
    if long.any():
        flat = np.concatenate([w for w, ok in zip(words, long) if ok])
        windows = _window_hashes(flat, n)
        # A window is one document's n-gram when it ends inside the document it starts in.
        ends = np.repeat(np.cumsum(lens[long]), lens[long])[:len(windows)]
        inside = np.arange(len(windows)) + n <= ends
        shingles[np.repeat(long, out_lens)] = windows[inside]
    for i in np.flatnonzero(~long):
        shingles[starts[i]] = _window_hashes(words[i], int(lens[i]))[0]
    return (shingles >> _U64(32)).astype(_U32), starts


def _block_minima(shingles: np.ndarray, starts: np.ndarray, a: np.ndarray,
                  b: np.ndarray) -> np.ndarray:
    """[num_perm, documents] minima of `a*fmix32(h) + b mod 2^32` over each document's run.
    The [num_perm, shingles] layout keeps the reduction along contiguous rows (~10x faster
    than reducing the transposed layout)."""
    permuted = a[:, None] * _fmix32(shingles)[None, :]  # uint32 arithmetic wraps mod 2^32
    permuted += b[:, None]
    return np.minimum.reduceat(permuted, starts, axis=1)


def _long_minima(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One document's signature, its shingles taken a block at a time (bounded memory)."""
    out = np.full(len(a), np.iinfo(_U32).max, dtype=_U32)
    for i in range(0, len(shingles), _BLOCK_SHINGLES):
        part = shingles[i:i + _BLOCK_SHINGLES]
        np.minimum(out, _block_minima(part, np.zeros(1, dtype=np.int64), a, b)[:, 0], out=out)
    return out


# ---------------------------------------------------------------------------------------
# Clustering


def near_duplicate_clusters(signatures: np.ndarray, settings: MinHashSettings) -> np.ndarray:
    """int64 [n]: each document's cluster representative (its own index when it is kept).

    Two documents whose signatures agree on all rows of any band are joined; clusters are the
    transitive closure (union-find) and the representative is the lowest index in the
    cluster, so input order decides which copy survives. Memory: the signatures plus a few
    [n] arrays per band (no dict of buckets): 1M x 112 signatures (427 MiB) cluster at a peak
    RSS of ~500 MiB (bench/dedup_memory.py).
    """
    sig = np.asarray(signatures)
    if sig.ndim != 2 or sig.shape[1] != settings.num_perm:
        raise LmforgeError(
            f"signatures have shape {sig.shape}, expected [documents, {settings.num_perm}]",
            hint="compute them with minhash_signatures and the same MinHash settings")
    if sig.dtype.kind != "u":
        raise LmforgeError(f"signatures must be unsigned integers, not {sig.dtype}")
    n = sig.shape[0]
    parent = np.arange(n, dtype=np.int64)
    for band in range(settings.bands):
        rows = sig[:, band * settings.rows:(band + 1) * settings.rows]
        u, v = _band_pairs(rows)
        if len(u):
            parent = _union(parent, u, v)
    return parent


def _band_pairs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of documents whose rows are equal in this band: neighbours after sorting
    by a 64-bit hash of the rows. Equal hashes are confirmed on the rows themselves, so a hash
    collision can never join different bands."""
    h = np.full(rows.shape[0], rows.shape[1], dtype=_U64)
    for j in range(rows.shape[1]):
        h = h * _M64 + rows[:, j]
    h = _fmix64(h)
    # Any order inside a run of equal hashes gives the same clusters (roots are minima).
    order = np.argsort(h)
    hs = h[order]
    same = np.flatnonzero(hs[1:] == hs[:-1])
    u, v = order[same], order[same + 1]
    equal = np.all(rows[u] == rows[v], axis=1)
    return u[equal], v[equal]


def _union(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized union-find with lowest-index roots.

    Every round hooks the larger of two differing roots under the smaller one (so there are
    no cycles and a root is always its component's smallest index), then compresses all
    paths by pointer jumping; an edge whose ends share a root stays satisfied for good and is
    dropped. Rounds repeat until no edge joins two roots.
    """
    while len(u):
        ru, rv = parent[u], parent[v]
        lo, hi = np.minimum(ru, rv), np.maximum(ru, rv)
        open_ = lo != hi
        u, v, lo, hi = u[open_], v[open_], lo[open_], hi[open_]
        if not len(u):
            break
        np.minimum.at(parent, hi, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent
