"""The fixed choices of the config: every key whose value is one of a few names is a `str` enum.

Values read from TOML compare equal to the members (`Paradigm.LOCAL == "local"`), as in peft's config enums.
"""

from __future__ import annotations

import enum


class Paradigm(str, enum.Enum):
    FEDERATED = "federated"
    LOCAL = "local"
    CENTRALIZED = "centralized"
    TRANSFER = "transfer"
    ZEROSHOT = "zeroshot"


class PeftMethod(str, enum.Enum):
    PREFIX = "prefix"
    PROMPT = "prompt"
    PTUNING = "ptuning"
    LORA = "lora"
    FULL = "full"


class StrategyName(str, enum.Enum):
    """Flower's server strategies mfpt wraps (mfpt.federation.strategies.base.STRATEGIES has one entry per member)."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDAVGM = "fedavgm"


class PoolAt(str, enum.Enum):
    BOS = "bos"
    FIRST = "first"


class Weighting(str, enum.Enum):
    EXAMPLES = "examples"
    UNIFORM = "uniform"


class PersonalizationMethod(str, enum.Enum):
    """How each language gets its own state (mfpt.federation.strategies.language_kernels); `none` = one global state for all."""

    NONE = "none"
    FINETUNE = "finetune"
    DISTANCE_WEIGHTED = "distance-weighted"
    UPDATE_SIMILARITY = "update-similarity"


class Partition(str, enum.Enum):
    IID = "iid"
    DIRICHLET = "dirichlet"


class Precision(str, enum.Enum):
    """Forward-pass precision (mfpt.train.precision); trainable tensors and optimiser state are fp32 under every one."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Selection(str, enum.Enum):
    """Which round's model a run reports (mfpt.train.schedule)."""

    LAST = "last"
    BEST_VALIDATION = "best-validation"


class DpMode(str, enum.Enum):
    """What differential privacy protects: nothing, a client's whole contribution, or each training example."""

    NONE = "none"
    CLIENT = "client"
    EXAMPLE = "example"


class ClipAt(str, enum.Enum):
    """Client-level DP: where each update (new - global) is clipped; the noise is always added by the server."""

    SERVER = "server"
    CLIENT = "client"


class DistanceKind(str, enum.Enum):
    """URIEL typological distances (mfpt.data.uriel computes each; `mfpt distance --kind` lists them)."""

    SYNTACTIC = "syntactic"
    GENETIC = "genetic"
    GEOGRAPHIC = "geographic"
    PHONOLOGICAL = "phonological"
    INVENTORY = "inventory"
    FEATURAL = "featural"

