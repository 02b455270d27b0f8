"""The rules a config must satisfy: value ranges, and combinations of keys that cannot work together.

Each rule raises a ConfigError that names the keys and the fix. `check` runs on every ExperimentConfig when it is
built; `canonical_languages` runs when a config is read from a dict (mfpt.config.schema.from_dict). The rules read
the config's attributes only, so this module imports nothing of the schema (which imports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from mfpt.config.choices import (
    DEFAULT_LR,
    DEFAULT_SERVER_LR,
    ROBUST_STRATEGIES,
    AttackKind,
    ClipAt,
    DpMode,
    ModelDtype,
    ModelHead,
    Paradigm,
    Partition,
    PeftMethod,
    PersonalizationMethod,
    Precision,
    Quantization,
    Selection,
    StrategyName,
    Task,
    Weighting,
)
from mfpt.core.errors import ConfigError
from mfpt.core.languages import normalize_languages

if TYPE_CHECKING:
    from mfpt.config.schema import ExperimentConfig


def check(cfg: ExperimentConfig) -> None:
    """Refuse a config with a value out of range or keys that cannot work together (one ConfigError, naming them)."""
    _check_ranges(cfg)
    _check_privacy(cfg)
    _check_strategy(cfg)
    _check_attack(cfg)
    _check_tracking(cfg)
    _check_head(cfg)
    _check_task(cfg)
    _check_gradient_checkpointing(cfg)
    _check_dtype(cfg)
    _check_quantization(cfg)


def _check_ranges(cfg: ExperimentConfig) -> None:
    def need(ok: bool, key: str, allowed: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{key} = {value!r} is not allowed: must be {allowed}.")

    f, t, d, p, m = cfg.federation, cfg.train, cfg.data, cfg.peft, cfg.model
    need(cfg.keep_checkpoints >= 0, "keep_checkpoints", "an integer >= 0 (0 = every round's)", cfg.keep_checkpoints)
    need(f.rounds >= 1, "federation.rounds", "an integer >= 1", f.rounds)
    need(0 < f.fraction_train <= 1, "federation.fraction_train", "in (0, 1]", f.fraction_train)
    need(0 < f.fraction_evaluate <= 1, "federation.fraction_evaluate", "in (0, 1]", f.fraction_evaluate)
    need(f.min_clients >= 0, "federation.min_clients", "an integer >= 0 (0 = all sampled)", f.min_clients)
    need(f.clients_per_language >= 1, "federation.clients_per_language", "an integer >= 1", f.clients_per_language)
    need(f.dirichlet_alpha > 0, "federation.dirichlet_alpha", "> 0", f.dirichlet_alpha)
    need(f.proximal_mu >= 0, "federation.proximal_mu", ">= 0", f.proximal_mu)
    need(f.server_lr >= 0, "federation.server_lr", ">= 0 (0 = the strategy's default)", f.server_lr)
    need(0 <= f.server_momentum < 1, "federation.server_momentum", "in [0, 1)", f.server_momentum)
    need(f.tau > 0, "federation.tau", "> 0", f.tau)
    need(f.round_timeout > 0, "federation.round_timeout", "> 0 seconds", f.round_timeout)
    need(f.max_update_norm >= 0, "federation.max_update_norm", ">= 0 (0 = off)", f.max_update_norm)
    need(f.client_cpus > 0, "federation.client_cpus", "> 0", f.client_cpus)
    need(f.client_gpus >= 0, "federation.client_gpus", ">= 0", f.client_gpus)
    need(f.evaluate_every >= 1, "federation.evaluate_every", "an integer >= 1", f.evaluate_every)
    need(t.lr >= 0, "train.lr", ">= 0 (0 = the method's default)", t.lr)
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
    need(cfg.transfer.source_epochs >= 0, "transfer.source_epochs", "an integer >= 0 (0 = matched to a federated "
         "client)", cfg.transfer.source_epochs)
    need(0 <= d.validation_fraction < 1, "data.validation_fraction", "in [0, 1)", d.validation_fraction)
    need(not d.drop_test or d.eval_split == "validation", "data.drop_test",
         "false unless data.eval_split = 'validation' (the rounds would be evaluated on the dropped test split)",
         d.drop_test)
    _check_personalization(cfg)


def _check_personalization(cfg: ExperimentConfig) -> None:
    """Ranges of [personalization], and refuse it under paradigms that have no federation to personalise."""
    z = cfg.personalization
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
        raise ConfigError(f"privacy.delta = {pv.delta!r} is not allowed: must be in (0, 1) (0 = the default min(1e-5, N^-1.1)).")
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


def _check_strategy(cfg: ExperimentConfig) -> None:
    """Ranges of the robust and fairness-aware strategies' keys, and the combinations they cannot work in."""
    f = cfg.federation
    if not 0 <= f.trim_fraction < 0.5:
        raise ConfigError(f"federation.trim_fraction = {f.trim_fraction!r} is not allowed: must be in [0, 0.5) (the "
                          "fraction cut from each end).")
    for key, value, least in (("byzantine_clients", f.byzantine_clients, 0), ("krum_keep", f.krum_keep, 1),
                              ("qffl_q", f.qffl_q, 0), ("qffl_lr", f.qffl_lr, 0)):
        if value < least:
            raise ConfigError(f"federation.{key} = {value!r} is not allowed: must be >= {least}.")
    if f.strategy not in ROBUST_STRATEGIES:
        return
    method = cfg.personalization.method
    if method in (PersonalizationMethod.DISTANCE_WEIGHTED, PersonalizationMethod.UPDATE_SIMILARITY):
        raise ConfigError(f"personalization.method = {method.value!r} averages each language's neighbours' updates "
                          f"itself, bypassing federation.strategy = {f.strategy.value!r}'s robust rule; set "
                          "personalization.method = 'none' or 'finetune', or federation.strategy = 'fedavg'.")
    clients = len(cfg.data.languages) * f.clients_per_language
    if not clients:  # languages read from the data: the run checks the count once it knows them
        return
    per_round = max(1, int(round(clients * f.fraction_train)))
    byz = f.byzantine_clients
    need_clients = {StrategyName.KRUM: 2 * byz + 3, StrategyName.MULTIKRUM: 2 * byz + 3,
                    StrategyName.BULYAN: 4 * byz + 3}.get(f.strategy, 0)
    if per_round < need_clients:
        rule = "4f + 3" if f.strategy == StrategyName.BULYAN else "2f + 3 (more than 2f + 2)"
        raise ConfigError(f"federation.strategy = {f.strategy.value!r} with federation.byzantine_clients = {byz} needs "
                          f"at least {rule} = {need_clients} clients per round, but {per_round} train each round; "
                          "lower federation.byzantine_clients or train more clients per round.")
    if f.strategy == StrategyName.MULTIKRUM and f.krum_keep > per_round - byz:
        raise ConfigError(f"federation.krum_keep = {f.krum_keep} exceeds the {per_round - byz} updates MultiKrum may "
                          f"keep ({per_round} per round less federation.byzantine_clients = {byz}); lower it.")


