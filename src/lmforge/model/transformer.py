"""A Llama-style decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention.

Module and parameter names follow Hugging Face's LlamaForCausalLM exactly
(`model.layers.0.self_attn.q_proj.weight`, ...), so a state dict moves between lmforge and
transformers without renaming. To train, call `model(ids, targets=targets)`: the output head is
fused with the loss (model/loss.py); `compile_blocks()` compiles the blocks in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmforge.design.spec import ModelDesign
from lmforge.model.kv_cache import KVCache
from lmforge.model.loss import linear_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 whatever the autocast dtype, as Llama does, for stable statistics.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the half-split layout Llama checkpoints use.

    Rotating (x1, x2) by angle a gives (x1 cos a - x2 sin a, x2 cos a + x1 sin a), computed as
    x * cos + swap_halves(x) * signed_sin with the minus sign folded into the table.
    """

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", torch.cat([angles.cos(), angles.cos()], -1), persistent=False)
        self.register_buffer("sin", torch.cat([-angles.sin(), angles.sin()], -1), persistent=False)

    def tables(self, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """cos and signed sin for positions start..start+length, shaped (length, 1, head_dim)."""
        return tuple(x[start:start + length, None].to(dtype) for x in (self.cos, self.sin))

    def at(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """cos and signed sin at explicit positions (batch, seq): (batch, seq, 1, head_dim)."""
        return tuple(x[positions][:, :, None].to(dtype) for x in (self.cos, self.sin))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (batch, seq, heads, head_dim)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * sin


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position of each token within its segment (packed documents restart at 0)."""
    t = segments.shape[1]
    index = torch.arange(t, device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    # The index where the current segment began, carried forward by a running max.
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - first


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """(batch, 1, t, t) boolean mask: causal, and only within the same segment."""
    t = segments.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    return (causal & (segments[:, :, None] == segments[:, None, :]))[:, None]


class Attention(nn.Module):
    def __init__(self, d: ModelDesign):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = d.n_heads, d.n_kv_heads, d.head_dim
        self.q_proj = nn.Linear(d.d_model, d.d_model, bias=False)
        self.k_proj = nn.Linear(d.d_model, d.kv_dim, bias=False)
        self.v_proj = nn.Linear(d.d_model, d.kv_dim, bias=False)
        self.o_proj = nn.Linear(d.d_model, d.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        """mask: None for plain causal attention, else a boolean (batch, 1, t, keys) mask of
        what each query may see (True = attend)."""
        b, t, _ = x.shape
        h, kv = self.n_heads, self.n_kv_heads
        q = apply_rotary(self.q_proj(x).view(b, t, h, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(b, t, kv, self.head_dim), cos, sin)
        v = self.v_proj(x).view(b, t, kv, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (b, heads, t, hd)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=kv != h)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv != h)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, d: ModelDesign):
        super().__init__()
        self.gate_proj = nn.Linear(d.d_model, d.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(d.d_model, d.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(d.ffn_hidden, d.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SwiGLU (Shazeer 2020). One matmul for gate and up measured no faster (MKL is as
        # efficient at 1408 columns as at 2816) and splitting its output costs copies; the same
        # held for q/k/v, so the projections stay HF's separate matrices.
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, d: ModelDesign):
        super().__init__()
        self.input_layernorm = RMSNorm(d.d_model, d.norm_eps)
        self.self_attn = Attention(d)
        self.post_attention_layernorm = RMSNorm(d.d_model, d.norm_eps)
        self.mlp = MLP(d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, d: ModelDesign):
        super().__init__()
        self.embed_tokens = nn.Embedding(d.vocab_size, d.d_model)
        self.layers = nn.ModuleList(Block(d) for _ in range(d.n_layers))
        self.norm = RMSNorm(d.d_model, d.norm_eps)


class Transformer(nn.Module):
    def __init__(self, design: ModelDesign):
        super().__init__()
        self.design = design
        self.model = Backbone(design)
        self.lm_head = nn.Linear(design.d_model, design.vocab_size, bias=False)
        if design.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = Rotary(design.head_dim, design.rope_theta, design.context_length)
        # Activation checkpointing: keep only each block's input and recompute the block in
        # backward, trading ~1/3 more compute for activations that no longer grow with depth.
        self.checkpoint_activations = False

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None,
                targets: torch.Tensor | None = None, reduction: str = "mean", *,
                positions: torch.Tensor | None = None, segments: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) for token ids (batch, seq); see `hidden` for the rest.

        With `targets` (batch, seq: the token that follows each position, IGNORE_INDEX where no
        loss is wanted) it returns the cross-entropy instead ("mean", "sum" or per-token
        "none"), with the output head fused into the loss so full logits never exist: the
        fast, memory-light way to train (model/loss.py).
        """
        h = self.hidden(ids, cache, positions=positions, segments=segments,
                        attn_mask=attn_mask, lengths=lengths)
        if targets is None:
            return self.lm_head(h)
        return linear_cross_entropy(h, self.lm_head.weight, targets, reduction=reduction)

    def hidden(self, ids: torch.Tensor, cache: KVCache | None = None, *,
               positions: torch.Tensor | None = None, segments: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Final normalized hidden states (batch, seq, d_model): what the output head reads.

        The one forward of training, evaluation and generation. What each token sees:
        - nothing given: causal attention over the row (the fast fused kernel);
        - `segments` (batch, seq ints): packed documents, each token sees only earlier tokens
          of its own segment, and positions restart at 0 in every segment;
        - `attn_mask` (batch, 1 or heads, seq, keys bools, True = attend) with `positions`:
          any other pattern (the scorer's shared-prefix rows);
        - `cache`: new tokens go after each row's own history (rows may hold different
          lengths) and see that history and themselves causally. `lengths` (batch,) says how
          many of the new tokens of each row are real when rows are right-padded; the cache
          advances by those (by seq otherwise).
        """
        b, t = ids.shape
        if segments is not None and (cache is not None or attn_mask is not None):
            raise ValueError("segments build their own mask: give them without a cache or mask")
        mask = attn_mask
        offset = 0  # with no positions tensor, the tokens sit at offset..offset+t-1
        if cache is not None:
            common = cache.begin(t)  # every row's length when the rows are in step, else None
            if positions is None and mask is None and common is not None \
                    and (t == 1 or common == 0):
                # Rows in step, one new token each (a decode step) or from an empty history
                # (a prefill): the rotary tables are a slice and no mask is needed (one query
                # sees every key; from nothing, is_causal is the causal mask). This is the
                # single-stream decode path, where small per-step ops are a large share of
                # the time next to the small matmuls.
                offset = common
            else:
                past = cache.lengths
                if positions is None:
                    positions = past[:, None] + torch.arange(t, device=ids.device)
                if mask is None and common != 0:
                    # Key j is visible to new token i of row r when j <= past[r] + i: the
                    # row's history, then causally its own new tokens; slots it never wrote
                    # are hidden.
                    keys = torch.arange(int(past.max()) + t, device=ids.device)
                    mask = (keys[None, None, :] <= positions[:, :, None])[:, None]
        elif segments is not None:
            positions = segment_positions(segments) if positions is None else positions
            mask = segment_mask(segments)
        end = int(positions.max()) + 1 if positions is not None else offset + t
        if end > self.design.context_length:
            raise ValueError(f"sequence of {end} tokens exceeds the context length "
                             f"{self.design.context_length}")
        x = self.model.embed_tokens(ids)
        if positions is None:
            cos, sin = self.rotary.tables(offset, t, x.dtype)
        else:
            cos, sin = self.rotary.at(positions, x.dtype)
        for i, block in enumerate(self.model.layers):
            if cache is None and self.checkpoint_activations and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, use_reentrant=False)
            elif cache is None:
                x = block(x, cos, sin, mask)  # same arguments for every layer: compile_blocks
            else:
                # Cached decoding changes shapes every step: run the eager forward even when
                # the block is compiled, rather than recompiling per layer and per length.
                x = block.forward(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.advance(t if lengths is None else lengths.to(cache.lengths.device))
        return self.model.norm(x)

    def compile_blocks(self, **options) -> Transformer:
        """torch.compile each block in place ("regional" compilation): one compiled block
        serves every layer, compiling takes seconds rather than minutes, and parameter names
        (and so state dicts and checkpoints) stay unchanged. Speeds up training (fused
        elementwise work: norms, rotary, SwiGLU); decoding with a KV cache stays eager."""
        for block in self.model.layers:
            block.compile(**options)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied weight is counted once

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        p = next(self.parameters())
        d = self.design
        return KVCache(d.n_layers, batch_size, d.n_kv_heads, max_length or d.context_length,
                       d.head_dim, device=p.device, dtype=p.dtype)
