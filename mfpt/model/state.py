"""The trainable state: what travels between clients and server, and the checks every received state passes.

What travels between clients and server is exactly `trainable_state(model)`: every `requires_grad` tensor by
name. peft's get/set_peft_model_state_dict is not used for exchange because it saves the prompt encoder's
*output* for P-tuning and loads it into the encoder's *input* table, silently changing the model
(stack.md §2.2); it is used only for the final adapter export.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from mfpt.core.errors import UserError


class UpdateError(UserError, ValueError):
    """A trainable-state update whose keys, shapes, dtypes or values do not match the model."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor by name, detached on CPU: exactly what a client sends."""
    return {n: p.detach().to("cpu").clone() for n, p in model.named_parameters() if p.requires_grad}


def state_distance(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None = None,
                   chunk: int = 1 << 20) -> float:
    """L2 norm, in float64 over all tensors, of `state` (or of `state - reference`: an update's size). In chunks:
    a server measures every update of a full fine-tuning run, whose embedding matrix alone is ~100M values."""
    total = 0.0
    for name, tensor in state.items():
        flat = tensor.detach().reshape(-1)
        base = reference[name].detach().reshape(-1).to(flat.device) if reference is not None else None
        for start in range(0, flat.numel(), chunk):
            part = flat[start:start + chunk].double()
            if base is not None:
                part = part - base[start:start + chunk].double()
            total += float(torch.dot(part, part))
    return total ** 0.5


def state_spec(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes an update must match."""
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}


def check_update(
    update: Mapping[str, Any], spec: Mapping[str, tuple[tuple[int, ...], torch.dtype]], origin: str = "update"
) -> None:
    """Refuse an update whose keys, shapes or dtypes differ from `spec`, or that holds NaN/Inf."""
    missing = sorted(set(spec) - set(update))
    extra = sorted(set(update) - set(spec))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]!r}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]!r}")
        raise UpdateError(f"{origin} refused: {'; '.join(parts)}. Both sides must run the same model and peft config.")
    for name, (shape, dtype) in spec.items():
        tensor = update[name]
        if not isinstance(tensor, torch.Tensor):
            raise UpdateError(f"{origin} refused: {name!r} is a {type(tensor).__name__}, not a tensor.")
        if tuple(tensor.shape) != shape:
            raise UpdateError(f"{origin} refused: {name!r} has shape {tuple(tensor.shape)}, expected {shape}.")
        if tensor.dtype != dtype:
            raise UpdateError(f"{origin} refused: {name!r} has dtype {tensor.dtype}, expected {dtype}.")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UpdateError(f"{origin} refused: {name!r} contains NaN or Inf values.")


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str = "update") -> None:
    """Check `state` against the model's trainable tensors, then copy it in place."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    check_update(state, {n: (tuple(p.shape), p.dtype) for n, p in params.items()}, origin)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device))
