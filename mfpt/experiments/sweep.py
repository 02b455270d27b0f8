"""Sweeps: `mfpt sweep` runs a grid of experiments x seeds, one run folder each, resumable, then writes its report.

A sweep is the cross product of `--grid KEY=V1,V2,...` values and `--seeds`. Each run gets its own folder named
from its grid values and seed (`paradigm=local__data.train_per_language=8__seed=0`). Running the same command
again continues the sweep: a run folder with results.json is complete and skipped; one with progress.json (at
least one round recorded and checkpointed) is resumed from its last completed round (`mfpt run --resume`, which
refuses if the config changed); one without progress.json has nothing worth keeping and is cleared and
restarted (its leftovers, e.g. metrics lines of an unfinished round 1, would otherwise be appended to).
Runs go seed by seed, so an interrupted sweep already holds whole comparisons for its first seeds.

Each run is a fresh `python -m mfpt.cli run` subprocess, not a call in this process, because:
- Flower's simulation starts a Ray runtime per call; starting one repeatedly in one process leaks workers,
  threads and shared memory and is not something Ray supports well (a subprocess returns all of it to the OS);
- `mfpt.train.runtime` keeps one model per process (an lru_cache), and torch keeps its thread pool settings: a fresh
  process gives every run the same starting state whatever ran before it;
- a run that crashes or is killed takes down only its own process; the sweep records the failure and goes on.
The cost is ~5 s of imports per run, small next to any real run. Each run's output goes to logs/<run>.log.

After the runs, the sweep writes sweep.csv (one row per run x language, held-out languages included, blank
metrics where a run did not evaluate a language) and sweep.md (`mfpt.analysis.report.write_report` over the runs).
"""

from __future__ import annotations

import csv
import itertools
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mfpt.analysis.grouping import load_run
from mfpt.analysis.report import write_report
from mfpt.config import ConfigError, ExperimentConfig, load_config, parse_override
from mfpt.core import files
from mfpt.core.errors import UserError
from mfpt.results.schema import FAILURE_FILE, LIVE_FILE, RESULTS_FILE, read_result
from mfpt.results.tracking import TRACKING_FILE

SWEEP_CSV = "sweep.csv"
SWEEP_MD = "sweep.md"
SWEEP_JSON = "sweep.json"
LOGS = "logs"
CSV_COLUMNS = ("paradigm", "method", "lang", "heldout", "low_resource", "accuracy", "macro_f1", "chrf", "n_test",
               "trainable_params", "total_bytes", "backdoor_success", "backdoor_untriggered")
# Keys a grid may not vary: the seed has --seeds, and the sweep owns each run's folder.
RESERVED = ("seed", "output_dir")
# What `mfpt run` writes into a run folder; a folder holding anything else is not cleared automatically.
RUN_OUTPUTS = ("config.toml", "metrics.jsonl", "progress.json", RESULTS_FILE, FAILURE_FILE, "report.md", "checkpoints",
               "adapter", LIVE_FILE, TRACKING_FILE, "tensorboard", "mlflow.db", "mlflow-artifacts")


