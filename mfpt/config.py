"""The experiment config: typed, validated, frozen dataclasses loaded once from TOML and passed down.

The same schema feeds the CLI (a TOML file plus `--set section.key=value`) and Flower's run_config
(flattened `section.key` keys, lists as comma-separated strings, since run_config values are scalars).
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mfpt.errors import UserError
from mfpt.languages import normalize_languages
from mfpt.registry import did_you_mean, unknown_name_message


class ConfigError(UserError, ValueError):
    """A config value that is missing, unknown, of the wrong type or impossible; the message names the key."""


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
    """Flower's server strategies mfpt wraps (mfpt.strategy.STRATEGIES has one entry per member)."""

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
    """How each language gets its own state (mfpt.personalization); `none` = one global state for all."""

    NONE = "none"
    FINETUNE = "finetune"
    DISTANCE_WEIGHTED = "distance-weighted"
    UPDATE_SIMILARITY = "update-similarity"


class Partition(str, enum.Enum):
    IID = "iid"
    DIRICHLET = "dirichlet"


class Precision(str, enum.Enum):
    """Forward-pass precision (mfpt.precision); trainable tensors and optimiser state are fp32 under every one."""

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Selection(str, enum.Enum):
    """Which round's model a run reports (mfpt.selection)."""

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


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _help(
        "Hugging Face encoder: a hub id (e.g. xlm-roberta-base) or a local checkpoint directory.",
        default="xlm-roberta-base",
    )
    max_seq_length: int = _help(
        "Tokens per example before truncation; input-prompt methods also leave room for their virtual tokens.",
        default=128,
    )
    text_prefix: str = _help(
        "String put before every text, e.g. 'query: ' for E5 encoders, which were trained with it.",
        default="",
    )


@dataclass(frozen=True)
class PeftConfig:
    method: PeftMethod = _help(
        "prefix (P-tuning v2 deep prompts), prompt (input soft prompt), ptuning (P-tuning v1 prompt encoder), "
        "lora, or full (full fine-tuning baseline).",
        default=PeftMethod.PREFIX,
    )
    num_virtual_tokens: int = _help(
        "Prompt length. 32 deep prefix tokens + the RoBERTa head on xlm-roberta-base give ~1.18M trainable "
        "parameters, the paper's ~1.2M.",
        default=32,
    )
    prefix_projection: bool = _help(
        "prefix only: reparameterise the prefix through a 2-layer MLP (the P-tuning v2 paper's option).",
        default=False,
    )
    encoder_hidden_size: int = _help(
        "Hidden size of the prompt encoder MLP (ptuning, and prefix with prefix_projection).", default=128
    )
    lora_r: int = _help("lora only: rank.", default=8)
    lora_alpha: int = _help("lora only: scaling numerator.", default=16)
    lora_dropout: float = _help("lora only: dropout on the LoRA branch.", default=0.1)
    lora_target_modules: tuple[str, ...] = _help(
        "lora only: module names to adapt.", default=("query", "value")
    )
    init_std: float = _help(
        "prefix/prompt/ptuning: std of the initial virtual-token parameters (0 = peft's N(0, 1)). Small values start "
        "from the frozen encoder's own behaviour; on udhr-topics with multilingual-e5-small, N(0, 1) prefixes stayed "
        "at the majority class after 80 steps while std 0.05 reached 56% (README, 'Why the defaults').",
        default=0.05,
    )
    pool_at: PoolAt = _help(
        "prompt/ptuning only: where the classification head reads. 'bos' reads the real <s>/[CLS] token, as "
        "under every other method; 'first' reads position 0, which under input prompts is virtual token 0.",
        default=PoolAt.BOS,
    )


