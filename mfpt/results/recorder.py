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
from mfpt.config import ConfigError, ExperimentConfig, load_config, to_dict, to_toml
from mfpt.config.specs import hyperparameters, protocol
from mfpt.core import files
from mfpt.core.stats import mean
from mfpt.results.checkpoints import Checkpoint, ResumeError, checkpoint_path, last_intact_checkpoint, save_checkpoint
from mfpt.results.schema import (
    CONFIG_FILE,
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
from mfpt.train.evaluation import EvalCounts
from mfpt.train.schedule import TEST, choice_for, round_means, round_split, selects_on_validation

log = logging.getLogger("mfpt")


def versions() -> dict[str, str]:
    """Versions of what produced the numbers (for self-describing results)."""
    import flwr
    import peft
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "peft": peft.__version__, "flwr": flwr.__version__}
    found["mfpt"] = __version__
    try:
        found["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                      cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        found["git"] = "unknown"
    return found


def language_metrics(counts: EvalCounts) -> dict[str, float | int]:
    """One language's evaluation as a metrics.jsonl row (the fields of a LanguageScore)."""
    return {"accuracy": counts.accuracy, "macro_f1": counts.macro_f1, "loss": counts.mean_loss, "n_test": counts.n}


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
    return MeanScore(mean([s.accuracy for s in present]), mean([s.macro_f1 for s in present]))


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
        if not resume:
            if progress_file.exists() or (self.out_dir / RESULTS_FILE).exists():
                raise ResumeError(
                    f"{str(self.out_dir)!r} already holds a run; pass --resume to continue it, or --out for a new folder."
                )
            files.write_text(self.out_dir / CONFIG_FILE, to_toml(self.cfg))
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
        return checkpoint

    def _check_same_config(self) -> None:
        """Refuse to resume under another config than the run was started with."""
        try:
            saved = (self.out_dir / CONFIG_FILE).read_text(encoding="utf-8")
        except OSError as err:
            raise ResumeError(f"{str(self.out_dir / CONFIG_FILE)!r} cannot be read ({err.strerror}); without it the run "
                              "cannot be resumed: start it again with --out NEW_FOLDER.") from None
        if saved != to_toml(self.cfg) and not self._same_settings(self.out_dir / CONFIG_FILE):
            raise ResumeError(
                f"The config differs from the one {str(self.out_dir)!r} was started with ({CONFIG_FILE}); "
                "resume with the same config, or start a new run with --out."
            )

    def _same_settings(self, saved: Path) -> bool:
        """Whether a config.toml written by an older mfpt (without a newer section or key) means this config:
        read through today's schema, its missing keys take their defaults, which the run did use."""
        try:
            return load_config(saved) == self.cfg
        except ConfigError:
            return False

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
        need = (self.cfg.federation.rounds + 1) * (3 + personal) * state_bytes + (1 << 20)
        free = shutil.disk_usage(self.out_dir).free
        if free < need:
            raise ResumeError(
                f"Output directory {str(self.out_dir)!r} has {free / 2**20:.1f} MiB free, but "
                f"{self.cfg.federation.rounds} round checkpoints need about {need / 2**20:.1f} MiB; "
                "free some space or set output_dir elsewhere."
            )

    # ---------------------------------------------------------------------------------- per round
    def on_train(self, round_: int, rows: list[dict[str, Any]], bytes_up: int, bytes_down: int) -> None:
        files.append_jsonl(self.out_dir / METRICS_FILE, [{"round": round_, "split": "train", **row} for row in rows])
        self.comm.append({"round": round_, "bytes_up": bytes_up, "bytes_down": bytes_down, "clients": len(rows)})
        for row in rows:
            self.local_steps[row["client"]] = self.local_steps.get(row["client"], 0) + int(row["steps"])
        if not self.quiet:
            losses = "  ".join(f"{r['client']} {r['loss']:.3f}" for r in rows)
            print(f"round {round_:>3}/{self.cfg.federation.rounds} train loss | {losses}", flush=True)

    def on_refusal(self, round_: int, node: Any, node_id: int, reason: str) -> None:
        self.refusals += 1
        who = node.client.name(self.cfg.federation.clients_per_language) if node is not None else f"node {node_id}"
        log.warning("round %d: refused %s: %s", round_, who, reason)
        files.append_jsonl(self.out_dir / METRICS_FILE, [{"round": round_, "split": "refused", "client": who, "reason": reason}])

    def on_missing(self, round_: int, node: Any, stage: str, reason: str) -> None:
        """A sampled client that did not reply this round (dead or silent node); the round went on without it."""
        who = node.client.name(self.cfg.federation.clients_per_language)
        log.warning("round %d: %s missing from %s (node %d): %s", round_, who, stage, node.node_id, reason)
        files.append_jsonl(self.out_dir / METRICS_FILE, [{"round": round_, "split": "missing", "stage": stage, "client": who,
                                                  "lang": node.client.lang, "node": node.node_id, "reason": reason}])

    def on_evaluate(self, round_: int, counts: dict[str, EvalCounts], bytes_down: int = 0) -> None:
        split = round_split(self.cfg)
        rows = [{"round": round_, "split": split, "lang": lang, **language_metrics(c),
                 "heldout": lang in self.cfg.data.heldout_languages} for lang, c in counts.items()]
        files.append_jsonl(self.out_dir / METRICS_FILE, rows)
        if self.comm and self.comm[-1]["round"] == round_:
            self.comm[-1]["bytes_down"] += bytes_down
        if not self.quiet:
            trained = [c.accuracy for lang, c in counts.items() if lang in self.cfg.data.languages]
            accs = "  ".join(f"{lang} {100 * c.accuracy:.1f}" for lang, c in counts.items())
            shown = f"{100 * mean(trained):.1f}" if trained else "-"
            print(f"round {round_:>3}/{self.cfg.federation.rounds} {split} acc  | mean {shown} | {accs}", flush=True)

    def on_selected(self, round_: int, counts: dict[str, EvalCounts], bytes_down: int = 0) -> None:
        """best-validation: the test-split scores of the selected round's model (recorded once, after the last round),
        and the bytes of the state sent to score them."""
        self.after_rounds_bytes += bytes_down
        rows = [{"round": round_, "split": TEST, "lang": lang, **language_metrics(c),
                 "heldout": lang in self.cfg.data.heldout_languages, "selected": True} for lang, c in counts.items()]
        files.append_jsonl(self.out_dir / METRICS_FILE, rows)
        if not self.quiet:
            trained = [c.accuracy for lang, c in counts.items() if lang in self.cfg.data.languages]
            shown = f"{100 * mean(trained):.1f}" if trained else "-"
            print(f"selected round {round_} (best mean validation accuracy): test acc | mean {shown}", flush=True)

    def selected_round(self) -> int | None:
        """The round data.selection picks from the evaluations recorded so far (None before any evaluation)."""
        means = round_means(files.read_jsonl(self.out_dir / METRICS_FILE), round_split(self.cfg), list(self.cfg.data.languages))
        return choice_for(self.cfg, means).round if means else None

    def on_privacy(self, round_: int, account: Mapping[str, Any]) -> None:
        """The privacy account after `round_`: one `epsilon` line per round in metrics.jsonl."""
        files.append_jsonl(self.out_dir / METRICS_FILE, [{"round": round_, "split": "privacy", "epsilon": account["epsilon"],
                                                  "delta": account["delta"], "dp": account["dp"]}])

    def on_personal_evaluate(self, round_: int, counts: dict[str, EvalCounts]) -> None:
        """Each language's personalised state's evaluation (split 'personalized' in metrics.jsonl)."""
        rows = [{"round": round_, "split": PERSONAL_SPLIT, "eval_split": self.cfg.data.eval_split, "lang": lang,
                 **language_metrics(c), "heldout": lang in self.cfg.data.heldout_languages} for lang, c in counts.items()]
        files.append_jsonl(self.out_dir / METRICS_FILE, rows)
        if not self.quiet:
            accs = "  ".join(f"{lang} {100 * c.accuracy:.1f}" for lang, c in counts.items())
            print(f"round {round_:>3}/{self.cfg.federation.rounds} personalised acc | {accs}", flush=True)

    def end_round(self, round_: int, state: Mapping[str, torch.Tensor], server_state: Mapping[str, np.ndarray] | None = None,
                  personal: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> None:
        """Checkpoint the global (and every personalised) state, then mark the round complete (in that order)."""
        save_checkpoint(checkpoint_path(self.out_dir, round_), round_, state, server_state or {}, personal)
        self._write_progress(round_)

    def _write_progress(self, completed_round: int) -> None:
        files.write_json(self.out_dir / PROGRESS_FILE, {"completed_round": completed_round, "comm": self.comm,
                                                "local_steps": self.local_steps,
                                                "wall_seconds": time.time() - self.started})

    # ---------------------------------------------------------------------------------- final
    def _personalization(self, curves: list[dict[str, Any]]) -> Personalization | None:
        """The personalised states' last evaluation, as recorded by on_personal_evaluate (None without any)."""
        cfg = self.cfg
        if cfg.personalization.method.value == "none":
            return None
        rows = [r for r in curves if r["split"] == PERSONAL_SPLIT]
        last = max((int(r["round"]) for r in rows), default=0)
        final = {r["lang"]: LanguageScore(r["accuracy"], r["macro_f1"], r["loss"], r["n_test"])
                 for r in rows if int(r["round"]) == last}
        languages, heldout = list(cfg.data.languages), list(cfg.data.heldout_languages)
        per_language = {lang: final[lang] for lang in languages if lang in final}
        held = {lang: final[lang] for lang in heldout if lang in final}
        return Personalization(method=cfg.personalization.method.value, per_language=per_language, heldout=held,
                               average=mean_block(per_language, languages),
                               low_resource_average=mean_block(per_language, list(cfg.data.low_resource)),
                               heldout_average=mean_block(held, heldout), extra_bytes=self.personalization_bytes)

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
        final = {r["lang"]: LanguageScore(r["accuracy"], r["macro_f1"], r["loss"], r["n_test"])
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
            versions=versions(), created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            privacy=self.privacy,
            personalization=self._personalization(curves),
            unscored=[lang for lang in languages + heldout if lang not in final],
            hyperparameters=self.hyperparameters, epochs=epochs_per_learner(curves, cfg.train.batch_size),
        )
        if result.unscored and not self.quiet:
            print(f"warning: no score in the reported round for {', '.join(result.unscored)} (evaluation missing or "
                  f"refused; metrics.jsonl says which): the means leave them out.", flush=True)
        write_result(self.out_dir, result)
        return result
