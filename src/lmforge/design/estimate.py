"""What a design costs: parameters, FLOPs per token, training memory, token budget, time."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError

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

# Memory per GPU (vendor datasheets). The "GB" of HBM and GDDR parts are binary in practice (an
# H100's 80 GB shows as 79.6 GiB in nvidia-smi), so these are GiB.
GPU_MEMORY_GIB = {
    "T4": 16,
    "V100": 32,  # the 32 GB part (a 16 GB one exists)
    "A10G": 24,
    "L4": 24,
    "RTX-3090": 24,
    "RTX-4090": 24,
    "A100": 80,  # the 80 GB part (a 40 GB one exists)
    "H100": 80,  # SXM and PCIe (the NVL part has 94)
    "H200": 141,
    "B200": 180,  # per GPU in HGX/DGX B200 (1,440 GB for 8)
}

# No bf16 tensor cores: training there keeps activations (and gathered weights) in fp32.
NO_BF16 = {"T4", "V100"}

# Model FLOPs utilization to assume for a time estimate: 40% is typical of a well-tuned GPU run
# (PaLM reports 46%; nanoGPT-style runs 35-50%).
ASSUMED_MFU = 0.40

# Throughput of N data-parallel GPUs over N times one GPU's. Goyal et al. 2017 ("Accurate,
# Large Minibatch SGD", arXiv:1706.02677) measured ~90% from 8 to 256 GPUs for synchronous
# data-parallel SGD over commodity Ethernet; DDP and FSDP overlap their collectives with the
# backward pass (Li et al. 2020, "PyTorch Distributed", VLDB), and NVLink/InfiniBand clusters
# are faster than that network. It holds while a rank's compute per optimizer step outweighs
# the gradient exchange (several micro-batches per rank per step); one micro-batch per rank
# over a slow network does worse, so treat the figure as a planning number, not a promise.
DATA_PARALLEL_EFFICIENCY = 0.90

# Share of a GPU's memory a plan may fill: the CUDA context (~0.5 GiB), NCCL's buffers and the
# caching allocator's fragmentation take the rest. A rule of thumb, not a measurement.
USABLE_MEMORY_FRACTION = 0.90

# lmforge's fused loss (model/loss.py, default_chunk) takes 2**28 logits at a time on a GPU,
# and at least 2048 tokens.
LOSS_CHUNK_LOGITS = 2**28
LOSS_CHUNK_MIN_TOKENS = 2048


def gpu_class(name: str) -> str:
    """The GPU table's name for `name`, in any case (`h100` is `H100`)."""
    for known in GPU_PEAK_FLOPS:
        if known.lower() == name.lower():
            return known
    raise LmforgeError(f"unknown GPU class '{name}'",
                       hint=f"choose one of: {', '.join(GPU_PEAK_FLOPS)}")


@dataclass(frozen=True)
class ParamCount:
    embedding: int  # token embedding table
    lm_head: int  # output projection (0 when tied to the embedding)
    non_embedding: int  # attention, MLP and norms

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.non_embedding


def layer_params(d: ModelDesign) -> int:
    """Parameters of one transformer block."""
    attention = d.d_model * d.d_model * 2 + d.d_model * d.kv_dim * 2  # q, o; k, v
    mlp = 3 * d.d_model * d.ffn_hidden  # gate, up, down
    norms = 2 * d.d_model
    return attention + mlp + norms


