"""Curation throughput: lmforge's pipeline against datatrove running the same filters.

Input: the TinyStories files of ../shared/data (or --data), split into stories and written as
one JSONL file, read by both. Contenders, each on ONE worker (the figure is per core):

- datatrove: JsonlReader → FTFYFormatter → GopherRepetitionFilter → GopherQualityFilter →
  C4QualityFilter → FineWebQualityFilter → PIIFormatter → JsonlWriter, in LocalPipelineExecutor;
- lmforge, same steps: normalize (ftfy) → the `web` preset's Gopher/C4/FineWeb filters →
  email and IP scrubbing, with the language filter and deduplication off (datatrove's language
  filter needs a fastText model download, and its dedup is a separate multi-stage pipeline);
- lmforge, full default pipeline: everything `lmforge curate` does by default (language filter,
  all PII kinds, exact and MinHash near-dedup), on 1 worker and on 2.

Each contender runs `--repeats` times, alternating, and the best time counts (background load
only ever slows a run down). Prints documents/s and MB/s and the ratio to datatrove.

    python bench/curate_throughput.py
    python bench/curate_throughput.py --repeats 1 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinystories"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def write_input(data: Path, out: Path) -> tuple[int, int]:
    """TinyStories text files → one JSONL of blank-line blocks (stories, or paragraphs where
    the files do not mark story ends); (documents, UTF-8 bytes of text)."""
    from lmforge.data.read import read_documents

    docs, size = 0, 0
    with out.open("w", encoding="utf-8") as f:
        for doc in read_documents(sorted(data.glob("*.txt")), split="blank_line"):
            f.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
            docs += 1
            size += len(doc.text.encode("utf-8"))
    return docs, size


def run_datatrove(jsonl: Path, work: Path) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    out = work / "dt-out"
    LocalPipelineExecutor(
        pipeline=[JsonlReader(str(jsonl.parent), glob_pattern=jsonl.name),
                  FTFYFormatter(), GopherRepetitionFilter(), GopherQualityFilter(),
                  # FineWeb's own pipeline (and lmforge's web preset) turns this C4 rule off
                  C4QualityFilter(filter_no_terminal_punct=False), FineWebQualityFilter(),
                  PIIFormatter(),
                  JsonlWriter(str(out), compression=None)],
        tasks=1, workers=1, logging_dir=str(work / "dt-logs"), skip_completed=False,
    ).run()
    return sum(1 for f in out.glob("*.jsonl") for _ in f.open())


def run_lmforge(jsonl: Path, work: Path, raw: dict) -> int:
    from lmforge.curate.config import parse_config
    from lmforge.curate.pipeline import run_pipeline

    cfg = parse_config({"sources": {"web": {"paths": [str(jsonl)]}}, **raw}, "bench")
    out = work / "lf-out"
    out.mkdir()
    return run_pipeline(cfg, work / "lf-run", out, lambda ref: iter(())).documents


def same_filters_as_datatrove() -> dict:
    from lmforge.curate.filters import PRESETS

    off = {name: False for name in PRESETS["web"]
           if not name.startswith(("gopher", "c4", "fineweb"))}
    return {"filters": off, "pii": {"kinds": ["email", "ip"]},
            "dedup": {"exact": False, "near": False}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of .txt files")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data folder {args.data} (pass --data)")
    tmp = Path(tempfile.mkdtemp(prefix="curate-bench-"))
    try:
        jsonl = tmp / "input" / "stories.jsonl"
        jsonl.parent.mkdir()
        n_docs, n_bytes = write_input(args.data, jsonl)
        contenders: dict[str, Callable[[Path], int]] = {}
        missing = [m for m in ("datatrove", "orjson", "spacy") if not _installed(m)]
        if missing:  # orjson: JsonlReader's parser, spacy: its filters' word tokenizer
            print(f"no datatrove baseline: {', '.join(missing)} not installed "
                  "(pip install -e '.[dev]', the README's install includes it)")
        else:
            contenders["datatrove (same filters)"] = lambda w: run_datatrove(jsonl, w)
        same = same_filters_as_datatrove()
        contenders["lmforge (same filters)"] = lambda w: run_lmforge(jsonl, w, same)
        contenders["lmforge (full default)"] = lambda w: run_lmforge(jsonl, w, {})
        contenders["lmforge (full default, 2 workers)"] = \
            lambda w: run_lmforge(jsonl, w, {"workers": 2})
        best: dict[str, float] = {}
        kept: dict[str, int] = {}
        for r in range(args.repeats):
            for name, fn in contenders.items():
                work = tmp / f"w-{r}-{abs(hash(name))}"
                work.mkdir()
                start = time.perf_counter()
                kept[name] = fn(work)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
                shutil.rmtree(work)
        base = best.get("datatrove (same filters)")
        rows = []
        for name, sec in best.items():
            workers = 2 if "2 workers" in name else 1
            ratio = round(base / (sec * workers), 2) if base else None
            rows.append({"contender": name, "seconds": round(sec, 3), "kept": kept[name],
                         "docs_per_s_per_worker": round(n_docs / sec / workers, 1),
                         "mb_per_s_per_worker": round(n_bytes / 1e6 / sec / workers, 3),
                         "vs_datatrove_per_core": ratio})
        if args.json:
            print(json.dumps({"documents": n_docs, "bytes": n_bytes, "rows": rows}, indent=2))
            return
        print(f"input: {n_docs:,} documents, {n_bytes / 1e6:.2f} MB  (best of {args.repeats})")
        print(f"{'contender':<36} {'s':>7} {'kept':>6} {'docs/s/core':>12} {'MB/s/core':>10} "
              f"{'vs datatrove':>13}")
        for r in rows:
            ratio = f"{r['vs_datatrove_per_core']:.2f}x" if r["vs_datatrove_per_core"] else "-"
            print(f"{r['contender']:<36} {r['seconds']:>7.2f} {r['kept']:>6} "
                  f"{r['docs_per_s_per_worker']:>12,.0f} {r['mb_per_s_per_worker']:>10.2f} "
                  f"{ratio:>13}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
