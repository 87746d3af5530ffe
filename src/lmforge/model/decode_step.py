"""The decode step of a small model: one new token per row, with few and cheap matmuls.

A decode step multiplies one vector per row by every weight matrix, so it is bound by reading
the weights and by per-op overhead, not by arithmetic. What made it faster than
`Transformer.hidden` with the model's own `nn.Linear`s, measured on a 2-core EPYC (tiny
preset, one thread; bench/README.md has the figures):

- `x @ Wt` with the weight stored transposed (in, out) and contiguous: 1.4x or more faster
  than `F.linear(x, W)` on the (out, in) layout at one row (MKL's path for a transposed
  operand); from a few rows on, oneDNN's packed layout is faster still (`_Matrix`);
- q/k/v and gate/up concatenated into one matrix each: 17 products a token instead of 29,
  each long enough to stream well, and one rotary pass for q and k together;
- no host sync: the attention is sized by the lengths the caller counts.

So `DecodeWeights` keeps a fused copy of the projections (the model's parameters are
untouched: state dicts, training and LoRA see nothing). The copy costs the weights' memory
once more (twice once batched steps pack theirs), so it is made only for small models
(`FAST_DECODE_MAX_BYTES`), where per-step overhead decides speed; it is rebuilt whenever a
projection changes (another tensor, or its version counter moved), so a model trained
further between samples is never read stale.
Rounding differs from `F.linear` by a few 1e-7 (another summation order), as it does between
any two matmul shapes; tests/test_decode_fast_path.py checks greedy tokens are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.kv_cache import KVCache
from lmforge.model.transformer import RMSNorm, Transformer, apply_rotary

FAST_DECODE_MAX_BYTES = 256 * 2**20  # projection weights of models this small get a copy
PACKED_FROM_ROWS = 4  # steps of this many rows or more multiply with oneDNN's packed weights


class _Matrix:
    """One projection, applied as `matrix(x)` = x @ W.t() for x (rows, in).

    MKL on a transposed contiguous copy for one row or a few; from PACKED_FROM_ROWS rows on,
    oneDNN on a copy packed into its own blocked layout (a batch-16 step's products measured
    1.3-1.7x faster that way here; at one row MKL is faster). The packed copy is made on the
    first batched step, so single-stream decoding never holds it.
    """

    def __init__(self, weight: torch.Tensor):  # (out, in), as nn.Linear holds it
        self.t = weight.t().contiguous()
        self.packed: torch.Tensor | None = None
        self.pack_failed = (weight.device.type != "cpu" or weight.dtype != torch.float32
                            or not torch.backends.mkldnn.is_available())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < PACKED_FROM_ROWS or self.pack_failed:
            return x @ self.t
        if self.packed is None:
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(
                    self.t.t().contiguous(), 16)  # tuned for 16 rows, the engine's default
            except (AttributeError, RuntimeError):  # a torch built without oneDNN
                self.pack_failed = True
                return x @ self.t
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


@dataclass
class _LayerWeights:
    qkv: _Matrix  # out: heads * head_dim for q, then kv_heads * head_dim for k and for v
    o: _Matrix
    gate_up: _Matrix  # out: ffn_hidden for the gate, then ffn_hidden for up
    down: _Matrix


class DecodeWeights:
    """The model's projections fused and laid out for decoding, and what tells when they went
    stale."""

    def __init__(self, model: Transformer, weights: list[torch.Tensor]):
        self.sources = weights  # held, so that no other tensor can take their identity
        self.versions = [w._version for w in weights]
        self.layers = []
        for block in model.model.layers:
            a, m = block.self_attn, block.mlp
            self.layers.append(_LayerWeights(
                qkv=_Matrix(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])),
                o=_Matrix(a.o_proj.weight),
                gate_up=_Matrix(torch.cat([m.gate_proj.weight, m.up_proj.weight])),
                down=_Matrix(m.down_proj.weight)))
        self.head = _Matrix(model.lm_head.weight)

    def fresh(self, weights: list[torch.Tensor]) -> bool:
        """Made from these very tensors, none changed in place since (version counters)."""
        return all(w is s and w._version == v
                   for w, s, v in zip(weights, self.sources, self.versions, strict=True))


def _projections(model: Transformer) -> list[nn.Module]:
    mods: list[nn.Module] = [model.lm_head]
    for block in model.model.layers:
        a, m = block.self_attn, block.mlp
        mods += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    return mods


def decode_weights(model: Transformer) -> DecodeWeights | None:
    """The model's fused decode weights (made or refreshed now), or None where the fast step
    does not apply: a projection that is not a plain nn.Linear (LoRA adapters), or a model
    too large to hold a second copy of its projections."""
    mods = _projections(model)  # read every call: cheap next to a step (the engine's)
    if any(type(m) is not nn.Linear or m.bias is not None for m in mods):
        return None
    weights = [m.weight for m in mods]
    if sum(w.numel() * w.element_size() for w in weights) > FAST_DECODE_MAX_BYTES:
        return None
    cached: DecodeWeights | None = model.__dict__.get("_decode_weights")
    if cached is None or not cached.fresh(weights):
        with torch.no_grad():
            cached = DecodeWeights(model, weights)
        model.__dict__["_decode_weights"] = cached  # a plain attribute: not a module or buffer
    return cached


def _norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm in one op where that is bit-identical to the module (fp32): it runs 9 times a
    token, and the module's casts and separate multiply cost more than the norm itself."""
    if x.dtype != torch.float32:
        return norm(x)
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)


