"""The foundation as a user meets it: the commands of the README, and clean errors."""

import json
import os
import re
import shlex
from pathlib import Path

import pytest
import torch

WORDS = ("the quick brown fox jumps over a lazy dog while os path join builds file names "
         "from parts and textwrap dedent removes common leading whitespace").split()


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    rng = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(400):
        idx = torch.randint(0, len(WORDS), (12,), generator=rng).tolist()
        lines.append(" ".join(WORDS[i] for i in idx) + ".")
    f = tmp_path / "docs.txt"
    f.write_text("\n".join(lines), encoding="utf-8")
    return f


@pytest.fixture
def design_file(tmp_path: Path) -> Path:
    f = tmp_path / "mini.toml"
    f.write_text("[model]\nn_layers = 2\nd_model = 64\nn_heads = 4\nn_kv_heads = 2\n"
                 "vocab_size = 400\ncontext_length = 64\n")
    return f


def artifact_id(text: str, kind: str) -> str:
    return next(w.strip(":,()") for w in text.split() if w.startswith(f"{kind}-"))


@pytest.fixture
def model_v0(cli, corpus_file, design_file):
    code, out, err = cli("tokenizer", "train", "--input", corpus_file, "--vocab-size", 400)
    assert code == 0, err
    tok = artifact_id(out, "tokenizer")
    code, out, err = cli("init", "--design", design_file, "--tokenizer", tok, "--seed", 1)
    assert code == 0, err
    return artifact_id(out, "model"), tok


