"""The summary statistics every report and figure shares: the unweighted mean and the mean ± std over seeds."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def mean(values: Iterable[float]) -> float | None:
    """The unweighted mean, or None for no values."""
    arr = np.asarray(list(values), dtype=float)
    return float(arr.mean()) if arr.size else None


def mean_std(values: Iterable[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), or None for no values."""
    arr = np.asarray(list(values), dtype=float)
    if not arr.size:
        return None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
