"""Exact keys, MinHash signatures and LSH clustering (lmforge.curate.dedup)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from lmforge.curate import dedup
from lmforge.curate.dedup import (
    MinHashSettings,
    check_minhash_settings,
    exact_key,
    minhash_signatures,
    near_duplicate_clusters,
)
from lmforge.errors import LmforgeError

S = MinHashSettings()

# ---------------------------------------------------------------------------------------
# exact keys and settings


def test_exact_key_ignores_whitespace_and_case_only():
    a = exact_key("The cat sat\non the  mat.")
    assert len(a) == 16
    assert a == exact_key("  the CAT sat on\tthe mat.\n")
    assert a != exact_key("The cat sat on the mat!")
    assert a != exact_key("The cat sat on the hat.")
    assert exact_key("") == exact_key(" \n ")


def test_settings_defaults_are_finewebs():
    assert (S.ngram, S.bands, S.rows, S.seed, S.num_perm) == (5, 14, 8, 1, 112)
    assert S.threshold() == pytest.approx(0.7190, abs=1e-4)
    assert MinHashSettings(bands=20, rows=5).threshold() == pytest.approx(0.05 ** 0.2)


def test_check_minhash_settings():
    assert check_minhash_settings({}, "r") == S
    got = check_minhash_settings({"ngram": 3, "bands": 9, "rows": 13, "seed": 7}, "r")
    assert (got.ngram, got.num_perm, got.seed) == (3, 117, 7)
    for bad in ({"ngram": 0}, {"bands": "14"}, {"rows": True}, {"seed": -1}, {"band": 14},
                {"bands": 512, "rows": 64}):
        with pytest.raises(LmforgeError, match="recipe.toml"):
            check_minhash_settings(bad, "recipe.toml [dedup]")


# ---------------------------------------------------------------------------------------
# signatures


def test_simplify_words_like_fineweb():
    assert dedup.simplify_words("Hello, World! It's 2024-05-01... Café_au_lait") == [
        "hello", "world", "it", "s", "0000", "00", "00", "cafe", "au", "lait"]
    assert dedup.simplify_words("Page 12", numbers=False) == ["page", "12"]


def test_signatures_shape_and_short_documents():
    texts = ["one two three", "one two three", "One, two... THREE!", "one two four", ""]
    sig = minhash_signatures(texts, S)
    assert sig.shape == (5, 112) and sig.dtype == np.uint32
    assert (sig[0] == sig[1]).all() and (sig[0] == sig[2]).all()  # normalization
    assert (sig[0] != sig[3]).mean() > 0.9  # a different short text is a different shingle
    assert minhash_signatures([], S).shape == (0, 112)


def test_signatures_are_datasketchs_affine32_minhash():
    """Bit-identical to datasketch.MinHash(112, seed=1) given the same shingle hashes."""
    datasketch = pytest.importorskip("datasketch")
    if int(datasketch.__version__.split(".")[0]) < 2:
        pytest.skip("datasketch < 2 has no affine32 permutation scheme")
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(1, 400))) for _ in range(60)]
    # Very long documents are signed alone, a slice at a time; one between short ones.
    texts.insert(30, " ".join(rng.choices(vocab, k=70_000)))
    for settings in (S, MinHashSettings(bands=4, rows=3, seed=99)):
        ours = minhash_signatures(texts, settings)
        for text, row in zip(texts, ours):
            m = datasketch.MinHash(num_perm=settings.num_perm, seed=settings.seed,
                                   hashfunc=lambda v: v)
            m.update_batch(dedup.shingle_hashes(text, settings.ngram).tolist())
            np.testing.assert_array_equal(m.hashvalues, row)


def test_jaccard_estimates_agree_with_datasketch_sha1():
    """Our shingle hashing (cached word hashes) estimates the same Jaccard as datasketch's
    default SHA-1 of each shingle's text: both within sampling error of the true value."""
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(2000)]
    base = rng.choices(vocab, k=300)
    pairs = []
    for swaps in (0, 2, 5, 10, 20, 40, 80):
        other = list(base)
        for i in rng.sample(range(len(other)), swaps):
            other[i] = rng.choice(vocab)
        pairs.append((" ".join(base), " ".join(other)))

    def grams(text):
        w = dedup.simplify_words(text)
        return {" ".join(w[i:i + 5]) for i in range(len(w) - 4)}

    for a, b in pairs:
        ga, gb = grams(a), grams(b)
        true = len(ga & gb) / len(ga | gb)
        ours = minhash_signatures([a, b], S)
        est_ours = float((ours[0] == ours[1]).mean())
        ms = [datasketch.MinHash(num_perm=112, seed=1) for _ in range(2)]
        for m, g in zip(ms, (ga, gb)):
            m.update_batch([s.encode() for s in sorted(g)])
        est_ds = ms[0].jaccard(ms[1])
        # 112 permutations: standard error sqrt(J(1-J)/112) <= 0.047; allow ~3 sigma.
        assert abs(est_ours - true) < 0.15 and abs(est_ds - true) < 0.15
        assert abs(est_ours - est_ds) < 0.2