def test_help_lists_every_verb_with_a_purpose(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for verb in ("design", "corpus", "tokenizer", "init", "generate", "registry", "export",
                 "import", "run"):
        assert verb in out


# What rich would read as a markup tag (and drop from the text shown): `[train]`, `[default: 1]`.
RICH_TAG = re.compile(r"(?<!\\)\[[a-z#/@][^\[]*?\]")


def test_no_help_text_loses_words_to_rich_markup():
    """--help is rendered as rich markup: an unescaped `[default: 1]` vanishes from the page."""
    import typer

    from lmforge.cli.app import app

    def texts(command, path):
        yield path, command.help or ""
        for param in command.params:
            yield f"{path} {param.name}", getattr(param, "help", None) or ""
        for name, sub in getattr(command, "commands", {}).items():
            yield from texts(sub, f"{path} {name}")

    lost = [(where, m.group(0)) for where, text in texts(typer.main.get_command(app), "lmforge")
            for m in RICH_TAG.finditer(text)]
    assert not lost


def test_an_error_naming_brackets_prints_them_verbatim(cli):
    """A user's path is not markup: `[/]` in it must neither vanish nor crash the printer."""
    code, _, err = cli("design", "--file", "runs[/]/d[bold].toml", "--no-benchmark")
    one_clean_error(code, err, "runs[/]/d[bold].toml", "[model] table")


def test_design_json_and_registration(cli):
    code, out, err = cli("design", "--preset", "tiny", "--json", "--no-benchmark")
    assert code == 0, err
    report = json.loads(out)
    assert report["params"]["total"] == 4_000_000
    assert report["artifact"].startswith("design-")
    code, out, _ = cli("registry", "ls", "--kind", "design", "--json")
    assert json.loads(out.splitlines()[0])["id"] == report["artifact"]


def test_init_generate_and_lineage(cli, model_v0):
    model, tok = model_v0
    code, out, err = cli("generate", model, "--prompt", "the quick", "--max-tokens", 10,
                         "--seed", 0)
    assert code == 0, err
    assert out.startswith("the quick")
    _, again, _ = cli("generate", model, "--prompt", "the quick", "--max-tokens", 10, "--seed", 0)
    assert again == out  # seeded sampling is reproducible
    code, out, _ = cli("registry", "lineage", model)
    assert code == 0 and tok in out and "design-" in out
    code, out, _ = cli("registry", "show", model)
    assert "initialized" in out and "model.safetensors" in out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every tensor equal, bit for bit, under the same name, shape and dtype."""
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        assert (got[name].shape, got[name].dtype) == (w.shape, w.dtype), name
        assert torch.equal(got[name], w), name


def test_export_loads_in_transformers_and_imports_back(cli, model_v0, tmp_path):
    transformers = pytest.importorskip("transformers")
    from lmforge.model.io import load_model_dir

    model, _ = model_v0
    out_dir = tmp_path / "hf"
    code, _, err = cli("export", model, "--format", "hf", "--out", out_dir)
    assert code == 0, err
    hf = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
    ours, tok = load_model_dir(out_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out_dir)
    text = "the lazy dog"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    ids = torch.tensor([[tok.bos_id] + tok.encode(text) * 3])
    with torch.no_grad():
        assert torch.allclose(ours(ids), hf(input_ids=ids).logits, atol=1e-4)
    code, out, err = cli("import", out_dir, "--name", "round-trip")
    assert code == 0, err
    imported = artifact_id(out, "model")
    # The round trip loses nothing: the imported weights are the exported ones, which are
    # the original model's (float32 export: a copy).
    models = cli.workspace / "artifacts" / "model"
    exported = _tensors(out_dir / "model.safetensors")
    assert_same_tensors(_tensors(models / imported / "model.safetensors"), exported)
    assert_same_tensors(exported, _tensors(models / model / "model.safetensors"))
    code, _, _ = cli("generate", imported, "--prompt", "the", "--max-tokens", 3)
    assert code == 0


def test_a_bfloat16_export_imports_as_the_same_numbers(cli, model_v0, tmp_path):
    model, _ = model_v0
    out_dir = tmp_path / "hf16"
    code, _, err = cli("export", model, "--format", "hf", "--out", out_dir, "--dtype", "bfloat16")
    assert code == 0, err
    exported = _tensors(out_dir / "model.safetensors")
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}
    code, out, err = cli("import", out_dir)
    assert code == 0, err
    imported = _tensors(cli.workspace / "artifacts" / "model" / artifact_id(out, "model")
                        / "model.safetensors")
    # Imported models are kept in float32; bfloat16 -> float32 is exact.
    assert_same_tensors(imported, {k: v.float() for k, v in exported.items()})


def one_clean_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("error:")
    for w in words:
        assert w in err, err


def test_bad_input_gets_one_clear_line_and_exit_2(cli, tmp_path, corpus_file):
    code, _, err = cli("design", "--preset", "huge", "--no-benchmark")
    one_clean_error(code, err, "unknown design preset 'huge'", "tiny")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    code, _, err = cli("design", "--file", bad, "--no-benchmark")
    one_clean_error(code, err, "malformed TOML", "bad.toml")
    code, _, err = cli("tokenizer", "train", "--input", tmp_path / "missing.txt")
    one_clean_error(code, err, "missing.txt")
    code, _, err = cli("generate", "model-0000")
    one_clean_error(code, err, "model-0000")


def test_tokenizer_larger_than_the_model_vocab_is_refused(cli, corpus_file, tmp_path):
    code, out, _ = cli("tokenizer", "train", "--input", corpus_file, "--vocab-size", 400)
    tok = artifact_id(out, "tokenizer")
    before = sorted(p.name for p in (cli.workspace / "artifacts").rglob("*"))
    code, _, err = cli("init", "--design", "tiny", "--tokenizer", tok, "--vocab-size", 300)
    one_clean_error(code, err, "vocab")
    after = sorted(p.name for p in (cli.workspace / "artifacts").rglob("*"))
    assert after == before  # nothing written half-way


def test_corrupted_weights_are_refused_naming_the_file(cli, model_v0):
    model, _ = model_v0
    weights = next((cli.workspace / "artifacts" / "model").glob(f"{model}*/model.safetensors"))
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01
    weights.write_bytes(bytes(data))
    code, _, err = cli("generate", model, "--prompt", "the")
    one_clean_error(code, err, "model.safetensors", model)


def test_approval_is_refused_with_a_working_command_then_follows_a_passing_eval(
        cli, model_v0, tmp_path):
    _, tok = model_v0
    design = tmp_path / "long.toml"  # room for the longest held-out docstring
    design.write_text("[model]\nn_layers = 1\nd_model = 32\nn_heads = 2\nn_kv_heads = 1\n"
                      "vocab_size = 400\ncontext_length = 512\n")
    code, out, err = cli("init", "--design", design, "--tokenizer", tok, "--seed", 2)
    assert code == 0, err
    model = artifact_id(out, "model")
    code, _, err = cli("registry", "promote", model, "pretrained", "--reason", "imagine it was")
    assert code == 0, err
    code, _, err = cli("registry", "promote", model, "approved", "--reason", "release")
    one_clean_error(code, err, f"{model} has no eval-report with gates",
                    f"{model} has no redteam-report with gates", "--suite builtin", "--force")
    for missing in ("not needed", "lmforge finetune", "--model"):
        assert missing not in err
    # The hints' commands run as written (--limit and the like only keep the test short).
    flat = " ".join(err.split())
    hint = re.search(r"`(lmforge eval [^`]+)`", flat).group(1)
    red_hint = re.search(r"`(lmforge redteam [^`]+)`", flat).group(1)
    code, out, err = cli(*shlex.split(hint)[1:], "--limit", 10)
    assert code == 0, err
    failed = artifact_id(out, "eval-report")
    assert "gates FAILED" in out  # an untrained model is far from 2 bits per byte
    code, _, err = cli("registry", "promote", model, "approved", "--reason", "release")
    one_clean_error(code, err, f"no eval-report of {model} passed its gates",
                    f"{failed}: gates failed")
    code, out, err = cli("eval", model, "--suite", "pydocs", "--limit", 10,
                         "--gate", "docstrings_bpb/bpb <= 1000")
    assert code == 0, err
    passed = artifact_id(out, "eval-report")
    # A passing evaluation is not enough: the red-team report is required too.
    code, _, err = cli("registry", "promote", model, "approved", "--reason", "release")
    one_clean_error(code, err, f"{model} has no redteam-report with gates")
    short = ("--limit", 3, "--benign-limit", 3, "--attempts", 1, "--max-new-tokens", 8,
             "--categories", "direct,jailbreak,over_refusal", "--device", "cpu")
    code, out, err = cli(*shlex.split(red_hint)[1:], *short)
    assert code == 0, err
    # An untrained model writes bytes that are not UTF-8: too many unjudged answers.
    assert "gates FAILED" in " ".join(out.split())
    code, out, err = cli(*shlex.split(red_hint)[1:], *short, "--gate", "unjudged <= 1")
    assert code == 0, err
    red = artifact_id(out, "redteam-report")
    code, out, err = cli("registry", "promote", model, "approved", "--reason", "release")
    assert code == 0, err
    assert f"{model}: pretrained -> approved" in out and "forced" not in out
    assert f"{passed} passed its gates; {red} passed its gates" in " ".join(out.split())
    code, out, _ = cli("registry", "ls", "--state", "approved", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [model]


def test_every_command_an_approval_hint_names_exists(cli):
    from lmforge.registry.lifecycle import APPROVAL_REPORTS

    commands = [need.command for need in APPROVAL_REPORTS if need.command]
    assert commands  # at least the evaluation
    for command in commands:
        verb = shlex.split(command)[1]
        code, _, err = cli(verb, "--help")
        assert code == 0, (command, err)