def count_params(d: ModelDesign) -> ParamCount:
    """Exact parameter count of lmforge.model.Transformer built from this design (no biases)."""
    embedding = d.vocab_size * d.d_model
    return ParamCount(
        embedding=embedding,
        lm_head=0 if d.tie_embeddings else embedding,
        non_embedding=d.n_layers * layer_params(d) + d.d_model,  # + final norm
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
    # Copies that exist only while a step runs: DDP's all-reduce buckets and autocast's bf16
    # weights; FSDP's unsharded (all-gathered) parameters and gradients before reduce-scatter.
    in_flight: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations + self.in_flight


def activation_memory(d: ModelDesign, batch_size: int, seq_len: int | None = None,
                      bytes_per_value: int = 4, checkpointing: bool = False) -> int:
    """Bytes autograd holds for one micro-batch's forward and backward.

    Per token and layer, with a fused (flash/SDPA) attention: the two norms' inputs and
    outputs (4*d, fp32 whatever the compute dtype: RMSNorm normalizes in fp32), and in the
    compute dtype the matmul inputs, q, k, v and the attention output (5*d + 2*kv) and the
    SwiGLU gate, up, activation and product (4*ffn). Checkpointing each block keeps only its
    input (d per token and layer, fp32 like the residual stream) and rebuilds one block's
    activations at a time in backward.
    The head is lmforge's chunked fused loss: no full logits, but the final norm's input and
    output and the hidden states' gradient (3*d per token, fp32), the head's fp32 gradient
    accumulator (vocab x d) and one chunk's fp32 logits with their gradient.
    `bytes_per_value` is the compute dtype's: 4 for fp32, 2 under bf16.
    Checked against the bytes autograd saves for lmforge's Transformer on a CPU (fp32 and
    bf16 autocast): within 10%.
    """
    t = seq_len or d.context_length
    tokens = batch_size * t
    per_layer = 4 * 4 * d.d_model + bytes_per_value * (5 * d.d_model + 2 * d.kv_dim
                                                       + 4 * d.ffn_hidden)
    kept = d.n_layers * 4 * d.d_model + per_layer if checkpointing else d.n_layers * per_layer
    chunk = min(tokens, max(LOSS_CHUNK_MIN_TOKENS, LOSS_CHUNK_LOGITS // d.vocab_size))
    head = 4 * d.vocab_size * d.d_model + 2 * 4 * chunk * d.vocab_size
    return tokens * (kept + 3 * 4 * d.d_model) + head


def training_memory(d: ModelDesign, batch_size: int, seq_len: int | None = None,
                    bytes_per_value: int = 4) -> TrainingMemory:
    """Bytes to train on one device with AdamW in fp32 master weights at a given micro-batch."""
    n = count_params(d).total
    return TrainingMemory(weights=4 * n, grads=4 * n, optimizer=8 * n,
                          activations=activation_memory(d, batch_size, seq_len, bytes_per_value))


def ddp_memory(d: ModelDesign, batch_size: int, n_gpus: int, checkpointing: bool = False,
               bytes_per_value: int = 2) -> TrainingMemory:
    """Bytes per GPU under DDP: every rank holds the whole model, its fp32 gradients and AdamW
    states. With more than one rank, DDP's flattened all-reduce buckets are one more copy of the
    gradients (what `gradient_as_bucket_view=True` would save, per PyTorch's DDP docs). Under
    bf16 autocast the blocks' weights also exist as bf16 copies from forward to backward."""
    n = count_params(d).total
    buckets = 4 * n if n_gpus > 1 else 0
    # bf16 autocast casts every block weight once per forward, and backward keeps the copies
    copies = 2 * d.n_layers * layer_params(d) if bytes_per_value == 2 else 0
    return TrainingMemory(weights=4 * n, grads=4 * n, optimizer=8 * n,
                          activations=activation_memory(d, batch_size,
                                                        bytes_per_value=bytes_per_value,
                                                        checkpointing=checkpointing),
                          in_flight=buckets + copies)


def fsdp_memory(d: ModelDesign, batch_size: int, n_gpus: int, checkpointing: bool = False,
                bytes_per_value: int = 2) -> TrainingMemory:
    """Bytes per GPU under FSDP2 full sharding (`fully_shard` per block, then the whole model),
    bf16 compute: fp32 weights, gradients and AdamW states divided by N, plus what is unsharded
    while a step runs, in the compute dtype:

    - the root group (embedding, head, final norm): FSDP2 keeps it gathered from forward
      through backward (reshard_after_forward is False for the root by default) and its
      gradient whole until the end of backward;
    - two blocks' parameters (the one computing and the next, prefetched) and one block's
      gradient awaiting its reduce-scatter.
    """
    n = count_params(d).total
    block = layer_params(d)
    root = n - d.n_layers * block
    shard = math.ceil(n / n_gpus)  # each rank's chunk of every parameter, rounded up
    return TrainingMemory(weights=4 * shard, grads=4 * shard, optimizer=8 * shard,
                          activations=activation_memory(d, batch_size,
                                                        bytes_per_value=bytes_per_value,
                                                        checkpointing=checkpointing),
                          in_flight=bytes_per_value * (2 * root + 3 * block))


def compute_optimal_tokens(d: ModelDesign) -> int:
    return CHINCHILLA_TOKENS_PER_PARAM * count_params(d).total


def training_seconds(d: ModelDesign, tokens: int, flops_per_second: float,
                     mfu: float = ASSUMED_MFU) -> float:
    return tokens * training_flops_per_token(d) / (flops_per_second * mfu)


def data_parallel_efficiency(n_gpus: int) -> float:
    return 1.0 if n_gpus == 1 else DATA_PARALLEL_EFFICIENCY


def cluster_training_seconds(d: ModelDesign, tokens: int, flops_per_second: float,
                             n_gpus: int, mfu: float = ASSUMED_MFU) -> float:
    """Wall-clock seconds for `tokens` on n_gpus data-parallel GPUs of one peak."""
    speedup = n_gpus * data_parallel_efficiency(n_gpus)
    return training_seconds(d, tokens, flops_per_second, mfu) / speedup


def recompute_factor(d: ModelDesign) -> float:
    """Training FLOPs with per-block activation checkpointing over those without: backward
    runs every block's forward again (2 FLOPs per block weight, a third of the attention)."""
    t = d.context_length
    base = training_flops_per_token(d)
    extra = 2 * d.n_layers * layer_params(d) + 4 * d.n_layers * d.d_model * t
    return (base + extra) / base
