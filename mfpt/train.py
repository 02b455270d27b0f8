"""The one training loop and the one evaluation that every paradigm and every client uses.

Variants are arguments: how many steps, the learning rate, an optional proximal anchor (FedProx).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mfpt.batching import length_grouped_order, shuffled_order
from mfpt.config import Precision, TrainConfig
from mfpt.data import LABEL, TEXT, TEXT_PAIR
from mfpt.dpsgd import DpSgd
from mfpt.precision import autocast_dtype, forward_context, grad_scaler


@dataclass
class Encoded:
    """One client's split, tokenised once: variable-length id lists (padded per batch) and label ids."""

    features: list[dict[str, list[int]]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrainStats:
    steps: int = 0
    examples_seen: int = 0
    loss_sum: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.examples_seen, 1)


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
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.n, 1)


def encode(frame: pd.DataFrame, tokenizer: Any, labels: Sequence[str], max_length: int, text_prefix: str = "") -> Encoded:
    """Tokenise a universal-schema frame once (truncated to `max_length`, no padding yet)."""
    label_ids = {name: i for i, name in enumerate(labels)}
    texts = [text_prefix + t for t in frame[TEXT].tolist()]
    pairs = frame[TEXT_PAIR].tolist() if TEXT_PAIR in frame.columns else None
    if len(texts) == 0:
        return Encoded([], np.zeros(0, dtype=np.int64))
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
    return Encoded(features, np.array([label_ids[v] for v in frame[LABEL]], dtype=np.int64))


def batches(data: Encoded, batch_size: int, tokenizer: Any, order: np.ndarray | None = None) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Dynamically padded batches in `order` (default: as stored)."""
    order = np.arange(len(data)) if order is None else order
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        padded = tokenizer.pad([data.features[i] for i in idx], return_tensors="pt")
        yield dict(padded), torch.as_tensor(data.labels[idx])


def steps_per_round(num_examples: int, cfg: TrainConfig) -> int:
    """Local optimisation steps a client takes in one round: epochs over its data, capped by train.max_steps."""
    steps = cfg.local_epochs * math.ceil(num_examples / cfg.batch_size)
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def train(
    model: torch.nn.Module,
    data: Encoded,
    tokenizer: Any,
    cfg: TrainConfig,
    num_steps: int,
    seed: int,
    device: torch.device,
    anchor: Mapping[str, torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    dp: DpSgd | None = None,
) -> TrainStats:
    """Run `num_steps` AdamW steps on the trainable tensors, reshuffling each pass; FedProx adds mu/2·||w - anchor||².

    With `dp` (example-level privacy) each step's gradient is DP-SGD's (mfpt.dpsgd) instead of the batch gradient.
    """
    if len(data) == 0:
        raise ValueError("train() got an empty dataset; the caller must refuse empty clients first.")
    torch.manual_seed(seed)  # dropout
    rng = np.random.default_rng(seed)  # batch order
    params = [p for p in model.parameters() if p.requires_grad]
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    anchor_on_device = {n: t.to(device) for n, t in anchor.items()} if anchor and proximal_mu > 0 else None
    # Autocast covers the forward pass only: parameters, gradients and AdamW state stay fp32.
    dtype = autocast_dtype(cfg.precision.value, device)
    scaler = grad_scaler(dtype, device)
    lengths = [len(f["input_ids"]) for f in data.features] if cfg.group_by_length else None
    stats = TrainStats()
    model.train()
    while stats.steps < num_steps:
        order = (length_grouped_order(lengths, cfg.batch_size, rng) if lengths is not None
                 else shuffled_order(len(data), rng))
        for inputs, labels in batches(data, cfg.batch_size, tokenizer, order):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            optimizer.zero_grad(set_to_none=True)
            if dp is not None:
                # DP-SGD: each example's gradient clipped, the sum noised (mfpt.dpsgd). bf16 autocast only: fp16
                # would need loss scaling of every per-example gradient.
                with forward_context(dtype if dtype == torch.bfloat16 else None, device):
                    loss = dp.step_gradients(model, inputs, labels.to(device))
                if anchor_on_device is not None:  # data-independent: added after the noise, costs no privacy
                    proximal_term(named, anchor_on_device, proximal_mu).backward()
            else:
                with forward_context(dtype, device):
                    logits = model(**inputs).logits
                loss = F.cross_entropy(logits.float(), labels.to(device))
                objective = loss if anchor_on_device is None else loss + proximal_term(named, anchor_on_device, proximal_mu)
                if scaler is not None:
                    scaler.scale(objective).backward()
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                else:
                    objective.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None and dp is None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            stats.steps += 1
            stats.examples_seen += len(labels)
            stats.loss_sum += loss.item() * len(labels)
            if stats.steps >= num_steps:
                break
    return stats


def proximal_term(params: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's mu/2 · ||w - anchor||² over the anchored tensors; its gradient mu·(w - anchor) pulls w back."""
    return mu / 2 * sum(((params[n] - a) ** 2).sum() for n, a in anchor.items())


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


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from (experiment seed, round, client, ...), stable across processes and machines."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)
