"""Objectives: given the model and a batch, the loss and the metrics to log.

The training loop knows nothing else about what it trains. An objective that owns parameters
of its own (a reward head, a value head) is an `nn.Module`: the loop optimizes and checkpoints
its trainable parameters with the model's. Pretraining and domain adaptation use NextToken;
SFT, reward and DPO objectives join here with the fine-tuning stages.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from lmforge.model.transformer import Transformer
from lmforge.train.batches import Batch


class Objective(Protocol):
    name: str

    def __call__(self, model: Transformer, batch: Batch
                 ) -> tuple[torch.Tensor, dict[str, float]]: ...


def owned_parameters(objective: Objective) -> dict[str, nn.Parameter]:
    """The trainable parameters an objective owns beyond the model's (none for most)."""
    if not isinstance(objective, nn.Module):
        return {}
    return {n: p for n, p in objective.named_parameters() if p.requires_grad}


class NextToken:
    """Mean cross-entropy of every learned next token: plain language modelling, and (with a
    loss mask in the targets and segment ids) packed documents or assistant-only SFT.

    The model fuses its output head into the loss (model/loss.py), so full logits never exist.
    With `bits_per_token_scale` (tokens / (ln 2 x bytes) of the validation split) it also
    reports bits per byte, the tokenizer-independent figure, on validation batches.
    """

    name = "next_token"

    def __init__(self, bits_per_token_scale: float | None = None):
        self.bits_per_token_scale = bits_per_token_scale

    def __call__(self, model: Transformer, batch: Batch
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = model(batch["inputs"], targets=batch["targets"], segments=batch.get("segments"))
        metrics = {}
        if self.bits_per_token_scale and not model.training:  # the scale is the val split's
            metrics["bpb"] = loss.item() * self.bits_per_token_scale
        return loss, metrics
