"""DP-SGD for example-level privacy (`privacy.dp = "example"`): the gradient step of mfpt's one training loop.

Per-example gradients are taken over the trainable tensors only (prompt + head): memory of batch x trainable
parameters, one backward pass per example (see `per_example_gradients` for why not torch.func's vmap). Each
example's gradient is clipped to `clip_norm` (L2 over all trainable tensors), the clipped gradients are summed,
Gaussian noise of std noise_multiplier x clip_norm is added, and the sum is divided by the batch size (Abadi et
al., 2016). The batches are Poisson samples (each example in with probability q = batch_size / examples), as the
account assumes, so the sum is divided by the expected batch size, as Opacus does. The noise and the batches come
from generators seeded by the operating system, never by the run's public seed: batches anyone could recompute from
the published config would void the amplification by sampling that the account counts on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from mfpt.train.batching import poisson_batch
from mfpt.train.objective import example_losses


@dataclass
class DpSgd:
    """Per-example clipping and noise for one client's training (the account is mfpt.privacy.accounting.example_account)."""

    clip_norm: float
    noise_multiplier: float
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(secrets.randbits(63)))
    # The divisor of the noised sum: the expected batch size of Poisson batches; 0 = each batch's own size.
    expected_batch_size: float = 0.0
    sampler: np.random.Generator = field(default_factory=lambda: np.random.default_rng(secrets.randbits(128)))

    def sample_batch(self, num_examples: int, batch_size: int) -> np.ndarray:
        """A Poisson batch of expected size `batch_size` (at most all examples), drawn from OS entropy."""
        return poisson_batch(num_examples, min(1.0, batch_size / num_examples), self.sampler)

    def per_example_gradients(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor],
                              labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """{name: each example's gradient (batch first)} over the trainable tensors only, and each example's loss.

        One backward pass per example, each at its own length (padding dropped). torch.func's vmap would do it in
        one pass, but transformers 5.23's attention-mask builder branches on the mask's values
        (masking_utils._ignore_bidirectional_mask_sdpa: `padding_mask.all()`), which vmap refuses.
        """
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        per_example: list[tuple[torch.Tensor, ...]] = []
        losses = []
        for i in range(len(labels)):
            keep = inputs["attention_mask"][i].bool()
            # Per-position inputs lose their padding; per-text ones (the LM head's verbaliser index) are kept.
            row = {k: (v[i][keep] if v.dim() > 1 else v[i]).unsqueeze(0) for k, v in inputs.items()}
            label = labels[i][keep].unsqueeze(0) if labels.dim() > 1 else labels[i:i + 1]  # generation: per position
            loss = example_losses(model, row, label)[0]
            per_example.append(torch.autograd.grad(loss, params))
            losses.append(loss.detach())
        if not per_example:  # an empty Poisson batch: no example, only noise
            return {n: torch.zeros(0, *p.shape, dtype=p.dtype, device=p.device) for n, p in named}, torch.zeros(0)
        grads = {n: torch.stack([g[j] for g in per_example]) for j, (n, _) in enumerate(named)}
        return grads, torch.stack(losses)

    def private_gradient(self, per_example: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(sum of per-example gradients clipped to clip_norm + N(0, (sigma C)^2)) / batch size, per tensor (the
        expected batch size when set)."""
        batch = next(iter(per_example.values())).shape[0]
        divisor = self.expected_batch_size or batch
        norms = torch.sqrt(sum(g.flatten(1).double().pow(2).sum(1) for g in per_example.values()))
        factors = (self.clip_norm / (norms + 1e-12)).clamp(max=1.0)
        out = {}
        for name, g in per_example.items():
            clipped_sum = torch.einsum("b,b...->...", factors.to(g.dtype), g)
            noise = torch.randn(clipped_sum.shape, generator=self.generator, dtype=torch.float64)
            out[name] = ((clipped_sum.double().cpu() + self.noise_multiplier * self.clip_norm * noise) / divisor).to(
                dtype=g.dtype, device=g.device)
        return out

    def step_gradients(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Set each trainable tensor's .grad to the DP-SGD gradient of this batch; return the batch's mean loss."""
        per_example, losses = self.per_example_gradients(model, inputs, labels)
        private = self.private_gradient(per_example)
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.grad = private[name] if p.grad is None else p.grad + private[name]
        return losses.mean().detach() if len(losses) else torch.zeros(())
