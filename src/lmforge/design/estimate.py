"""What a design costs: parameters, FLOPs per token, training memory, token budget, time."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.design.spec import ModelDesign

# Chinchilla (Hoffmann et al. 2022): compute-optimal training uses ~20 tokens per parameter.
CHINCHILLA_TOKENS_PER_PARAM = 20

# Peak dense bf16 tensor-core FLOP/s (vendor datasheets, without sparsity).
GPU_PEAK_FLOPS = {
    "T4": 65e12,  # fp16
    "V100": 125e12,  # fp16
    "A10G": 125e12,
    "L4": 121e12,
    "RTX-3090": 71e12,
    "RTX-4090": 165e12,
    "A100": 312e12,
    "H100": 989e12,
    "H200": 989e12,
    "B200": 2250e12,
}

# Model FLOPs utilization to assume for a time estimate: 40% is typical of a well-tuned GPU run
# (PaLM reports 46%; nanoGPT-style runs 35-50%).
ASSUMED_MFU = 0.40


@dataclass(frozen=True)
class ParamCount:
    embedding: int  # token embedding table
    lm_head: int  # output projection (0 when tied to the embedding)
    non_embedding: int  # attention, MLP and norms

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.non_embedding


def count_params(d: ModelDesign) -> ParamCount:
    """Exact parameter count of lmforge.model.Transformer built from this design (no biases)."""
    attention = d.d_model * d.d_model * 2 + d.d_model * d.kv_dim * 2  # q, o; k, v
    mlp = 3 * d.d_model * d.ffn_hidden  # gate, up, down
    norms = 2 * d.d_model
    per_layer = attention + mlp + norms
    embedding = d.vocab_size * d.d_model
    return ParamCount(
        embedding=embedding,
        lm_head=0 if d.tie_embeddings else embedding,
        non_embedding=d.n_layers * per_layer + d.d_model,  # + final norm
    )


def training_flops_per_token(d: ModelDesign, seq_len: int | None = None) -> int:
    """Forward+backward FLOPs per trained token: 6 per matmul weight, plus attention.

    Follows PaLM (Chowdhery et al. 2022, appendix B): 6N + 12*L*H*Q*T, where N counts the
    weights used in matmuls (the embedding lookup is not a matmul; the output head is).
    """
    t = seq_len or d.context_length
    p = count_params(d)
    matmul_params = p.non_embedding + d.vocab_size * d.d_model
    return 6 * matmul_params + 12 * d.n_layers * d.d_model * t


def inference_flops_per_token(d: ModelDesign, seq_len: int | None = None) -> int:
    return training_flops_per_token(d, seq_len) // 3


@dataclass(frozen=True)
class TrainingMemory:
    weights: int
    grads: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations


def training_memory(d: ModelDesign, batch_size: int, seq_len: int | None = None,
                    bytes_per_value: int = 4) -> TrainingMemory:
    """Bytes to train with AdamW in fp32 master weights at a given micro-batch.

    Activations count what autograd keeps per token and layer with a fused (flash/SDPA)
    attention: norm inputs/outputs, q/k/v, attention output, residuals (about 7*d + 2*kv) and
    the SwiGLU gate, up, activation and product (4*ffn); plus logits and their gradient.
    `bytes_per_value` is 4 for fp32 activations, 2 under bf16 autocast.
    """
    t = seq_len or d.context_length
    n = count_params(d).total
    tokens = batch_size * t
    per_token_layer = 7 * d.d_model + 2 * d.kv_dim + 4 * d.ffn_hidden
    activations = tokens * (d.n_layers * per_token_layer + 2 * d.vocab_size) * bytes_per_value
    return TrainingMemory(weights=4 * n, grads=4 * n, optimizer=8 * n, activations=activations)


def compute_optimal_tokens(d: ModelDesign) -> int:
    return CHINCHILLA_TOKENS_PER_PARAM * count_params(d).total


def training_seconds(d: ModelDesign, tokens: int, flops_per_second: float,
                     mfu: float = ASSUMED_MFU) -> float:
    return tokens * training_flops_per_token(d) / (flops_per_second * mfu)
