"""The run recorder: writes a run's outputs as it goes (the resolved config, metrics.jsonl, per-round checkpoints,
progress.json) and results.json at the end; and takes them back up to resume an interrupted run.

Every file is written atomically (temp file + rename), and a checkpoint is written last in a round, so the
newest checkpoint always marks a fully recorded round: `--resume` continues from it and loses nothing.
results.json is a `mfpt.results.schema.RunResult` (typed and versioned; every paradigm writes the same schema).
The recorder renders no report: report.md is mfpt.analysis.report's, written from these files.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mfpt import __version__
from mfpt.config import ConfigError, ExperimentConfig, Task, load_config, to_dict, to_flat, to_toml
from mfpt.config.specs import attack_summary, hyperparameters, protocol
from mfpt.core import files
from mfpt.core.errors import UserError, error_line
from mfpt.core.stats import mean
from mfpt.model.factory import pick_device
from mfpt.model.precision import describe_compute
from mfpt.results.checkpoints import (
    Checkpoint,
    ResumeError,
    checkpoint_path,
    last_intact_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from mfpt.results.schema import (
    BACKDOOR_SPLIT,
    CONFIG_FILE,
    FAILURE_FILE,
    LIVE_FILE,
    METRICS_FILE,
    PERSONAL_SPLIT,
    PROGRESS_FILE,
    RESULTS_FILE,
    Communication,
    LanguageScore,
    MeanScore,
    Personalization,
    RunResult,
    write_result,
)
from mfpt.results.tracking import Trackers
from mfpt.train.evaluation import EvalCounts
from mfpt.train.schedule import TEST, choice_for, round_means, round_split, selects_on_validation

log = logging.getLogger("mfpt")


class RunFailedError(UserError, RuntimeError):
    """A run that went through its rounds but scored no training language (every client failed or was refused)."""


def versions(cfg: ExperimentConfig) -> dict[str, str]:
    """Versions of what produced the numbers (for self-describing results), and where and at what precision this
    process computed (in simulation its clients too; a deployed node may differ)."""
    import flwr
    import peft
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "peft": peft.__version__, "flwr": flwr.__version__}
    found["mfpt"] = __version__
    try:
        found["compute"] = describe_compute(pick_device(cfg.train.device), cfg.train.precision.value)
    except ConfigError:  # train.device names a CUDA device this (server) machine does not have
        found["compute"] = f"train.device = {cfg.train.device!r}, not on the machine that wrote the results"
    try:
        found["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                      cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        found["git"] = "unknown"
    return found


def resolved_model(name: str) -> str:
    """A model.name as a run records it: the absolute folder when it names one here, else the name (a hub id)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def language_metrics(counts: EvalCounts) -> dict[str, float | int]:
    """One language's evaluation as a metrics.jsonl row (the fields of a LanguageScore; chrF++ for generation, where
    accuracy is the exact-match rate and there is no macro-F1 or majority class)."""
    if counts.generation:
        return {"accuracy": counts.accuracy, "macro_f1": None, "loss": counts.mean_loss, "n_test": counts.n,
                "majority": None, "chrf": counts.chrf}
    return {"accuracy": counts.accuracy, "macro_f1": counts.macro_f1, "loss": counts.mean_loss, "n_test": counts.n,
            "majority": counts.majority}


def language_score(row: Mapping[str, Any]) -> LanguageScore:
    """The LanguageScore of a metrics.jsonl row that language_metrics wrote (rows of older mfpt lack majority and
    chrf)."""
    return LanguageScore(row["accuracy"], row["macro_f1"], row["loss"], row["n_test"], row.get("majority"),
                         row.get("chrf"))


def headline_name(cfg: ExperimentConfig) -> str:
    """The name of a run's headline score: accuracy, or chrF++ ("chrf") for a generation task."""
    return "chrf" if cfg.data.task == Task.GENERATION else "accuracy"