@dataclass(frozen=True)
class DataConfig:
    source: str = _help(
        "Where the data comes from: 'files' (data.path in the universal schema), 'udhr-topics' (shipped), "
        "or a registered benchmark loader.",
        default="files",
    )
    path: str = _help(
        "files: a JSONL, CSV or Parquet file (or a directory of them) with columns text, [text_pair], label, "
        "lang, [split]. Benchmarks: a local copy in the authors' format (empty = Hugging Face hub).",
        default="",
    )
    languages: tuple[str, ...] = _help(
        "The client languages, in any ISO 639-1/639-3/BCP-47/FLORES form; empty = every language in the data.",
        default=(),
    )
    heldout_languages: tuple[str, ...] = _help(
        "Languages that take no part in training but are evaluated with the final model.", default=()
    )
    low_resource: tuple[str, ...] = _help(
        "Languages reported as the low-resource block of every table.", default=()
    )
    labels: tuple[str, ...] = _help(
        "The global label set, in order (label id = position). Empty = read from the data before the run; "
        "required in deployment, where the server never sees data.",
        default=(),
    )
    train_per_language: int = _help(
        "Cap on training examples per language, sampled with the seed and stratified by label (0 = all).",
        default=0,
    )
    test_per_language: int = _help("Cap on test examples per language (0 = all).", default=0)
    test_fraction: float = _help(
        "Share of each language held out as test when the data has no 'split' column (stratified, seeded).",
        default=0.2,
    )
    eval_split: str = _help("The split every client evaluates on each round: test or validation.", default="test")
    train_pool: str = _help(
        "Benchmarks: the split each language's training examples are drawn from: 'train' (the benchmark's own "
        "or machine-translated training set) or 'validation' (for benchmarks whose training data is English-only).",
        default="train",
    )
    selection: Selection = _help(
        "Which round's model is reported: 'last' (the final round, evaluated on data.eval_split), or "
        "'best-validation' (every evaluation uses the validation split; after the last round the test split is "
        "scored once with the global state of the round with the best mean validation accuracy; needs a "
        "validation split).",
        default=Selection.LAST,
    )


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = _help("Federated rounds.", default=10)
    strategy: StrategyName = _help("Server strategy: fedavg, fedprox, fedadam, fedyogi, fedavgm.",
                                   default=StrategyName.FEDAVG)
    weighting: Weighting = _help(
        "FedAvg weights: 'examples' (n_k / n, the FedAvg paper) or 'uniform' (every client counts the same).",
        default=Weighting.EXAMPLES,
    )
    fraction_train: float = _help("Fraction of clients sampled to train each round, in (0, 1].", default=1.0)
    fraction_evaluate: float = _help("Fraction of clients sampled to evaluate each round, in (0, 1].", default=1.0)
    min_clients: int = _help(
        "Fewest clients that must reply for a round to count; 0 = all sampled clients.", default=0
    )
    clients_per_language: int = _help("Split each language among this many clients.", default=1)
    partition: Partition = _help(
        "How a language is split among its clients: iid, or dirichlet over labels.", default=Partition.IID
    )
    dirichlet_alpha: float = _help("Dirichlet concentration; smaller = more skewed labels.", default=0.5)
    proximal_mu: float = _help("fedprox only: weight of the proximal term.", default=0.01)
    server_lr: float = _help("fedadam/fedyogi/fedavgm: server learning rate (eta).", default=1.0)
    server_momentum: float = _help("fedavgm only: server momentum.", default=0.9)
    tau: float = _help("fedadam/fedyogi: adaptivity (controls the denominator's floor).", default=1e-3)
    round_timeout: float = _help("Seconds the server waits for replies in a round.", default=3600.0)
    max_update_norm: float = _help(
        "Refuse a client update whose L2 norm of (update - current global state), over all trainable tensors, "
        "exceeds this (0 = off). A guard against poisoned or diverged updates.",
        default=0.0,
    )
    client_cpus: float = _help(
        "Simulation: CPU cores per client; the number of clients training at once is cores / client_cpus.",
        default=1.0,
    )
    client_gpus: float = _help("Simulation: GPU share per client (e.g. 0.25 runs 4 clients per GPU).", default=0.0)
    evaluate_every: int = _help(
        "Evaluate every N rounds, and always after the last (1 = every round). Evaluation on a large test split "
        "can cost as much as training.",
        default=1,
    )


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int = _help("Passes over the client's data per round.", default=1)
    max_steps: int = _help(
        "Cap on optimisation steps per round and client (0 = no cap); evens out clients of very different size.",
        default=0,
    )
    batch_size: int = _help("Training batch size.", default=16)
    eval_batch_size: int = _help("Evaluation batch size.", default=64)
    lr: float = _help("Client learning rate (AdamW). Prompts want ~1e-2, full fine-tuning ~2e-5.", default=1e-2)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    grad_clip: float = _help("Max gradient norm (0 = off).", default=1.0)
    device: str = _help("auto, cpu, cuda or cuda:N.", default="auto")
    threads: int = _help(
        "torch CPU threads per process; 0 = automatic: federation.client_cpus per simulated client, all cores for "
        "in-process paradigms.",
        default=0,
    )
    precision: Precision = _help(
        "Forward-pass precision: fp32, bf16 or fp16 autocast, or auto (bf16 on a CUDA GPU with bf16 or a CPU with "
        "AVX512-BF16/AMX, fp32 elsewhere). Trainable tensors, optimiser state and exchanged state stay fp32; "
        "fp16 uses loss scaling; CUDA also gets TF32 matmuls. fp32 is bit-identical on every machine.",
        default=Precision.FP32,
    )
    group_by_length: bool = _help(
        "Batch training examples of similar length together (sorted within chunks of 50 batches, batches "
        "shuffled with the seed): less padding, same reproducibility.",
        default=False,
    )


