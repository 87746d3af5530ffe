"""`lmforge tokenize` + `lmforge pretrain` from the command line, and their refusals."""

import json
import random
import string

import pytest

from test_cli import artifact_id, corpus_file, design_file, one_clean_error  # noqa: F401


@pytest.fixture
def setup(cli, corpus_file, design_file, tmp_path):  # noqa: F811
    _, out, _ = cli("tokenizer", "train", "--input", corpus_file, "--vocab-size", 400)
    tok = artifact_id(out, "tokenizer")
    _, out, _ = cli("init", "--design", design_file, "--tokenizer", tok)
    model = artifact_id(out, "model")
    docs = tmp_path / "docs"  # several documents, so that validation gets some
    docs.mkdir()
    lines = corpus_file.read_text().splitlines()
    for i in range(5):
        (docs / f"part{i}.txt").write_text("\n".join(lines[i * 80:(i + 1) * 80]))
    code, out, err = cli("tokenize", "--data", docs, "--tokenizer", tok,
                         "--val-fraction", "0.2", "--workers", "1")
    assert code == 0, err
    return {"tokenizer": tok, "model": model, "tokens": artifact_id(out, "tokens"),
            "design_file": design_file, "corpus": docs}


ARGS = ("--steps", "3", "--batch-tokens", "256", "--micro-batch", "4", "--seq-len", "32",
        "--eval-every", "3", "--device", "cpu")


def test_pretrain_registers_a_pretrained_model_with_lineage(cli, setup):
    code, out, err = cli("pretrain", "--model", setup["model"], "--data", setup["tokens"], *ARGS)
    assert code == 0, err
    model = artifact_id(out, "model")
    _, out, _ = cli("registry", "ls", "--state", "pretrained", "--json")
    assert json.loads(out.splitlines()[0])["id"] == model
    _, out, _ = cli("registry", "lineage", model)
    for key in ("tokens", "tokenizer", "model"):
        assert setup[key] in out


def test_sequence_longer_than_the_context_is_refused(cli, setup):
    code, _, err = cli("pretrain", "--model", setup["model"], "--data", setup["tokens"],
                       "--steps", "3", "--batch-tokens", "512", "--micro-batch", "4",
                       "--seq-len", "128")
    one_clean_error(code, err, "seq_len 128 exceeds the model's context length 64")


def test_token_ids_beyond_the_model_vocab_are_refused(cli, setup, tmp_path):
    rich = tmp_path / "rich"  # enough distinct words for a 1000-token vocabulary
    rich.mkdir()
    rng = random.Random(0)
    for i in range(3):
        words = ("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(3000))
        (rich / f"{i}.txt").write_text(" ".join(words))
    _, out, _ = cli("tokenizer", "train", "--input", rich, "--vocab-size", 1000,
                    "--min-frequency", 1)
    big = artifact_id(out, "tokenizer")
    _, out, _ = cli("tokenize", "--data", rich, "--tokenizer", big, "--workers", "1")
    code, _, err = cli("pretrain", "--model", setup["model"], "--data",
                       artifact_id(out, "tokens"), *ARGS)
    one_clean_error(code, err, "vocab")


def test_an_empty_validation_split_is_refused(cli, setup, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("the quick brown fox " * 200)
    _, out, _ = cli("tokenize", "--data", one, "--tokenizer", setup["tokenizer"],
                    "--workers", "1")
    code, _, err = cli("pretrain", "--model", setup["model"], "--data",
                       artifact_id(out, "tokens"), *ARGS)
    one_clean_error(code, err, "validation split")


def test_resume_with_a_different_model_is_refused(cli, setup):
    cli("pretrain", "--model", setup["model"], "--data", setup["tokens"], *ARGS)
    run = next((cli.workspace / "runs").iterdir()).name
    _, out, _ = cli("init", "--design", "tiny", "--tokenizer", setup["tokenizer"])
    other = artifact_id(out, "model")
    code, _, err = cli("pretrain", "--resume", run, "--model", other)
    one_clean_error(code, err, f"run {run} trains model")
    code, out, err = cli("pretrain", "--resume", run)  # its own settings: already finished
    assert code == 0, err
