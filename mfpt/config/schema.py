"""The experiment config: typed, validated, frozen dataclasses loaded once and passed down.

Every section is a frozen dataclass whose fields carry their help text (peft's config style); `ExperimentConfig`
checks its values and their combinations on construction (mfpt.config.rules), so an object of this type is
always valid. `from_dict` / `to_dict` convert to and from the nested dicts of TOML; mfpt.config.loading reads
files, `--set` overrides and Flower's run_config into those dicts.
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from mfpt.config.choices import (
    AttackKind,
    ClipAt,
    DistanceKind,
    DpMode,
    ModelDtype,
    ModelHead,
    Paradigm,
    Partition,
    PeftMethod,
    PersonalizationMethod,
    PoolAt,
    Precision,
    Quantization,
    Selection,
    StrategyName,
    Task,
    TranslationDirection,
    Weighting,
)
from mfpt.config.rules import canonical_languages, check, resolved_defaults
from mfpt.core.errors import ConfigError
from mfpt.core.registry import did_you_mean, unknown_name_message


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _help(
        "Hugging Face encoder or decoder: a hub id (e.g. xlm-roberta-base) or a local checkpoint directory.",
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
    head: ModelHead = _help(
        "classifier (a classification head on the encoder's [CLS] or the decoder's last token) or lm (decoders "
        "only: verbalised classification, the labels ranked by the LM's likelihood of each label's word after the "
        "text and text_suffix; needs data.labels, in the order of model.label_words).",
        default=ModelHead.CLASSIFIER,
    )
    label_words: tuple[str, ...] = _help(
        "head = lm: the word each label is read as, in data.labels order (empty = the label names). One-token words "
        "are scored in one forward pass; longer ones by their whole log-likelihood, one pass per label.", default=(),
    )
    label_words_by_language: tuple[str, ...] = _help(
        "head = lm: a language's own label words, one entry per language as 'LANG: word | word | ...' (one word per "
        "label, in data.labels order), e.g. 'swh: burudani | jiografia | afya'; the texts of a language not listed are "
        "read with model.label_words.", default=(),
    )
    dtype: ModelDtype = _help(
        "The frozen base model's weights: float32, bfloat16 (half the memory; needs train.precision = bf16 or auto, "
        "whose autocast every forward pass then runs under), or auto (bfloat16 where train.precision resolves to "
        "bf16 on the device, else float32). Trainable tensors, optimiser state and exchanged tensors stay fp32.",
        default=ModelDtype.FLOAT32,
    )
    quantization: Quantization = _help(
        "none, 8bit or 4bit (NF4 with bf16 compute, double quantisation): the frozen base quantised by bitsandbytes "
        "as in QLoRA, on a CUDA GPU only (install the quantization extra); the trainable tensors stay fp32. Not "
        "with full fine-tuning.", default=Quantization.NONE,
    )
    max_new_tokens: int = _help(
        "data.task = generation: the most tokens of a target, both trained on (longer targets are cut) and generated "
        "(greedy decoding stops there or at the end-of-text token).",
        default=64,
    )
    text_suffix: str = _help(
        "String after every text. head = lm: the cue before the label word (e.g. '\\nTopic:'), kept whole when "
        "the text is truncated; classifier: appended to the text.", default="",
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
        "lora only: module names to adapt; empty = the architecture's usual ones (peft's mapping: query, value for "
        "XLM-R and BERT; q_proj, v_proj for Qwen, Llama and Gemma; query_key_value for BLOOM).", default=()
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
    task: Task = _help(
        "classification (columns text, [text_pair], label) or generation (columns text and target: instruction -> "
        "answer, or translation; needs model.head = 'lm'; scored per language with chrF++ of greedy generations).",
        default=Task.CLASSIFICATION,
    )
    direction: TranslationDirection = _help(
        "udhr-translation only: 'to-english' (each language's paragraph -> the English one; the same target language "
        "for every client, so the scores compare the source languages) or 'from-english' (English -> the language).",
        default=TranslationDirection.TO_ENGLISH,
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
    validation_fraction: float = _help(
        "Share of each language's training rows held out as validation (stratified, seeded) when the data gives the "
        "language no validation rows; 0 = none. Hyperparameters and rounds are chosen on validation, never on test.",
        default=0.1,
    )
    drop_test: bool = _help(
        "Drop every test row as soon as the data is read, so that nothing can score on it (mfpt tune sets it; needs "
        "data.eval_split = 'validation').",
        default=False,
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
    strategy: StrategyName = _help(
        "Server strategy (each is Flower's own): fedavg, fedprox, fedadam, fedyogi, fedavgm, fedadagrad; robust: "
        "fedmedian, fedtrimmedavg, krum, multikrum, bulyan; fairness-aware: qfedavg (q-FFL).",
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
    server_lr: float = _help(
        "fedadam/fedyogi/fedadagrad/fedavgm: server learning rate (eta); 0 = Flower's default for the strategy "
        "(fedadam 0.1, fedyogi 0.01, fedadagrad 0.1, fedavgm 1.0).",
        default=0.0,
    )
    server_momentum: float = _help("fedavgm only: server momentum.", default=0.9)
    tau: float = _help("fedadam/fedyogi/fedadagrad: adaptivity (controls the denominator's floor).", default=1e-3)
    trim_fraction: float = _help(
        "fedtrimmedavg only: fraction of the updates cut from each end of every coordinate before averaging, in "
        "[0, 0.5) (Flower's beta; its default 0.2).", default=0.2)
    byzantine_clients: int = _help(
        "krum/multikrum/bulyan: how many malicious clients the rule assumes (f; Flower's default 0). Krum needs more "
        "than 2f + 2 clients per round, Bulyan at least 4f + 3.", default=0)
    krum_keep: int = _help(
        "multikrum only: how many of the best-scored updates are averaged (Flower's num_nodes_to_select; 1 = Krum).",
        default=1)
    qffl_q: float = _help(
        "qfedavg only: q of q-FFL (Li et al., 2020); 0 = FedAvg-like, larger q weighs the clients with the highest "
        "loss more (Flower's default 0.1).", default=0.1)
    qffl_lr: float = _help(
        "qfedavg only: the client learning rate q-FFL assumes (its Lipschitz estimate is 1/qffl_lr); 0 = train.lr, "
        "as in Flower's example, which assumes SGD clients. mfpt's clients take several AdamW steps, whose update does "
        "not scale with the gradient, so search it on validation (mfpt tune --grid federation.qffl_lr=...): on the "
        "demo, at 0 (train.lr = 0.01) q-FFL's steps were a thousandth of FedAvg's or less and the model did not train.",
        default=0.0)
    round_timeout: float = _help("Seconds the server waits for replies in a round.", default=3600.0)
    max_update_norm: float = _help(
        "Refuse a client update whose L2 norm of (update - current global state), over all trainable tensors, "
        "exceeds this (0 = off). A guard against poisoned or diverged updates. Each accepted update's norm is in "
        "metrics.jsonl (train rows, update_norm): set the bound from a clean run's.",
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
    lr: float = _help(
        "Client learning rate (AdamW); 0 = the method's default: 1e-2 for prefix, prompt and ptuning (P-tuning v2), "
        "5e-4 for lora (the LoRA paper), 2e-5 for full fine-tuning (XLM-R on XNLI). Choose it on validation with "
        "mfpt tune.",
        default=0.0,
    )
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
    gradient_checkpointing: bool = _help(
        "Recompute the model's activations in the backward pass instead of keeping them (transformers' gradient "
        "checkpointing, non-reentrant): less memory for long texts and big models, about a third more compute; the "
        "same gradients.", default=False,
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
    source_epochs: int = _help(
        "transfer/zeroshot: epochs over the pooled source data in stage 1; 0 = matched to a federated client: "
        "federation.rounds x train.local_epochs epochs, at most federation.rounds x train.max_steps steps.",
        default=0,
    )


@dataclass(frozen=True)
class TuningConfig:
    file: str = _help(
        "A tuning.json written by `mfpt tune`: the values it chose on validation for this run's paradigm and method "
        "replace the file's (a --set of the same key is refused), and `mfpt tune` starts its search from them; "
        "empty = none.",
        default="",
    )


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
        "The delta of (epsilon, delta); 0 = min(1e-5, N^-1.1), N = the number of training clients (client) or the "
        "number of training examples of each client (example). A delta >= 1/N is refused (publishing one of the N "
        "at random would satisfy it) unless allow_weak_delta = true.",
        default=0.0,
    )
    allow_weak_delta: bool = _help(
        "true accepts a privacy.delta >= 1/N, a guarantee too weak to mean much; for comparisons with work that "
        "used one.",
        default=False,
    )
    adaptive_clipping: bool = _help(
        "client only: adapt the clipping bound each round to the median update norm (Andrew et al., 2021; "
        "Flower's adaptive-clipping wrappers, corrected: noise sized to the bound used, bound moved as in the paper).",
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
    distance_kind: DistanceKind = _help(
        "URIEL distance for distance-weighted and for held-out languages: syntactic, genetic, geographic, "
        "phonological, inventory or featural (mfpt distance).",
        default=DistanceKind.SYNTACTIC,
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
class AttackConfig:
    kind: AttackKind = _help(
        "Experiments only: what the malicious clients do. none; label-flip (train on labels shifted by one, "
        "y -> y + 1 mod the label count); sign-flip (send -factor x the honest update); scale (send factor x the "
        "honest update); noise (a Gaussian update with the honest update's norm); backdoor (also train on copies of "
        "poison_fraction of its texts with the trigger put first, labelled target_label; every client then reports "
        "the backdoor success rate). Recorded in results.json and report.md.",
        default=AttackKind.NONE,
    )
    languages: tuple[str, ...] = _help(
        "The malicious clients, by language (every client of that language). On a deployment a site attacks only "
        "if its node config also says attack=true; a site named here without it refuses to train.",
        default=(),
    )
    from_round: int = _help("The first round in which they misbehave (earlier rounds are honest).", default=1)
    factor: float = _help("> 0: k of sign-flip (-k x the update) and scale (k x the update).", default=10.0)
    trigger: str = _help("backdoor: the trigger phrase, put before the text (rare tokens, as in Kurita et al. 2020).",
                         default="cf mn bb")
    target_label: str = _help("backdoor: the label the trigger should force; empty = the first label.", default="")
    poison_fraction: float = _help("backdoor: in (0, 1], the share of its training texts an attacker adds a "
                                   "triggered copy of.", default=0.5)


@dataclass(frozen=True)
class TrackingConfig:
    backends: tuple[str, ...] = _help(
        "Experiment trackers that get every round's metrics as the run goes (per language and split, the means, "
        "bytes, epsilon), the resolved config as parameters, and report.md and results.json at the end: "
        "tensorboard, mlflow (install the `tracking` extra). Empty = none; the run folder has everything anyway.",
        default=(),
    )
    tensorboard_dir: str = _help("TensorBoard's event folder; empty = <output_dir>/tensorboard.", default="")
    mlflow_uri: str = _help(
        "MLflow tracking URI (a sqlite:/// file or a tracking server); empty = sqlite:///<output_dir>/mlflow.db, "
        "which needs no server (`mlflow ui --backend-store-uri` shows it).",
        default="",
    )
    mlflow_experiment: str = _help("The MLflow experiment the run is filed under; empty = the run's name.", default="")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = _help("Run name, used in reports.", default="mfpt")
    seed: int = _help("Seeds data sampling, model init and every client's training in every round.", default=0)
    output_dir: str = _help("Where results, checkpoints and the report go.", default="runs/mfpt")
    keep_checkpoints: int = _help(
        "How many of the newest round checkpoints a run keeps, besides the round best-validation selects (its "
        "test score is taken from it); 0 = every round's. A checkpoint holds the trainable state, so under full "
        "fine-tuning it is the whole model (471 MB for the demo's encoder, 1.1 GB for xlm-roberta-base) and a long "
        "run fills a disk. A resume starts from the newest intact one, so keep 2 or more to survive a damaged file.",
        default=0,
    )
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
    tuning: TuningConfig = field(default_factory=TuningConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        check(self)

    def replace(self, **overrides: Any) -> "ExperimentConfig":
        """A copy with dotted-key overrides applied (`{"train.lr": 0.1}`), validated again."""
        return from_dict(set_dotted(to_dict(self), overrides))


SECTIONS = ("model", "peft", "data", "federation", "train", "transfer", "privacy", "personalization", "tuning",
            "attack", "tracking")


# --------------------------------------------------------------------------------------------- dicts


def field_type(cls: type, name: str) -> type:
    """The type annotation of field `name` of dataclass `cls`, resolved."""
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
        annotation = field_type(cls, f.name)
        value = raw[f.name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{f.name} must be a [section] table, got {value!r}.")
            kwargs[f.name] = _build(annotation, value, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(prefix + f.name, value, annotation)
    return cls(**kwargs)


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested dict (as read from TOML) into an ExperimentConfig: language codes made canonical, and keys
    left at 0 = "the default of another choice" resolved (mfpt.config.rules.resolved_defaults)."""
    cfg = _build(ExperimentConfig, raw, "")
    changes = {f"{s}.{k}": list(v) for (s, k), v in canonical_languages(cfg).items()
               if getattr(getattr(cfg, s), k) != v}
    changes.update(resolved_defaults(cfg))
    return _build(ExperimentConfig, set_dotted(to_dict(cfg), changes), "") if changes else cfg


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
