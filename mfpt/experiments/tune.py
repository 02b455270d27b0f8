"""`mfpt tune`: choose hyperparameters on the validation split, the same search for every setting compared.

A setting is a paradigm and method (the `--for` values: `--for paradigm=federated,local`); the search space is the
cross product of the `--grid` values, the same for every setting (with `--trials N`, the same seeded random N of
its points), so that no baseline gets a smaller search than the federated run it is compared with. A grid value
written `x0.3` is a multiple of the setting's own value of the key: `--grid train.lr=x0.3,x1,x3` searches around
each method's default learning rate, three points for each, where a fixed list would suit one method only.

Every trial is one run (a sweep run: its own folder and process, resumable) with `data.eval_split = "validation"`
and `data.drop_test = true`: the test split is removed as soon as the data is read, so no trial can score on it.
A trial's score is the mean validation accuracy (chrF++ for a generation task) over the training languages after
the last round, averaged over the seeds. The chosen values are the best trial's (the earliest in grid order on a tie). tuning.json
(mfpt.config.tuning) records every trial and what it cost; `tuning.file = "DIR/tuning.json"` (or `--tuned DIR/
tuning.json` on `mfpt run` and `mfpt sweep`) makes a run use the values chosen for its own paradigm and method.

A search starts where the config stands: when the config has a tuning.file (or `--tuned`), each setting's trials keep
what that file chose for the setting, except the keys searched and those given with --set, and tuning.json records
them as the setting's `kept` values, so that a run using the new file gets both (a search of q-FFL's qffl_lr runs
at, and passes on, the learning rate an earlier search chose). `--set tuning.file=""` starts from the defaults.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mfpt.config import ConfigError, ExperimentConfig, load_config, parse_override
from mfpt.config.tuning import TUNING_SCHEMA, matching_setting
from mfpt.core import files
from mfpt.core.seeds import derive_seed
from mfpt.core.stats import mean
from mfpt.experiments.sweep import PlannedRun, Runner, SweepError, plan_sweep, run_state, run_sweep, subprocess_runner
from mfpt.results.schema import read_result

TUNING_FILE = "tuning.json"
# What every trial sets: its rounds are scored on validation, and the test split is gone before anything runs.
TRIAL_OVERRIDES = ('data.eval_split="validation"', "data.drop_test=true", 'data.selection="last"', 'tuning.file=""')
OBJECTIVE = ("mean validation accuracy (chrF++ for a generation task) over the training languages after the last "
             "round, averaged over the seeds; "
             "the test split is dropped when a trial's data is read")
# What the objective is, for comparing two searches: the prose above may be reworded between versions, this may not.
# Every mfpt.tuning/1 file was written under this objective, so a file without the id has it.
OBJECTIVE_ID = "validation-headline-last-round/1"
PROTOCOL_KEYS = frozenset({"seed", "output_dir", *(parse_override(o)[0] for o in TRIAL_OVERRIDES)})
# Keys a trial may not search: they define the setting, the protocol or the run folder.
NOT_SEARCHABLE = ("paradigm", "peft.method", "seed", "output_dir", "data.eval_split", "data.drop_test",
                  "data.selection", "tuning.file")


@dataclass(frozen=True)
class Setting:
    """One (paradigm, method, ...) combination that gets its own search: the `--for` values it fixes."""

    values: tuple[tuple[str, str], ...]

    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values]

    def folder(self, cfg: ExperimentConfig) -> str:
        """Its trials' folder: the paradigm and method it resolves to (whether --for or --set gave them), then the
        other --for values, so that two settings never share trial runs."""
        rest = [f"{k}={v}" for k, v in self.values if k not in ("paradigm", "peft.method")]
        return re.sub(r"[^A-Za-z0-9._=+-]+", "-", "__".join([cfg.paradigm.value, cfg.peft.method.value, *rest]))


def parse_settings(items: Sequence[str]) -> list[Setting]:
    """`--for KEY=V1,V2` items as the settings of their cross product (one empty setting without any)."""
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        key, _, text = item.partition("=")
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not key.strip() or not values:
            raise SweepError(f"--for {item!r} needs the form key=v1,v2, e.g. --for paradigm=federated,local.")
        axes.append((key.strip(), values))
    return [Setting(tuple(combo)) for combo in itertools.product(*[[(k, v) for v in vs] for k, vs in axes])]


def search_points(grid: Sequence[tuple[str, list[str]]], trials: int, seed: int) -> list[tuple[tuple[str, str], ...]]:
    """The grid's points in grid order, or a seeded random `trials` of them (the same for every setting)."""
    points = list(itertools.product(*[[(key, v) for v in values] for key, values in grid]))
    if not points or not grid:
        raise SweepError("mfpt tune needs a search space: --grid KEY=V1,V2 (e.g. --grid train.lr=x0.3,x1,x3).")
    for key, _ in grid:
        if key in NOT_SEARCHABLE:
            raise SweepError(f"--grid may not search {key!r}: it defines the setting (--for) or the trial's protocol.")
    if trials and trials < len(points):
        chosen = np.random.default_rng(derive_seed(seed, 4242)).choice(len(points), size=trials, replace=False)
        points = [points[i] for i in sorted(chosen)]
    return points