def test_signatures_same_across_shards_and_processes():
    texts = [f"document number {i} says " + "lorem ipsum dolor sit amet " * (i % 7 + 1)
             for i in range(50)]
    whole = minhash_signatures(texts, S)
    shards = np.concatenate([minhash_signatures(texts[i:i + 13], S) for i in range(0, 50, 13)])
    np.testing.assert_array_equal(whole, shards)
    one = [minhash_signatures([t], S)[0] for t in texts[:5]]
    np.testing.assert_array_equal(whole[:5], np.array(one))
    # A fresh interpreter (different hash() salt, empty word cache) gives the same bytes.
    code = ("import sys; from lmforge.curate.dedup import *; "
            "sys.stdout.write(minhash_signatures([sys.argv[1]], MinHashSettings())[0]"
            ".tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code, texts[3]], capture_output=True,
                         text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert out == whole[3].tobytes().hex()


# ---------------------------------------------------------------------------------------
# clustering


def _sigs(rows: list[list[int]], settings: MinHashSettings) -> np.ndarray:
    """Signatures whose band b is filled with rows[i][b] (each band's value repeated)."""
    return np.repeat(np.array(rows, dtype=np.uint32), settings.rows, axis=1)


def test_clusters_lowest_index_and_transitive():
    s = MinHashSettings(bands=3, rows=2)
    sig = _sigs([
        [1, 2, 3],     # 0
        [10, 20, 30],  # 1
        [99, 21, 31],  # 2: band 1 differs from 1 ...
        [98, 20, 32],  # 3: ... but shares band 1 with 1 -> 1, 3 join
        [97, 21, 33],  # 4: shares band 1 with 2 -> 2, 4 join
        [96, 77, 30],  # 5: band 2 with 1 -> cluster {1, 3, 5}
        [1, 2, 3],     # 6: identical to 0
        [95, 76, 33],  # 7: band 2 with 4 -> {2, 4, 7}
    ], s)
    reps = near_duplicate_clusters(sig, s)
    assert reps.dtype == np.int64
    assert reps.tolist() == [0, 1, 2, 1, 2, 1, 0, 2]
    # Order decides: reversed input keeps the other end of each cluster.
    rev = near_duplicate_clusters(sig[::-1].copy(), s)
    assert rev.tolist() == [0, 1, 2, 0, 2, 0, 2, 1]


def test_one_differing_row_in_every_band_means_no_match():
    s = MinHashSettings(bands=4, rows=3)
    a = np.arange(12, dtype=np.uint32)[None, :]
    b = a.copy()
    b[0, ::3] += 1  # first row of every band differs
    assert near_duplicate_clusters(np.concatenate([a, b]), s).tolist() == [0, 1]
    b[0, 3] -= 1  # band 1 now equal
    assert near_duplicate_clusters(np.concatenate([a, b]), s).tolist() == [0, 0]


def test_clusters_match_reference_union_find():
    rng = np.random.default_rng(0)
    s = MinHashSettings(bands=5, rows=2)
    n = 3000
    # Few distinct values per band: many collisions, long transitive chains.
    sig = _sigs(rng.integers(0, 6000, size=(n, s.bands)).tolist(), s)
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for band in range(s.bands):
        first: dict[int, int] = {}
        for i, v in enumerate(sig[:, band * s.rows].tolist()):
            j = first.setdefault(v, i)
            ri, rj = find(i), find(j)
            parent[max(ri, rj)] = min(ri, rj)
    expected = [find(i) for i in range(n)]
    got = near_duplicate_clusters(sig, s)
    assert got.tolist() == expected
    sizes = np.bincount(np.array(expected))
    assert 100 < len(set(expected)) < n - 500 and sizes.max() > 10  # long chains, not one blob
    np.testing.assert_array_equal(got, near_duplicate_clusters(sig, s))  # deterministic


def test_clusters_reject_wrong_signatures():
    with pytest.raises(LmforgeError, match="expected"):
        near_duplicate_clusters(np.zeros((3, 100), dtype=np.uint32), S)
    with pytest.raises(LmforgeError, match="unsigned"):
        near_duplicate_clusters(np.zeros((3, 112), dtype=np.float32), S)
    assert near_duplicate_clusters(np.zeros((0, 112), dtype=np.uint32), S).shape == (0,)


# ---------------------------------------------------------------------------------------
# planted near-duplicates in real text


def _tinystories(root: Path, count: int) -> list[str]:
    """Distinct TinyStories documents of >= 80 words: whole stories of the V1 train head
    (stories there are separated by one newline, paragraphs by a blank line; SOURCE.md),
    then runs of V1 validation paragraphs (story boundaries are not recoverable there)."""
    train = "".join(p.read_text(encoding="utf-8")
                    for p in sorted(root.glob("tinystories_v1_train_head_part*.txt")))
    docs = [s.strip() for s in re.split(r"(?<!\n)\n(?!\n)", train) if len(s.split()) >= 80]
    valid = "".join(p.read_text(encoding="utf-8")
                    for p in sorted(root.glob("tinystories_v1_valid_part*.txt")))
    run: list[str] = []
    for para in valid.split("\n\n"):
        if para.strip():
            run.append(para.strip())
        if sum(len(p.split()) for p in run) >= 80:
            docs.append("\n\n".join(run))
            run = []
    return list(dict.fromkeys(docs))[:count]


def _shingles(text: str) -> set[int]:
    return set(dedup.ngram_hashes(dedup.word_hashes(dedup.simplify_words(text)), 5).tolist())


def _jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b)


