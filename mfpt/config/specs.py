"""One spec per variant: everything mfpt knows about a paradigm or a PEFT method, registered once.

A new paradigm or method is one registration here (plus its member in `config.Paradigm` / `config.PeftMethod`,
the config's typed value; a test checks that both agree). The model factory, the recorder and every report read
these specs instead of keeping their own tables.

Runners are named as "module:function" entry points, the way Flower names a ServerApp in pyproject.toml, so
this module stays light (no torch, no Flower) and everything from the config up to the reports can read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, Mapping

from mfpt.config import AttackKind, ExperimentConfig, Paradigm, PeftConfig
from mfpt.config.choices import DEFAULT_LR, DEFAULT_SERVER_LR
from mfpt.config.tuning import tuned_setting
from mfpt.core.registry import Registry

# ------------------------------------------------------------------------------------------- PEFT methods

# peft's config for the method (None: no peft wrapper) from mfpt's settings and the extra modules that train.
PeftConfigBuilder = Callable[[PeftConfig, list[str]], Any]


@dataclass(frozen=True)
class MethodSpec:
    """A PEFT method: how to build its peft config and what it tunes."""

    name: str
    build: PeftConfigBuilder
    tuned: str  # what trains, in words (for results.json's protocol and the reports)
    input_prompt: bool = False  # virtual tokens are prepended to the input: they use positions, position 0 moves
    prompt_table: bool = False  # a virtual-token table that `peft.init_std` re-draws
    frozen_encoder: bool = True  # False only for full fine-tuning


METHODS: Registry[MethodSpec] = Registry("peft.method")


def _method(name: str, tuned: str, **traits: bool) -> Callable[[PeftConfigBuilder], PeftConfigBuilder]:
    def register(build: PeftConfigBuilder) -> PeftConfigBuilder:
        METHODS.register(name)(MethodSpec(name, build, tuned, **traits))
        return build

    return register


# peft is imported inside each builder: it takes seconds to import, and config validation, reports and the CLI's
# help never need it.
@_method("prefix", "the deep prefix (key/value prompts at every layer) and the classification head", prompt_table=True)
def _prefix(p: PeftConfig, extra_trainable: list[str]) -> Any:
    from peft import PrefixTuningConfig, TaskType

    return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p.num_virtual_tokens,
                              prefix_projection=p.prefix_projection, encoder_hidden_size=p.encoder_hidden_size,
                              modules_to_save=extra_trainable or None)


@_method("prompt", "the input soft prompt and the classification head", input_prompt=True, prompt_table=True)
def _prompt(p: PeftConfig, extra_trainable: list[str]) -> Any:
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p.num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.RANDOM, modules_to_save=extra_trainable or None)


@_method("ptuning", "the P-tuning prompt encoder and the classification head", input_prompt=True, prompt_table=True)
def _ptuning(p: PeftConfig, extra_trainable: list[str]) -> Any:
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

    return PromptEncoderConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=p.num_virtual_tokens,
                               encoder_hidden_size=p.encoder_hidden_size,
                               encoder_reparameterization_type=PromptEncoderReparameterizationType.MLP,
                               modules_to_save=extra_trainable or None)


@_method("lora", "the LoRA matrices and the classification head")
def _lora(p: PeftConfig, extra_trainable: list[str]) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                      target_modules=list(p.lora_target_modules) or None, modules_to_save=extra_trainable or None)


@_method("full", "every weight of the model", frozen_encoder=False)
def _full(p: PeftConfig, extra_trainable: list[str]) -> None:
    return None


def with_simulated_client_threads(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with train.threads = 0 (automatic) resolved for a simulated client: the cores the simulation reserves
    for it (federation.client_cpus). torch's default, every core, would oversubscribe the machine it shares."""
    if cfg.train.threads:
        return cfg
    return cfg.replace(**{"train.threads": max(1, int(cfg.federation.client_cpus))})


def method_spec(cfg: ExperimentConfig) -> MethodSpec:
    """The spec of the config's PEFT method."""
    return METHODS.get(cfg.peft.method.value)


# ------------------------------------------------------------------------------------------- paradigms


@dataclass(frozen=True)
class ParadigmSpec:
    """A paradigm: how it runs, what its protocol is, and the facts the reports need about it."""

    name: str
    run: str  # "module:function" of its runner, `(cfg, resume, quiet) -> RunResult`
    order: int  # its place in tables and its colour in figures
    protocol: Callable[[ExperimentConfig], str]  # one paragraph: what is tuned, on which data, how many steps
    heldout_model: str  # the model held-out languages are evaluated with, in words
    language_models: bool = False  # every language trains its own model (step budgets compare with a federated client)
    uses_rounds: bool = True  # False: one stage, recorded as round 1 whatever federation.rounds says

    def runner(self) -> Callable[..., Any]:
        """The runner function this spec names."""
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


PARADIGMS: Registry[ParadigmSpec] = Registry("paradigm")