@dataclass(frozen=True)
class TransferConfig:
    sources: tuple[str, ...] = _help(
        "transfer/zeroshot: the source languages trained on first (default: English).", default=("eng",)
    )
    source_epochs: int = _help("transfer/zeroshot: epochs over the pooled source data.", default=3)


@dataclass(frozen=True)
class PrivacyConfig:
    dp: DpMode = _help(
        "Differential privacy: 'none'; 'client' (each client's whole update per round is clipped and the server "
        "adds Gaussian noise: Flower's DP strategy wrappers); 'example' (DP-SGD in every client's training loop: "
        "each example's gradient is clipped and noised).",
        default=DpMode.NONE,
    )
    clip_norm: float = _help(
        "L2 bound: client: on each update (new - global) over the trainable tensors; example: on each example's "
        "gradient. With adaptive_clipping, the starting bound.",
        default=1.0,
    )
    noise_multiplier: float = _help(
        "Gaussian noise std as a multiple of the sensitivity (sigma); 0 = clipping only (epsilon = infinity). "
        "Ignored when target_epsilon > 0.",
        default=1.0,
    )
    target_epsilon: float = _help(
        "> 0: mfpt picks the noise multiplier that gives this epsilon after federation.rounds rounds at the "
        "sampling rate used (`mfpt privacy CONFIG` prints it); 0 = use noise_multiplier.",
        default=0.0,
    )
    delta: float = _help(
        "The delta of (epsilon, delta); 0 = 1/N, N = the number of training clients (client) or the number of "
        "training examples of each client (example).",
        default=0.0,
    )
    adaptive_clipping: bool = _help(
        "client only: adapt the clipping bound each round to the median update norm (Andrew et al., 2021; "
        "Flower's adaptive-clipping wrappers).",
        default=False,
    )
    clip_at: ClipAt = _help(
        "client only: 'server' clips the received updates; 'client' clips on the node before sending "
        "(Flower's clipping mods; required with secure_aggregation, where the server never sees an update).",
        default=ClipAt.SERVER,
    )
    secure_aggregation: bool = _help(
        "Flower's SecAgg+: clients mask their updates so the server learns only their sum. FedAvg only.",
        default=False,
    )


@dataclass(frozen=True)
class PersonalizationConfig:
    method: PersonalizationMethod = _help(
        "federated only. none (one global state); finetune (after the last round each language fine-tunes the "
        "global state on its own data); distance-weighted (each round every language trains from its own aggregate, "
        "other languages weighted by softmax(-URIEL distance / temperature)); update-similarity (the same with "
        "1 - cosine similarity of this round's updates as the distance). Held-out languages get the URIEL "
        "distance-weighted combination of the trained languages' personalised states.",
        default=PersonalizationMethod.NONE,
    )
    distance_kind: str = _help(
        "URIEL distance for distance-weighted and for held-out languages: syntactic, genetic, geographic, "
        "phonological, inventory or featural (mfpt distance).",
        default="syntactic",
    )
    temperature: float = _help(
        "> 0. Kernel temperature: weights of the other languages are softmax(-distance / temperature); large = "
        "uniform, small = the nearest language only. 0.1 is about the spread of syntactic distances among the "
        "demo's languages (0.02-0.65).",
        default=0.1,
    )
    self_weight: float = _help(
        "In [0, 1]: the share of a language's own update in its aggregate (the rest goes to the other languages by "
        "the kernel); 1 = local training, 1 / languages with a huge temperature = uniform FedAvg.",
        default=0.5,
    )
    finetune_steps: int = _help(
        ">= 0. finetune: local steps each language fine-tunes the final global state for (batch train.batch_size, "
        "lr train.lr); 0 = one local epoch.",
        default=0,
    )


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _help("Run name, used in reports.", default="mfpt")
    seed: int = _help("Seeds data sampling, model init and every client's training in every round.", default=0)
    output_dir: str = _help("Where results, checkpoints and the report go.", default="runs/mfpt")
    paradigm: Paradigm = _help(
        "federated, local, centralized, transfer or zeroshot.", default=Paradigm.FEDERATED
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)

    def __post_init__(self) -> None:
        _check_ranges(self)
        _check_privacy(self)

    def replace(self, **overrides: Any) -> "ExperimentConfig":
        """A copy with dotted-key overrides applied (`{"train.lr": 0.1}`), validated again."""
        return from_dict(set_dotted(to_dict(self), overrides))