def _without_natural_duplicates(docs: list[str], below: float) -> list[str]:
    """Drop every document whose exact 5-gram Jaccard with an earlier kept one reaches
    `below`, so the only near-duplicates left are the planted ones. Candidate pairs share a
    5-gram found in at most 20 documents (a pair at J >= 0.4 shares ~60+ 5-grams, they
    cannot all be that common)."""
    sets = [_shingles(d) for d in docs]
    postings: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for h in s:
            postings[h].append(i)
    dropped: set[int] = set()
    for ids in postings.values():
        if 1 < len(ids) <= 20:
            for k, i in enumerate(ids):
                for j in ids[k + 1:]:
                    if i not in dropped and j not in dropped and \
                            _jaccard(sets[i], sets[j]) >= below:
                        dropped.add(j)
    return [d for i, d in enumerate(docs) if i not in dropped]


FOOTERS = [
    "Thanks for reading! Subscribe to our newsletter to get a new story in your inbox "
    "every week.",
    "Copyright 2024 Bedtime Stories Online. All rights reserved. Visit our website for more "
    "stories for kids.",
]


def _plant(docs: list[str], n: int, edit_rate: float, seed: int
           ) -> tuple[list[str], list[int], list[str]]:
    """n near-duplicates of distinct originals, cycling through four kinds of change."""
    rng = random.Random(seed)
    vocab = sorted({w for d in docs for w in d.split()})
    originals = rng.sample(range(len(docs)), n)
    kinds = ["word_edits", "rewrapped", "footer", "trimmed"]
    plants, kind_of = [], []
    for j, o in enumerate(originals):
        words = docs[o].split()
        kind = kinds[j % 4]
        if kind == "word_edits":  # substitute or delete edit_rate of the words
            for i in sorted(rng.sample(range(len(words)), max(1, round(edit_rate * len(words)))),
                            reverse=True):
                if rng.random() < 0.5:
                    words[i] = rng.choice(vocab)
                else:
                    del words[i]
            text = " ".join(words)
        elif kind == "rewrapped":  # every line break moved
            lines, i = [], 0
            while i < len(words):
                step = rng.randint(6, 14)
                lines.append(" ".join(words[i:i + step]))
                i += step
            text = "\n".join(lines)
        elif kind == "footer":  # ~17 words of boilerplate appended
            text = docs[o] + "\n\n" + rng.choice(FOOTERS)
        else:  # 5% of the words cut from the start and/or the end
            k = max(1, round(0.05 * len(words)))
            a = rng.randint(0, k)
            text = " ".join(words[a:len(words) - (k - a)])
        plants.append(text)
        kind_of.append(kind)
    return plants, originals, kind_of


