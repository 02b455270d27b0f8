"""The one evaluation every paradigm and client uses, and `EvalCounts`, its sufficient statistics.

Counts (examples, loss sum, confusion matrix) add up across the clients of one language, so the server pools
them per language instead of averaging accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mfpt.config import Precision
from mfpt.model.precision import autocast_dtype, forward_context
from mfpt.train.encoding import Encoded, batches


@dataclass
class EvalCounts:
    """Sufficient statistics of an evaluation: they add up across clients of one language."""

    num_labels: int
    n: int = 0
    loss_sum: float = 0.0
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    def __post_init__(self) -> None:
        if self.confusion.size == 0:
            self.confusion = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)

    def __add__(self, other: "EvalCounts") -> "EvalCounts":
        return EvalCounts(self.num_labels, self.n + other.n, self.loss_sum + other.loss_sum,
                          self.confusion + other.confusion)

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion)) / max(self.n, 1)

    @property
    def macro_f1(self) -> float:
        """Macro-F1 over the labels that occur in the gold data or the predictions (sklearn's convention)."""
        tp = np.diag(self.confusion).astype(float)
        gold = self.confusion.sum(axis=1)
        pred = self.confusion.sum(axis=0)
        present = (gold + pred) > 0
        if not present.any():
            return 0.0
        f1 = np.divide(2 * tp, gold + pred, out=np.zeros_like(tp), where=(gold + pred) > 0)
        return float(f1[present].mean())

    @property
    def majority(self) -> float:
        """The accuracy of always answering the most frequent gold label: the floor a score must clear."""
        return float(self.confusion.sum(axis=1).max()) / max(self.n, 1) if self.confusion.size else 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.n, 1)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: Encoded, tokenizer: Any, batch_size: int, device: torch.device, num_labels: int,
             precision: Precision = Precision.FP32) -> EvalCounts:
    """Loss sum and confusion matrix of the model on `data` (no gradients, eval mode, forward under `precision`)."""
    model.eval()
    counts = EvalCounts(num_labels)
    dtype = autocast_dtype(precision.value, device)
    for inputs, labels in batches(data, batch_size, tokenizer):
        with forward_context(dtype, device):
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
        logits = logits.float()
        counts.loss_sum += F.cross_entropy(logits, labels.to(device), reduction="sum").item()
        predictions = logits.argmax(-1).cpu().numpy()
        np.add.at(counts.confusion, (labels.numpy(), predictions), 1)
        counts.n += len(labels)
    return counts
