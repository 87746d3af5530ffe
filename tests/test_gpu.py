"""GPU readiness: bf16 autocast, SDPA's flash kernel, compiled blocks, fused AdamW, greedy
generation and checkpoints on an NVIDIA GPU.

Every test here is marked `gpu`, which the default run leaves out, and skips, saying why, where
torch sees no CUDA device. Run them with `pytest -m gpu`, or with `bash bench/gpu_check.sh`,
which also times training and decoding (bench/gpu_check.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.engine.generate import generate_batch, generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.runtime import default_dtype_for, measure_matmul_peak
from lmforge.train.batches import TokenWindows
from lmforge.train.checkpoint import latest_checkpoint, load_checkpoint
from lmforge.train.loop import autocast_dtype, train
from lmforge.train.objectives import NextToken
from lmforge.train.optim import build_optimizers
from lmforge.train.settings import TrainSettings

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device: these tests need an NVIDIA GPU and a CUDA build "
                              "of torch"),
]

# Head size 64 (the flash kernel takes multiples of 8 up to 256), grouped-query attention as
# the presets below gpt2-124m use it, and a vocabulary big enough for a real head matmul.
GQA = ModelDesign(n_layers=2, d_model=128, n_heads=2, n_kv_heads=1, vocab_size=512,
                  context_length=128, name="gpu-gqa")
MHA = GQA.replace(n_kv_heads=2, name="gpu-mha")  # gpt2-124m's layout: a kv head per head
CUDA = torch.device("cuda")


class ArraySource:
    """Token data in memory, shaped like TokenShards for the loop."""

    def __init__(self, tokens: np.ndarray):
        self.array, self.tokens = tokens, len(tokens)

    def get(self, start: int, length: int) -> np.ndarray:
        return self.array[start:start + length]


def periodic(n: int, vocab: int, period: int = 37, seed: int = 0) -> np.ndarray:
    # Learnable (it repeats), so a few steps move the loss and bf16 has something to track.
    pattern = np.random.default_rng(seed).integers(0, vocab, period)
    return np.resize(pattern, n).astype(np.uint16)


def settings(**kw) -> TrainSettings:
    base = dict(steps=4, batch_tokens=1024, micro_batch=8, seq_len=64, lr=3e-3, warmup_steps=1,
                eval_every=10**6, eval_batches=1, checkpoint_every=10**6, device="cuda")
    return TrainSettings(**{**base, **kw})


def windows(s: TrainSettings, vocab: int) -> TokenWindows:
    return TokenWindows(ArraySource(periodic(50_000, vocab)), ArraySource(periodic(5_000, vocab)),
                        s.seq_len, s.micro_batch, s.accumulation, s.eval_batches)


def fresh(d: ModelDesign = GQA) -> Transformer:
    return initialize(Transformer(d), "gpt2", seed=0)


def batch(d: ModelDesign, rows: int = 4, seq: int = 64, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, d.vocab_size, (rows, seq + 1), generator=g)
    return ids[:, :-1].to(CUDA), ids[:, 1:].to(CUDA)


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 comparisons mean fp32: no TF32 matmuls (torch's default, set here, not assumed)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_dtype_auto_is_bf16_autocast_and_the_peak_is_timed_in_bf16():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 (before Ampere): training stays fp32 here")
    assert default_dtype_for(CUDA) == torch.bfloat16
    assert autocast_dtype(TrainSettings(), CUDA) == torch.bfloat16  # dtype "auto"
    assert autocast_dtype(TrainSettings(dtype="float32"), CUDA) is None
    peak = measure_matmul_peak(CUDA, size=4096, seconds=0.2)
    assert peak.dtype == "bfloat16" and peak.device.startswith("cuda")
    # Any CUDA GPU with bf16 does over 10 TFLOP/s; none does 5 PFLOP/s (B200: 2.25 dense).
    assert 10e12 < peak.flops_per_second < 5e15


def test_bf16_autocast_training_tracks_fp32(tmp_path):
    """The loop on CUDA in bf16 autocast (dtype auto) and in fp32 from the same weights and
    data: finite losses within 2% of each other over four steps at lr 3e-3 (bf16 keeps about
    three significant digits; the first step's loss, before any update, within 1%)."""
    histories = {}
    for dtype in ("auto", "float32"):
        s = settings(dtype=dtype)
        result = train(fresh(), NextToken(), windows(s, GQA.vocab_size), s, tmp_path / dtype,
                       show_progress=False)
        histories[dtype] = [r["loss"] for r in result.history]
    bf16, fp32 = histories["auto"], histories["float32"]
    assert len(bf16) == len(fp32) == 4
    assert all(math.isfinite(x) for x in bf16 + fp32)
    assert bf16[0] == pytest.approx(fp32[0], rel=1e-2)
    assert bf16 == pytest.approx(fp32, rel=2e-2)
    assert fp32[-1] < fp32[0]  # it learns: the comparison is of a moving loss


@pytest.mark.parametrize("design", [GQA, MHA], ids=["gqa", "mha"])
def test_causal_training_path_runs_on_the_flash_kernel(design):
    """Restricted to FLASH_ATTENTION, SDPA raises when it cannot use it; the model's causal,
    unmasked training forward and backward in bf16 autocast must not (rotary's fp32 tables
    upcast q and k, and autocast has to bring them back to bf16 for flash to take them)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16: the flash kernel needs bf16 or fp16")
    model = fresh(design).to(CUDA).train()
    x, y = batch(design)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, targets=y)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_compiled_blocks_match_eager_on_cuda():
    eager = fresh().to(CUDA)
    compiled = fresh().to(CUDA).compile_blocks()
    x, y = batch(GQA)
    # fp32: the same math up to kernel fusion and summation order.
    losses = []
    for model in (eager, compiled):
        loss = model(x, targets=y)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
    if torch.cuda.is_bf16_supported():  # and as training runs on a GPU: bf16 autocast
        with torch.autocast("cuda", dtype=torch.bfloat16):
            a, b = eager(x, targets=y).item(), compiled(x, targets=y).item()
        assert b == pytest.approx(a, rel=1e-2)


def test_adamw_is_fused_on_cuda():
    model = fresh().to(CUDA)
    for name in ("adamw", "muon"):
        optimizers = build_optimizers(model, name, 1e-3, 0.1, (0.9, 0.95), 0.02, CUDA)
        adamw = [o for o in optimizers if isinstance(o, torch.optim.AdamW)]
        assert len(adamw) == 1 and adamw[0].defaults["fused"] is True, name
    before = model.lm_head.weight.detach().clone()
    x, y = batch(GQA)
    model(x, targets=y).backward()
    optimizers[-1].step()  # the fused kernel runs (muon's AdamW holds the embedding)
    assert not torch.equal(model.lm_head.weight, before)
    assert torch.isfinite(model.lm_head.weight).all()


def test_greedy_generation_on_cuda_equals_cpu():
    """fp32 on both devices: the same tokens, one prompt at a time and batched. The head is
    scaled up (as tests/test_engine.py does) so greedy choices are apart; the logits along each
    generated sequence agree within 1e-3 (fp32 summation order), and the top two logits of
    every choice made are further apart than twice the largest difference, so no choice was a
    tie that rounding could flip."""
    cpu_model = fresh().eval()
    with torch.no_grad():
        cpu_model.lm_head.weight.mul_(20)
    gpu_model = Transformer(GQA)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model = gpu_model.to(CUDA).eval()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, GQA.vocab_size, (n,), generator=g).tolist() for n in (5, 12, 9)]
    params = SamplingParams(temperature=0, max_new_tokens=24)
    on_cpu = [list(generate_tokens(cpu_model, p, params)) for p in prompts]
    on_gpu = [list(generate_tokens(gpu_model, p, params)) for p in prompts]
    assert on_gpu == on_cpu
    assert generate_batch(gpu_model, prompts, params) == on_cpu
    for prompt, out in zip(prompts, on_cpu):
        with torch.no_grad():  # the logits along the whole generated sequence, no cache
            ids = torch.tensor([prompt + out])
            a, b = cpu_model(ids), gpu_model(ids.to(CUDA)).cpu()
        diff = (a - b).abs().max().item()
        assert diff < 1e-3
        top2 = a[0, len(prompt) - 1:-1].topk(2, dim=-1).values  # the positions that chose
        assert (top2[:, 0] - top2[:, 1]).min().item() > 2 * diff


def test_a_checkpoint_saved_on_cuda_loads_and_resumes_on_cpu(tmp_path):
    """Train two steps on the GPU (fused AdamW state on the GPU), load the checkpoint into a
    CPU model and CPU optimizer: the same weights and moments; then the loop resumes the run on
    the CPU from that checkpoint."""
    s = settings(steps=2, checkpoint_every=1)
    gpu_model = fresh()
    train(gpu_model, NextToken(), windows(s, GQA.vocab_size), s, tmp_path, show_progress=False)
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "step_0000002"
    cpu_model = fresh().to("cpu")
    cpu_opts = build_optimizers(cpu_model, "adamw", s.lr, s.weight_decay, (s.beta1, s.beta2),
                                s.muon_lr, torch.device("cpu"))
    state = load_checkpoint(ckpt, cpu_model, cpu_opts)
    assert state["step"] == 2
    for (name, a), b in zip(gpu_model.state_dict().items(), cpu_model.state_dict().values()):
        assert b.device.type == "cpu"
        assert torch.equal(a.cpu(), b), name
    moments = [st["exp_avg"] for st in cpu_opts[0].state.values()]
    assert moments and all(m.device.type == "cpu" and m.abs().sum() > 0 for m in moments)
    resumed = fresh()
    more = TrainSettings(**{**s.to_dict(), "steps": 3, "device": "cpu"})
    result = train(resumed, NextToken(), windows(more, GQA.vocab_size), more, tmp_path,
                   show_progress=False)
    assert result.steps == 3 and math.isfinite(result.train_loss)
    assert next(resumed.parameters()).device.type == "cpu"
