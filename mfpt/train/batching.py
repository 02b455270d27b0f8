"""The order in which a training pass visits its examples: shuffled, or grouped by length to cut padding; and
DP-SGD's Poisson batches.

Batches are padded to their longest example, so a batch of similar lengths wastes less compute. Grouping sorts
examples by length inside large random chunks, cuts them into batches, then shuffles the batches: every draw
comes from the seeded generator, so the same seed gives the same batches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Examples sorted together: 50 batches' worth, as Hugging Face's LengthGroupedSampler does ("megabatches").
CHUNK_BATCHES = 50


def shuffled_order(num_examples: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of the examples."""
    return rng.permutation(num_examples)


def length_grouped_order(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation whose consecutive `batch_size` slices hold examples of similar length, batches in random order."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    chunk = batch_size * CHUNK_BATCHES
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    if not batches:
        return order
    # Only the very last batch can be short (chunks hold whole batches); it stays last so that the caller's
    # `batch_size` slices line up with the batches made here.
    short = [batches.pop()] if len(batches[-1]) < batch_size else []
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))] + short) if batches or short else order


def poisson_batch(num_examples: int, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """One DP-SGD batch: every example included independently with probability `sample_rate` (a variable size, possibly
    empty), the sampling the RDP account of subsampled Gaussian steps assumes (Opacus samples the same way)."""
    return np.flatnonzero(rng.random(num_examples) < sample_rate)