def _concrete(point: Sequence[tuple[str, str]], base: ExperimentConfig) -> tuple[tuple[str, str], ...]:
    """A point with each `xK` value made concrete: K times the setting's own value of that key."""
    out = []
    for key, value in point:
        if value.startswith("x"):
            section, name = key.split(".", 1) if "." in key else ("", key)
            own = getattr(getattr(base, section), name) if section else getattr(base, name)
            try:
                # 12 significant digits: 3 x 2e-5 is 6e-05, not 6.000000000000001e-05, in the folder and the file
                product = float(f"{float(value[1:]) * float(own):.12g}")
            except (TypeError, ValueError):
                raise SweepError(f"--grid {key}={value}: 'x' multiplies the setting's own value of {key} "
                                 f"({own!r}), which is not a number.") from None
            if isinstance(own, int) and not isinstance(own, bool):  # an integer key stays an integer
                if not product.is_integer():
                    raise SweepError(f"--grid {key}={value}: {key} is an integer ({own}), and {value} of it is "
                                     f"{product:g}; use factors that give whole numbers, or the values themselves.")
                value = str(int(product))
            else:
                value = repr(product)
        out.append((key, value))
    return tuple(out)


@dataclass(frozen=True)
class Trial:
    """One point of one setting's search: its runs (one per seed) and the values it set."""

    setting: Setting
    folder: str
    values: tuple[tuple[str, str], ...]
    runs: tuple[PlannedRun, ...]
    # The values the setting's search started from and kept: {key: {"value", "source"}} (tuning.json's `kept`).
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where the setting's search starts, in words, as `mfpt tune` prints it (starting_point's line).
    start: str = ""


def plan_tuning(config: str | Path | None, settings: Sequence[Setting], grid: Sequence[tuple[str, list[str]]],
                seeds: Sequence[int], out_dir: Path, overrides: Sequence[str] = (), trials: int = 0) -> list[Trial]:
    """Every trial of every setting, each run's config validated now (a typo fails before anything runs)."""
    out_dir = Path(out_dir).expanduser().resolve()
    given = {parse_override(o)[0] for o in overrides}
    # --set may fix what no setting varies (e.g. peft.method=full for all of them), never what the search decides.
    decided = {k for k, _ in grid} | {k for s in settings for k, _ in s.values} | PROTOCOL_KEYS
    clash = sorted(given & decided - {"tuning.file"})  # --set tuning.file / --tuned: the search's starting point
    if clash:
        raise SweepError(f"--set {clash[0]!r} is also set by the tuning (--for, --grid, --seeds or the protocol); "
                         "drop it.")
    points = search_points(grid, trials, min(seeds))
    planned: list[Trial] = []
    for setting in settings:
        try:
            base = load_config(config, [*overrides, *setting.overrides()], apply_tuned=False)
            kept, start = starting_point(base, {k for k, _ in grid} | given)
        except ConfigError as err:
            raise SweepError(f"setting {' '.join(setting.overrides()) or 'of the config'}: {err}") from None
        folder = setting.folder(base)
        kept_overrides = [f"{k}={json.dumps(v['value'])}" for k, v in kept.items()]
        for point in points:
            values = _concrete(point, base)
            runs = plan_sweep(config, [(k, [v]) for k, v in values], seeds, out_dir / folder,
                              [*overrides, *setting.overrides(), *kept_overrides, *TRIAL_OVERRIDES])
            planned.append(Trial(setting, folder, values, tuple(runs), kept, start))
    return planned


def starting_point(base: ExperimentConfig, searched: set[str]) -> tuple[dict[str, dict[str, Any]], str]:
    """What the setting of `base` keeps from its config's tuning.file (the values that file chose or kept for it,
    but for the keys in `searched`, each with its source), and a line that says where its search starts."""
    if not base.tuning.file:
        return {}, "starts from the config's values (no tuning.file)"
    found = matching_setting(base.tuning.file, base.paradigm.value, base.peft.method.value,
                             lambda key: attrgetter(key)(base))
    if found is None:
        return {}, (f"starts from the config's values: {base.tuning.file} holds no search of "
                    f"{base.paradigm.value}/{base.peft.method.value} with this setting's values")
    kept = {k: {"value": v, "source": found.source(k, base.tuning.file)}
            for k, v in found.values().items() if k not in searched}
    if not kept:
        return {}, (f"keeps nothing of {base.tuning.file}: every key it holds for {found.describe()} "
                    f"({', '.join(found.values())}) is searched now or given with --set")
    return kept, "keeps " + "; ".join(f"{k} = {v['value']} ({v['source']})" for k, v in kept.items())


def trial_problem(results: Sequence[Any]) -> str | None:
    """Why a finished trial cannot be compared with the others, or None: a client's update or evaluation failed
    (out of memory, say), so its score is a mean over fewer languages, of a model fewer clients trained."""
    for result in results:
        if result.lost_clients():
            unscored = result.unscored_training_languages()
            return (f"seed {result.seed}: {result.refused_updates} client repl(ies) failed or were refused"
                    + (f", {', '.join(unscored)} not scored" if unscored else "")
                    + " (metrics.jsonl says why); fix the cause, delete the trial's folder and tune again")
    return None


