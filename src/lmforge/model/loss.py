"""Next-token cross-entropy fused with the output head, computed in chunks of tokens.

A plain `F.cross_entropy(lm_head(h), targets)` materializes fp32 logits for every token
(batch x seq x vocab: 64 MiB for 2048 tokens of a 8192 vocab), then their log-softmax, then a
gradient of the same size, and streams each through memory several times. Here the head's
matmul, the log-softmax and its gradient run over `chunk` tokens at a time, so a chunk's logits
stay in cache and the full logits never exist. For a summed or averaged loss the gradient of
each chunk is finished in the forward pass (the idea behind Liger-Kernel's fused linear
cross-entropy, Hsu et al. 2024): backward then only scales two stored gradients, and no logits
are recomputed. Per-token losses (`reduction="none"`, for DPO/RLHF log-probs) recompute each
chunk's logits in backward instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # target id that contributes no loss (prompt or padding positions)


def default_chunk(vocab_size: int, device: torch.device) -> int:
    """Tokens per chunk. On a CPU about 2M logits (8 MiB fp32): cache-sized, measured fastest.
    Elsewhere 256M logits, and at least 2048 tokens so that each chunk's head-gradient matmul
    outweighs re-reading the (vocab, d_model) gradient it adds to."""
    if device.type == "cpu":
        return max(16, 2**21 // vocab_size)
    return max(2048, 2**28 // vocab_size)


def _sum_and_grads(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                   ignore_index: int, chunk: int, need_h: bool, need_w: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed loss and its gradients w.r.t. hidden (hidden's dtype) and weight (fp32)."""
    grad_h = torch.empty_like(hidden) if need_h else None
    # The head's gradient sums over every chunk: accumulate it in fp32 whatever the dtype.
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
        if need_w else None
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        h = hidden[start:start + chunk].to(weight.dtype)
        t = targets[start:start + chunk]
        logits = (h @ weight.T).float()
        lse = torch.logsumexp(logits, dim=-1)
        valid = t != ignore_index
        safe_t = torch.where(valid, t, 0).unsqueeze(1)
        total += torch.where(valid, lse - logits.gather(1, safe_t).squeeze(1), 0.0).sum()
        if not (need_h or need_w):
            continue
        # d(summed loss)/d(logits) = softmax - one_hot(target), in place. Subtracting +inf on
        # ignored rows makes their softmax 0, and they get no -1: no gradient from them.
        grad = logits.sub_(torch.where(valid, lse, torch.inf).unsqueeze(1)).exp_()
        grad.scatter_add_(1, safe_t, -valid.unsqueeze(1).to(grad.dtype))
        grad = grad.to(weight.dtype)
        if need_h:
            grad_h[start:start + chunk] = grad @ weight
        if need_w:
            if grad_w.dtype == grad.dtype:
                grad_w.addmm_(grad.T, h)
            else:
                grad_w += grad.T @ h
    return total, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of (hidden @ weight.T); its gradients are made in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                ignore_index: int, chunk: int, grad_enabled: bool) -> torch.Tensor:
        device = hidden.device.type
        # Under autocast, run the matmuls in the autocast dtype as nn.Linear would, but do the
        # softmax and the accumulation in fp32 with autocast off.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) \
            else weight.dtype
        with torch.autocast(device, enabled=False):
            total, grad_h, grad_w = _sum_and_grads(
                hidden, weight.to(dtype), targets, ignore_index, chunk,
                grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h * grad_out,
                None if grad_w is None else grad_w * grad_out, None, None, None, None)


def _chunk_losses(h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor,
                  ignore_index: int) -> torch.Tensor:
    return F.cross_entropy((h @ weight.T).float(), t, ignore_index=ignore_index, reduction="none")


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = IGNORE_INDEX, reduction: str = "mean",
                         chunk: int | None = None) -> torch.Tensor:
    """Cross-entropy of the logits `hidden @ weight.T` against `targets`, chunk by chunk.

    hidden: (..., d_model) final hidden states (after the last norm); weight: (vocab, d_model)
    output head; targets: hidden.shape[:-1] token ids, `ignore_index` where no loss is wanted.
    reduction: "mean" over non-ignored tokens (as F.cross_entropy; NaN if there are none),
    "sum", or "none" for per-token losses shaped like targets (0 at ignored tokens).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match hidden states "
                         f"{tuple(hidden.shape)}")
    chunk = chunk or default_chunk(weight.shape[0], hidden.device)
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).long()
    if reduction == "none":
        # Per-token gradients are not known until backward: recompute each chunk's logits there.
        parts = [checkpoint(_chunk_losses, h[i:i + chunk], weight, t[i:i + chunk], ignore_index,
                            use_reentrant=False) for i in range(0, h.shape[0], chunk)]
        return torch.cat(parts).view(targets.shape)
    total = _LinearCrossEntropy.apply(h, weight, t, ignore_index, chunk,
                                      torch.is_grad_enabled())
    if reduction == "sum":
        return total
    return total / (t != ignore_index).sum()

