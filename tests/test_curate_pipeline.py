"""The curation pipeline end to end: sources → steps → dataset artifact, resume, determinism,
bad input counted rather than fatal, the CLI and the recipe step."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from lmforge.curate import pipeline as pipeline_mod
from lmforge.curate import shard_worker
from lmforge.curate.config import parse_config
from lmforge.curate.pipeline import run_pipeline
from lmforge.curate.report import report_markdown, validate_stats
from lmforge.curate.stage import curate_stage, load_stats
from lmforge.data.parts import dataset_documents
from lmforge.errors import LmforgeError
from lmforge.registry import Workspace

ADJECTIVES = ("little", "red", "happy", "old", "tall", "quiet", "bright", "small", "brave",
              "kind", "green", "sleepy", "funny", "warm", "shy", "proud")
NOUNS = ("girl", "dog", "ball", "tree", "river", "house", "bird", "cat", "boat", "garden",
         "friend", "mother", "cake", "hill", "star", "book", "window", "flower")
VERBS = ("walked", "jumped", "looked", "ran", "talked", "played", "sang", "waited", "smiled",
         "danced", "climbed", "listened")
PRONOUNS = ("she", "he", "they", "we")


N_STORIES = 16


def _story(rng: random.Random) -> str:
    """Eight random simple sentences: English enough for every web filter, and distinct
    enough that two stories share almost no word 5-grams."""
    def pick(words: tuple[str, ...]) -> str:
        return rng.choice(words)

    return " ".join(
        f"The {pick(ADJECTIVES)} {pick(NOUNS)} {pick(VERBS)} to the {pick(NOUNS)} and "
        f"{pick(PRONOUNS)} {pick(VERBS)} with the {pick(ADJECTIVES)} {pick(NOUNS)}."
        for _ in range(8))


def _stories(tmp_path: Path) -> Path:
    """A small web-like source: distinct stories, an exact copy, a near copy, junk, PII."""
    rng = random.Random(0)
    docs = [{"id": f"s{i}", "text": _story(rng)} for i in range(N_STORIES)]
    docs.append({"id": "copy", "text": docs[0]["text"]})  # exact duplicate of s0
    near = docs[1]["text"].replace("little", "small", 1) + " Subscribe to our newsletter!"
    docs.append({"id": "near", "text": near})  # near duplicate of s1
    docs.append({"id": "junk", "text": "buy now " * 3})  # too short for Gopher quality
    docs.append({"id": "pii", "text": _story(rng) + " Mail me at kid@example.com today."})
    path = tmp_path / "web.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    return path


def _run(tmp_path: Path, raw: dict, name: str = "out", **kw):
    cfg = parse_config(raw, "test")
    out = tmp_path / name
    out.mkdir()
    return run_pipeline(cfg, tmp_path / f"run-{name}", out, lambda ref: iter(()), **kw), out


def test_pipeline_removes_each_kind_of_bad_document(tmp_path):
    web = _stories(tmp_path)
    result, out = _run(tmp_path, {"sources": {"web": {"paths": [str(web)]}},
                                  "shard_documents": 5})
    docs = list(dataset_documents(out))
    ids = [d.id for d in docs]
    assert "copy" not in ids and "near" not in ids and "junk" not in ids
    assert "s0" in ids and "s1" in ids
    pii_doc = next(d for d in docs if d.id == "pii")
    assert "kid@example.com" not in pii_doc.text and "<EMAIL>" in pii_doc.text
    from lmforge.curate.filters import build_filters

    names = [s["name"] for s in result.stats["steps"]]
    filters = [f.name for f in build_filters("web")]
    assert names == ["read", "normalize", *filters, "pii", "exact_dedup", "near_dedup"]
    steps = {s["name"]: s for s in result.stats["steps"]}
    assert steps["exact_dedup"]["by_source"]["web"]["reasons"]["exact_dedup:duplicate"][
        "examples"][0]["duplicate_of"] == "s0"
    assert steps["near_dedup"]["by_source"]["web"]["reasons"]["near_dedup:near_duplicate"][
        "examples"][0]["duplicate_of"] == "s1"
    assert steps["pii"]["replaced"]["email"] == 1
    assert result.stats["sources"]["web"]["documents_in"] == N_STORIES + 4
    assert result.stats["sources"]["web"]["documents_out"] == len(docs) == result.documents


def test_bad_input_is_counted_with_file_and_line_not_fatal(tmp_path):
    web = _stories(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jsonl").write_text('{"text": "fine but short"}\n{not json\n{"body": "x"}\n')
    (bad / "garbage.txt").write_bytes(bytes(range(256)) * 4)
    with gzip.open(bad / "cut.jsonl.gz", "wb") as f:
        f.write(b'{"text": "a"}\n' * 100)
    (bad / "cut.jsonl.gz").write_bytes((bad / "cut.jsonl.gz").read_bytes()[:30])
    result, _ = _run(tmp_path, {"sources": {"web": {"paths": [str(web)]},
                                            "bad": {"paths": [str(bad)]}}})
    errors = result.stats["read_errors"]
    where = {(Path(e["file"]).name, e["line"]) for e in errors["examples"]}
    assert ("broken.jsonl", 2) in where and ("broken.jsonl", 3) in where
    assert any(name == "garbage.txt" for name, _ in where)
    assert any(name == "cut.jsonl.gz" for name, _ in where)
    assert result.stats["sources"]["web"]["documents_out"] > 0
    assert any("'bad'" in w and "removed by" in w for w in result.stats["warnings"])


def test_resume_redoes_only_unfinished_shards_and_gives_the_same_output(tmp_path, monkeypatch):
    web = _stories(tmp_path)
    raw = {"sources": {"web": {"paths": [str(web)]}}, "shard_documents": 4}
    whole, whole_out = _run(tmp_path, raw, "whole")

    calls: list[str] = []
    real = shard_worker.process_shard

    def dies_after_two(inp: str, prefix: str) -> str:
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for a kill between shards
        calls.append(prefix)
        return real(inp, prefix)

    monkeypatch.setattr(pipeline_mod, "process_shard", dies_after_two)
    cfg = parse_config(raw, "test")
    (tmp_path / "o1").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "run-resume", tmp_path / "o1", lambda r: iter(()))
    calls_before = list(calls)
    calls.clear()
    monkeypatch.setattr(pipeline_mod, "process_shard", lambda i, p: (calls.append(p),
                                                                      real(i, p))[1])
    (tmp_path / "o2").mkdir()
    resumed = run_pipeline(cfg, tmp_path / "run-resume", tmp_path / "o2", lambda r: iter(()))
    assert len(calls_before) == 2
    assert not set(calls) & set(calls_before)  # finished shards were not redone
    n_parts = len(list((tmp_path / "run-whole" / "input").glob("part-*.jsonl")))
    assert len(calls) == n_parts - 2 > 0  # the rest were
    assert resumed.stats == whole.stats
    assert [d.to_dict() for d in dataset_documents(tmp_path / "o2")] == \
        [d.to_dict() for d in dataset_documents(whole_out)]


def test_two_workers_give_the_same_bytes_as_one(tmp_path):
    web = _stories(tmp_path)
    base = {"sources": {"web": {"paths": [str(web)]}}, "shard_documents": 5}
    one, out1 = _run(tmp_path, {**base, "workers": 1}, "one")
    two, out2 = _run(tmp_path, {**base, "workers": 2}, "two")
    assert one.parts == two.parts
    for part in one.parts + ["stats.json"]:
        assert (out1 / part).read_bytes() == (out2 / part).read_bytes()


def test_per_source_presets_and_balance(tmp_path):
    web = _stories(tmp_path)
    raw = {"sources": {"web": {"paths": [str(web)]},
                       "docs": {"paths": ["pydocs"], "preset": "docs"}},
           "dedup": {"near": False},
           "balance": {"by": "documents", "weights": {"web": 0.5, "docs": 0.5},
                       "max_repeat": 1000, "total": 200}}
    result, out = _run(tmp_path, raw)
    by_source: dict[str, int] = {}
    for d in dataset_documents(out):
        by_source[d.source] = by_source.get(d.source, 0) + 1
    assert by_source["web"] == pytest.approx(100, abs=2)
    assert by_source["docs"] == pytest.approx(100, abs=2)
    mixture = next(s for s in result.stats["steps"] if s["name"] == "balance")["mixture"]
    assert mixture["sources"]["web"]["size_after"] == by_source["web"]
    # The report reads the plan balance wrote (it once looked for other key names and
    # failed on every balanced curation).
    validate_stats(result.stats, "stats.json")
    table = report_markdown(result.stats)
    assert "Share before" in table and f"{by_source['web']:,}" in table


def test_config_errors_name_the_place(tmp_path):
    with pytest.raises(LmforgeError, match=r"\[sources.web\].*unknown preset"):
        parse_config({"sources": {"web": {"paths": ["x"], "preset": "nope"}}}, "test")
    with pytest.raises(LmforgeError, match="no sources"):
        parse_config({}, "test")
    with pytest.raises(LmforgeError, match="unknown setting"):
        parse_config({"sources": {"web": "x"}, "dedupe": {}}, "test")
    with pytest.raises(LmforgeError, match="tokenizer"):
        parse_config({"sources": {"web": "x"}, "balance": {"by": "tokens"}}, "test")


def test_stage_registers_dataset_with_report_files(tmp_path):
    web = _stories(tmp_path)
    ws = Workspace.open(tmp_path / "ws")
    art = curate_stage(ws, {"sources": {"web": {"paths": [str(web)]}}}, show_progress=False)
    assert {"stats.json", "report.md"} <= set(art.files)
    assert art.metrics["documents"] == sum(1 for _ in dataset_documents(art.path))
    _, stats = load_stats(ws, art.id)
    assert stats["sources"]["web"]["documents_out"] == art.metrics["documents"]
    # same inputs and settings: the same artifact, and no run folder left behind
    again = curate_stage(ws, {"sources": {"web": {"paths": [str(web)]}}}, show_progress=False)
    assert again.id == art.id
    assert not list(ws.runs_dir.glob("curate-*"))


def test_cli_curate_and_report(cli, tmp_path):
    web = _stories(tmp_path)
    code, out, err = cli("curate", "--source", f"web={web}")
    assert code == 0, err
    dataset = out.split("dataset ")[1].split(":")[0].strip()
    code, out, err = cli("curate", "--report", dataset, "--png", tmp_path / "f.png")
    assert code == 0, err
    assert "exact_dedup:duplicate" in out and "near_dedup" in out
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = cli("curate", "--source", "web")
    assert code == 2 and "NAME=PATH" in err
    code, out, err = cli("curate", "--presets")
    assert code == 0 and "gopher_quality" in out


def _one_clean_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error:"), err
    for w in words:
        assert w in err, err


def test_cli_names_a_source_path_that_does_not_exist(cli, tmp_path):
    web = _stories(tmp_path)
    missing = tmp_path / "nowhere" / "file.jsonl"
    code, _, err = cli("curate", "--source", f"x={missing}")
    # The source, the path, and a folder that exists to look in (not "no documents").
    _one_clean_error(code, err, "source 'x'", str(missing), "does not exist",
                     f"ls {tmp_path}")
    assert "no documents" not in err
    # One missing path among good sources still stops the run before any work.
    code, _, err = cli("curate", "--source", f"web={web}", "--source", "y=typo.jsonl")
    _one_clean_error(code, err, "source 'y'", "typo.jsonl does not exist")
    # Not a path: looked up as a dataset, and the error says which source asked.
    code, _, err = cli("curate", "--source", "z=no-such-dataset")
    _one_clean_error(code, err, "source 'z'", "no-such-dataset")
    # A glob that matches nothing is an empty source; with nothing read at all the error
    # still names the pattern.
    code, _, err = cli("curate", "--source", f"g={tmp_path / 'nowhere' / '*.jsonl'}")
    _one_clean_error(code, err, "no documents in any source", "source 'g'", "*.jsonl")


def test_absent_local_paths_read_the_fallback(tmp_path):
    from lmforge.curate.sources import resolve_sources

    here = _stories(tmp_path)
    gone = str(tmp_path / "shared" / "part*.txt")
    raw = {"sources": {
        "stories": {"paths": gone, "split": "line", "fallback": "hf:org/set:train[:5]"},
        "local": {"paths": str(here), "fallback": "hf:org/set:validation"},
        "half": {"paths": [str(here), gone], "fallback": "hf:org/set:test"}}}
    cfg, notes = resolve_sources(parse_config(raw, "test"))
    paths = {s.name: s.paths for s in cfg.sources}
    # Every local path absent: the fallback; present: the local files (the default);
    # some present: the local files (the glob that matches nothing is an empty source).
    assert paths == {"stories": ["hf:org/set:train[:5]"], "local": [str(here)],
                     "half": [str(here), gone]}
    assert notes == [f"source 'stories': {gone} absent; read its fallback "
                     "hf:org/set:train[:5]"]
    assert cfg.sources[0].split == "line"  # the source's other settings stay
    with pytest.raises(LmforgeError, match="source 'm': .*missing.jsonl does not exist"):
        resolve_sources(parse_config({"sources": {"m": {
            "paths": [str(here), str(tmp_path / "missing.jsonl")],
            "fallback": "hf:org/set"}}}, "test"))


def test_fallback_reads_a_local_hf_dataset_end_to_end(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = random.Random(3)
    ds = datasets.Dataset.from_dict({"text": [_story(rng) for _ in range(12)]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hub-copy"))
    ws = Workspace.open(tmp_path / "ws")
    art = curate_stage(ws, {"sources": {"stories": {
        "paths": str(tmp_path / "absent" / "*.txt"),
        "fallback": f"hf:{tmp_path / 'hub-copy'}:train[2:10]"}}}, show_progress=False)
    docs = list(dataset_documents(art.path))
    assert 0 < len(docs) <= 8
    assert {d.id for d in docs} <= {f"stories:train:{i}" for i in range(2, 10)}  # rows 2-9
    assert art.metrics["warnings"][0].startswith("source 'stories':")
    assert "hub-copy:train[2:10]" in art.metrics["warnings"][0]

