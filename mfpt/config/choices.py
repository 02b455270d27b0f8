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
    FEDADAGRAD = "fedadagrad"
    FEDMEDIAN = "fedmedian"
    FEDTRIMMEDAVG = "fedtrimmedavg"
    KRUM = "krum"
    MULTIKRUM = "multikrum"
    BULYAN = "bulyan"
    QFEDAVG = "qfedavg"


# Aggregators that read every client's update on its own (a median, a trimmed mean, a selection by distance, a
# loss-weighted step) rather than their sum: SecAgg+ hides exactly that, client-level DP's noise is sized for the
# mean's sensitivity, and per-language personalised aggregates would bypass the rule.
ROBUST_STRATEGIES = frozenset({StrategyName.FEDMEDIAN, StrategyName.FEDTRIMMEDAVG, StrategyName.KRUM,
                               StrategyName.MULTIKRUM, StrategyName.BULYAN, StrategyName.QFEDAVG})


class AttackKind(str, enum.Enum):
    """What the malicious clients of an attack experiment do ([attack], mfpt.federation.attacks)."""

    NONE = "none"
    LABEL_FLIP = "label-flip"
    SIGN_FLIP = "sign-flip"
    SCALE = "scale"
    NOISE = "noise"
    BACKDOOR = "backdoor"


class Task(str, enum.Enum):
    """What the data asks of the model (data.task): a label per text, or a text per text (scored with chrF++)."""

    CLASSIFICATION = "classification"
    GENERATION = "generation"


class TranslationDirection(str, enum.Enum):
    """Which way the udhr-translation source pairs its parallel paragraphs (data.direction)."""

    TO_ENGLISH = "to-english"
    FROM_ENGLISH = "from-english"


class ModelHead(str, enum.Enum):
    """What reads the model's output: a classification head, or a decoder's own LM head over label words."""

    CLASSIFIER = "classifier"
    LM = "lm"


class ModelDtype(str, enum.Enum):
    """The dtype the frozen base model is held in (model.dtype); trainable tensors are fp32 whatever it is."""

    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"


class Quantization(str, enum.Enum):
    """model.quantization: the frozen base in 8 or 4 bits through bitsandbytes (QLoRA), CUDA only."""

    NONE = "none"
    INT8 = "8bit"
    NF4 = "4bit"


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
    """Forward-pass precision (mfpt.model.precision); trainable tensors and optimiser state are fp32 under every one."""

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



# --------------------------------------------------------------------------------------------- defaults by choice
# A key whose good value depends on another choice defaults to 0, read as "the default of that choice", and the
# config resolves it once, when it is read (mfpt.config.rules.resolved_defaults). Each value says where it comes from.

# train.lr by peft.method (AdamW, what a client trains with).
DEFAULT_LR: dict[PeftMethod, tuple[float, str]] = {
    PeftMethod.PREFIX: (1e-2, "P-tuning v2 (Liu et al., ACL 2022): 5e-3 to 1e-2 for deep prompts on RoBERTa-class encoders"),
    PeftMethod.PROMPT: (1e-2, "P-tuning v2's setting for soft prompts on encoders (Lester et al. tune T5 at 0.3 with Adafactor)"),
    PeftMethod.PTUNING: (1e-2, "P-tuning v2's setting for prompt methods on encoders"),
    PeftMethod.LORA: (5e-4, "LoRA (Hu et al., ICLR 2022): 4e-4 to 5e-4 for RoBERTa-base on GLUE"),
    PeftMethod.FULL: (2e-5, "XLM-R fine-tuning on XNLI (Conneau et al., ACL 2020; XTREME, Hu et al., ICML 2020)"),
}

# federation.server_lr by federation.strategy: Flower's own defaults (flwr.serverapp.strategy); FedAvg and FedProx
# have no server learning rate.
DEFAULT_SERVER_LR: dict[StrategyName, tuple[float, str]] = {
    StrategyName.FEDADAM: (0.1, "Flower's FedAdam default (eta)"),
    StrategyName.FEDYOGI: (0.01, "Flower's FedYogi default (eta)"),
    StrategyName.FEDAVGM: (1.0, "Flower's FedAvgM default (server_learning_rate)"),
    StrategyName.FEDADAGRAD: (0.1, "Flower's FedAdagrad default (eta)"),
}