SECTIONS = ("model", "peft", "data", "federation", "train", "transfer", "privacy", "personalization")


# --------------------------------------------------------------------------------------------- checks


def _check_ranges(cfg: ExperimentConfig) -> None:
    def need(ok: bool, key: str, allowed: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{key} = {value!r} is not allowed: must be {allowed}.")

    f, t, d, p, m = cfg.federation, cfg.train, cfg.data, cfg.peft, cfg.model
    need(f.rounds >= 1, "federation.rounds", "an integer >= 1", f.rounds)
    need(0 < f.fraction_train <= 1, "federation.fraction_train", "in (0, 1]", f.fraction_train)
    need(0 < f.fraction_evaluate <= 1, "federation.fraction_evaluate", "in (0, 1]", f.fraction_evaluate)
    need(f.min_clients >= 0, "federation.min_clients", "an integer >= 0 (0 = all sampled)", f.min_clients)
    need(f.clients_per_language >= 1, "federation.clients_per_language", "an integer >= 1", f.clients_per_language)
    need(f.dirichlet_alpha > 0, "federation.dirichlet_alpha", "> 0", f.dirichlet_alpha)
    need(f.proximal_mu >= 0, "federation.proximal_mu", ">= 0", f.proximal_mu)
    need(f.server_lr > 0, "federation.server_lr", "> 0", f.server_lr)
    need(0 <= f.server_momentum < 1, "federation.server_momentum", "in [0, 1)", f.server_momentum)
    need(f.tau > 0, "federation.tau", "> 0", f.tau)
    need(f.round_timeout > 0, "federation.round_timeout", "> 0 seconds", f.round_timeout)
    need(f.max_update_norm >= 0, "federation.max_update_norm", ">= 0 (0 = off)", f.max_update_norm)
    need(f.client_cpus > 0, "federation.client_cpus", "> 0", f.client_cpus)
    need(f.client_gpus >= 0, "federation.client_gpus", ">= 0", f.client_gpus)
    need(f.evaluate_every >= 1, "federation.evaluate_every", "an integer >= 1", f.evaluate_every)
    need(t.lr > 0, "train.lr", "> 0", t.lr)
    need(t.local_epochs >= 1, "train.local_epochs", "an integer >= 1", t.local_epochs)
    need(t.max_steps >= 0, "train.max_steps", "an integer >= 0 (0 = no cap)", t.max_steps)
    need(t.batch_size >= 1, "train.batch_size", "an integer >= 1", t.batch_size)
    need(t.eval_batch_size >= 1, "train.eval_batch_size", "an integer >= 1", t.eval_batch_size)
    need(t.weight_decay >= 0, "train.weight_decay", ">= 0", t.weight_decay)
    need(t.grad_clip >= 0, "train.grad_clip", ">= 0 (0 = off)", t.grad_clip)
    need(t.threads >= 0, "train.threads", "an integer >= 0", t.threads)
    need(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda") or t.device == "mps",
        "train.device", "auto, cpu, cuda, cuda:N or mps", t.device,
    )
    need(m.max_seq_length >= 8, "model.max_seq_length", "an integer >= 8", m.max_seq_length)
    need(bool(m.name), "model.name", "a hub id or a checkpoint directory", m.name)
    need(p.num_virtual_tokens >= 1, "peft.num_virtual_tokens", "an integer >= 1", p.num_virtual_tokens)
    need(p.encoder_hidden_size >= 1, "peft.encoder_hidden_size", "an integer >= 1", p.encoder_hidden_size)
    need(p.init_std >= 0, "peft.init_std", ">= 0 (0 = peft's default init)", p.init_std)
    need(p.lora_r >= 1, "peft.lora_r", "an integer >= 1", p.lora_r)
    need(0 <= p.lora_dropout < 1, "peft.lora_dropout", "in [0, 1)", p.lora_dropout)
    need(d.train_per_language >= 0, "data.train_per_language", "an integer >= 0 (0 = all)", d.train_per_language)
    need(d.test_per_language >= 0, "data.test_per_language", "an integer >= 0 (0 = all)", d.test_per_language)
    need(0 < d.test_fraction < 1, "data.test_fraction", "in (0, 1)", d.test_fraction)
    need(d.eval_split in ("test", "validation"), "data.eval_split", "'test' or 'validation'", d.eval_split)
    need(d.train_pool in ("train", "validation"), "data.train_pool", "'train' or 'validation'", d.train_pool)
    need(d.selection == Selection.LAST or d.eval_split == "test", "data.eval_split",
         "'test' under data.selection = 'best-validation' (rounds are evaluated on validation, the chosen round on "
         "test); or set data.selection = 'last'", d.eval_split)
    need(d.selection == Selection.LAST or d.train_pool == "train", "data.train_pool",
         "'train' under data.selection = 'best-validation' (with 'validation' the clients train on the split the "
         "round would be selected on); or set data.selection = 'last'", d.train_pool)
    need(len(set(d.labels)) == len(d.labels), "data.labels", "a list without repeats", list(d.labels))
    need(len(d.labels) != 1, "data.labels", "empty (read from the data) or at least 2 labels", list(d.labels))
    need(
        cfg.transfer.source_epochs >= 1, "transfer.source_epochs", "an integer >= 1", cfg.transfer.source_epochs
    )
    _check_personalization(cfg)


# URIEL kinds mfpt.distance computes (repeated here: config is a foundation and may not import distance).
_DISTANCE_KINDS = ("syntactic", "genetic", "geographic", "phonological", "inventory", "featural")


def _check_personalization(cfg: ExperimentConfig) -> None:
    """Ranges of [personalization], and refuse it under paradigms that have no federation to personalise."""
    z = cfg.personalization
    if z.distance_kind not in _DISTANCE_KINDS:
        raise ConfigError(f"personalization.distance_kind = {z.distance_kind!r} is not allowed: must be one of "
                          f"{', '.join(map(repr, _DISTANCE_KINDS))}." + did_you_mean(z.distance_kind, _DISTANCE_KINDS))
    if not z.temperature > 0:
        raise ConfigError(f"personalization.temperature = {z.temperature!r} is not allowed: must be > 0.")
    if not 0 <= z.self_weight <= 1:
        raise ConfigError(f"personalization.self_weight = {z.self_weight!r} is not allowed: must be in [0, 1].")
    if z.finetune_steps < 0:
        raise ConfigError(f"personalization.finetune_steps = {z.finetune_steps!r} is not allowed: must be an "
                          "integer >= 0 (0 = one local epoch).")
    if z.method != PersonalizationMethod.NONE and cfg.paradigm != Paradigm.FEDERATED:
        raise ConfigError(
            f"personalization.method = {z.method.value!r} needs paradigm = 'federated', not {cfg.paradigm.value!r}: "
            f"{_WHY_NOT_PERSONALIZED[cfg.paradigm]} Set personalization.method = \"none\" or paradigm = \"federated\"."
        )


_WHY_NOT_PERSONALIZED = {
    Paradigm.LOCAL: "local training already gives each language its own prompt and nothing is aggregated.",
    Paradigm.CENTRALIZED: "centralized training pools every language's data into one model; there are no per-language "
                          "updates to weigh.",
    Paradigm.TRANSFER: "transfer fine-tunes per language from a source model without aggregation.",
    Paradigm.ZEROSHOT: "zeroshot trains one source model and never trains on the target languages.",
}


def _check_privacy(cfg: ExperimentConfig) -> None:
    """Refuse [privacy] values out of range and combinations that cannot work, naming the keys."""
    pv, f = cfg.privacy, cfg.federation
    if not pv.clip_norm > 0:
        raise ConfigError(f"privacy.clip_norm = {pv.clip_norm!r} is not allowed: must be > 0.")
    if not pv.noise_multiplier >= 0:
        raise ConfigError(f"privacy.noise_multiplier = {pv.noise_multiplier!r} is not allowed: must be >= 0.")
    if not pv.target_epsilon >= 0:
        raise ConfigError(f"privacy.target_epsilon = {pv.target_epsilon!r} is not allowed: must be > 0 (0 = use "
                          "privacy.noise_multiplier).")
    if not 0 <= pv.delta < 1:
        raise ConfigError(f"privacy.delta = {pv.delta!r} is not allowed: must be in (0, 1) (0 = the default 1/N).")
    private = pv.dp != DpMode.NONE or pv.secure_aggregation
    if private and cfg.paradigm != Paradigm.FEDERATED:
        raise ConfigError(f"[privacy] (privacy.dp = {pv.dp.value!r}, privacy.secure_aggregation = "
                          f"{str(pv.secure_aggregation).lower()}) applies to federated runs only, but paradigm = "
                          f"{cfg.paradigm.value!r}; set paradigm = 'federated' or privacy.dp = 'none'.")
    if pv.dp == DpMode.NONE and pv.target_epsilon > 0:
        raise ConfigError("privacy.target_epsilon is set but privacy.dp = 'none'; set privacy.dp = 'client' or "
                          "'example', or remove privacy.target_epsilon.")
    if pv.dp != DpMode.CLIENT and (pv.adaptive_clipping or pv.clip_at != ClipAt.SERVER):
        key = "privacy.adaptive_clipping" if pv.adaptive_clipping else "privacy.clip_at"
        raise ConfigError(f"{key} applies to client-level DP only, but privacy.dp = {pv.dp.value!r}; set "
                          "privacy.dp = 'client' or leave it at its default.")
    if pv.dp == DpMode.CLIENT:
        if f.strategy not in (StrategyName.FEDAVG, StrategyName.FEDPROX):
            raise ConfigError(f"privacy.dp = 'client' with federation.strategy = {f.strategy.value!r}: the noise is "
                              "calibrated to an average of clipped updates, which a server optimiser transforms "
                              "afterwards; use federation.strategy = 'fedavg' or 'fedprox'.")
        if f.weighting != Weighting.UNIFORM:
            raise ConfigError("privacy.dp = 'client' needs federation.weighting = 'uniform': with 'examples' one "
                              "client's weight, hence its influence on the average, exceeds 1/n and the noise "
                              "(sized for 1/n) no longer covers it.")
    if pv.secure_aggregation:
        if f.strategy != StrategyName.FEDAVG:
            raise ConfigError(f"privacy.secure_aggregation = true runs through Flower's SecAgg+ workflow, which "
                              f"aggregates with FedAvg only; federation.strategy = {f.strategy.value!r} is not "
                              "supported: set federation.strategy = 'fedavg'.")
        if f.max_update_norm > 0:
            raise ConfigError(f"privacy.secure_aggregation = true hides each update from the server, so "
                              f"federation.max_update_norm = {f.max_update_norm:g} (a check of each update) cannot "
                              "work: set federation.max_update_norm = 0 or privacy.secure_aggregation = false.")
        if pv.dp == DpMode.CLIENT and pv.clip_at != ClipAt.CLIENT:
            raise ConfigError("privacy.secure_aggregation = true with privacy.dp = 'client': the server never sees "
                              "an update to clip, so set privacy.clip_at = 'client'.")
        if pv.adaptive_clipping:
            raise ConfigError("privacy.adaptive_clipping needs each client's clipped/not-clipped bit in the clear, "
                              "which the SecAgg+ workflow does not carry: set privacy.adaptive_clipping = false or "
                              "privacy.secure_aggregation = false.")
    _check_private_personalization(cfg)


def _check_private_personalization(cfg: ExperimentConfig) -> None:
    """Refuse combinations of the newer sections that cannot hold together: personalisation reads each language's
    own update (or fine-tuned state), which [privacy] may hide or not cover, and keeps no per-round selection."""
    method, pv = cfg.personalization.method, cfg.privacy
    if pv.dp == DpMode.EXAMPLE and cfg.train.group_by_length:
        raise ConfigError("train.group_by_length = true makes a batch depend on its examples' lengths, while "
                          "privacy.dp = 'example' accounts for batches drawn at random; set "
                          "train.group_by_length = false or privacy.dp = 'none'/'client'.")
    if method == PersonalizationMethod.NONE:
        return
    if cfg.data.selection == Selection.BEST_VALIDATION:
        raise ConfigError(f"data.selection = 'best-validation' picks one round's global state, but "
                          f"personalization.method = {method.value!r} keeps per-language states from the last round "
                          "(or fine-tunes after it); set data.selection = 'last' or personalization.method = 'none'.")
    if pv.secure_aggregation:
        raise ConfigError(f"personalization.method = {method.value!r} needs each language's own update (or fine-tuned "
                          "state) on the server, which privacy.secure_aggregation = true hides by design; set "
                          "personalization.method = 'none' or privacy.secure_aggregation = false.")
    if pv.dp == DpMode.CLIENT:
        raise ConfigError(f"personalization.method = {method.value!r} builds per-language states from the clients' "
                          "individual updates before Flower's DP noise, so privacy.dp = 'client' would not cover them; "
                          "set personalization.method = 'none' or privacy.dp = 'example' (whose updates are already "
                          "private when they leave the client).")
    if pv.dp == DpMode.EXAMPLE and method == PersonalizationMethod.FINETUNE:
        raise ConfigError("personalization.method = 'finetune' trains after the last round and sends the fine-tuned "
                          "state back, steps the privacy.dp = 'example' account does not count; use "
                          "personalization.method = 'distance-weighted' or 'update-similarity', or privacy.dp = 'none'.")


# --------------------------------------------------------------------------------------------- parsing


def _dataclass_of(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a TOML/run_config/CLI value to the field's type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = [m.value for m in annotation]
        if isinstance(value, str) and value in allowed:
            return annotation(value)
        if isinstance(value, annotation):
            return value
        raise ConfigError(f"{key} = {value!r} is not allowed: must be one of {', '.join(map(repr, allowed))}."
                          + did_you_mean(value, allowed))
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if isinstance(value, str):  # run_config and --set carry lists as "a,b,c"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a list of {item_type.__name__}.")
        return tuple(_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} = {value!r} has the wrong type: expected true or false.")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected an integer.")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected an integer.") from None
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a number.")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a number.") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a string.")
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {annotation!r}")  # programming error


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        where = f"section [{prefix.rstrip('.')}]" if prefix else "the top level"
        key = unknown[0]
        hint = did_you_mean(key, names, n=1, cutoff=0.6, prefix=prefix)
        raise ConfigError(f"Unknown config key '{prefix}{key}' in {where}.{hint} Allowed keys: {', '.join(names)}.")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        annotation = _dataclass_of(cls, f.name)
        value = raw[f.name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{f.name} must be a [section] table, got {value!r}.")
            kwargs[f.name] = _build(annotation, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(prefix + f.name, value, annotation)
    return cls(**kwargs)


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested dict (as read from TOML) into an ExperimentConfig, language codes made canonical."""
    cfg = _build(ExperimentConfig, raw, "")
    canonical = _canonical_languages(cfg)
    if all(getattr(getattr(cfg, s), k) == v for (s, k), v in canonical.items()):
        return cfg
    return _build(ExperimentConfig, set_dotted(to_dict(cfg), {f"{s}.{k}": list(v) for (s, k), v in canonical.items()}), "")


# Every config key that lists languages; each is made canonical (ISO 639-3, script where it differs) once, here.
LANGUAGE_KEYS = (("data", "languages"), ("data", "heldout_languages"), ("data", "low_resource"), ("transfer", "sources"))


def _canonical_languages(cfg: ExperimentConfig) -> dict[tuple[str, str], tuple[str, ...]]:
    """The canonical form of every language list, refusing unknown codes, repeats and a trained held-out language."""
    canonical = {}
    for section, key in LANGUAGE_KEYS:
        try:
            canonical[(section, key)] = normalize_languages(getattr(getattr(cfg, section), key))
        except ValueError as err:  # UnknownLanguageError, or two codes of one language
            raise ConfigError(f"{section}.{key}: {err}") from None
    trained, heldout = canonical[("data", "languages")], canonical[("data", "heldout_languages")]
    both = [lang for lang in heldout if lang in trained]
    if both:
        raise ConfigError(f"data.heldout_languages lists {both}, which data.languages also trains on; a held-out "
                          "language must never train: remove it from one of the two lists.")
    _check_language_roles(cfg, trained, heldout, canonical[("data", "low_resource")], canonical[("transfer", "sources")])
    return canonical


def _check_language_roles(cfg: ExperimentConfig, trained: tuple[str, ...], heldout: tuple[str, ...],
                          low_resource: tuple[str, ...], sources: tuple[str, ...]) -> None:
    """Refuse the language lists a run would refuse once its data is loaded, where the config alone tells.

    With data.languages empty the languages come from the data, so only the run can check them against it.
    """
    if cfg.paradigm in (Paradigm.TRANSFER, Paradigm.ZEROSHOT):
        if not sources:
            raise ConfigError(f"paradigm = {cfg.paradigm.value!r} trains on transfer.sources first, but it is empty; "
                              "list the source language(s), e.g. transfer.sources = [\"eng\"].")
        stray = [lang for lang in sources if trained and lang not in trained]
        if stray:
            raise ConfigError(f"transfer.sources lists {stray}, which data.languages {list(trained)} does not train "
                              "on; add them to data.languages or pick sources among them.")
    stray = [lang for lang in low_resource if trained and lang not in trained + heldout]
    if stray:
        raise ConfigError(f"data.low_resource lists {stray}, which are not languages of this run "
                          f"({', '.join(trained + heldout)}); drop them or add them to data.languages.")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a nested dict of plain TOML-able values (enums as strings, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, enum.Enum):
            out[f.name] = value.value
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def set_dotted(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply `{"section.key": value}` overrides to a nested dict; an unknown section or key is refused later."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) == 1:
            raw[parts[0]] = value
        elif len(parts) == 2:
            if parts[0] not in SECTIONS:
                raise ConfigError(
                    unknown_name_message("config section", parts[0], list(SECTIONS)) + f" (in key {dotted!r})"
                )
            raw.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ConfigError(f"Config key {dotted!r} has too many dots: use section.key, e.g. train.lr.")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """`section.key=value` from the command line; the value is read as TOML when it parses, else as a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} needs the form section.key=value, e.g. --set train.lr=0.01.")
    key, text = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a TOML experiment file (or the defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError(f"Config file {str(path)!r} is a directory; pass the path of a .toml experiment file.")
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist; pass the path of a .toml experiment file.")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"Config file {str(path)!r} is not valid TOML: {err}.") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"Config file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                              "save it as UTF-8.") from None
        except OSError as err:
            raise ConfigError(f"Config file {str(path)!r} cannot be read ({err.strerror or err}).") from None
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return from_dict(set_dotted(raw, overrides or {}))


# --------------------------------------------------------------------------------------------- run_config


def to_flat(cfg: ExperimentConfig) -> dict[str, bool | int | float | str]:
    """Flattened `section.key` view for Flower's run_config / ConfigRecord (lists as "a,b,c")."""
    flat: dict[str, bool | int | float | str] = {}

    def visit(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                visit(v, f"{prefix}{k}.")
            elif isinstance(v, list):
                flat[prefix + k] = ",".join(str(x) for x in v)
            else:
                flat[prefix + k] = v

    visit(to_dict(cfg), "")
    return flat


def from_flat(flat: typing.Mapping[str, Any]) -> ExperimentConfig:
    """Inverse of to_flat; unknown keys are refused like in a TOML file."""
    return from_dict(set_dotted({}, dict(flat)))


def to_toml(cfg: ExperimentConfig) -> str:
    """The resolved config as TOML text (what a run writes next to its results)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    raw = to_dict(cfg)
    lines = [f"{k} = {fmt(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for section, values in raw.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {fmt(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def describe() -> str:
    """Every key with its default and help text (for `mfpt config --help-keys`)."""
    lines = []

    def visit(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            annotation = _dataclass_of(cls, f.name)
            if dataclasses.is_dataclass(annotation):
                lines.append(f"\n[{f.name}]")
                visit(annotation, f"{f.name}.")
                continue
            default = f.default
            if isinstance(default, enum.Enum):
                default = default.value
            lines.append(f"  {prefix}{f.name} = {default!r}\n      {f.metadata.get('help', '')}")

    visit(ExperimentConfig, "")
    return "\n".join(lines)

