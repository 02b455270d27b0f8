"""What one process keeps between Flower messages: the loaded model and each client's tokenised data.

The frozen backbone is loaded once per process and reused across rounds and clients (never re-read per
message): every message overwrites all trainable tensors with the global state, so reusing the model object
for another client or round is the same as building it afresh.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mfpt.config import ExperimentConfig
from mfpt.data.clients import ClientSpec, PreparedData, prepare
from mfpt.model.factory import ClassifierModel, build_model
from mfpt.model.state import trainable_state
from mfpt.train.encoding import Encoded, encode_for

# Tokenised splits a process keeps. A simulation process serves many clients in turn (300 at the paper's scale):
# each one's split is cheap to tokenise again but would otherwise stay in memory for the whole run. 64 covers
# every split of the demo's 16 languages (train + eval) and of the in-process paradigms' pools.
ENCODED_ENTRIES = 64


@dataclass
class Runtime:
    cfg: ExperimentConfig
    data: PreparedData
    classifier: ClassifierModel
    # The seeded trainable state the model was built with. In-process paradigms start every learner from it:
    # the cached model's own tensors hold whatever the previous run in this process trained last.
    initial_state: dict[str, torch.Tensor] = field(default_factory=dict)
    # Least recently used first; at most ENCODED_ENTRIES splits are kept (see there).
    _encoded: OrderedDict[tuple, Encoded] = field(default_factory=OrderedDict)

    def encoded(self, client: ClientSpec, split: str) -> Encoded:
        """`client`'s rows of `split`, tokenised on first use."""
        return self._cached((client, split), lambda: self.data.client_rows(client, split))

    def encode_rows(self, key: tuple, rows) -> Encoded:
        """Tokenise arbitrary universal-schema rows once under `key` (pooled data of non-federated paradigms)."""
        return self._cached(key, lambda: rows)

    def _cached(self, key: tuple, rows: Callable[[], Any]) -> Encoded:
        if key in self._encoded:
            self._encoded.move_to_end(key)
            return self._encoded[key]
        self._encoded[key] = encode_for(self.cfg, rows(), self.classifier.tokenizer, self.data.labels,
                                        self.classifier.max_length)
        while len(self._encoded) > ENCODED_ENTRIES:
            self._encoded.popitem(last=False)
        return self._encoded[key]


def _model_key(cfg: ExperimentConfig) -> ExperimentConfig:
    # Settings that do not change the model or the data must not force a reload (rounds, lr, output dir...).
    return cfg.replace(**{"name": "", "output_dir": "", "paradigm": "federated", "federation.rounds": 1})


@functools.lru_cache(maxsize=1)
def _runtime(key: ExperimentConfig) -> Runtime:
    if key.train.threads:
        torch.set_num_threads(key.train.threads)
    data = prepare(key)
    classifier = build_model(key, len(data.labels))
    return Runtime(key, data, classifier, trainable_state(classifier.model))


def get_runtime(cfg: ExperimentConfig) -> Runtime:
    """The process's runtime for `cfg`, built on first use (one model per process: a new config replaces it).

    `runtime.cfg` holds the model-defining settings only; training settings come from the caller's config.
    """
    return _runtime(_model_key(cfg))