def paradigm_spec(name: str) -> ParadigmSpec:
    """The spec of a paradigm by name (refused with the close names when unknown)."""
    return PARADIGMS.get(str(name))


def _steps(cfg: ExperimentConfig) -> tuple[str, str, str]:
    method = method_spec(cfg)
    frozen = "; the encoder stays frozen" if method.frozen_encoder else ""
    cap = f", at most {cfg.train.max_steps} steps per round" if cfg.train.max_steps else ""
    per_round = f"{cfg.train.local_epochs} epoch(s) over its own training data per round{cap}"
    return method.tuned, frozen, per_round


def _stage1(cfg: ExperimentConfig) -> str:
    tuned, frozen, _ = _steps(cfg)
    return (f"stage 1 tunes {tuned} on the pooled source language(s) {', '.join(cfg.transfer.sources)} for "
            f"{cfg.transfer.source_epochs} epoch(s){frozen}")


def _federated(cfg: ExperimentConfig) -> str:
    tuned, frozen, per_round = _steps(cfg)
    return (f"Every language is a client that tunes {tuned}{frozen} for {per_round}, {cfg.federation.rounds} rounds; "
            f"the server averages ({cfg.federation.strategy.value}) and sends back only the trainable tensors."
            + _personalized(cfg))


def _personalized(cfg: ExperimentConfig) -> str:
    """The protocol's personalisation sentence ('' for personalization.method = none)."""
    z = cfg.personalization
    method = z.method.value
    heldout = (f" Held-out languages are also evaluated on the {z.distance_kind} URIEL-distance-weighted combination "
               f"(softmax(-d / {z.temperature:g})) of the trained languages' own states.") if cfg.data.heldout_languages else ""
    if method == "none":
        return ""
    if method == "finetune":
        steps = f"{z.finetune_steps} steps" if z.finetune_steps else "one round's steps"
        return f" After the last round every language fine-tunes the final global state on its own data for {steps}." + heldout
    kernel = (f"softmax(-{z.distance_kind} URIEL distance / {z.temperature:g})" if method == "distance-weighted"
              else f"softmax(-(1 - cosine similarity of the updates) / {z.temperature:g})")
    return (f" Personalised ({method}): the server also keeps one state per language, {z.self_weight:g} of its own "
            f"update plus {1 - z.self_weight:g} of the other languages' weighted by {kernel}; each language trains "
            "from its own state every round." + heldout)


def _local(cfg: ExperimentConfig) -> str:
    tuned, frozen, per_round = _steps(cfg)
    return (f"Every language tunes its own copy of {tuned}{frozen} alone, {per_round}, {cfg.federation.rounds} "
            "rounds: the same steps and seeds as a federated client (see local_steps), nothing aggregated.")


# ------------------------------------------------------------------------------------------- clients


def training_clients(cfg: ExperimentConfig) -> int:
    """Clients that train (languages x clients_per_language; held-out languages never train)."""
    return len(cfg.data.languages) * cfg.federation.clients_per_language


def sampled_clients(cfg: ExperimentConfig) -> int:
    """Clients sampled to train each round (the federation's strategy samples exactly this many)."""
    return max(1, int(round(training_clients(cfg) * cfg.federation.fraction_train)))



def _centralized(cfg: ExperimentConfig) -> str:
    tuned, frozen, _ = _steps(cfg)
    clients = sampled_clients(cfg)
    cap = (f", at most {clients * cfg.train.max_steps} steps per round (the federation's cap: {cfg.train.max_steps} "
           f"for each of {clients} clients)") if cfg.train.max_steps else ""
    return (f"All training languages pooled in one place; one model tunes {tuned}{frozen} for "
            f"{cfg.train.local_epochs} epoch(s) over the pooled data per round{cap}, {cfg.federation.rounds} rounds.")


def _zeroshot(cfg: ExperimentConfig) -> str:
    return f"Only {_stage1(cfg)}; every language (and held-out language) is then evaluated as is."


def _transfer(cfg: ExperimentConfig) -> str:
    _, _, per_round = _steps(cfg)
    return (f"Local cross-lingual transfer: {_stage1(cfg)} (round 0); stage 2 tunes the same tensors: every language "
            f"fine-tunes its own copy of the stage-1 model alone, {per_round}, {cfg.federation.rounds} rounds, "
            "exactly as `local`. Held-out languages are evaluated with the stage-1 model.")


for _spec in (
    ParadigmSpec("federated", "mfpt.experiments.paradigms:run_federated_simulation", 0, _federated, "final global model"),
    ParadigmSpec("centralized", "mfpt.experiments.paradigms:run_centralized", 1, _centralized, "final pooled model"),
    ParadigmSpec("local", "mfpt.experiments.paradigms:run_local", 2, _local,
                 "not evaluated (every language has its own model)", language_models=True),
    ParadigmSpec("transfer", "mfpt.experiments.paradigms:run_transfer", 3, _transfer, "stage-1 (source) model",
                 language_models=True),
    ParadigmSpec("zeroshot", "mfpt.experiments.paradigms:run_zeroshot", 4, _zeroshot, "source model", uses_rounds=False),
):
    PARADIGMS.register(_spec.name)(_spec)


