"""The one evaluation every paradigm and client uses, and `EvalCounts`, its sufficient statistics.

Counts (examples, loss sum, confusion matrix) add up across the clients of one language, so the server pools
them per language instead of averaging accuracies. A generation task's counts are the loss sum, the exact matches
and chrF++'s corpus statistics (character and word n-gram matches, which add up the same way): a language's chrF++
is the corpus score of all its clients' generations, not a mean of the clients' scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from mfpt.config import Precision
from mfpt.model.precision import autocast_dtype, forward_context
from mfpt.train.encoding import Encoded, batches, prompt_batches
from mfpt.train.objective import example_losses

# chrF++ (Popović 2017): character n-grams up to 6 and word n-grams up to 2, beta 2; sacrebleu's CHRF(word_order=2).
CHRF_WORD_ORDER = 2


@dataclass
class EvalCounts:
    """Sufficient statistics of an evaluation: they add up across clients of one language."""

    num_labels: int
    n: int = 0
    loss_sum: float = 0.0
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    # Generation (num_labels = 0): chrF++'s corpus statistics of the generations, and how many equal their reference.
    chrf_stats: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    exact: int = 0

    def __post_init__(self) -> None:
        if self.confusion.size == 0:
            self.confusion = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)

    def __add__(self, other: "EvalCounts") -> "EvalCounts":
        stats = [s for s in (self.chrf_stats, other.chrf_stats) if s.size]
        return EvalCounts(self.num_labels, self.n + other.n, self.loss_sum + other.loss_sum,
                          self.confusion + other.confusion, sum(stats) if stats else np.zeros(0, dtype=np.int64),
                          self.exact + other.exact)

    @property
    def generation(self) -> bool:
        """Counts of a generation task (chrF++ statistics), not of a classifier."""
        return self.num_labels == 0

    @property
    def accuracy(self) -> float:
        """Share of correct labels; for generation, of generations equal to their reference (exact match)."""
        correct = self.exact if self.generation else float(np.trace(self.confusion))
        return float(correct) / max(self.n, 1)

    @property
    def chrf(self) -> float | None:
        """chrF++ of the generations, in [0, 1] (sacrebleu reports it x 100); None for a classifier."""
        if not self.generation:
            return None
        if not self.chrf_stats.size:
            return 0.0
        return chrf_metric()._compute_score_from_stats(self.chrf_stats.tolist()).score / 100

    @property
    def score(self) -> float:
        """The headline: accuracy for classification, chrF++ for generation (what rounds and settings are chosen by)."""
        chrf = self.chrf
        return self.accuracy if chrf is None else chrf

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


def chrf_metric() -> Any:
    """sacrebleu's chrF++ (imported on use: only generation tasks need it)."""
    from sacrebleu.metrics import CHRF

    return CHRF(word_order=CHRF_WORD_ORDER)


def chrf_statistics(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """chrF++'s corpus statistics of `hypotheses` against one reference each, summed over the examples."""
    if not hypotheses:
        return np.zeros(0, dtype=np.int64)
    stats = chrf_metric()._extract_corpus_statistics(hypotheses, [references])
    return np.asarray(stats, dtype=np.int64).sum(0)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, data: Encoded, tokenizer: Any, batch_size: int, device: torch.device, num_labels: int,
             precision: Precision = Precision.FP32, max_new_tokens: int = 0) -> EvalCounts:
    """Loss sum and confusion matrix of the model on `data` (no gradients, eval mode, forward under `precision`);
    for generation data, the loss sum and the chrF++ of greedy generations of up to `max_new_tokens` tokens."""
    model.eval()
    dtype = autocast_dtype(precision.value, device)
    if data.targets is not None:
        return _evaluate_generation(model, data, tokenizer, batch_size, device, dtype, max_new_tokens)
    counts = EvalCounts(num_labels)
    for inputs, labels in batches(data, batch_size, tokenizer):
        with forward_context(dtype, device):
            logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
        logits = logits.float()
        counts.loss_sum += F.cross_entropy(logits, labels.to(device), reduction="sum").item()
        predictions = logits.argmax(-1).cpu().numpy()
        np.add.at(counts.confusion, (labels.numpy(), predictions), 1)
        counts.n += len(labels)
    return counts


def _evaluate_generation(model: torch.nn.Module, data: Encoded, tokenizer: Any, batch_size: int, device: torch.device,
                         dtype: torch.dtype | None, max_new_tokens: int) -> EvalCounts:
    counts = EvalCounts(0)
    for inputs, labels in batches(data, batch_size, tokenizer):
        with forward_context(dtype, device):
            losses = example_losses(model, {k: v.to(device) for k, v in inputs.items()}, labels.to(device))
        counts.loss_sum += float(losses.sum())
        counts.n += len(labels)
    hypotheses = generate(model, data, tokenizer, batch_size, device, dtype, max_new_tokens)
    references = [r.strip() for r in data.references or []]
    counts.chrf_stats = chrf_statistics(hypotheses, references)
    counts.exact = sum(h == r for h, r in zip(hypotheses, references))
    return counts


def generate(model: torch.nn.Module, data: Encoded, tokenizer: Any, batch_size: int, device: torch.device,
             dtype: torch.dtype | None, max_new_tokens: int,
             progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy generations (at most `max_new_tokens` tokens, to the end-of-text token) for each prompt of `data`,
    decoded without special tokens and stripped; `progress(done, total)` after each batch."""
    texts: list[str] = []
    for inputs, _ in prompt_batches(data, batch_size, tokenizer):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with forward_context(dtype, device):
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        # The output repeats the prompt's ids before the new tokens (peft's prompt methods too, which feed the
        # virtual tokens as embeddings).
        new = out[:, inputs["input_ids"].shape[1]:]
        texts += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        if progress is not None:
            progress(len(texts), len(data))
    return texts