def epochs_per_learner(curves: list[dict[str, Any]], batch_size: int) -> dict[str, float]:
    """Passes each learner made over its own training data: its steps of every round over the batches of one epoch."""
    epochs: dict[str, float] = {}
    for row in curves:
        if row.get("split") == "train" and int(row.get("n", 0)) > 0:
            batches = math.ceil(int(row["n"]) / batch_size)
            epochs[row["client"]] = epochs.get(row["client"], 0.0) + int(row["steps"]) / batches
    return {learner: round(value, 4) for learner, value in epochs.items()}


def mean_block(per_language: Mapping[str, LanguageScore], languages: list[str]) -> MeanScore | None:
    """Unweighted mean over `languages` (the XTREME convention), or None when none has results."""
    present = [per_language[lang] for lang in languages if lang in per_language]
    if not present:
        return None
    if present[0].chrf is not None:  # generation
        return MeanScore(mean([s.accuracy for s in present]), None, mean([s.chrf or 0.0 for s in present]))
    return MeanScore(mean([s.accuracy for s in present]), mean([s.macro_f1 for s in present]))


def saved_config(out_dir: Path) -> ExperimentConfig:
    """The config a run folder was started with (config.toml, read through today's schema: keys an older mfpt did
    not write take their defaults, which that run did use); a ResumeError when it cannot be read."""
    path = Path(out_dir) / CONFIG_FILE
    if not path.is_file():
        raise ResumeError(f"{str(path)!r} is missing; without it the run cannot be resumed: start it again with "
                          "--out NEW_FOLDER.")
    try:  # its values are resolved already: a tuning file changed or gone since must not change them
        return load_config(path, apply_tuned=False)
    except (ConfigError, OSError) as err:
        raise ResumeError(f"{str(path)!r} cannot be read as a config ({err}); start the run again with --out "
                          "NEW_FOLDER.") from None


# Keys a run fills in when they are left at their "derive it" value (threads from the cores a simulated client
# gets, languages and labels from the data): a resume given the underived value means the same run.
DERIVED_AT_RUN = {"train.threads": 0, "data.languages": "", "data.labels": ""}


# Keys that may differ on resume: the tuning file (its values are in config.toml already) and the base model's name
# (the same checkpoint at another path, `--model`; the checkpoint refuses a model whose tensors differ).
# How many checkpoints are kept changes no result.
# Trackers only receive copies of what the run records, so a resumed run may report to others.
RESUME_MAY_CHANGE = ("tuning.file", "model.name", "keep_checkpoints", "tracking.backends", "tracking.tensorboard_dir",
                     "tracking.mlflow_uri", "tracking.mlflow_experiment")


def config_differences(out_dir: Path, cfg: ExperimentConfig, ignore: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """'key = then, now' for each key in which `cfg` differs from the config the run in out_dir was started with."""
    then, now = to_flat(saved_config(out_dir)), to_flat(cfg)
    return [f"{key} = {then.get(key)!r} then, {now.get(key)!r} now" for key in sorted(set(then) | set(now))
            if key not in ignore and then.get(key) != now.get(key)
            and not (key in DERIVED_AT_RUN and now.get(key) == DERIVED_AT_RUN[key])]


def differ_message(out_dir: Path, differences: list[str]) -> str:
    """The refusal of a resume under another config, naming (the first five of) the keys that differ."""
    return (f"The config differs from the one {str(out_dir)!r} was started with ({CONFIG_FILE}): "
            f"{'; '.join(differences[:5])}{' ...' if len(differences) > 5 else ''}. Resume with the same config "
            f"(`mfpt run --resume {out_dir}` alone reads {CONFIG_FILE}), or start a new run with --out.")


def check_resumable(out_dir: Path, cfg: ExperimentConfig) -> None:
    """The checks `--resume` makes before anything loads: a run is there, unfinished, not failed, same config."""
    resumable_folder(out_dir)
    differences = config_differences(out_dir, cfg)
    if differences:
        raise ResumeError(differ_message(out_dir, differences))


def resumable_folder(out_dir: Path) -> None:
    """Refuse a --resume folder that holds no unfinished run (none at all, a finished one or a failed one)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ResumeError(f"--resume {str(out_dir)!r}: no such folder; pass the output_dir of an interrupted run.")
    if (out_dir / FAILURE_FILE).is_file():
        raise ResumeError(f"{str(out_dir)!r} holds a run that failed ({files.read_json(out_dir / FAILURE_FILE).get('error')}); "
                          "delete the folder to run it again, or pass --out for a new one.")
    if (out_dir / RESULTS_FILE).is_file():
        raise ResumeError(f"{str(out_dir)!r} holds a finished run (results.json); nothing to resume.")
    if not (out_dir / PROGRESS_FILE).is_file():
        raise ResumeError(f"{str(out_dir)!r} has no {PROGRESS_FILE}: it holds no run to resume. Run without --resume.")


def ensure_output_dir(out_dir: Path) -> Path:
    """Create a run's output folder, or refuse in one line when the path is a file or cannot be created."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ResumeError(f"Output directory {str(out_dir)!r} is an existing file, not a folder; "
                          "pass a folder to --out (or output_dir).")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResumeError(f"Output directory {str(out_dir)!r} cannot be created ({err.strerror or err}); "
                          "set output_dir or --out to a folder you can write.") from None
    return out_dir