def _check_attack(cfg: ExperimentConfig) -> None:
    """Refuse an [attack] that names no attacker, or attackers and no attack, or a non-federated run."""
    attack = cfg.attack
    if attack.kind == AttackKind.NONE:
        if attack.languages:
            raise ConfigError(f"attack.languages = {list(attack.languages)} but attack.kind = 'none'; set attack.kind "
                              f"({', '.join(k.value for k in AttackKind if k != AttackKind.NONE)}) or remove attack.languages.")
        return
    if cfg.paradigm != Paradigm.FEDERATED:
        raise ConfigError(f"attack.kind = {attack.kind.value!r} applies to federated runs only, but paradigm = "
                          f"{cfg.paradigm.value!r}.")
    if not attack.languages:
        raise ConfigError(f"attack.kind = {attack.kind.value!r} needs attack.languages: the malicious clients, by "
                          "language, e.g. attack.languages = [\"yor\"].")
    if not 1 <= attack.from_round <= cfg.federation.rounds:
        raise ConfigError(f"attack.from_round = {attack.from_round} must be a round of the run (1 to "
                          f"federation.rounds = {cfg.federation.rounds}).")
    if not attack.factor > 0:
        raise ConfigError(f"attack.factor = {attack.factor!r} is not allowed: must be > 0.")
    if attack.kind == AttackKind.BACKDOOR:
        if not attack.trigger.strip():
            raise ConfigError("attack.kind = 'backdoor' needs attack.trigger, the phrase that triggers it.")
        if not 0 < attack.poison_fraction <= 1:
            raise ConfigError(f"attack.poison_fraction = {attack.poison_fraction!r} must be in (0, 1].")
        if attack.target_label and cfg.data.labels and attack.target_label not in cfg.data.labels:
            raise ConfigError(f"attack.target_label = {attack.target_label!r} is not one of data.labels "
                              f"{list(cfg.data.labels)}.")


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


