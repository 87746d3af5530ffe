"""Near-duplicate clustering at scale: peak memory and time for N documents, and MinHash
signature throughput (lmforge's numpy MinHash against datasketch).

Clustering runs on synthetic signatures (random 32-bit values, which collide in no band by
chance) with a planted share of near-duplicates: each copies an earlier document's signature
and keeps one random band of it, so every planted pair must be joined and nothing else may
be. Clustering runs in a fresh child process that loads the signatures from a temporary
.npy file; its peak RSS is the high-water mark over the clustering call (reset through
/proc/self/clear_refs just before it, where Linux allows; otherwise the child's lifetime
peak, which also includes loading).

Signature throughput is measured on TinyStories stories (../shared/data/tinystories, ~170
words each) when present, else on synthetic text of the same length.

    python bench/dedup_memory.py                       # 1,000,000 documents (~1 min, 1 core)
    python bench/dedup_memory.py --docs 200000 --texts 2000
    python bench/dedup_memory.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmforge.curate.dedup import MinHashSettings, minhash_signatures, near_duplicate_clusters

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mib(reset_ok: bool) -> float:
    hwm = _status_kib("VmHWM") if reset_ok else None
    if hwm is None:  # ru_maxrss is KiB on Linux, bytes on macOS
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm = r // 1024 if sys.platform == "darwin" else r
    return hwm / 1024


def synthetic_signatures(n: int, settings: MinHashSettings, dup_share: float, seed: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, num_perm] uint32 signatures with planted near-duplicates; (signatures, dup, src)."""
    rng = np.random.default_rng(seed)
    sig = np.empty((n, settings.num_perm), dtype=np.uint32)
    step = 1 << 16  # fill in blocks: no full-size temporaries
    for i in range(0, n, step):
        sig[i:i + step] = rng.integers(0, 1 << 32, size=sig[i:i + step].shape, dtype=np.uint32)
    dup = np.sort(rng.choice(np.arange(1, n), size=int(dup_share * n), replace=False))
    # Each copies an earlier document that is itself no copy, so every pair shares a band.
    originals = np.setdiff1d(np.arange(n), dup)
    below = np.searchsorted(originals, dup)  # originals before each copy (>= 1: 0 is one)
    src = originals[(rng.random(len(dup)) * below).astype(np.int64)]
    kept_band = rng.integers(0, settings.bands, len(dup))
    r = settings.rows
    for i in range(0, len(dup), step):
        d, s, kb = dup[i:i + step], src[i:i + step], kept_band[i:i + step]
        fresh = rng.integers(0, 1 << 32, size=(len(d), settings.num_perm), dtype=np.uint32)
        cols = np.arange(settings.num_perm)[None, :] // r == kb[:, None]
        sig[d] = np.where(cols, sig[s], fresh)
    return sig, dup, src


def cluster_file(folder: Path) -> dict:
    """Child process: load the signatures, cluster them, save the representatives; the RSS
    figures are this fresh process's, so nothing the parent allocated hides in them."""
    settings = MinHashSettings()
    sig = np.load(folder / "signatures.npy")
    rss_loaded = (_status_kib("VmRSS") or 0) / 1024
    reset_ok = _reset_peak()
    t0 = time.perf_counter()
    reps = near_duplicate_clusters(sig, settings)
    seconds = time.perf_counter() - t0
    peak = _peak_mib(reset_ok)
    np.save(folder / "reps.npy", reps)
    return {"rss_loaded_mib": round(rss_loaded, 1), "peak_rss_mib": round(peak, 1),
            "peak_is_clustering_only": reset_ok, "cluster_seconds": round(seconds, 2)}


def bench_clustering(n: int, settings: MinHashSettings, dup_share: float) -> dict:
    t0 = time.perf_counter()
    sig, dup, src = synthetic_signatures(n, settings, dup_share, seed=0)
    made = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="lmforge-dedup-bench-") as tmp:
        folder = Path(tmp)
        np.save(folder / "signatures.npy", sig)
        sig_mib = sig.nbytes / 2**20
        del sig
        child = subprocess.run([sys.executable, __file__, "--cluster-file", str(folder)],
                               capture_output=True, text=True, check=True)
        measured = json.loads(child.stdout)
        reps = np.load(folder / "reps.npy")
    joined = reps != np.arange(n)
    # Planted pairs must share a cluster; a document outside every planted pair must not be
    # joined (random 32-bit rows never agree on a whole band by chance).
    in_pair = np.zeros(n, dtype=bool)
    in_pair[dup] = in_pair[src] = True
    return {
        "documents": n,
        "planted_duplicates": int(len(dup)),
        "signatures_mib": round(sig_mib, 1),
        **measured,
        "make_signatures_seconds": round(made, 2),
        "planted_pairs_joined": bool((reps[dup] == reps[src]).all()),
        "unplanted_joined": int((joined & ~in_pair).sum()),
        "documents_removed": int(joined.sum()),
    }