def _pairs(reps: np.ndarray) -> set[tuple[int, int]]:
    clusters: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(reps.tolist()):
        clusters[r].append(i)
    return {(m[i], m[j]) for m in clusters.values() for i in range(len(m))
            for j in range(i + 1, len(m))}


def test_planted_near_duplicates_recall_and_precision(shared_data):
    docs = _without_natural_duplicates(_tinystories(shared_data / "tinystories", 1600), 0.4)
    docs = docs[:1500]
    assert len(docs) == 1500
    # Word edits at 1.5%: with 5-grams each edit breaks up to 5 shingles, so 1.5% already
    # gives a Jaccard of ~0.8-0.9; ~5% edits fall to ~0.56-0.74, around the 0.72 threshold
    # (see the next test).
    plants, originals, kinds = _plant(docs, 300, edit_rate=0.015, seed=0)
    jac = [_jaccard(_shingles(docs[o]), _shingles(p)) for o, p in zip(originals, plants)]
    by_kind = {k: [j for j, kk in zip(jac, kinds) if kk == k] for k in set(kinds)}
    # Every plant is a near-duplicate by the definition the settings target.
    assert min(jac) > S.threshold() + 0.05, {k: min(v) for k, v in by_kind.items()}

    texts = docs + plants
    reps = near_duplicate_clusters(minhash_signatures(texts, S), S)
    predicted = _pairs(reps)
    truth = {(o, len(docs) + j) for j, o in enumerate(originals)}
    found = len(predicted & truth)
    recall, precision = found / len(truth), found / len(predicted)
    print("\nplanted Jaccard: " + ", ".join(
        f"{k} min {min(v):.3f} median {np.median(v):.3f}" for k, v in sorted(by_kind.items())))
    print(f"recall {recall:.4f} precision {precision:.4f} "
          f"({found} of {len(truth)} planted pairs, {len(predicted)} predicted)")
    assert recall >= 0.95 and precision >= 0.95
    # Each kept document is the lowest index of its cluster: originals survive, plants go.
    assert all(reps[o] == o for o in originals)


def test_detection_follows_the_lsh_curve(shared_data):
    """Below the threshold the LSH should mostly NOT join: 5% word edits (Jaccard ~0.6) are
    found at the rate 1 - (1 - J^r)^b predicts, not at the rate of strong duplicates."""
    docs = _without_natural_duplicates(_tinystories(shared_data / "tinystories", 1000), 0.4)
    plants, originals, kinds = _plant(docs, 400, edit_rate=0.05, seed=1)
    idx = [j for j, k in enumerate(kinds) if k == "word_edits"]
    jac = np.array([_jaccard(_shingles(docs[originals[j]]), _shingles(plants[j])) for j in idx])
    texts = docs + [plants[j] for j in idx]
    reps = near_duplicate_clusters(minhash_signatures(texts, S), S)
    found = np.array([reps[len(docs) + k] == reps[originals[j]] for k, j in enumerate(idx)])
    expected = 1 - (1 - jac ** S.rows) ** S.bands
    print(f"\n5% edits: Jaccard median {np.median(jac):.3f}, found {found.mean():.3f}, "
          f"expected {expected.mean():.3f}")
    assert np.median(jac) < S.threshold()
    assert abs(found.mean() - expected.mean()) < 0.12
    assert found.mean() < 0.6