@dataclass
class RunRecorder:
    """Writes a run's outputs as it goes (it is the strategy's RoundListener for federated runs)."""

    cfg: ExperimentConfig
    out_dir: Path
    trainable_params: int = 0
    total_params: int = 0
    quiet: bool = False
    started: float = field(default_factory=time.time)
    comm: list[dict[str, int]] = field(default_factory=list)
    local_steps: dict[str, int] = field(default_factory=dict)
    refusals: int = 0
    privacy: dict[str, Any] | None = None  # the (epsilon, delta) account (mfpt.privacy), set by the federation
    personalization_bytes: int = 0  # sent by the finetune phase after the last round
    after_rounds_bytes: int = 0  # every array sent after the last round (best-validation's test scoring, finetune)
    # The run's learning rates and budgets with their sources, from the config it was started with (a paradigm may
    # record under a narrower config afterwards: zeroshot records its one stage as round 1).
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The failed, refused and missing clients of the stage being recorded, summarised in one line when it ends.
    _problems: list[tuple[str, str]] = field(default_factory=list, repr=False)
    # [tracking]: TensorBoard / MLflow get every row appended to metrics.jsonl (opened by begin()).
    trackers: Trackers = field(default_factory=lambda: Trackers([]), repr=False)

    def __post_init__(self) -> None:
        self.hyperparameters = self.hyperparameters or hyperparameters(self.cfg)

    # ---------------------------------------------------------------------------------- start / resume
    def begin(self, resume: bool) -> Checkpoint | None:
        """Check the output directory is writable, write the config, and return the checkpoint to resume from."""
        ensure_output_dir(self.out_dir)
        probe = self.out_dir / ".write-test"
        try:
            files.write_text(probe, "ok")
            probe.unlink()
        except OSError as err:
            raise ResumeError(f"Output directory {str(self.out_dir)!r} is not writable ({err}); set output_dir or --out.") from None
        self._check_free_space()
        progress_file = self.out_dir / PROGRESS_FILE
        failure = self.out_dir / FAILURE_FILE
        if failure.is_file():
            raise ResumeError(f"{str(self.out_dir)!r} holds a run that failed ({failure.name}: "
                              f"{files.read_json(failure).get('error', '?')}); delete the folder to run it again, or "
                              "pass --out for a new one.")
        if not resume:
            if progress_file.exists() or (self.out_dir / RESULTS_FILE).exists():
                raise ResumeError(
                    f"{str(self.out_dir)!r} already holds a run; pass --resume to continue it, or --out for a new folder."
                )
            files.write_text(self.out_dir / CONFIG_FILE, to_toml(self.cfg))
            self._start_outputs()
            return None
        if not progress_file.exists():
            raise ResumeError(f"{str(self.out_dir)!r} has no {PROGRESS_FILE}: nothing to resume. Run without --resume.")
        self._check_same_config()
        progress = self._read_progress(progress_file)
        self.started = time.time() - float(progress.get("wall_seconds", 0.0))
        checkpoint = last_intact_checkpoint(self.out_dir, int(progress["completed_round"]))
        resumed = checkpoint.round if checkpoint is not None else -1  # -1: nothing kept, the run starts over
        # Everything recorded after the resumed round is dropped, then re-recorded by the resumed run: the lines of
        # a round that did not finish, and those of rounds whose checkpoint is damaged (never counted twice).
        rows = [r for r in files.read_jsonl(self.out_dir / METRICS_FILE, drop_cut_last_line=True) if int(r["round"]) <= resumed]
        files.write_text(self.out_dir / METRICS_FILE, "".join(files.json_line(r) for r in rows))
        self.comm = [c for c in progress.get("comm", []) if c["round"] <= resumed]
        self.local_steps = {}
        for row in rows:
            if row["split"] == "train":
                self.local_steps[row["client"]] = self.local_steps.get(row["client"], 0) + int(row["steps"])
        self._write_progress(max(resumed, 0))
        self._start_outputs()
        return checkpoint

    def on_sampled(self, round_: int, stage: str, clients: list[str]) -> None:
        """The clients asked for a stage of a round, before any replies: live.json, for `mfpt watch`."""
        self._write_live(round=round_, stage=stage, sampled=clients, stage_started=time.time())

    def _write_live(self, **now: Any) -> None:
        files.write_json(self.out_dir / LIVE_FILE, {
            "started": self.started, "trainable_params": self.trainable_params, "total_params": self.total_params,
            "round": 0, "stage": "starting", "sampled": [], "stage_started": self.started, **now, "updated": time.time()})

    def _start_outputs(self) -> None:
        """What a started (or resumed) run writes besides its config: live.json's first note, the trackers' run."""
        self._write_live()
        self.trackers = Trackers.open(self.cfg, self.out_dir)
        self.trackers.start(self.cfg)

    def _append(self, rows: list[dict[str, Any]]) -> None:
        """Rows onto metrics.jsonl, and to the trackers."""
        files.append_jsonl(self.out_dir / METRICS_FILE, rows)
        self.trackers.rows(rows)

    def _check_same_config(self) -> None:
        """Refuse to resume under another config than the run was started with, naming the keys that differ."""
        differences = config_differences(self.out_dir, self.cfg)
        if differences:
            raise ResumeError(differ_message(self.out_dir, differences))
        before = saved_config(self.out_dir).model.name
        if before != self.cfg.model.name:
            log.warning("resuming on model.name = %r (the run started on %r); its checkpoint is checked against it",
                        self.cfg.model.name, before)

    def _read_progress(self, path: Path) -> dict[str, Any]:
        """progress.json, or a ResumeError naming it when it is not the recorder's JSON."""
        try:
            progress = files.read_json(path)
            int(progress["completed_round"])
        except (ValueError, KeyError, TypeError) as err:
            raise ResumeError(f"{str(path)!r} is damaged ({type(err).__name__}: {err}); the run cannot be resumed: "
                              "start it again with --out NEW_FOLDER.") from None
        return progress

    def _check_free_space(self) -> None:
        """Refuse to start when the disk cannot hold every round's checkpoint (found now, not at round k)."""
        # A checkpoint holds the trainable state plus at most two server-optimiser copies (FedAdam's m_t, v_t),
        # float32; the final adapter export is about one more state; 1 MiB covers the small files.
        state_bytes = 4 * max(self.trainable_params, 0)
        # distance-weighted / update-similarity also keep one state per trained language in every checkpoint.
        personal = len(self.cfg.data.languages) if self.cfg.personalization.method.value in (
            "distance-weighted", "update-similarity") else 0
        rounds = self.cfg.federation.rounds + 1  # round 0 is transfer's source stage
        if self.cfg.keep_checkpoints:  # the newest kept, the one being written, and the selected round's
            rounds = min(rounds, self.cfg.keep_checkpoints + 2)
        need = rounds * (3 + personal) * state_bytes + (1 << 20)
        free = shutil.disk_usage(self.out_dir).free
        if free < need:
            raise ResumeError(
                f"Output directory {str(self.out_dir)!r} has {free / 2**20:.1f} MiB free, but "
                f"{rounds} round checkpoints need about {need / 2**20:.1f} MiB; "
                "free some space, set output_dir elsewhere, or keep fewer with keep_checkpoints."
            )

    # ---------------------------------------------------------------------------------- per round
    def on_train(self, round_: int, rows: list[dict[str, Any]], bytes_up: int, bytes_down: int) -> None:
        self._append([{"round": round_, "split": "train", **row} for row in rows])
        self._summarise_round(round_, "train", len(rows), self.cfg.federation.min_clients or 1,
                              "the global state is unchanged (federation.min_clients)")
        self.comm.append({"round": round_, "bytes_up": bytes_up, "bytes_down": bytes_down, "clients": len(rows)})
        for row in rows:
            self.local_steps[row["client"]] = self.local_steps.get(row["client"], 0) + int(row["steps"])
        if not self.quiet:
            losses = "  ".join(f"{r['client']} {r['loss']:.3f}" for r in rows)
            print(f"round {round_:>3}/{self.cfg.federation.rounds} train loss | {losses}", flush=True)

    def on_refusal(self, round_: int, node: Any, node_id: int, reason: str) -> None:
        """A reply that failed or was refused; kept in metrics.jsonl and in the round's one-line summary."""
        self.refusals += 1
        who = node.client.name(self.cfg.federation.clients_per_language) if node is not None else f"node {node_id}"
        self._problems.append((who, error_line(reason)))
        log.debug("round %d: refused %s: %s", round_, who, reason)
        self._append([{"round": round_, "split": "refused", "client": who, "reason": reason}])

    def on_missing(self, round_: int, node: Any, stage: str, reason: str) -> None:
        """A sampled client that did not reply this round (dead or silent node); the round went on without it."""
        who = node.client.name(self.cfg.federation.clients_per_language)
        self._problems.append((who, f"missing ({reason})"))
        log.debug("round %d: %s missing from %s (node %d): %s", round_, who, stage, node.node_id, reason)
        self._append([{"round": round_, "split": "missing", "stage": stage, "client": who,
                                                  "lang": node.client.lang, "node": node.node_id, "reason": reason}])

    def _summarise_round(self, round_: int, stage: str, usable: int, required: int, consequence: str) -> None:
        """One warning line for a round's failed, refused and missing clients (every client's reason in it); a round
        with fewer usable replies than `required` is also recorded in metrics.jsonl (split 'incomplete')."""
        problems, self._problems = self._problems, []
        if not problems and usable >= required:
            return
        listed = "; ".join(f"{who}: {reason}" for who, reason in problems)
        short = usable < required
        log.warning("round %d/%d %s: %d usable repl%s%s%s", round_, self.cfg.federation.rounds, stage, usable,
                    "y" if usable == 1 else "ies", f" (fewer than {required}: {consequence})" if short else "",
                    f"; {listed}" if listed else "")
        if short:
            self._append([{"round": round_, "split": "incomplete", "stage": stage,
                                                              "usable": usable, "required": required,
                                                              "errors": dict(problems)}])

    def on_evaluate(self, round_: int, counts: dict[str, EvalCounts], bytes_down: int = 0) -> None:
        split = round_split(self.cfg)
        rows = [{"round": round_, "split": split, "lang": lang, **language_metrics(c),
                 "heldout": lang in self.cfg.data.heldout_languages} for lang, c in counts.items()]
        self._append(rows)
        trained = [c.score for lang, c in counts.items() if lang in self.cfg.data.languages]
        low = [c.score for lang, c in counts.items() if lang in self.cfg.data.low_resource]
        metric = headline_name(self.cfg)
        self.trackers.scalars(round_, {**({f"{split}/{metric}/mean": mean(trained)} if trained else {}),
                                       **({f"{split}/{metric}/low_resource_mean": mean(low)} if low else {})})
        self._summarise_round(round_, "evaluation", len(trained), 1, "no training language scored")
        if self.comm and self.comm[-1]["round"] == round_:
            self.comm[-1]["bytes_down"] += bytes_down
        if not self.quiet:
            accs = "  ".join(f"{lang} {100 * c.score:.1f}" for lang, c in counts.items())
            shown = f"{100 * mean(trained):.1f}" if trained else "-"
            label = "acc " if metric == "accuracy" else metric
            print(f"round {round_:>3}/{self.cfg.federation.rounds} {split} {label} | mean {shown} | {accs}", flush=True)

    def on_selected(self, round_: int, counts: dict[str, EvalCounts], bytes_down: int = 0) -> None:
        """best-validation: the test-split scores of the selected round's model (recorded once, after the last round),
        and the bytes of the state sent to score them."""
        self.after_rounds_bytes += bytes_down
        rows = [{"round": round_, "split": TEST, "lang": lang, **language_metrics(c),
                 "heldout": lang in self.cfg.data.heldout_languages, "selected": True} for lang, c in counts.items()]
        self._append(rows)
        self._summarise_round(round_, "test scoring of the selected round", sum(lang in self.cfg.data.languages for lang in counts),
                              1, "no training language scored")
        if not self.quiet:
            trained = [c.score for lang, c in counts.items() if lang in self.cfg.data.languages]
            shown = f"{100 * mean(trained):.1f}" if trained else "-"
            metric = headline_name(self.cfg)
            print(f"selected round {round_} (best mean validation {metric}): test {metric} | mean {shown}", flush=True)

    def selected_round(self) -> int | None:
        """The round data.selection picks from the evaluations recorded so far (None before any evaluation)."""
        means = round_means(files.read_jsonl(self.out_dir / METRICS_FILE), round_split(self.cfg), list(self.cfg.data.languages))
        return choice_for(self.cfg, means).round if means else None

    def on_privacy(self, round_: int, account: Mapping[str, Any]) -> None:
        """The privacy account after `round_`: one `epsilon` line per round in metrics.jsonl."""
        self._append([{"round": round_, "split": "privacy", "epsilon": account["epsilon"],
                                                  "delta": account["delta"], "dp": account["dp"]}])

    def on_personal_evaluate(self, round_: int, counts: dict[str, EvalCounts]) -> None:
        """Each language's personalised state's evaluation (split 'personalized' in metrics.jsonl)."""
        rows = [{"round": round_, "split": PERSONAL_SPLIT, "eval_split": self.cfg.data.eval_split, "lang": lang,
                 **language_metrics(c), "heldout": lang in self.cfg.data.heldout_languages} for lang, c in counts.items()]
        self._append(rows)
        if not self.quiet:
            accs = "  ".join(f"{lang} {100 * c.score:.1f}" for lang, c in counts.items())
            print(f"round {round_:>3}/{self.cfg.federation.rounds} personalised {headline_name(self.cfg)} | {accs}",
                  flush=True)

    def on_backdoor_evaluate(self, round_: int, counts: dict[str, EvalCounts], untriggered: Mapping[str, float],
                             selected: bool = False) -> None:
        """[attack] backdoor: each language's triggered texts, labelled with the target (split 'backdoor' in
        metrics.jsonl; its accuracy is the backdoor's success rate, `untriggered` the same texts' rate without the
        trigger), after a round or, `selected`, on the test split with the selected round's model
        (data.selection = best-validation)."""
        where = {"eval_split": TEST, "selected": True} if selected else {"eval_split": round_split(self.cfg)}
        rows = [{"round": round_, "split": BACKDOOR_SPLIT, "lang": lang, **language_metrics(c),
                 "untriggered": untriggered.get(lang), **where, "heldout": lang in self.cfg.data.heldout_languages}
                for lang, c in counts.items()]
        self._append(rows)
        if not self.quiet:
            rates = "  ".join(f"{lang} {100 * c.accuracy:.1f}" for lang, c in counts.items())
            print(f"round {round_:>3}/{self.cfg.federation.rounds} backdoor success | {rates}", flush=True)

    def end_round(self, round_: int, state: Mapping[str, torch.Tensor], server_state: Mapping[str, np.ndarray] | None = None,
                  personal: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        """Checkpoint the global (and every personalised) state, then mark the round complete (in that order)."""
        save_checkpoint(checkpoint_path(self.out_dir, round_), round_, state, server_state or {}, personal)
        self._write_progress(round_)
        if self.cfg.keep_checkpoints:  # only once the round is marked complete, so a resume always finds one
            kept = set(range(round_ - self.cfg.keep_checkpoints + 1, round_ + 1))
            chosen = self.selected_round() if selects_on_validation(self.cfg) else None
            prune_checkpoints(self.out_dir, kept | ({chosen} if chosen is not None else set()))
        if self.comm and self.comm[-1]["round"] == round_:
            this = self.comm[-1]
            self.trackers.scalars(round_, {"bytes/up": this["bytes_up"], "bytes/down": this["bytes_down"],
                                           "bytes/total": sum(c["bytes_up"] + c["bytes_down"] for c in self.comm),
                                           "clients/replied": this["clients"]})

    def _write_progress(self, completed_round: int) -> None:
        files.write_json(self.out_dir / PROGRESS_FILE, {"completed_round": completed_round, "comm": self.comm,
                                                "local_steps": self.local_steps,
                                                "wall_seconds": time.time() - self.started})

    # ---------------------------------------------------------------------------------- final
    def _attack(self, curves: list[dict[str, Any]]) -> dict[str, Any] | None:
        """results.json's `attack` block; for a backdoor, each language's success rate with the model the run reports
        (the selected round's on test under best-validation, else the last evaluated round's), their mean over the
        training languages and over the honest ones (the attackers' own texts aside), and the same for the same texts
        without the trigger (backdoor_untriggered: the rate the success is read against)."""
        summary = attack_summary(self.cfg)
        rows = [r for r in curves if r["split"] == BACKDOOR_SPLIT]
        if summary is None or not rows:
            return summary
        rows = [r for r in rows if r.get("selected")] or [r for r in rows if not r.get("selected")]
        last = max(int(r["round"]) for r in rows)
        rows = [r for r in rows if int(r["round"]) == last]
        block = {**summary, "backdoor_round": last, "backdoor_split": rows[0].get("eval_split", round_split(self.cfg))}
        for name, field_ in (("backdoor_success", "accuracy"), ("backdoor_untriggered", "untriggered")):
            rates = {r["lang"]: r.get(field_) for r in rows}
            trained = [v for lang in self.cfg.data.languages if (v := rates.get(lang)) is not None]
            honest = [v for lang in self.cfg.data.languages
                      if (v := rates.get(lang)) is not None and lang not in self.cfg.attack.languages]
            block |= {name: rates, f"{name}_mean": mean(trained) if trained else None,
                      f"{name}_honest_mean": mean(honest) if honest else None}
        return block

    def _personalization(self, curves: list[dict[str, Any]]) -> Personalization | None:
        """The personalised states' last evaluation, as recorded by on_personal_evaluate (None without any)."""
        cfg = self.cfg
        if cfg.personalization.method.value == "none":
            return None
        rows = [r for r in curves if r["split"] == PERSONAL_SPLIT]
        last = max((int(r["round"]) for r in rows), default=0)
        final = {r["lang"]: language_score(r)
                 for r in rows if int(r["round"]) == last}
        languages, heldout = list(cfg.data.languages), list(cfg.data.heldout_languages)
        per_language = {lang: final[lang] for lang in languages if lang in final}
        held = {lang: final[lang] for lang in heldout if lang in final}
        return Personalization(method=cfg.personalization.method.value, per_language=per_language, heldout=held,
                               average=mean_block(per_language, languages),
                               low_resource_average=mean_block(per_language, list(cfg.data.low_resource)),
                               heldout_average=mean_block(held, heldout), extra_bytes=self.personalization_bytes)

    def _failed(self, curves: list[dict[str, Any]], last: int) -> "RunFailedError":
        """The error of a run that scored no training language, with the first client error; failure.json says
        the same, so that a sweep retries the run from the start and `--resume` does not continue it."""
        errors = [r for r in curves if r["split"] in ("refused", "missing")]
        first = (f"first problem (round {errors[0]['round']}, {errors[0]['client']}): "
                 f"{error_line(errors[0]['reason'])}") if errors else "no client reported an error or went missing"
        where = f"round {last}" if last else "any round"
        message = (f"run {self.cfg.name!r} scored no training language in {where}: every evaluation failed or was "
                   f"refused; {first}. metrics.jsonl in {str(self.out_dir)!r} lists every client's error; fix the "
                   "cause and run again (a sweep retries it from the start).")
        files.write_json(self.out_dir / FAILURE_FILE, {"error": message, "round": last,
                                                        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        self.trackers.finish(self.out_dir, "FAILED")
        return RunFailedError(message)

    def finish(self) -> RunResult:
        """Write results.json from the last evaluated round in metrics.jsonl; return the result."""
        cfg = self.cfg
        curves = files.read_jsonl(self.out_dir / METRICS_FILE)
        languages = list(cfg.data.languages)
        choice = choice_for(cfg, round_means(curves, round_split(cfg), languages))
        if selects_on_validation(cfg):  # the one test scoring, of the selected round's model
            evaluated = [r for r in curves if r["split"] == TEST and r.get("selected")]
        else:
            evaluated = [r for r in curves if r["split"] == cfg.data.eval_split]
        last = max((int(r["round"]) for r in evaluated), default=0)
        final = {r["lang"]: language_score(r)
                 for r in evaluated if int(r["round"]) == last}
        heldout = list(cfg.data.heldout_languages)
        per_language = {lang: final[lang] for lang in languages if lang in final}
        held = {lang: final[lang] for lang in heldout if lang in final}
        up = [c["bytes_up"] for c in self.comm]
        down = [c["bytes_down"] for c in self.comm]
        communication = Communication(
            bytes_up_per_round=int(np.mean(up)) if up else 0,
            bytes_down_per_round=int(np.mean(down)) if down else 0,
            total_bytes=int(sum(up) + sum(down)) + self.after_rounds_bytes,
            full_model_bytes=self.total_params * 4,
            clients_per_round=round(float(np.mean([c["clients"] for c in self.comm])), 2) if self.comm else 0,
            rounds_recorded=len(self.comm),
            after_rounds_bytes=self.after_rounds_bytes,
        )
        result = RunResult(
            name=cfg.name, paradigm=cfg.paradigm.value, method=cfg.peft.method.value, model=cfg.model.name,
            seed=cfg.seed, trainable_params=self.trainable_params, total_params=self.total_params,
            rounds=cfg.federation.rounds, languages=languages, heldout_languages=heldout,
            low_resource=list(cfg.data.low_resource), labels=list(cfg.data.labels),
            per_language=per_language, heldout=held,
            average=mean_block(per_language, languages),
            low_resource_average=mean_block(per_language, list(cfg.data.low_resource)),
            heldout_average=mean_block(held, heldout),
            communication=communication, local_steps=self.local_steps, protocol=protocol(cfg),
            refused_updates=self.refusals, wall_seconds=round(time.time() - self.started, 2), config=to_dict(cfg),
            selection=choice.to_json() if evaluated else {},
            versions=versions(cfg), created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            privacy=self.privacy,
            personalization=self._personalization(curves),
            attack=self._attack(curves),
            unscored=[lang for lang in languages + heldout if lang not in final],
            hyperparameters=self.hyperparameters, epochs=epochs_per_learner(curves, cfg.train.batch_size),
            model_path=resolved_model(cfg.model.name),
        )
        if languages and not per_language:
            raise self._failed(curves, last)
        if result.unscored and not self.quiet:
            print(f"warning: no score in the reported round for {', '.join(result.unscored)} (evaluation missing or "
                  f"refused; metrics.jsonl says which): the means leave them out.", flush=True)
        write_result(self.out_dir, result)
        self.trackers.close()  # publish_run ends the trackers' runs once report.md exists
        return result
