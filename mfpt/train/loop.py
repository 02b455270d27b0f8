"""The one training loop that every paradigm and every client uses.

Variants are arguments: how many steps, the learning rate, an optional proximal anchor (FedProx), an optional
DP-SGD step (example-level privacy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from mfpt.config import TrainConfig
from mfpt.model.precision import autocast_dtype, forward_context, grad_scaler
from mfpt.train.batching import length_grouped_order, shuffled_order
from mfpt.train.dpsgd import DpSgd
from mfpt.train.encoding import Encoded, collate
from mfpt.train.objective import example_losses


@dataclass
class TrainStats:
    steps: int = 0
    examples_seen: int = 0
    loss_sum: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.examples_seen, 1)


def steps_per_round(num_examples: int, cfg: TrainConfig, clients: int = 1) -> int:
    """Local optimisation steps a learner takes in one round: epochs over its data, capped by train.max_steps, or by
    `clients` x train.max_steps for a learner that stands for that many clients (centralised training's pool)."""
    steps = cfg.local_epochs * math.ceil(num_examples / cfg.batch_size)
    return min(steps, clients * cfg.max_steps) if cfg.max_steps else steps


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

    With `dp` (example-level privacy) each step's gradient is DP-SGD's (mfpt.train.dpsgd) instead of the batch gradient,
    on Poisson batches drawn by `dp` from OS entropy instead of passes over a seeded shuffle.
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

    def batch_indices() -> Iterator[np.ndarray]:
        """Endless batches: seeded shuffled passes, or DP-SGD's Poisson batches from OS entropy."""
        while True:
            if dp is not None:
                yield dp.sample_batch(len(data), cfg.batch_size)
                continue
            order = (length_grouped_order(lengths, cfg.batch_size, rng) if lengths is not None
                     else shuffled_order(len(data), rng))
            for start in range(0, len(order), cfg.batch_size):
                yield order[start:start + cfg.batch_size]

    for idx in batch_indices() if num_steps > 0 else ():
        inputs, labels = collate(data, idx, tokenizer)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        optimizer.zero_grad(set_to_none=True)
        if dp is not None:
            # DP-SGD: each example's gradient clipped, the sum noised (mfpt.train.dpsgd). bf16 autocast only: fp16
            # would need loss scaling of every per-example gradient.
            with forward_context(dtype if dtype == torch.bfloat16 else None, device):
                loss = dp.step_gradients(model, inputs, labels.to(device))
            if anchor_on_device is not None:  # data-independent: added after the noise, costs no privacy
                proximal_term(named, anchor_on_device, proximal_mu).backward()
        else:
            with forward_context(dtype, device):
                loss = example_losses(model, inputs, labels.to(device)).mean()
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
