"""The loss every paradigm trains, evaluates and privatises: one value per example, for classification and generation.

Classification: the cross-entropy of each example's label. Generation: the mean cross-entropy of each example's
target tokens given everything before them (teacher forcing); prompt and padding positions carry IGNORED and count
for nothing. The training loop averages the examples' losses, DP-SGD clips each example's gradient of its own.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from mfpt.train.encoding import IGNORED


def example_losses(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Each example's loss under `model`: labels are a label id per example, or a token label per position."""
    logits = model(**inputs).logits.float()
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels, reduction="none")
    return target_losses(logits, labels)


def target_losses(logits: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's labelled positions ([batch, positions, vocabulary] logits)."""
    # Input-prompt methods (peft's prompt and p-tuning) put their virtual tokens' logits first: the text's positions
    # are the last ones.
    logits = logits[:, -token_labels.shape[1]:]
    predicted, gold = logits[:, :-1], token_labels[:, 1:]  # position t predicts token t + 1
    token = F.cross_entropy(predicted.transpose(1, 2), gold, ignore_index=IGNORED, reduction="none")
    return token.sum(-1) / (gold != IGNORED).sum(-1).clamp(min=1)
