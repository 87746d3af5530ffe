"""A Llama-style decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention.

Module and parameter names follow Hugging Face's LlamaForCausalLM exactly
(`model.layers.0.self_attn.q_proj.weight`, ...), so a state dict moves between lmforge and
transformers without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.design.spec import ModelDesign
from lmforge.model.kv_cache import KVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 whatever the autocast dtype, as Llama does, for stable statistics.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the half-split layout Llama checkpoints use."""

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x: (batch, heads, seq, head_dim); positions: (seq,)
        cos = self.cos[positions].to(x.dtype)
        sin = self.sin[positions].to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, d: ModelDesign):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = d.n_heads, d.n_kv_heads, d.head_dim
        self.q_proj = nn.Linear(d.d_model, d.d_model, bias=False)
        self.k_proj = nn.Linear(d.d_model, d.kv_dim, bias=False)
        self.v_proj = nn.Linear(d.d_model, d.kv_dim, bias=False)
        self.o_proj = nn.Linear(d.d_model, d.d_model, bias=False)

    def forward(self, x: torch.Tensor, rotary: Rotary, positions: torch.Tensor,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotary(q, positions), rotary(k, positions)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        past = k.shape[2] - t
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1,
                                               enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            # New tokens attend to all cached ones and causally among themselves.
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, d: ModelDesign):
        super().__init__()
        self.gate_proj = nn.Linear(d.d_model, d.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(d.d_model, d.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(d.ffn_hidden, d.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, d: ModelDesign):
        super().__init__()
        self.input_layernorm = RMSNorm(d.d_model, d.norm_eps)
        self.self_attn = Attention(d)
        self.post_attention_layernorm = RMSNorm(d.d_model, d.norm_eps)
        self.mlp = MLP(d)

    def forward(self, x, rotary, positions, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), rotary, positions, cache, layer)
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

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) for token ids (batch, seq); extends `cache` if given."""
        t = ids.shape[1]
        start = cache.length if cache is not None else 0
        if start + t > self.design.context_length:
            raise ValueError(f"sequence of {start + t} tokens exceeds the context length "
                             f"{self.design.context_length}")
        positions = torch.arange(start, start + t, device=ids.device)
        x = self.model.embed_tokens(ids)
        for i, block in enumerate(self.model.layers):
            x = block(x, self.rotary, positions, cache, i)
        logits = self.lm_head(self.model.norm(x))
        if cache is not None:
            cache.advance(t)
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied weight is counted once

    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        p = next(self.parameters())
        d = self.design
        return KVCache(d.n_layers, batch_size, d.n_kv_heads, max_length or d.context_length,
                       d.head_dim, device=p.device, dtype=p.dtype)
