"""The message protocol between the ServerApp and the ClientApps: every record key, in one place.

Flower requires every reply of a round to carry identical MetricRecord keys, so per-language results travel as
the client's index plus confusion counts `cm-<gold>-<predicted>`; the server pools them per language. The
experiment config travels flattened (`section.key`) under `cfg.` in the message's ConfigRecord, so every
client trains under exactly the server's settings and a node's own configuration only says which client it is.
Both apps and the strategy import this module; it imports nothing of theirs.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mfpt.config import ExperimentConfig, from_flat, to_flat
from mfpt.train.evaluation import EvalCounts

# Record names inside a message's RecordDict.
ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"

# ConfigRecord keys (server -> client).
ROUND_KEY = "mfpt.round"
PROXIMAL_MU_KEY = "proximal-mu"  # set by Flower's FedProx itself: the client adds the proximal term
CONFIG_PREFIX = "cfg."
# The split an evaluation message asks for ('validation' or 'test'); absent = the config's data.eval_split.
EVAL_SPLIT_KEY = "mfpt.eval-split"

# MetricRecord keys (client -> server).
CLIENT_KEY = "client-index"
EXAMPLES_KEY = "num-examples"
WEIGHT_KEY = "mfpt-weight"  # written by the server (examples or uniform), whatever a client claims
NUM_TRAIN_KEY = "num-train"
NUM_EVAL_KEY = "num-eval"
TRAIN_LOSS_KEY = "train-loss"
TRAIN_STEPS_KEY = "train-steps"
EVAL_LOSS_SUM_KEY = "eval-loss-sum"
# Generation: the count of exact matches and chrF++'s statistics `chrf-<i>` (in sacrebleu's order).
EXACT_KEY = "exact-matches"
CHRF_PREFIX = "chrf-"

# Personalisation (mfpt.federation.strategies.personalized): the language's own state travels next to the global one, under its
# own record; a client's evaluation of it comes back with the same keys under PERSONAL_PREFIX.
PERSONAL_ARRAYS = "personal-arrays"
PERSONAL_PREFIX = "personal."
# [attack] kind = backdoor: the counts of each client's triggered evaluation texts (labelled with the target).
BACKDOOR_PREFIX = "backdoor."
FINETUNE_STEPS_KEY = "mfpt.finetune-steps"  # a train message with it: fine-tune (after the last round) and evaluate

# What every train reply's metrics must hold.
TRAIN_METRICS = (TRAIN_LOSS_KEY, TRAIN_STEPS_KEY, EXAMPLES_KEY, CLIENT_KEY)


def config_entries(cfg: ExperimentConfig) -> dict[str, Any]:
    """The experiment config as ConfigRecord entries (flattened under `cfg.`)."""
    return {CONFIG_PREFIX + k: v for k, v in to_flat(cfg).items()}


def config_from_entries(entries: Mapping[str, Any]) -> ExperimentConfig:
    """The experiment config the server sent (the inverse of `config_entries`; other keys are ignored)."""
    return from_flat({k[len(CONFIG_PREFIX):]: v for k, v in entries.items() if k.startswith(CONFIG_PREFIX)})


def confusion_key(gold: int, predicted: int) -> str:
    """The metric key of one confusion-matrix cell."""
    return f"cm-{gold}-{predicted}"


def encode_confusion(confusion: np.ndarray) -> dict[str, int]:
    """A square confusion matrix as `cm-i-j` metric entries."""
    return {confusion_key(g, p): int(confusion[g, p]) for g in range(confusion.shape[0]) for p in range(confusion.shape[1])}


def decode_confusion(metrics: Mapping[str, Any], num_labels: int, prefix: str = "") -> np.ndarray:
    """The confusion matrix a client sent (KeyError names a missing cell); `prefix` selects the personal one."""
    return np.array([[int(metrics[prefix + confusion_key(g, p)]) for p in range(num_labels)] for g in range(num_labels)])


def encode_counts(counts: EvalCounts, prefix: str = "") -> dict[str, int | float]:
    """An evaluation's counts as metric entries under `prefix`: examples, loss sum, and the confusion matrix or
    (generation) the exact matches and chrF++ statistics."""
    entries: dict[str, int | float] = {EXAMPLES_KEY: counts.n, EVAL_LOSS_SUM_KEY: counts.loss_sum,
                                       **encode_confusion(counts.confusion)}
    if counts.generation:
        entries[EXACT_KEY] = counts.exact
        entries.update({f"{CHRF_PREFIX}{i}": int(v) for i, v in enumerate(counts.chrf_stats)})
    return {prefix + k: v for k, v in entries.items()}


def decode_counts(metrics: Mapping[str, Any], num_labels: int, prefix: str = "") -> EvalCounts:
    """The counts `encode_counts` wrote (KeyError names a missing entry); num_labels = 0 for generation."""
    counts = EvalCounts(num_labels, int(metrics[prefix + EXAMPLES_KEY]), float(metrics[prefix + EVAL_LOSS_SUM_KEY]),
                        decode_confusion(metrics, num_labels, prefix))
    if counts.generation:
        counts.exact = int(metrics[prefix + EXACT_KEY])
        keys = sorted((int(k[len(prefix + CHRF_PREFIX):]), k) for k in metrics if k.startswith(prefix + CHRF_PREFIX))
        counts.chrf_stats = np.array([int(metrics[k]) for _, k in keys], dtype=np.int64)
    return counts
