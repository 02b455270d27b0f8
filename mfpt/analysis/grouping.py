"""Collections of finished runs: loading them from folders, and grouping them by setting for the reports.

A setting is the run's recorded config less its seed, name and folder; runs of one setting differ only by seed
(a Group); groups that differ only by paradigm and method form one results section (a Context).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mfpt.config.specs import PARADIGMS, ParadigmSpec, paradigm_rank
from mfpt.core import files
from mfpt.core.errors import UserError
from mfpt.results.schema import RESULTS_FILE, RunResult, read_result

METRICS_FILE = "metrics.jsonl"

# What names, places or runs an experiment, not what it is: its folder, trackers, and the cores and GPU share a
# simulated client gets (speed, and at most the order of floating-point sums).
IGNORED_KEYS = ("name", "output_dir", "seed", "train.threads", "federation.client_cpus", "federation.client_gpus",
                "tracking.backends", "tracking.tensorboard_dir", "tracking.mlflow_uri", "tracking.mlflow_experiment")
# Keys that make a table row; every other varying key makes its own table (a "context").
# Aggregators and attacks are rows too, so that attacked runs and robust strategies sit side by side in one table;
# so are the keys of a server strategy (STRATEGY_KEYS: q-FFL's q beside FedAvg, not in a table of its own).
ROW_KEYS = ("paradigm", "peft.method", "personalization.method", "federation.strategy", "federation.max_update_norm",
            "attack.kind", "attack.languages", "attack.factor", "attack.from_round")
DATA_AXIS = "data.train_per_language"


class ReportError(UserError, ValueError):
    """Folders that hold no finished runs, or runs that cannot be reported together; the message says which."""


@dataclass(frozen=True)
class RunData:
    """One finished run as saved: its folder, results.json and metrics.jsonl rows."""

    folder: Path
    results: RunResult
    curves: tuple[Mapping[str, Any], ...]

    @property
    def seed(self) -> int:
        return self.results.seed


@dataclass
class Group:
    """The runs of one setting (paradigm, method and context), one per seed."""

    label: str
    paradigm: str
    method: str
    context: tuple[tuple[str, Any], ...]
    runs: list[RunData]
    rule: str = "fedavg"  # its server rule as the label names it (defence_label); read for federated groups

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def spec(self) -> ParadigmSpec:
        """What mfpt knows about the group's paradigm (neutral facts for an unknown one)."""
        return paradigm_facts(self.paradigm)

    def by_seed(self) -> dict[int, RunData]:
        return {r.seed: r for r in self.runs}


@dataclass(frozen=True)
class Context:
    """The groups that share every varying config key but paradigm and method: one results section."""

    key: tuple[tuple[str, Any], ...]
    groups: list[Group]

    @property
    def name(self) -> str:
        return context_label(self.key)

    @property
    def slug(self) -> str:
        """A file-name-safe form of the context, for its figures."""
        if not self.key:
            return "all"
        text = "_".join(f"{k.split('.')[-1]}-{show_value(v, k)}" for k, v in self.key)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:120]

    @property
    def languages(self) -> list[str]:
        return union_of(self.groups, "languages")

    @property
    def heldout(self) -> list[str]:
        return union_of(self.groups, "heldout_languages")

    @property
    def low(self) -> list[str]:
        return [lang for lang in union_of(self.groups, "low_resource") if lang in self.languages]


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list) else value
    return flat


def config_value(result: RunResult, key: str, default: Any = None) -> Any:
    """A dotted key of the config the run recorded (results.json keeps the config as a plain table)."""
    return flat_config(result.config).get(key, default)


# What a report assumes of a paradigm this mfpt does not know (a results.json from another version): one model,
# trained over rounds, whose held-out evaluation it cannot name.
_UNKNOWN_PARADIGM = ParadigmSpec("unknown", run="", order=len(PARADIGMS.names()), protocol=lambda cfg: "",
                                 heldout_model="-")


