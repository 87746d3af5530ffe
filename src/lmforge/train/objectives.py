"""Objectives: given the model and a batch, the loss and the metrics to log.

The training loop knows nothing else about what it trains. Pretraining and domain adaptation
use NextToken; SFT, reward and DPO objectives join here in the fine-tuning stages.
"""

from __future__ import annotations

from typing import Protocol

import torch

from lmforge.model.transformer import Transformer


class Objective(Protocol):
    name: str

    def __call__(self, model: Transformer, batch: tuple[torch.Tensor, ...]
                 ) -> tuple[torch.Tensor, dict[str, float]]: ...


class NextToken:
    """Mean cross-entropy of every next token (inputs, targets): plain language modelling.

    The model fuses its output head into the loss (model/loss.py), so full logits never exist.
    """

    name = "next_token"

    def __call__(self, model: Transformer, batch: tuple[torch.Tensor, ...]
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, targets = batch[0], batch[1]
        return model(inputs, targets=targets), {}