def _texts(count: int) -> tuple[list[str], str]:
    if SHARED.is_dir():
        train = "".join(p.read_text(encoding="utf-8")
                        for p in sorted(SHARED.glob("tinystories_v1_train_head_part*.txt")))
        stories = [s for s in re.split(r"(?<!\n)\n(?!\n)", train) if s.strip()]
        source = "TinyStories"
    else:
        rng = random.Random(0)
        vocab = [f"w{i}" for i in range(3000)]
        stories = [" ".join(rng.choices(vocab, k=170)) for _ in range(1000)]
        source = "synthetic"
    return (stories * (count // len(stories) + 1))[:count], source


def bench_signatures(count: int, settings: MinHashSettings) -> dict:
    texts, source = _texts(count)
    minhash_signatures(texts[:100], settings)  # warm the word cache like a running worker
    t0 = time.perf_counter()
    minhash_signatures(texts, settings)
    ours = count / (time.perf_counter() - t0)
    out = {"texts": count, "source": source,
           "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
           "numpy_docs_per_s": round(ours)}
    try:
        import datasketch
    except ImportError:
        return out
    from lmforge.curate.dedup import simplify_words

    def shingles(text: str) -> list[bytes]:
        w = simplify_words(text)
        n = settings.ngram
        if len(w) < n:
            return [" ".join(w).encode()]
        return [" ".join(w[i:i + n]).encode() for i in range(len(w) - n + 1)]

    t0 = time.perf_counter()
    # The datasketch way: SHA-1 per shingle, one MinHash per document, bulk initialisation.
    datasketch.MinHash.bulk([shingles(t) for t in texts], num_perm=settings.num_perm,
                            seed=settings.seed)
    out["datasketch_docs_per_s"] = round(count / (time.perf_counter() - t0))
    out["speedup"] = round(ours / out["datasketch_docs_per_s"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000, help="documents to cluster")
    ap.add_argument("--dup-share", type=float, default=0.1, help="share of planted duplicates")
    ap.add_argument("--texts", type=int, default=5000, help="texts for signature throughput "
                    "(0 skips it)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cluster-file", type=Path, help=argparse.SUPPRESS)  # the child's job
    args = ap.parse_args()
    if args.cluster_file:
        print(json.dumps(cluster_file(args.cluster_file)))
        return
    settings = MinHashSettings()
    result = {"settings": {"ngram": settings.ngram, "bands": settings.bands,
                           "rows": settings.rows}}
    if args.texts:
        result["signatures"] = bench_signatures(args.texts, settings)
    result["clustering"] = bench_clustering(args.docs, settings, args.dup_share)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    if "signatures" in result:
        s = result["signatures"]
        print(f"signatures ({s['texts']} {s['source']} texts, {s['mean_words']} words):")
        print(f"  lmforge numpy  {s['numpy_docs_per_s']:>8} docs/s")
        if "datasketch_docs_per_s" in s:
            print(f"  datasketch     {s['datasketch_docs_per_s']:>8} docs/s"
                  f"   (numpy {s['speedup']}x)")
    c = result["clustering"]
    print(f"clustering {c['documents']:,} documents ({c['planted_duplicates']:,} planted "
          f"near-duplicates), 14 bands x 8 rows:")
    print(f"  time            {c['cluster_seconds']} s")
    print(f"  signatures      {c['signatures_mib']} MiB")
    print(f"  RSS, loaded     {c['rss_loaded_mib']} MiB   (fresh process: Python, numpy, "
          "signatures)")
    print(f"  peak RSS        {c['peak_rss_mib']} MiB"
          + ("" if c["peak_is_clustering_only"] else "   (lifetime peak)"))
    print(f"  planted pairs joined: {c['planted_pairs_joined']}, others joined: "
          f"{c['unplanted_joined']}, removed {c['documents_removed']:,}")


if __name__ == "__main__":
    main()