def trial_record(trial: Trial) -> dict[str, Any] | None:
    """What a finished trial scored and cost (None while any of its runs is unfinished). A trial whose clients
    failed gets no score (`problem` says why), so it can never be chosen."""
    if any(run_state(run.folder) != "complete" for run in trial.runs):
        return None
    results = [read_result(run.folder) for run in trial.runs]
    scores = [r.mean("average") for r in results]
    languages = results[0].languages
    problem = trial_problem(results)
    return {
        "values": {k: _number(v) for k, v in trial.values},
        "score": None if problem else mean(s for s in scores if s is not None),
        **({"problem": problem} if problem else {}),
        "scores": dict(zip((r.seed for r in results), scores)),
        "per_language": {lang: mean(r.score(lang) for r in results if r.score(lang) is not None) for lang in languages},
        "seconds": round(sum(r.wall_seconds for r in results), 1),
        "steps": sum(sum(r.local_steps.values()) for r in results),
        "runs": [run.name for run in trial.runs],
    }


def _number(text: str) -> Any:
    """A grid value as the config reads it (a number stays a number in tuning.json)."""
    return parse_override(f"v={text}")[1]


def tuning_record(config: str | Path | None, overrides: Sequence[str], grid: Sequence[tuple[str, list[str]]],
                  seeds: Sequence[int], trials: Sequence[Trial], budget: int) -> dict[str, Any]:
    """tuning.json's content from the trials that finished: each setting's search and choice."""
    settings: dict[str, list[dict[str, Any]]] = {}
    first: dict[str, Trial] = {}
    for trial in trials:
        record = trial_record(trial)
        settings.setdefault(trial.folder, [])
        first.setdefault(trial.folder, trial)
        if record is not None:
            settings[trial.folder].append(record)
    out = []
    for folder, records in settings.items():
        cfg = first[folder].runs[0].cfg
        entry: dict[str, Any] = {"paradigm": cfg.paradigm.value, "method": cfg.peft.method.value, "folder": folder,
                                 "setting": dict(first[folder].setting.values), "set": list(overrides),
                                 "kept": first[folder].kept, "trials": records, "complete": len(records) == budget}
        scored = [r for r in records if r["score"] is not None]
        if scored:
            best = max(scored, key=lambda r: r["score"])  # max keeps the first of equals: the earliest grid point
            entry.update(chosen=best["values"], score=best["score"])
        out.append(entry)
    return {"schema": TUNING_SCHEMA, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": str(Path(config).resolve()) if config else None, "set": list(overrides),
            "grid": {k: v for k, v in grid}, "seeds": list(seeds), "objective": OBJECTIVE,
            "objective_id": OBJECTIVE_ID, "trials_per_setting": budget, "trial_overrides": list(TRIAL_OVERRIDES),
            "settings": [e for e in out if "chosen" in e]}


def run_tuning(trials: Sequence[Trial], out_dir: Path, config: str | None, record: Callable[[], None],
               runner: Runner = subprocess_runner, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Run every trial's runs that are not complete yet, writing tuning.json after each trial; the failures."""
    failed: dict[str, str] = {}
    for i, trial in enumerate(trials, 1):
        echo(f"trial {i}/{len(trials)}: {trial.folder}: " + ", ".join(f"{k} = {v}" for k, v in trial.values))
        outcome = run_sweep(trial.runs, Path(out_dir) / trial.folder, config, runner=runner,
                            echo=lambda line: echo("  " + line))
        failed.update(outcome.failed)
        finished = trial_record(trial)
        if finished is not None and "problem" in finished:
            failed[f"{trial.folder}/{'__'.join(f'{k}={v}' for k, v in trial.values)}"] = finished["problem"]
        record()
    return failed


def merged_with_earlier(path: Path, content: dict[str, Any]) -> dict[str, Any]:
    """`content` plus the settings an earlier `mfpt tune` into the same folder tuned and this one did not, so that
    settings tuned by separate commands (say, full fine-tuning after the prompt methods) share one tuning.json. The
    search must be the same, or the budgets would differ: another grid, seeds or objective is refused."""
    if not path.is_file():
        return content
    earlier = {"objective_id": OBJECTIVE_ID, **files.read_json(path)}
    for key in ("grid", "seeds", "objective_id", "trials_per_setting"):
        if earlier.get(key) != content.get(key):
            raise SweepError(f"{str(path)!r} holds a search with another {key} ({earlier.get(key)!r}, now "
                             f"{content.get(key)!r}): every setting compared must get the same search; tune into "
                             "another --out folder, or repeat the earlier search.")
    mine = {s["folder"] for s in content["settings"]}
    kept = [s for s in earlier.get("settings", []) if s.get("folder") not in mine]
    return {**content, "settings": kept + content["settings"]}


def write_tuning(path: Path, content: dict[str, Any]) -> Path:
    """Write tuning.json atomically, keeping the settings an earlier search into the same folder tuned."""
    return files.write_json(path, merged_with_earlier(path, content))