class SweepError(UserError, ValueError):
    """A sweep that cannot be planned or continued; the message names the argument or folder and the fix."""


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep: its folder name, grid values (as typed), seed and validated config."""

    name: str
    values: tuple[tuple[str, str], ...]
    seed: int
    overrides: tuple[str, ...]  # --set items for `mfpt run`: the user's, then the grid's, then the seed
    cfg: ExperimentConfig

    @property
    def folder(self) -> Path:
        return Path(self.cfg.output_dir)


@dataclass
class SweepOutcome:
    ran: list[str]
    skipped: list[str]
    resumed: list[str]
    failed: dict[str, str]


Runner = Callable[[PlannedRun, str | None, bool, Path], None]


# --------------------------------------------------------------------------------------------- planning


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`KEY=V1,V2,...` items as (key, values). Values split on ';' when there is one (for list-valued keys,
    e.g. data.languages=eng,swh;eng,hau), else on ','."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        if "=" not in item:
            raise SweepError(f"--grid {item!r} needs the form section.key=v1,v2, e.g. --grid paradigm=federated,local.")
        key, text = (part.strip() for part in item.split("=", 1))
        values = [v.strip() for v in text.split(";" if ";" in text else ",") if v.strip()]
        if not key or not values:
            raise SweepError(f"--grid {item!r} has no key or no values; e.g. --grid data.train_per_language=8,16,32.")
        if key in RESERVED:
            raise SweepError(f"--grid may not vary {key!r}: use --seeds for seeds; the sweep names each run's folder.")
        if any(key == k for k, _ in grid):
            raise SweepError(f"--grid {key!r} is given twice; list all its values in one --grid.")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid {key!r} repeats a value: {values}.")
        grid.append((key, values))
    return grid


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SweepError(f"--seeds {text!r} must be comma-separated integers, e.g. --seeds 0,1,2.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {text!r} must list at least one seed, without repeats.")
    return seeds


def run_name(values: Sequence[tuple[str, str]], seed: int) -> str:
    """Folder name of a run: its grid values and seed, e.g. 'paradigm=local__seed=0' (unsafe characters -> '-')."""
    parts = [f"{key}={value}" for key, value in values] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "__".join(parts))


def plan_sweep(config: str | Path | None, grid: Sequence[tuple[str, list[str]]], seeds: Sequence[int], out_dir: Path,
               overrides: Sequence[str] = ()) -> list[PlannedRun]:
    """Every run of the sweep, seed by seed, each config validated now (a typo fails before anything runs)."""
    out_dir = Path(out_dir).expanduser().resolve()
    user_keys = {parse_override(o)[0] for o in overrides}
    clash = sorted(user_keys & ({k for k, _ in grid} | set(RESERVED)))
    if clash:
        raise SweepError(f"--set {clash[0]!r} is also set by the sweep (--grid, --seeds or the run folder); drop it.")
    runs: list[PlannedRun] = []
    names: set[str] = set()
    for seed in seeds:
        for combo in itertools.product(*[[(key, v) for v in values] for key, values in grid]):
            name = run_name(combo, seed)
            if name in names:
                raise SweepError(f"Two runs of the grid map to the same folder {name!r}; use values that differ in "
                                 "letters or digits.")
            names.add(name)
            items = (*overrides, *(f"{k}={v}" for k, v in combo), f"seed={seed}")
            folder = out_dir / name
            try:
                cfg = load_config(config, [*items, f'output_dir="{folder}"'])
            except ConfigError as err:
                raise SweepError(f"run {name}: {err}") from None
            runs.append(PlannedRun(name, tuple(combo), seed, items, cfg))
    return runs


def sweep_warnings(runs: Sequence[PlannedRun]) -> list[str]:
    """What makes a planned comparison unfair before anything runs: several peft methods at one learning rate (prompt
    methods, LoRA and full fine-tuning want rates orders of magnitude apart) without tuned values."""
    found = []
    by_method: dict[str, set[float]] = {}
    for run in runs:
        if not run.cfg.tuning.file:
            by_method.setdefault(run.cfg.peft.method.value, set()).add(run.cfg.train.lr)
    if len(by_method) > 1 and len(set().union(*by_method.values())) == 1:
        lr = next(iter(next(iter(by_method.values()))))
        found.append(f"the sweep varies peft.method ({', '.join(by_method)}) but trains every method at train.lr = "
                     f"{lr:g}; leave train.lr unset (each method's default) or choose it on validation: mfpt tune "
                     "--for peft.method=... --grid train.lr=x0.3,x1,x3, then --tuned.")
    return found


# --------------------------------------------------------------------------------------------- running


def run_state(folder: Path) -> str:
    """'complete' (results.json), 'failed' (failure.json: it scored nothing), 'partial' (a recorded round to resume
    from), 'empty' (nothing kept) or 'new'."""
    if (folder / RESULTS_FILE).is_file():
        return "complete"
    if (folder / FAILURE_FILE).is_file():
        return "failed"
    if (folder / "progress.json").is_file():
        return "partial"
    return "empty" if folder.exists() else "new"


def clear_run_folder(folder: Path) -> None:
    """Remove a run folder that recorded no complete round; refuse if it holds files mfpt did not write."""
    foreign = [p.name for p in folder.iterdir() if p.name not in RUN_OUTPUTS and not p.name.startswith(".")]
    if foreign:
        raise SweepError(f"{str(folder)!r} holds no finished round but also files mfpt did not write ({foreign[0]!r}); "
                         "move them away or delete the folder, then run the sweep again.")
    shutil.rmtree(folder)


def run_command(run: PlannedRun, config: str | None, resume: bool, quiet: bool = True) -> list[str]:
    """The `python -m mfpt.cli run ...` command line of one planned run."""
    command = [sys.executable, "-m", "mfpt.cli", "run", *([str(config)] if config else [])]
    for item in run.overrides:
        command += ["--set", item]
    command += ["--out", str(run.folder)] + (["--quiet"] if quiet else [])
    return command + (["--resume", str(run.folder)] if resume else [])


def subprocess_runner(run: PlannedRun, config: str | None, resume: bool, log: Path) -> None:
    """Run one experiment as `python -m mfpt.cli run` in a fresh process; raise RuntimeError if it fails."""
    command = run_command(run, config, resume)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n\n")
        handle.flush()
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"exit status {code}: {' / '.join(tail)} (full log: {log})")


def streaming_runner(run: PlannedRun, config: str | None, resume: bool, log: Path) -> None:
    """As subprocess_runner, but the run prints its live progress to this terminal instead of a log (the demo)."""
    code = subprocess.run(run_command(run, config, resume, quiet=False)).returncode
    if code != 0:
        raise RuntimeError(f"exit status {code} (its output is above)")


def inprocess_runner(run: PlannedRun, config: str | None, resume: bool, log: Path) -> None:
    """Run one experiment in this process (tests, and in-process paradigms only: see the module docstring)."""
    from mfpt.experiments.paradigms import run_experiment

    run_experiment(run.cfg, resume=resume, quiet=True)


def run_sweep(runs: Sequence[PlannedRun], out_dir: Path, config: str | None = None,
              runner: Runner = subprocess_runner, echo: Callable[[str], None] = print) -> SweepOutcome:
    """Run every planned run that is not complete yet (resuming half-done ones); failures are recorded, not fatal."""
    out_dir = Path(out_dir).expanduser().resolve()
    outcome = SweepOutcome([], [], [], {})
    for i, run in enumerate(runs, 1):
        where = f"[{i}/{len(runs)}] {run.name}"
        state = run_state(run.folder)
        if state == "complete":
            outcome.skipped.append(run.name)
            echo(f"{where}: complete, skipped")
            continue
        if state in ("empty", "failed"):  # a failed run starts again from nothing once its cause is fixed
            clear_run_folder(run.folder)
        started = time.time()
        echo(f"{where}: {'resuming' if state == 'partial' else 'running'} ...")
        try:
            runner(run, config, state == "partial", out_dir / LOGS / f"{run.name}.log")
        except Exception as err:  # one failed run must not stop the others; the summary lists it
            outcome.failed[run.name] = str(err)
            echo(f"{where}: FAILED: {err}")
            continue
        (outcome.resumed if state == "partial" else outcome.ran).append(run.name)
        mean = read_result(run.folder).mean("average")
        echo(f"{where}: done in {time.time() - started:.0f} s, mean accuracy "
             + ("-" if mean is None else f"{100 * mean:.1f}"))
    return outcome


# --------------------------------------------------------------------------------------------- outputs


def _or_blank(value: Any) -> Any:
    """A CSV cell: the value, or empty where there is none."""
    return "" if value is None else value


def sweep_rows(runs: Sequence[PlannedRun]) -> list[dict[str, Any]]:
    """One row per complete run x language (training languages, then held-out ones)."""
    rows = []
    for run in runs:
        if run_state(run.folder) != "complete":
            continue
        result = read_result(run.folder)
        for lang in [*result.languages, *result.heldout_languages]:
            score = result.per_language.get(lang) or result.heldout.get(lang)
            rows.append({"run": run.name, **dict(run.values), "seed": run.seed, "paradigm": result.paradigm,
                         "method": result.method, "lang": lang, "heldout": lang in result.heldout_languages,
                         "low_resource": lang in result.low_resource,
                         "accuracy": score.accuracy if score else "", "macro_f1": score.macro_f1 if score and score.macro_f1 is not None else "",
                         "chrf": score.chrf if score and score.chrf is not None else "",
                         "n_test": score.n_test if score else "", "trainable_params": result.trainable_params,
                         "total_bytes": result.communication.total_bytes,
                         **{key: _or_blank(((result.attack or {}).get(key) or {}).get(lang))
                            for key in ("backdoor_success", "backdoor_untriggered")}})
    return rows


def write_sweep_csv(runs: Sequence[PlannedRun], grid_keys: Sequence[str], path: Path) -> Path:
    """sweep.csv: run, grid values, seed, then CSV_COLUMNS."""
    columns = ["run", *grid_keys, "seed", *[c for c in CSV_COLUMNS if c not in grid_keys]]
    rows = sweep_rows(runs)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return files.atomic_write(path, write)


def finish_sweep(runs: Sequence[PlannedRun], grid_keys: Sequence[str], out_dir: Path, title: str,
                 failed: Mapping[str, str] | None = None) -> list[Path]:
    """Write sweep.csv and sweep.md (with its figures) from the runs that are complete; sweep.md lists the runs that
    failed (`failed`, and any folder whose failure.json says it scored nothing) before its tables."""
    out_dir = Path(out_dir).expanduser().resolve()
    written = [write_sweep_csv(runs, grid_keys, out_dir / SWEEP_CSV)]
    done = [load_run(r.folder) for r in runs if run_state(r.folder) == "complete"]
    failures = {r.name: str(files.read_json(r.folder / FAILURE_FILE).get("error", "?"))
                for r in runs if run_state(r.folder) == "failed"}
    failures.update(failed or {})
    if done or failures:
        written.append(write_report(done, out_dir, title=title, filename=SWEEP_MD, failed=failures))
    return written


# --------------------------------------------------------------------------------------------- CLI








