"""Paradigms: how the same model, data and training loop are combined into an experiment.

Every paradigm builds its model with `mfpt.model.factory.build_model` (through `get_runtime` here, or in the Flower apps),
trains with `mfpt.train.loop.train`, evaluates with `mfpt.train.evaluation.evaluate`, and writes its outputs with `RunRecorder`,
so every results.json has the same schema. Each paradigm's spec (mfpt.config.specs) names its runner here and says in
one paragraph what it tunes, on which data and for how many steps (results.json's `protocol`).

- federated:   Flower simulation of the ServerApp and ClientApp (every language a client; only the prompt travels).
- local:       each language trains alone on its own data, with exactly the local steps a federated client takes
               (same rounds x steps per round, optimiser reset each round as a federated client's is, same
               per-round seeds); the only difference from `federated` is that nothing is aggregated.
               results.json `local_steps` holds the budget per language (compare it with a federated run's).
               Caveats: with federation.fraction_train < 1 a federated client trains only in the rounds it is
               sampled, while a local learner trains every round; with clients_per_language > 1 a local learner
               holds its whole language, i.e. the budget of all that language's federated clients together.
- centralized: every training language's data pooled in one place (the non-private reference), the same epochs over
               it per round as a client over its own; under train.max_steps it may take the federation's whole cap
               per round (max_steps x clients sampled), not one client's.
- zeroshot:    stage 1 only: train on the pooled source languages (transfer.sources) for transfer.source_epochs
               epochs (by default a federated client's rounds x local epochs, at most rounds x max_steps steps),
               then evaluate every language as is (recorded as a single round).
- transfer:    local cross-lingual transfer: stage 1 as zeroshot (recorded as round 0), then each language
               fine-tunes a copy of that model on its own data alone, exactly as `local` (rounds 1..R). Both stages
               tune the same tensors: the prompt (or adapter) and the classification head; the encoder stays
               frozen (under peft.method = full both stages tune every weight).
Held-out languages are evaluated with the final shared model where there is one (not under `local`, where
every language has its own model, nor under `transfer`'s second stage: they use the stage-1 model).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from flwr.simulation import run_simulation

from mfpt.analysis.report import write_run_report
from mfpt.client_app import app as client_app
from mfpt.config import ExperimentConfig
from mfpt.config.specs import PARADIGMS, sampled_clients, with_simulated_client_threads
from mfpt.core.seeds import derive_seed
from mfpt.data.clients import ClientSpec, client_layout, resolve
from mfpt.data.sources import DataError
from mfpt.model.export import export_atomically
from mfpt.model.state import load_trainable_state, trainable_state
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint
from mfpt.results.recorder import RunRecorder
from mfpt.results.schema import ADAPTER_DIR, RunResult, read_result
from mfpt.results.tracking import publish_run
from mfpt.server_app import build_server_app
from mfpt.train.evaluation import EvalCounts, evaluate
from mfpt.train.loop import steps_per_round, train
from mfpt.train.runtime import Runtime, get_runtime
from mfpt.train.schedule import TEST, evaluates_in_round, round_split, selects_on_validation

log = logging.getLogger("mfpt")

def run_federated_simulation(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """Flower simulation on this machine: one virtual SuperNode per client."""
    cfg = with_simulated_client_threads(resolve(cfg))
    num_clients = len(client_layout(cfg.data.languages, cfg.data.heldout_languages, cfg.federation.clients_per_language))
    verbose = logging.getLogger("mfpt").isEnabledFor(logging.DEBUG)
    flwr_logger = logging.getLogger("flwr")
    # Flower sets its own level and handler when imported; mfpt prints its own progress lines instead.
    flwr_logger.propagate = False
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    backend_config = {
        "client_resources": {"num_cpus": cfg.federation.client_cpus, "num_gpus": cfg.federation.client_gpus},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "logging_level": "WARNING" if not verbose else "INFO",
                      "log_to_driver": verbose},
    }
    notices = _FlowerNotices()
    if not verbose:
        flwr_logger.addFilter(notices)
    try:
        with warnings.catch_warnings():
            if not verbose:  # Ray's advice about a future default for GPU-less actors: nothing a user needs to do
                warnings.filterwarnings("ignore", message=".*Ray will no longer override accelerator", category=FutureWarning)
            run_simulation(server_app=build_server_app(cfg, resume=resume, quiet=quiet), client_app=client_app,
                           num_supernodes=num_clients, backend_config=backend_config)  # type: ignore[arg-type]
    finally:
        flwr_logger.removeFilter(notices)
    return read_result(Path(cfg.output_dir).expanduser().resolve())


class _FlowerNotices(logging.Filter):
    """Drops Flower's notice that `run_simulation` is deprecated in favour of `flwr run`: `mfpt run` is the
    documented way to simulate here, and `flwr run` is documented in docs/deploy.md (shown with -v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


@dataclass
class Learner:
    """One model being trained in-process: its name (for metrics), training rows, and current trainable state."""

    name: str
    index: int
    train_key: tuple
    train_rows: pd.DataFrame
    evaluates: tuple[str, ...]
    state: dict[str, torch.Tensor]
    # How many federated clients the learner stands for: under train.max_steps it may take that many clients' steps
    # per round (centralised training pools every client's data, so it gets the federation's whole cap).
    clients: int = 1


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Each learner owns its tensors: states that share storage cannot be checkpointed together (safetensors
    # refuses aliased tensors), and a shared tensor changed in place would change every learner.
    return {k: v.clone() for k, v in state.items()}


def _source_steps(cfg: ExperimentConfig, source: Learner) -> int:
    """Stage-1 steps: transfer.source_epochs passes over the pooled source data, at most federation.rounds x
    train.max_steps (what a federated client may take in all). transfer.source_epochs defaults to the client's
    federation.rounds x train.local_epochs, so by default the source stage sees its data as often as a client sees its
    own: epochs are matched rather than steps, because the source pool is one language's data, like a client's."""
    steps = cfg.transfer.source_epochs * math.ceil(len(source.train_rows) / cfg.train.batch_size)
    return min(steps, cfg.federation.rounds * cfg.train.max_steps) if cfg.train.max_steps else steps


def _pool(runtime: Runtime, languages: tuple[str, ...]) -> pd.DataFrame:
    return pd.concat([runtime.data.language_rows(lang, "train") for lang in languages], ignore_index=True)


def _train_learner(runtime: Runtime, cfg: ExperimentConfig, learner: Learner, steps: int, round_: int) -> dict[str, Any]:
    model = runtime.classifier.model
    load_trainable_state(model, learner.state, origin=f"state of {learner.name}")
    data = runtime.encode_rows(learner.train_key, learner.train_rows)
    stats = train(model, data, runtime.classifier.tokenizer, cfg.train, steps, seed=derive_seed(cfg.seed, round_, learner.index),
                  device=runtime.classifier.device)
    learner.state = trainable_state(model)
    return {"client": learner.name, "lang": learner.name, "loss": stats.mean_loss, "steps": stats.steps, "n": len(data)}


def _evaluate_learners(runtime: Runtime, cfg: ExperimentConfig, learners: list[Learner],
                       split: str | None = None) -> dict[str, EvalCounts]:
    model = runtime.classifier.model
    counts: dict[str, EvalCounts] = {}
    for learner in learners:
        load_trainable_state(model, learner.state, origin=f"state of {learner.name}")
        for lang in learner.evaluates:
            data = runtime.encoded(ClientSpec(lang, 0, heldout=True), split or round_split(cfg))
            counts[lang] = evaluate(model, data, runtime.classifier.tokenizer, cfg.train.eval_batch_size,
                                    runtime.classifier.device, len(runtime.data.labels), cfg.train.precision,
                                    cfg.model.max_new_tokens)
    return counts


def _flatten(learners: list[Learner]) -> dict[str, torch.Tensor]:
    return {f"{learner.name}::{k}": v for learner in learners for k, v in learner.state.items()}


def _restore(learners: list[Learner], state: dict[str, torch.Tensor]) -> None:
    for learner in learners:
        prefix = f"{learner.name}::"
        learner.state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _run_rounds(cfg: ExperimentConfig, runtime: Runtime, recorder: RunRecorder, learners: list[Learner],
                stage1: Learner | None, heldout_by: list[Learner], resume: bool, shared: Learner | None = None) -> RunResult:
    """Optional stage 1 (pooled sources, round 0), then `rounds` rounds of local steps for every learner.

    `shared`, the one model every language uses where there is one, is exported as `adapter/` like a federated run's.
    """
    checkpoint = recorder.begin(resume)
    done = -1
    if checkpoint is not None:
        _restore(learners + ([stage1] if stage1 else []), checkpoint.state)
        done = checkpoint.round
    if stage1 is not None and done < 0:
        recorder.on_train(0, [_train_learner(runtime, cfg, stage1, _source_steps(cfg, stage1), 0)], 0, 0)
        for learner in learners:
            learner.state = _copy(stage1.state)
        recorder.on_evaluate(0, _evaluate_learners(runtime, cfg, [stage1]))
        recorder.end_round(0, _flatten(learners + [stage1]))
        done = 0
    for round_ in range(max(done, 0) + 1, cfg.federation.rounds + 1):
        rows = [_train_learner(runtime, cfg, learner, steps_per_round(len(learner.train_rows), cfg.train, learner.clients),
                               round_) for learner in learners]
        recorder.on_train(round_, rows, 0, 0)
        if evaluates_in_round(round_, cfg.federation.rounds, cfg.federation.evaluate_every):
            recorder.on_evaluate(round_, _evaluate_learners(runtime, cfg, learners + heldout_by))
        recorder.end_round(round_, _flatten(learners + ([stage1] if stage1 else [])))
    if selects_on_validation(cfg):
        _score_selected(runtime, cfg, recorder, learners + ([stage1] if stage1 else []), learners + heldout_by)
    if shared is not None:
        _export_shared(runtime, recorder, shared)
    return _finish(recorder)


def _score_selected(runtime: Runtime, cfg: ExperimentConfig, recorder: RunRecorder, saved: list[Learner],
                    evaluated: list[Learner]) -> None:
    """best-validation: restore every learner from the selected round's checkpoint and score the test split once."""
    chosen = recorder.selected_round()
    if chosen is None:
        return
    _restore(saved, load_checkpoint(checkpoint_path(recorder.out_dir, chosen)).state)
    recorder.on_selected(chosen, _evaluate_learners(runtime, cfg, evaluated, split=TEST))


def _export_shared(runtime: Runtime, recorder: RunRecorder, learner: Learner) -> None:
    """Export the one model every language shares (what `mfpt predict` loads) to `adapter/`."""
    model = runtime.classifier.model
    load_trainable_state(model, learner.state, origin=f"final state of {learner.name}")
    export_atomically(model, runtime.classifier.tokenizer, recorder.out_dir / ADAPTER_DIR)


def _finish(recorder: RunRecorder) -> RunResult:
    """results.json, then report.md from it (the federated runner's ServerApp does the same)."""
    result = recorder.finish()
    write_run_report(recorder.out_dir)
    publish_run(recorder.cfg, recorder.out_dir)
    return result


def _setup(cfg: ExperimentConfig, quiet: bool) -> tuple[ExperimentConfig, Runtime, RunRecorder, dict[str, torch.Tensor]]:
    cfg = resolve(cfg)
    runtime = get_runtime(cfg)
    model = runtime.classifier
    recorder = RunRecorder(cfg, Path(cfg.output_dir).expanduser().resolve(), model.trainable_params, model.total_params,
                           quiet=quiet)
    # The shared starting point is the seeded initial state, exactly what a federated server would send first
    # (not the cached model's current tensors: an earlier run in this process may have trained them).
    initial = _copy(runtime.initial_state)
    if not quiet:
        print(f"{cfg.name}: {cfg.paradigm.value}, {cfg.peft.method.value} on {cfg.model.name}: "
              f"{model.trainable_params:,} trainable of {model.total_params:,} parameters", flush=True)
    return cfg, runtime, recorder, initial


def _language_learners(cfg: ExperimentConfig, runtime: Runtime, initial: dict[str, torch.Tensor]) -> list[Learner]:
    # Each language is one learner with the client index it has in a federated run of the same config, so its
    # per-round seeds match the federated client's (with one client per language).
    layout = client_layout(cfg.data.languages, (), cfg.federation.clients_per_language)
    first_index = {c.lang: i for i, c in reversed(list(enumerate(layout)))}
    return [Learner(lang, first_index[lang], ("train", lang), runtime.data.language_rows(lang, "train"), (lang,), _copy(initial))
            for lang in cfg.data.languages]


def run_local(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """Every language trains its own prompt on its own data only."""
    cfg, runtime, recorder, initial = _setup(cfg, quiet)
    return _run_rounds(cfg, runtime, recorder, _language_learners(cfg, runtime, initial), None, [], resume)


def run_centralized(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """All training languages pooled in one place; one model evaluated on every language."""
    cfg, runtime, recorder, initial = _setup(cfg, quiet)
    languages = tuple(cfg.data.languages)
    pooled = Learner("all", 0, ("train", "all"), _pool(runtime, languages), languages + tuple(cfg.data.heldout_languages),
                     _copy(initial), clients=sampled_clients(cfg))
    return _run_rounds(cfg, runtime, recorder, [pooled], None, [], resume, shared=pooled)


def _source_learner(cfg: ExperimentConfig, runtime: Runtime, initial: dict[str, torch.Tensor], evaluates: tuple[str, ...]) -> Learner:
    sources = cfg.transfer.sources
    missing = [lang for lang in sources if lang not in runtime.data.languages]
    if missing:
        raise DataError(f"transfer.sources {missing} are not among the training languages "
                        f"{list(runtime.data.languages)}; add them to data.languages.")
    return Learner("source", 10_000, ("train", "source"), _pool(runtime, sources), evaluates, _copy(initial))


def run_zeroshot(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """Train on the source languages only; evaluate every language with that model."""
    cfg, runtime, recorder, initial = _setup(cfg, quiet)
    everything = tuple(cfg.data.languages) + tuple(cfg.data.heldout_languages)
    source = _source_learner(cfg, runtime, initial, everything)
    cfg_once = cfg.replace(**{"federation.rounds": 1})
    recorder.cfg = cfg_once
    checkpoint = recorder.begin(resume)
    if checkpoint is not None:
        _restore([source], checkpoint.state)
    else:
        recorder.on_train(1, [_train_learner(runtime, cfg, source, _source_steps(cfg, source), 0)], 0, 0)
        recorder.on_evaluate(1, _evaluate_learners(runtime, cfg, [source]))
        recorder.end_round(1, _flatten([source]))
    if selects_on_validation(cfg):  # one round: it is the selected one
        recorder.on_selected(1, _evaluate_learners(runtime, cfg, [source], split=TEST))
    _export_shared(runtime, recorder, source)
    return _finish(recorder)


def run_transfer(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """Stage 1 on the source languages, then each language fine-tunes that model alone."""
    cfg, runtime, recorder, initial = _setup(cfg, quiet)
    source = _source_learner(cfg, runtime, initial, tuple(cfg.data.heldout_languages))
    return _run_rounds(cfg, runtime, recorder, _language_learners(cfg, runtime, initial), source, [source], resume)


def run_experiment(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """Run `cfg` under its paradigm and return its results (also written to output_dir)."""
    return PARADIGMS.get(cfg.paradigm.value).runner()(cfg, resume, quiet)