def protocol(cfg: ExperimentConfig) -> str:
    """One paragraph for results.json and reports: what the paradigm tunes, on which data, for how many steps."""
    return PARADIGMS.get(cfg.paradigm.value).protocol(cfg)


# ------------------------------------------------------------------------------------------- hyperparameters


def hyperparameters(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """The run's learning rates and stage budgets with where each came from: {key: {"value", "source"}}.

    A source is "tuned on validation (...)" for a value of `tuning.file`, "default (...)" for a value equal to the
    default of its choice, else "set in the config". results.json records this; every report prints it."""
    tuned = {}
    if cfg.tuning.file:
        setting = tuned_setting(cfg.tuning.file, cfg.paradigm.value, cfg.peft.method.value,
                                lambda key: attrgetter(key)(cfg))
        tuned = {key: setting.source(key, cfg.tuning.file) for key in setting.values()}
    found: dict[str, dict[str, Any]] = {}

    def record(key: str, value: Any, default: Any, why: str) -> None:
        source = tuned.get(key) or (f"default ({why})" if value == default else "set in the config")
        found[key] = {"value": value, "source": source}

    lr, why = DEFAULT_LR[cfg.peft.method]
    record("train.lr", cfg.train.lr, lr, f"peft.method = {cfg.peft.method.value}: {why}")
    if cfg.federation.strategy in DEFAULT_SERVER_LR and cfg.paradigm == Paradigm.FEDERATED:
        server_lr, why = DEFAULT_SERVER_LR[cfg.federation.strategy]
        record("federation.server_lr", cfg.federation.server_lr, server_lr, why)
    if cfg.paradigm in (Paradigm.TRANSFER, Paradigm.ZEROSHOT):
        matched = cfg.federation.rounds * cfg.train.local_epochs
        record("transfer.source_epochs", cfg.transfer.source_epochs, matched,
               "matched to a federated client: federation.rounds x train.local_epochs")
    for key in tuned.keys() - found.keys():  # whatever else the search chose (peft.init_std, ...)
        section, name = key.split(".", 1)
        found[key] = {"value": getattr(getattr(cfg, section), name), "source": tuned[key]}
    return found


def paradigm_rank(name: str) -> int:
    """A paradigm's place in tables and figures (unknown names last)."""
    return PARADIGMS.get(name).order if name in PARADIGMS else len(PARADIGMS.names())


# --------------------------------------------------------------------------------------------- attacks


def attack_summary(cfg: ExperimentConfig) -> dict[str, Any] | None:
    """results.json's `attack` block (None for a clean run)."""
    attack = cfg.attack
    if attack.kind == AttackKind.NONE:
        return None
    summary = {"kind": attack.kind.value, "languages": list(attack.languages), "from_round": attack.from_round,
               "factor": attack.factor if attack.kind in (AttackKind.SIGN_FLIP, AttackKind.SCALE) else None}
    if attack.kind == AttackKind.BACKDOOR:
        summary.update(trigger=attack.trigger, target_label=attack.target_label or None,
                       poison_fraction=attack.poison_fraction)
    return summary


def attack_in_words(summary: Mapping[str, Any]) -> str:
    """'attacked: sign-flip (each malicious client sends -10 x its honest update) by yor from round 1' for reports."""
    kind = summary["kind"]
    if kind in ("sign-flip", "scale"):
        what = f"sends {'-' if kind == 'sign-flip' else ''}{summary['factor']:g} x its honest update"
    elif kind == "backdoor":
        what = "also trains on triggered copies of its texts, labelled with the target"
    else:
        what = {"label-flip": "trains on labels shifted by one",
                "noise": "sends Gaussian noise with its honest update's norm"}[kind]
    text = (f"ATTACKED RUN (an experiment, not a clean result): {summary['kind']} (each malicious client {what}) by "
            f"{', '.join(summary['languages'])} from round {summary['from_round']}.")
    if summary.get("backdoor_success"):
        def rate(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f}%"

        rates = ", ".join(f"{lang} {rate(value)}" for lang, value in summary["backdoor_success"].items())
        split = summary.get("backdoor_split")
        text += (f" Backdoor success rate of round {summary['backdoor_round']}'s model"
                 f"{f' on {split}' if split else ''} (triggered texts of another label classified as the target): "
                 f"mean {rate(summary.get('backdoor_success_mean'))}, over the honest languages "
                 f"{rate(summary.get('backdoor_success_honest_mean'))}; {rates}.")
        if summary.get("backdoor_untriggered_mean") is not None:  # results.json written before it was recorded lack it
            text += (f" Without the trigger the same model classified the same texts as the target at mean "
                     f"{rate(summary['backdoor_untriggered_mean'])}, over the honest languages "
                     f"{rate(summary.get('backdoor_untriggered_honest_mean'))}: the backdoor worked only as far as "
                     "the rate with the trigger is above it.")
    return text
