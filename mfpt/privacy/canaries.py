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


def canary_pairs(count: int, labels: tuple[str, ...], seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`count` canaries to plant and `count` fresh ones, the i-th of each with the same label.

    Matched labels keep the audit about memorisation: the planted copies shift their client's label prior (80 rows
    among a few dozen), so a model that learned only that prior would give planted canaries lower losses than fresh
    ones of other labels, and unmatched sets would read it as leakage (measured: AUC 0.79 from a DP model that
    answered one label for every text)."""
    pool = make_canaries(2 * count, labels, seed)
    planted = pool.iloc[:count].reset_index(drop=True)
    fresh = pool.iloc[count:].reset_index(drop=True).assign(**{LABEL: planted[LABEL].to_numpy()})
    return planted, fresh


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


# ------------------------------------------------------------------------------------------ what a figure is worth


def null_statistics(planted: np.ndarray, fresh: np.ndarray, draws: int = 2000, seed: int = 0,
                    strata: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """AUC, advantage and mean exposure when membership carries no signal: the pooled losses split at random into
    `len(planted)` "planted" and `len(fresh)` "fresh" ones, `draws` times (a permutation test). With `strata` (one
    per canary, planted then fresh: their labels), membership is permuted within each stratum only, so the null
    keeps every label's share of planted and fresh canaries."""
    pooled = np.concatenate([planted, fresh])
    strata = np.zeros(len(pooled), dtype=int) if strata is None else np.asarray(strata)
    is_planted = np.arange(len(pooled)) < len(planted)
    rng = np.random.default_rng(seed)
    stats: dict[str, list[float]] = {"auc": [], "advantage": [], "mean_exposure": []}
    for _ in range(draws):
        member = np.empty(len(pooled), dtype=bool)
        for stratum in np.unique(strata):
            rows = np.flatnonzero(strata == stratum)
            member[rows] = rng.permutation(is_planted[rows])
        p, f = pooled[member], pooled[~member]
        auc, advantage = membership_scores(p, f)
        stats["auc"].append(auc)
        stats["advantage"].append(advantage)
        stats["mean_exposure"].append(float(exposures(p, f).mean()))
    return {name: np.asarray(values) for name, values in stats.items()}


def p_value(observed: float, null: np.ndarray) -> float:
    """The share of no-signal splits at least as extreme as `observed` (with the observed split counted)."""
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null)))


def _clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided (1 - alpha) Clopper-Pearson bounds of a binomial rate: (lower, upper)."""
    from scipy.stats import beta

    lower = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lower, upper


def epsilon_lower_bound(planted: np.ndarray, fresh: np.ndarray, delta: float, confidence: float = 0.95) -> float:
    """An empirical lower bound on epsilon, holding with `confidence` (Jagielski et al., 2020): a membership test at
    threshold t with true- and false-positive rates TPR, FPR shows epsilon >= log((TPR - delta) / FPR). The rates'
    Clopper-Pearson bounds take a union bound over every threshold tried (the threshold is chosen on these
    canaries), so the bound stays valid; 0 = nothing shown."""
    thresholds = np.unique(np.concatenate([planted, fresh]))
    alpha = (1 - confidence) / (2 * len(thresholds))  # two rates per threshold
    best = 0.0
    for t in thresholds:
        tpr_low, _ = _clopper_pearson(int((planted <= t).sum()), len(planted), alpha)
        _, fpr_high = _clopper_pearson(int((fresh <= t).sum()), len(fresh), alpha)
        if tpr_low - delta > 0 and fpr_high > 0:
            best = max(best, math.log((tpr_low - delta) / fpr_high))
    return best


def largest_certifiable_epsilon(planted: int, fresh: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon lower bound `planted` + `fresh` canaries can ever show (a perfect membership test),
    at one threshold: what the audit's size can certify at most."""
    alpha = (1 - confidence) / 2
    tpr_low, _ = _clopper_pearson(planted, planted, alpha)
    _, fpr_high = _clopper_pearson(0, fresh, alpha)
    return max(0.0, math.log(max(tpr_low - delta, 1e-300) / fpr_high))
