"""Canaries and the statistics of a membership audit: how much a trained model reveals about planted examples.

A canary is a random string of letters with a random label. Some are planted in one client's training data, as
many fresh ones never trained on; a model that memorised the planted ones gives them lower losses. mfpt's audit
(`mfpt audit-privacy`, mfpt.experiments.canary_audit) reports
- the membership-inference AUC (probability that a planted canary's loss is below a fresh one's; 0.5 = nothing
  leaks) and advantage (max over thresholds of true-positive rate minus false-positive rate; 0 = nothing), and
- the exposure (Carlini et al., 2019): log2(fresh + 1) - log2(rank of a planted canary's loss among the fresh
  canaries' losses); 0 = not distinguishable, log2(fresh + 1) = ranked first.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mfpt.data.sources import LABEL, TEXT

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def make_canaries(count: int, labels: tuple[str, ...], seed: int, words: int = 8) -> pd.DataFrame:
    """`count` canaries: random 5-letter words, each with a random label (text, label)."""
    rng = np.random.default_rng(seed)
    texts = [" ".join("".join(rng.choice(LETTERS, 5)) for _ in range(words)) for _ in range(count)]
    return pd.DataFrame({TEXT: texts, LABEL: [labels[i] for i in rng.integers(0, len(labels), count)]})


def membership_scores(planted: np.ndarray, fresh: np.ndarray) -> tuple[float, float]:
    """(AUC, advantage) of the loss as a membership test: planted canaries should have the lower losses."""
    auc = float(np.mean([(p < fresh).mean() + 0.5 * (p == fresh).mean() for p in planted]))
    thresholds = np.unique(np.concatenate([planted, fresh]))
    advantage = max(float((planted <= t).mean() - (fresh <= t).mean()) for t in thresholds)
    return auc, max(advantage, 0.0)


def exposures(planted: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Each planted canary's exposure against the fresh ones: log2(|fresh| + 1) - log2(its rank by loss)."""
    ranks = np.array([1 + int((fresh < p).sum()) for p in planted])
    return math.log2(len(fresh) + 1) - np.log2(ranks)