# Every config key that lists languages; each is made canonical (ISO 639-3, script where it differs) once, here.
LANGUAGE_KEYS = (("data", "languages"), ("data", "heldout_languages"), ("data", "low_resource"), ("transfer", "sources"),
                 ("attack", "languages"))


def canonical_languages(cfg: ExperimentConfig) -> dict[tuple[str, str], tuple[str, ...]]:
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
    stray = [lang for lang in canonical[("attack", "languages")] if lang in heldout or (trained and lang not in trained)]
    if stray:
        raise ConfigError(f"attack.languages lists {stray}, which do not train in this run ({', '.join(trained)}); "
                          "an attacker must be a training language.")
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


def resolved_defaults(cfg: ExperimentConfig) -> dict[str, Any]:
    """The keys left at 0 = "the default of another choice", with the value that default is (empty when none is left).

    - train.lr: the peft method's learning rate (mfpt.config.choices.DEFAULT_LR);
    - federation.server_lr: Flower's default for a server optimiser (DEFAULT_SERVER_LR);
    - transfer.source_epochs: what a federated client gets over its own data, federation.rounds x train.local_epochs.
    """
    found: dict[str, Any] = {}
    if cfg.train.lr == 0:
        found["train.lr"] = DEFAULT_LR[cfg.peft.method][0]
    if cfg.federation.server_lr == 0 and cfg.federation.strategy in DEFAULT_SERVER_LR:
        found["federation.server_lr"] = DEFAULT_SERVER_LR[cfg.federation.strategy][0]
    if cfg.transfer.source_epochs == 0:
        found["transfer.source_epochs"] = cfg.federation.rounds * cfg.train.local_epochs
    return found


TRACKING_BACKENDS = ("tensorboard", "mlflow")


def _check_tracking(cfg: ExperimentConfig) -> None:
    """Refuse an unknown or repeated tracker (whether it is installed is checked when the run starts)."""
    backends = list(cfg.tracking.backends)
    unknown = [b for b in backends if b not in TRACKING_BACKENDS]
    if unknown:
        raise ConfigError(f"tracking.backends has {unknown}; the trackers are {list(TRACKING_BACKENDS)}.")
    if len(set(backends)) != len(backends):
        raise ConfigError(f"tracking.backends = {backends} names a tracker twice; name each once.")


def _check_gradient_checkpointing(cfg: ExperimentConfig) -> None:
    """peft refuses prefix tuning under gradient checkpointing (its prefix travels as a cache, which checkpointing
    cannot keep: peft/peft_model.py); say so before a model loads."""
    if cfg.train.gradient_checkpointing and cfg.peft.method == PeftMethod.PREFIX:
        raise ConfigError("train.gradient_checkpointing = true does not work with peft.method = 'prefix' (peft passes "
                          "the prefix as a cache, which checkpointing cannot keep); use prompt, ptuning or lora, or "
                          "turn gradient_checkpointing off.")


def _check_dtype(cfg: ExperimentConfig) -> None:
    """A bf16 base needs bf16 autocast around it (the fp32 trainable tensors meet bf16 activations there), and
    full fine-tuning has no frozen base to keep in bf16."""
    if cfg.model.dtype != ModelDtype.BFLOAT16:
        return
    if cfg.train.precision not in (Precision.BF16, Precision.AUTO):
        raise ConfigError(f"model.dtype = 'bfloat16' needs train.precision = 'bf16' (or 'auto' where it resolves to "
                          f"bf16), not {cfg.train.precision.value!r}: the fp32 trainable tensors meet the bf16 base "
                          "under bf16 autocast.")
    if cfg.peft.method == PeftMethod.FULL:
        raise ConfigError("model.dtype = 'bfloat16' keeps the frozen base in bf16, but peft.method = 'full' freezes "
                          "nothing (every weight trains in fp32); use model.dtype = 'float32'.")


def _check_quantization(cfg: ExperimentConfig) -> None:
    """A quantised base cannot train: full fine-tuning, which trains every weight, is refused with it."""
    if cfg.model.quantization != Quantization.NONE and cfg.peft.method == PeftMethod.FULL:
        raise ConfigError(f"model.quantization = {cfg.model.quantization.value!r} quantises the frozen base, but "
                          "peft.method = 'full' trains every weight; use lora (QLoRA) or a prompt method, or "
                          "model.quantization = 'none'.")