def decode_step(model: Transformer, weights: DecodeWeights, token: torch.Tensor,
                cache: KVCache, ends: list[int]) -> torch.Tensor:
    """Logits (batch, vocab) for one new token per row (token: (batch,)), appended to each
    row's history in `cache`, whose lengths advance by one.

    `ends` are the rows' lengths after this token, as the caller counts them: they size the
    attention without reading the cache's lengths on the host, and decide whether a mask is
    needed (rows out of step) or not (every row at the same length).
    """
    end = max(ends)
    if end > cache.max_length:
        raise ValueError(f"KV cache full: a row would hold {end} tokens > {cache.max_length}")
    b = token.shape[0]
    attn = model.model.layers[0].self_attn
    h, kv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    position = cache.lengths  # (b,): where each row's new token goes
    x = model.model.embed_tokens(token)  # (b, d_model)
    cos = model.rotary.cos[position][:, None].to(x.dtype)  # (b, 1, head_dim)
    sin = model.rotary.sin[position][:, None].to(x.dtype)
    mask = None
    if min(ends) != end:  # key j is visible to row r's token when j <= position[r]
        slots = torch.arange(end, device=token.device)
        mask = (slots[None, :] <= position[:, None])[:, None, None]  # (b, 1, 1, end)
    rows = torch.arange(b, device=token.device)
    for i, (block, w) in enumerate(zip(model.model.layers, weights.layers)):
        qkv = w.qkv(_norm(block.input_layernorm, x))
        qk = apply_rotary(qkv[:, :(h + kv) * hd].view(b, h + kv, hd), cos, sin)
        cache.keys[i, rows, :, position] = qk[:, h:]  # (b, kv_heads, head_dim) at each row's slot
        cache.values[i, rows, :, position] = qkv[:, (h + kv) * hd:].view(b, kv, hd)
        y = F.scaled_dot_product_attention(
            qk[:, :h, None], cache.keys[i, :, :, :end], cache.values[i, :, :, :end],
            attn_mask=mask, enable_gqa=kv != h)  # (b, heads, 1, head_dim)
        x = x + w.o(y.reshape(b, h * hd))
        gate, up = w.gate_up(_norm(block.post_attention_layernorm, x)).chunk(2, dim=-1)
        x = x + w.down(F.silu(gate) * up)
    cache.lengths += 1
    return weights.head(_norm(model.model.norm, x))
