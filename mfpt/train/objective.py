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
    if labels.dim() == 1:
        return F.cross_entropy(model(**inputs).logits.float(), labels, reduction="none")
    # Only the positions that predict a target token need the LM head: from the one before the batch's earliest
    # target token to the end (a 151k-word vocabulary over a whole 400-token text is gigabytes of logits).
    labelled = (labels != IGNORED).any(0).nonzero()
    first = int(labelled[0]) if len(labelled) else labels.shape[1] - 1
    return target_losses(model(**inputs, logits_to_keep=labels.shape[1] - first + 1).logits.float(), labels)


def target_losses(logits: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's labelled positions, from the logits of the text's last
    positions ([batch, positions, vocabulary]; input-prompt methods put their virtual tokens' logits first)."""
    width = token_labels.shape[1]
    logits = logits[:, -width:]
    kept = logits.shape[1]
    # The logit at position t predicts the token at t + 1: the kept logits predict the last kept - 1 tokens.
    predicted, gold = logits[:, :-1], token_labels[:, width - kept + 1:]
    token = F.cross_entropy(predicted.transpose(1, 2), gold, ignore_index=IGNORED, reduction="none")
    return token.sum(-1) / (gold != IGNORED).sum(-1).clamp(min=1)