def paradigm_facts(name: str) -> ParadigmSpec:
    """The facts about a paradigm that the report needs; neutral ones for an unknown name (never an error)."""
    return PARADIGMS.get(name) if name in PARADIGMS else _UNKNOWN_PARADIGM


# ---------------------------------------------------------------------------------------------- loading, grouping


def load_run(folder: str | Path) -> RunData:
    """The finished run in `folder`: its results.json and metrics.jsonl."""
    folder = Path(folder).resolve()
    return RunData(folder, read_result(folder), tuple(files.read_jsonl(folder / METRICS_FILE)))


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Finished runs under `paths`: a run folder (results.json) or a sweep folder (run folders below it)."""
    found: dict[Path, RunData] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if (path / RESULTS_FILE).is_file():
            files = [path / RESULTS_FILE]
        elif path.is_dir():
            files = sorted(f for f in path.rglob(RESULTS_FILE) if "checkpoints" not in f.parts)
        else:
            raise ReportError(f"{str(path)!r} does not exist; pass run folders (with results.json) or sweep folders.")
        if not files:
            raise ReportError(f"{str(path)!r} holds no results.json: no finished run to report. "
                              "Finish or resume its runs first (`mfpt sweep` again resumes a sweep).")
        for file in files:
            run = load_run(file.parent)
            found[run.folder] = run
    return list(found.values())


# PEFT keys that only one method reads: a run of another method ignores them, so they do not set it apart (a
# prefix run recorded before lora_target_modules' default changed is the same setting as one recorded after).
METHOD_KEYS = {"peft.lora_r": "lora", "peft.lora_alpha": "lora", "peft.lora_dropout": "lora",
               "peft.lora_target_modules": "lora", "peft.prefix_projection": "prefix"}
# Federation keys that only some server strategies read (mfpt.federation.strategies.base's factories): FedAvg run
# with federation.byzantine_clients = 3, as in a sweep over aggregators, is the same setting as FedAvg without it.
_SERVER_OPTIMIZERS = ("fedadam", "fedyogi", "fedadagrad")
STRATEGY_KEYS = {"federation.proximal_mu": ("fedprox",), "federation.server_lr": (*_SERVER_OPTIMIZERS, "fedavgm"),
                 "federation.tau": _SERVER_OPTIMIZERS, "federation.server_momentum": ("fedavgm",),
                 "federation.trim_fraction": ("fedtrimmedavg",),
                 "federation.byzantine_clients": ("krum", "multikrum", "bulyan"), "federation.krum_keep": ("multikrum",),
                 "federation.qffl_q": ("qfedavg",), "federation.qffl_lr": ("qfedavg",)}


def run_setting(results: RunResult) -> dict[str, Any]:
    """The flattened config that defines a run's setting (seed, name and folder left out, and the keys of PEFT
    methods and server strategies other than its own)."""
    flat = flat_config(results.config)
    for key in IGNORED_KEYS:
        flat.pop(key, None)
    for key, method in METHOD_KEYS.items():
        if results.method != method:
            flat.pop(key, None)
    for key, strategies in STRATEGY_KEYS.items():
        if flat.get("federation.strategy", "fedavg") not in strategies:
            flat.pop(key, None)
    if not paradigm_facts(results.paradigm).uses_rounds:
        flat.pop("federation.rounds", None)  # recorded as one stage (round 1) whatever the sweep's rounds
    flat.setdefault("paradigm", results.paradigm)
    flat.setdefault("peft.method", results.method)
    return flat


def tuned_keys(runs: Sequence[RunData]) -> set[str]:
    """Hyperparameters every run that has them took from a tuning file: each setting's own choice on validation
    (FedAvg's learning rate beside local training's), part of its row, never a reason for a separate table."""
    sources: dict[str, set[bool]] = {}
    for run in runs:
        for key, entry in (run.results.hyperparameters or {}).items():
            tuned = isinstance(entry, dict) and str(entry.get("source", "")).startswith("tuned")
            sources.setdefault(key, set()).add(tuned)
    return {key for key, found in sources.items() if found == {True}}


def varying_keys(runs: Sequence[RunData]) -> list[str]:
    """Config keys with more than one value among the runs (a key a run lacks does not count as a value)."""
    settings = [run_setting(r.results) for r in runs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if len({repr(s[k]) for s in settings if k in s}) > 1]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sort_value(value: Any, key: str = "") -> tuple:
    if key == DATA_AXIS and value == 0:  # 0 = no cap: the largest size, shown as "all"
        return (0, float("inf"), "")
    if value is None:
        return (2, 0, "")
    if is_number(value):
        return (0, value, "")
    return (1, 0, str(value))


def defence_label(setting: Mapping[str, Any], shown: Sequence[str] = ()) -> str:
    """A federated setting's server-side rule: its strategy with those of its own keys named in `shown` (the ones
    that vary), and the update norm bound where it sets one: "qfedavg (qffl_q 5) + norm bound 18.5"."""
    bound = setting.get("federation.max_update_norm") or 0
    own = [f"{key.split('.', 1)[1]} {show_value(setting[key], key)}" for key in shown if key in setting]
    return (str(setting.get("federation.strategy", "fedavg")) + (f" ({', '.join(own)})" if own else "")
            + (f" + norm bound {bound:g}" if bound else ""))


def row_keys(runs: Sequence[RunData]) -> set[str]:
    """The keys that tell a table's rows apart (ROW_KEYS, a server strategy's own keys, each setting's tuned values);
    any other varying key makes a table of its own."""
    return set(ROW_KEYS) | set(STRATEGY_KEYS) | tuned_keys(runs)


def group_runs(runs: Sequence[RunData]) -> list[Group]:
    """Runs grouped by setting; groups ordered by context, then paradigm, then method; runs by seed."""
    varying = varying_keys(runs)
    rows = row_keys(runs)
    shown = [k for k in STRATEGY_KEYS if k in varying]
    context_keys = [k for k in varying if k not in rows]
    groups: dict[tuple, Group] = {}
    for run in runs:
        setting = run_setting(run.results)
        paradigm, method = run.results.paradigm, run.results.method
        context = tuple((k, setting.get(k)) for k in context_keys)
        key = (context, paradigm, method, tuple(repr(setting.get(k)) for k in varying if k in rows))
        personal = setting.get("personalization.method", "none")
        label = f"{paradigm} / {method}" + (f" + {personal}" if personal != "none" else "")
        rule = defence_label(setting, shown)
        if "federation.strategy" in varying or "federation.max_update_norm" in varying or shown:
            label += f" / {rule}"
        if setting.get("attack.kind", "none") != "none":
            label += f" / attacked: {setting['attack.kind']} by {show_value(setting.get('attack.languages'))}"
        group = groups.setdefault(key, Group(label, paradigm, method, context, [], rule))
        if run.seed in group.seeds:
            other = group.by_seed()[run.seed].folder
            raise ReportError(f"Runs {str(other)!r} and {str(run.folder)!r} have the same setting and seed "
                              f"{run.seed}; report one of them.")
        group.runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)

    def order(g: Group) -> tuple:
        return (tuple(sort_value(v, k) for k, v in g.context), paradigm_rank(g.paradigm), g.method, g.label)

    return sorted(groups.values(), key=order)


def contexts(groups: Sequence[Group]) -> list[Context]:
    """The groups by context, in the groups' order."""
    keys = list(dict.fromkeys(g.context for g in groups))
    return [Context(key, [g for g in groups if g.context == key]) for key in keys]


def context_label(context: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k} = {show_value(v, k)}" for k, v in context)


def show_value(value: Any, key: str = "") -> str:
    if key == DATA_AXIS and value == 0:
        return "all"
    if value is None:
        return "-"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def union_of(groups: Sequence[Group], attribute: str) -> list[str]:
    """The languages of a RunResult list attribute over every run of the groups, first seen first."""
    return list(dict.fromkeys(lang for g in groups for r in g.runs for lang in getattr(r.results, attribute)))
