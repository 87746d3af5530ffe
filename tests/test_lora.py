"""LoRA: only adapters train, the merged weights compute what base + adapter computed, adapters
are artifacts tied to their base's weights, and the one training loop trains and resumes them."""

import copy
import json
import math
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmforge.design.spec import ModelDesign, from_preset
from lmforge.errors import LmforgeError
from lmforge.model import lora as lora_mod
from lmforge.model.init import initialize
from lmforge.model.io import WEIGHTS, load_model, save_model_dir
from lmforge.model.lora import (
    ATTENTION,
    TARGETS,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_config,
    lora_state,
    merge_adapter_stage,
    merge_lora,
    save_adapter,
    trainable_fraction,
)
from lmforge.model.transformer import Transformer
from lmforge.registry import Workspace
from lmforge.train.batches import TokenWindows
from lmforge.train.loop import Interrupted, train
from lmforge.train.objectives import NextToken
from lmforge.train.settings import TrainSettings

DESIGN = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=300,
                     context_length=64, name="unit")


def base_model(seed: int = 0) -> Transformer:
    return initialize(Transformer(DESIGN), "scaled", seed=seed).eval()


def randomize_adapters(model: Transformer, seed: int = 1, scale: float = 0.05) -> None:
    """Non-zero A and B, so the update B A is a real change to every wrapped weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_state(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def ids(batch: int = 2, length: int = 40, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, DESIGN.vocab_size, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokenizer():
    from lmforge.tokenizer import train_tokenizer
    return train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, 300,
                           show_progress=False)


def register_base(ws: Workspace, tokenizer, seed: int = 0):
    with ws.staging() as d:
        save_model_dir(base_model(seed), d, tokenizer, "# test base\n")
        return ws.register(d, kind="model", stage="init", settings={"seed": seed},
                           state="initialized", name=f"base-{seed}")


# -- the math -----------------------------------------------------------------------------------

def test_only_the_adapters_require_grad():
    model = apply_lora(base_model(), r=4, alpha=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_state(model))
    # A and B on every target of every block; every base weight kept its HF name.
    assert len(trainable) == 2 * len(TARGETS) * DESIGN.n_layers
    assert "model.layers.0.self_attn.q_proj.lora_A" in trainable
    assert set(base_model().state_dict()) <= set(model.state_dict())
    assert lora_config(model) == lora_mod.LoraConfig(4, 8.0, 0.0, TARGETS)


def test_trainable_fraction_of_the_tiny_preset():
    """r=8 on the attention projections of `tiny` (4 layers, d_model 256, 2 kv heads of 64):
    per layer 8 x (256+256) x 2 (q, o) + 8 x (256+128) x 2 (k, v) = 14,336; 57,344 in all,
    1.41% of 4.06M parameters. Every projection (the default) adds the MLP's 3 x 8 x (256+704)
    per layer: 149,504, 3.60%."""
    attention = apply_lora(Transformer(from_preset("tiny")), r=8, alpha=16, targets=ATTENTION)
    assert sum(p.numel() for p in attention.parameters() if p.requires_grad) == 57_344
    assert trainable_fraction(attention) <= 0.02
    everything = apply_lora(Transformer(from_preset("tiny")), r=8, alpha=16)
    assert sum(p.numel() for p in everything.parameters() if p.requires_grad) == 149_504
    assert 0.035 < trainable_fraction(everything) < 0.037


def test_zero_B_computes_exactly_the_base():
    """B = 0 at the start: the update adds exact zeros to the same F.linear the base runs, so
    the logits are equal bit for bit (the same computation, not a different one)."""
    base = base_model()
    wrapped = apply_lora(copy.deepcopy(base), r=8, alpha=16).eval()
    assert all(torch.count_nonzero(p) > 0 for n, p in lora_state(wrapped).items()
               if n.endswith("lora_A"))
    with torch.no_grad():
        assert torch.equal(base(ids()), wrapped(ids()))


@pytest.mark.parametrize("targets", [TARGETS, ("q_proj", "v_proj"), ("down_proj",)])
def test_merged_logits_equal_base_plus_adapter(targets):
    """W + (alpha/r) B A folded into one matrix against the two paths computed separately:
    the same sums in a different order, fp32, so equal to 1e-5 (the issue's figure)."""
    model = apply_lora(base_model(), r=4, alpha=12, targets=targets).eval()
    randomize_adapters(model)
    with torch.no_grad():
        adapted = model(ids())
        assert (adapted - base_model()(ids())).abs().max() > 1e-2  # the adapter does matter
        merged = merge_lora(model)
        plain = merged(ids())
    assert torch.allclose(plain, adapted, atol=1e-5, rtol=0), (plain - adapted).abs().max()
    assert not any(isinstance(m, LoraLinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(base_model().state_dict())
    assert all(p.requires_grad for p in merged.parameters())


def test_dropout_only_touches_the_adapter_path_in_training():
    model = apply_lora(base_model(), r=4, alpha=8, dropout=0.5)
    randomize_adapters(model)
    x = ids()
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))  # a fresh dropout mask each call
        model.eval()
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("kwargs, message", [
    ({"targets": ("q_proj", "lm_head")}, "lm_head"),
    ({"targets": ("qproj",)}, "qproj"),
    ({"targets": ()}, "none given"),
    ({"r": 0}, "r=0"),
    ({"alpha": 0}, "alpha"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_lora_settings_are_refused_with_the_valid_choices(kwargs, message):
    with pytest.raises(LmforgeError, match=message) as e:
        apply_lora(base_model(), **kwargs)
    if "targets" in kwargs:
        assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in e.value.hint


def test_applying_lora_twice_is_refused():
    model = apply_lora(base_model(), r=4)
    with pytest.raises(LmforgeError, match="already carries"):
        apply_lora(model, r=4)


# -- adapters as artifacts ----------------------------------------------------------------------

def test_adapter_saves_small_and_loads_back_on_its_base(tmp_path, tokenizer):
    with Workspace.open(tmp_path / "ws") as ws:
        base = register_base(ws, tokenizer)
        torch.manual_seed(0)
        model = apply_lora(load_model(ws, base.id)[0], r=4, alpha=8, targets=ATTENTION)
        randomize_adapters(model)
        adapter = save_adapter(ws, model, base, settings={"lr": 1e-3}, metrics={"loss": 1.0})
        assert adapter.kind == "lora-adapter" and adapter.parents == {"base": base.id}
        assert set(adapter.files) == {"adapter.safetensors", "adapter_config.json", "README.md"}
        config = json.loads(adapter.file("adapter_config.json").read_text())
        assert config["base_model"] == base.id
        assert config["base_model_sha256"] == base.files[WEIGHTS]["sha256"]
        assert (config["r"], config["alpha"], config["targets"]) == (4, 8.0, list(ATTENTION))
        assert adapter.settings == {"lr": 1e-3, "lora": lora_config(model).to_dict()}
        saved = load_file(str(adapter.file("adapter.safetensors")))
        assert set(saved) == set(lora_state(model))  # adapters only, no base weight
        assert adapter.files["adapter.safetensors"]["bytes"] * 10 < base.files[WEIGHTS]["bytes"]

        loaded, tok, art = load_adapter(ws, adapter.id)
        assert art.id == adapter.id and tok.vocab_size == tokenizer.vocab_size
        assert lora_config(loaded) == lora_config(model)
        with torch.no_grad():  # the same weights, bit for bit, through the same computation
            assert torch.equal(loaded(ids()), model.eval()(ids()))
        assert trainable_fraction(loaded) == trainable_fraction(model)


def test_adapter_on_another_base_is_refused_before_loading(tmp_path, tokenizer, monkeypatch):
    with Workspace.open(tmp_path / "ws") as ws:
        base, other = register_base(ws, tokenizer, seed=0), register_base(ws, tokenizer, seed=1)
        model = apply_lora(load_model(ws, base.id)[0], r=4)
        adapter = save_adapter(ws, model, base)

        def no_loading(*args, **kwargs):
            raise AssertionError("a base was loaded for a mismatched adapter")

        monkeypatch.setattr(lora_mod, "load_model_dir", no_loading)
        with pytest.raises(LmforgeError, match="was trained on base sha") as e:
            load_adapter(ws, adapter.id, base=other.id)
        sha, other_sha = base.files[WEIGHTS]["sha256"], other.files[WEIGHTS]["sha256"]
        assert sha[:16] in e.value.message and other_sha[:16] in e.value.message
        assert base.id in e.value.hint


def test_merge_lora_registers_a_plain_tuned_model(tmp_path, tokenizer, cli):
    with Workspace.open(cli.workspace) as ws:
        base = register_base(ws, tokenizer)
        model = apply_lora(load_model(ws, base.id)[0], r=4, alpha=8)
        randomize_adapters(model)
        adapter = save_adapter(ws, model, base, name="unit-lora")
        merged = merge_adapter_stage(ws, adapter.id)
        assert merged.kind == "model" and ws.state_of(merged.id) == "tuned"
        assert merged.parents == {"base": base.id, "adapter": adapter.id}
        plain, _, _ = load_model(ws, merged.id)  # the ordinary loader: no adapter keys left
        with torch.no_grad():  # fp32 sums in another order: 1e-5, as in the merge test
            assert torch.allclose(plain(ids()), model.eval()(ids()), atol=1e-5, rtol=0)

    code, out, err = cli("merge-lora", adapter.id)
    assert code == 0, err
    assert merged.id in out  # the same inputs give the same artifact: registration is idempotent
    code, out, err = cli("merge-lora", base.id)
    assert code == 2 and "lora-adapter" in err and "Traceback" not in err


# -- against the reference library --------------------------------------------------------------

def test_logits_match_peft_with_the_same_adapters():
    """The same base in transformers' LlamaForCausalLM under peft's LoraConfig with the same r,
    alpha and targets, the same A and B copied in: logits agree to 1e-4 (the HF parity test's
    tolerance: another attention and norm implementation), and so do the merged weights."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from lmforge.model.hf_config import design_to_hf_config

    ours = base_model()
    cfg = design_to_hf_config(DESIGN, bos_id=0, eos_id=1, pad_id=2)
    cfg.pop("lmforge")
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    targets = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")
    apply_lora(ours, r=4, alpha=12, targets=targets).eval()
    randomize_adapters(ours)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0,
                                                     target_modules=list(targets))).eval()
    slots = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, tensor in lora_state(ours).items():
            module, which = name.rsplit(".", 1)  # ...q_proj, lora_A
            slots[f"base_model.model.{module}.{which}.default.weight"].copy_(tensor)
    assert theirs.get_nb_trainable_parameters()[0] == \
        sum(p.numel() for p in ours.parameters() if p.requires_grad)
    x = ids()
    with torch.no_grad():
        a, b = ours(x), theirs(input_ids=x).logits
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
        mine = merge_lora(ours).state_dict()
        reference = theirs.merge_and_unload().state_dict()
    for name, tensor in reference.items():  # fp32 B A in either order: 1e-6
        assert torch.allclose(mine[name], tensor, atol=1e-6, rtol=0), name


# -- through the one training loop --------------------------------------------------------------

class ArraySource:
    def __init__(self, tokens: np.ndarray):
        self.array, self.tokens = tokens, len(tokens)

    def get(self, start: int, length: int) -> np.ndarray:
        return self.array[start:start + length]


PATTERN = np.random.default_rng(0).integers(0, DESIGN.vocab_size, 29)
DATA = ArraySource(np.resize(PATTERN, 20_000).astype(np.uint16))
VAL = ArraySource(np.resize(PATTERN, 2_000).astype(np.uint16))
SETTINGS = TrainSettings(steps=20, batch_tokens=256, micro_batch=4, seq_len=32, lr=1e-2,
                         warmup_steps=3, eval_every=10, eval_batches=2, checkpoint_every=10,
                         device="cpu")


def lora_model() -> Transformer:
    torch.manual_seed(0)  # the same A in every fresh model, as a seeded stage would make
    return apply_lora(base_model().train(), r=4, alpha=8)


def run(model: Transformer, run_dir, **kw):
    s = SETTINGS
    source = TokenWindows(DATA, VAL, s.seq_len, s.micro_batch, s.accumulation, s.eval_batches)
    return train(model, NextToken(), source, s, run_dir, show_progress=False, **kw)


def test_the_loop_trains_only_the_adapters_and_resumes_them(tmp_path):
    """20 steps of the one loop: every base tensor is bit-identical afterwards, every adapter
    moved, and the loss fell. A run stopped at step 10 and resumed from its checkpoint ends on
    the same adapters, bit for bit, as the uninterrupted one (the same computation twice)."""
    whole = lora_model()
    before = {k: v.clone() for k, v in whole.state_dict().items()}
    result = run(whole, tmp_path / "a")
    after = whole.state_dict()
    for name, tensor in before.items():
        if ".lora_" in name:
            assert not torch.equal(after[name], tensor), f"{name} did not train"
        else:
            assert torch.equal(after[name], tensor), f"{name} changed"
    # Rank-4 adapters alone learn the 29-token cycle: the loss ends far below chance, ln 300.
    assert result.history[-1]["loss"] < math.log(DESIGN.vocab_size) - 1.5
    saved = load_file(str(tmp_path / "a" / "checkpoints" / "step_0000020" / "model.safetensors"))
    assert set(lora_state(whole)) <= set(saved)  # checkpoints carry the adapters

    def stop(step):
        if step == 10:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Interrupted):
        run(lora_model(), tmp_path / "b", on_step=stop)
    resumed = lora_model()
    assert run(resumed, tmp_path / "b").steps == 20
    for name, tensor in lora_state(whole).items():
        assert torch.equal(lora_state(resumed)[name], tensor), name
