"""lmforge's model against the reference implementation: transformers' LlamaForCausalLM."""

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.model.hf_config import design_to_hf_config, hf_config_to_design
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer

transformers = pytest.importorskip("transformers")


def hf_twin(model: Transformer):
    cfg = design_to_hf_config(model.design, bos_id=0, eos_id=1, pad_id=2)
    cfg.pop("lmforge")
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    state = model.state_dict()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return hf.eval()


@pytest.mark.parametrize("tie, kv", [(True, 2), (False, 4), (False, 1)])
def test_logits_match_transformers_llama(tie, kv):
    d = ModelDesign(n_layers=3, d_model=128, n_heads=4, n_kv_heads=kv, vocab_size=1000,
                    context_length=128, tie_embeddings=tie, rope_theta=50000.0)
    ours = initialize(Transformer(d), "scaled", seed=0).eval()
    hf = hf_twin(ours)
    ids = torch.randint(0, d.vocab_size, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ours(ids)
        b = hf(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_config_round_trips_through_hf_names():
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=300,
                    context_length=32, tie_embeddings=True, name="rt")
    assert hf_config_to_design(design_to_hf_config(d, 0, 1, 2), "x") == d


def test_state_dict_names_and_shapes_are_hf_llamas():
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=300,
                    context_length=32)
    ours = Transformer(d)
    cfg = design_to_hf_config(d, bos_id=0, eos_id=1, pad_id=2)
    cfg.pop("lmforge")
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in hf.state_dict().items()}
    assert {n for n, _ in ours.named_parameters()} == {n for n, _ in hf.named_parameters()}


@pytest.mark.parametrize("tie", [True, False])
def test_training_loss_and_gradients_match_transformers(tie):
    """lmforge's fused head + loss against LlamaForCausalLM(labels=...): same loss, same
    gradient for every HF-named parameter."""
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=500,
                    context_length=64, tie_embeddings=tie)
    ours = initialize(Transformer(d), "scaled", seed=0).train()
    hf = hf_twin(ours).train()
    ids = torch.randint(0, d.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[0, :10] = -100  # e.g. a prompt that carries no loss
    x, y = ids[:, :-1], labels[:, 1:].contiguous()
    loss = ours(x, targets=y)
    loss.backward()
    hf_loss = hf(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
    hf_loss.backward()
    assert torch.allclose(loss, hf_loss, atol=1e-5)
    hf_grads = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        assert torch.allclose(p.grad, hf_grads[name].grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("tie", [True, False])
def test_export_then_import_keeps_every_tensor(tmp_path, tie):
    """`lmforge export --format hf` then `lmforge import`, through their functions: the file
    written holds the model's tensors under HF names, and the imported model holds exactly
    those (tied embeddings: no separate lm_head tensor in either)."""
    from safetensors.torch import load_file

    from lmforge.model.hf import export_hf, import_hf
    from lmforge.model.io import WEIGHTS, save_model_dir
    from lmforge.registry import Workspace
    from lmforge.tokenizer import train_tokenizer

    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 20, 300,
                          show_progress=False)
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=300,
                    context_length=32, tie_embeddings=tie)
    ours = initialize(Transformer(d), "scaled", seed=3)
    with Workspace.open(tmp_path / "ws") as ws:
        with ws.staging() as staged:
            save_model_dir(ours, staged, tok, "# test model\n")
            art = ws.register(staged, kind="model", stage="init", state="initialized")
        export_hf(art, tmp_path / "hf")
        back = import_hf(ws, tmp_path / "hf")
        exported = load_file(str(tmp_path / "hf" / WEIGHTS))
        imported = load_file(str(back.file(WEIGHTS)))
    want = {k: v for k, v in ours.state_dict().items() if not (tie and k == "lm_head.weight")}
    for got in (exported, imported):
        assert sorted(got) == sorted(want)
        for name, tensor in want.items():
            assert (got[name].shape, got[name].dtype) == (tensor.shape, tensor.dtype), name
            assert torch.equal(got[name], tensor), name
    assert back.id != art.id and back.metrics["params"] == ours.num_params()