def _check_task(cfg: ExperimentConfig) -> None:
    """A generation task trains and scores the LM's own next-token predictions: no labels, nothing built on them."""
    if cfg.data.task != Task.GENERATION:
        return
    if cfg.model.head != ModelHead.LM:
        raise ConfigError("data.task = 'generation' generates text with the decoder's own LM head; set model.head = "
                          "'lm' (and model.name to a decoder).")
    labelled = [key for key, value in (("data.labels", cfg.data.labels), ("model.label_words", cfg.model.label_words),
                                       ("model.label_words_by_language", cfg.model.label_words_by_language)) if value]
    if labelled:
        raise ConfigError(f"data.task = 'generation' has no labels, but {' and '.join(labelled)} are set; remove them.")
    if cfg.federation.partition == Partition.DIRICHLET:
        raise ConfigError("federation.partition = 'dirichlet' skews labels across a language's clients, and a generation "
                          "task has none; use federation.partition = 'iid'.")
    if cfg.attack.kind in (AttackKind.LABEL_FLIP, AttackKind.BACKDOOR):
        raise ConfigError(f"attack.kind = {cfg.attack.kind.value!r} changes or targets labels, and data.task = "
                          "'generation' has none; use sign-flip, scale or noise.")
    if cfg.model.max_new_tokens < 1:
        raise ConfigError(f"model.max_new_tokens = {cfg.model.max_new_tokens} is not allowed: must be an integer >= 1.")


def _check_head(cfg: ExperimentConfig) -> None:
    """head = lm reads the labels as words: it needs the labels in a known order, and one word per label."""
    words, labels = list(cfg.model.label_words), list(cfg.data.labels)
    if cfg.model.head != ModelHead.LM:
        for key, value in (("model.label_words", words), ("model.label_words_by_language",
                                                           list(cfg.model.label_words_by_language))):
            if value:
                raise ConfigError(f"{key} = {value} applies to model.head = 'lm' only; set model.head = 'lm' or "
                                  f"remove {key}.")
        return
    by_language = label_words_by_language(cfg.model.label_words_by_language)
    for lang, own in by_language.items():
        if labels and len(own) != len(labels):
            raise ConfigError(f"model.label_words_by_language gives {lang!r} {len(own)} words ({own}) for "
                              f"{len(labels)} labels ({labels}); give one word per label, in data.labels order.")
    run_languages = canonical_languages(cfg)
    listed = run_languages[("data", "languages")] + run_languages[("data", "heldout_languages")]
    stray = sorted(set(by_language) - set(listed))
    if stray and listed:
        raise ConfigError(f"model.label_words_by_language lists {stray}, which are not languages of this run "
                          f"({', '.join(listed)}); drop them.")
    if not labels and cfg.data.task == Task.CLASSIFICATION:
        raise ConfigError("model.head = 'lm' needs data.labels listed: each label is read as a word, in that order "
                          "(`mfpt data CONFIG` prints the labels of the data).")
    if words and len(words) != len(labels):
        raise ConfigError(f"model.label_words has {len(words)} words for {len(labels)} labels ({labels}); give one "
                          "word per label, in data.labels order, or leave it empty to use the label names.")


def label_words_by_language(entries: Sequence[str]) -> dict[str, list[str]]:
    """model.label_words_by_language ('LANG: word | word | ...' each) as {canonical language: words}; a malformed or
    repeated entry is a ConfigError naming it."""
    out: dict[str, list[str]] = {}
    for entry in entries:
        lang, sep, words = str(entry).partition(":")
        # '|', not ',': a list's entries travel comma-joined in the flat config the clients receive.
        listed = [w.strip() for w in words.split("|") if w.strip()]
        if not sep or not lang.strip() or not listed:
            raise ConfigError(f"model.label_words_by_language entry {entry!r} is not 'LANG: word | word | ...' (for "
                              "example 'swh: afya | siasa | michezo').")
        try:
            code = normalize_languages([lang.strip()])[0]
        except ValueError as err:  # an unknown code
            raise ConfigError(f"model.label_words_by_language: {err}") from None
        if code in out:
            raise ConfigError(f"model.label_words_by_language lists {code!r} twice; give each language one entry.")
        out[code] = listed
    return out
