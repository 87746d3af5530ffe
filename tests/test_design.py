import json

import pytest

from lmforge.design import PRESETS, count_params, from_preset, load_toml
from lmforge.design.estimate import compute_optimal_tokens, training_flops_per_token
from lmforge.design.report import design_report
from lmforge.design.spec import ModelDesign, swiglu_hidden
from lmforge.errors import LmforgeError
from lmforge.model.transformer import Transformer


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_param_count_equals_instantiated_numel(preset):
    d = from_preset(preset)
    assert count_params(d).total == Transformer(d).num_params()


@pytest.mark.parametrize("tie", [True, False])
def test_param_count_with_and_without_tied_embeddings(tie):
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=1, vocab_size=300,
                    context_length=32, tie_embeddings=tie)
    p = count_params(d)
    assert p.total == Transformer(d).num_params()
    assert p.lm_head == (0 if tie else 300 * 64)


def test_llama_1b_preset_matches_published_size():
    # Llama 3.2 1B has 1,235,814,400 parameters (tied embeddings).
    assert count_params(from_preset("llama-1b")).total == 1_235_814_400


def test_flops_and_token_budget_follow_the_formulas():
    d = from_preset("tiny")
    p = count_params(d)
    expected = 6 * (p.non_embedding + d.vocab_size * d.d_model) + 12 * 4 * 256 * 256
    assert training_flops_per_token(d) == expected
    assert compute_optimal_tokens(d) == 20 * p.total


def test_swiglu_hidden_is_rounded_two_thirds_of_4d():
    assert swiglu_hidden(256) == 704
    assert swiglu_hidden(4096, multiple_of=256) == 11008  # Llama-7B's FFN width


@pytest.mark.parametrize("changes, words", [
    (dict(d_model=250), "not divisible by n_heads"),
    (dict(n_kv_heads=3), "does not divide n_heads"),
    (dict(context_length=0), "context_length must be a positive integer"),
    (dict(n_layers=-1), "n_layers must be a positive integer"),
    (dict(vocab_size=1.5), "vocab_size must be a positive integer"),
])
def test_invalid_designs_are_refused_with_a_reason(changes, words):
    with pytest.raises(LmforgeError, match=words):
        from_preset("tiny").replace(**changes)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(LmforgeError) as e:
        from_preset("huge")
    assert "tiny" in e.value.hint


def test_toml_design_with_preset_base(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[model]\npreset = "tiny"\nn_layers = 6\n')
    d = load_toml(f)
    assert d.n_layers == 6 and d.d_model == PRESETS["tiny"]["d_model"] and d.name == "mine"


def test_malformed_toml_and_unknown_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layers = 2")
    with pytest.raises(LmforgeError, match="malformed TOML"):
        load_toml(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[model]\npreset = "tiny"\nlayers = 2\n')
    with pytest.raises(LmforgeError, match="unknown design field"):
        load_toml(unknown)


def test_report_is_json_serializable_and_names_gpu_estimate():
    report = design_report(from_preset("tiny"), batch_size=4, peak=None, gpu="A100")
    json.dumps(report)
    assert report["time_estimates"][0]["hardware"].startswith("1x A100")
    with pytest.raises(LmforgeError, match="unknown GPU"):
        design_report(from_preset("tiny"), 4, None, gpu="Z9000")
