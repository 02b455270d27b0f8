"""Numeric precision of the forward pass: train.precision resolved to an autocast dtype for a device.

Only the forward pass runs under autocast; the trainable tensors, their gradients, the optimiser state and
everything a client sends stay fp32, so a federated update is the same kind of object under every precision.
On CUDA, fp32 matmuls also use TF32 (a process setting, made once when a CUDA device is first used here).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import ContextManager

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo's text, read once ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX), read from /proc/cpuinfo or torch."""
    flags = set(_cpuinfo().split())
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    # Elsewhere (no /proc), torch's dispatch level names AMX when the CPU has it.
    return "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32 (`auto`: bf16 where it is fast)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None
    return _DTYPES.get(precision)


def describe_compute(device: torch.device, precision: str) -> str:
    """Where this process computes and at what forward precision, as results.json records it: 'cpu (Intel(R) Xeon(R)
    ...), bf16 autocast'. Runs of one seed can differ in the last digits between machines; this says which."""
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                      if line.startswith("model name")), "")
        where = f"{device.type} ({model})" if model else device.type
    dtype = autocast_dtype(precision, device)
    return f"{where}, " + next((f"{name} autocast" for name, d in _DTYPES.items() if d is dtype), "fp32")


def base_dtype(model_dtype: str, precision: str, device: torch.device) -> torch.dtype:
    """model.dtype as the frozen base's torch dtype on `device`: bfloat16, float32, or (auto) bfloat16 where
    train.precision resolves to bf16 autocast there. A bf16 base outside bf16 autocast is refused in one line."""
    from mfpt.config import ConfigError

    autocast = autocast_dtype(precision, device)
    if model_dtype == "auto":
        return torch.bfloat16 if autocast is torch.bfloat16 else torch.float32
    if model_dtype == "bfloat16":
        if autocast is not torch.bfloat16:
            raise ConfigError(f"model.dtype = 'bfloat16' needs bf16 autocast, but train.precision = {precision!r} "
                              f"gives none on {device.type}; set train.precision = 'bf16' or model.dtype = 'float32'.")
        return torch.bfloat16
    return torch.float32


def forward_context(dtype: torch.dtype | None, device: torch.device) -> ContextManager:
    """Autocast around a forward pass (a no-op for fp32); enables TF32 matmuls on CUDA."""
    if device.type == "cuda":
        _allow_tf32()
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not."""
    if dtype is not torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


@functools.lru_cache(maxsize=1)
def _allow_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
