"""The tuning file: what `mfpt tune` chose on the validation split, per paradigm and method (and any other `--for`
values), and every trial of the search; `tuning.file` makes a run use the choice for its own setting.

The file is JSON (`mfpt.tuning/1`), written by mfpt.experiments.tune and read here, in the config layer, because
the chosen values become part of the config before anything runs:

    {"schema": "mfpt.tuning/1", "objective": "...", "grid": {"train.lr": [...]}, "seeds": [0],
     "settings": [{"paradigm": "federated", "method": "prefix", "chosen": {"train.lr": 0.003}, "score": 0.52,
                   "kept": {"peft.init_std": {"value": 0.02, "source": "tuned on validation: ..."}},
                   "trials": [{"values": {"train.lr": 0.01}, "score": 0.48, "per_language": {...}, ...}, ...]}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

from mfpt.core.errors import ConfigError

TUNING_SCHEMA = "mfpt.tuning/1"
# How a kept value's source ends: kept by one later search, or by a chain of them.
_ONE_KEEPER = ", whose search started from it)"
_KEEPERS = ", each search starting from the one before)"


@dataclass(frozen=True)
class TunedSetting:
    """The search of one (paradigm, method, ...): the values chosen on validation, their score, how many trials."""

    paradigm: str
    method: str
    chosen: dict[str, Any]
    score: float
    trials: int
    # The other `--for` values the search fixed (say federation.qffl_q = 1): a run uses this choice only with them.
    fixed: dict[str, Any] = field(default_factory=dict)
    # What the search started from and kept: an earlier search's choices for keys it did not search
    # ({"train.lr": {"value": 0.01, "source": "tuned on validation: ..."}}); a run takes them with the choice.
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        """'federated/prefix with federation.qffl_q = 1', as an error names what a file holds."""
        return " with ".join([f"{self.paradigm}/{self.method}", *(f"{k} = {v!r}" for k, v in self.fixed.items())])

    def values(self) -> dict[str, Any]:
        """Every value a run takes from this setting: the kept ones and the chosen ones."""
        return {**{k: v["value"] for k, v in self.kept.items()}, **self.chosen}

    def source(self, key: str, path: str | Path) -> str:
        """Where the value of `key` came from, as results.json and reports print it."""
        if key in self.chosen:
            return (f"tuned on validation: {path}, best of {self.trials} trial(s), mean validation accuracy "
                    f"{100 * self.score:.1f}%")
        earlier = self.kept[key]["source"]
        for ending in (_ONE_KEEPER, _KEEPERS):  # a chain of searches reads as one list, not as nested brackets
            if earlier.endswith(ending):
                return f"{earlier[:-len(ending)]}, then by {path}{_KEEPERS}"
        return f"{earlier} (kept by {path}{_ONE_KEEPER}"


def read_tuning(path: str | Path) -> tuple[dict[str, Any], list[TunedSetting]]:
    """The file's whole content and its settings, or a ConfigError naming the file and what is wrong with it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"tuning.file = {str(path)!r} does not exist; run `mfpt tune` first, or leave tuning.file empty.")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise ConfigError(f"tuning.file = {str(path)!r} cannot be read as JSON ({err}); run `mfpt tune` again.") from None
    if not isinstance(content, dict) or content.get("schema") != TUNING_SCHEMA:
        raise ConfigError(f"tuning.file = {str(path)!r} is not a tuning file of `mfpt tune` (schema "
                          f"{content.get('schema') if isinstance(content, dict) else None!r}, expected {TUNING_SCHEMA!r}).")
    from mfpt.config.schema import parse_override  # the --for values as --set reads them

    try:
        settings = [TunedSetting(str(s["paradigm"]), str(s["method"]), dict(s["chosen"]), float(s["score"]),
                                 len(s["trials"]), dict(parse_override(f"{k}={v}") for k, v in s.get("setting", {}).items()
                                                        if k not in ("paradigm", "peft.method")),
                                 {str(k): {"value": v["value"], "source": str(v["source"])}
                                  for k, v in s.get("kept", {}).items()})
                    for s in content["settings"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"tuning.file = {str(path)!r} is damaged ({type(err).__name__}: {err}); run `mfpt tune` "
                          "again.") from None
    return content, settings


def _plain(value: Any) -> Any:
    """A config value as the tuning file writes it: an enum's value, a tuple as a list."""
    if isinstance(value, Enum):
        return value.value
    return list(value) if isinstance(value, tuple) else value


def matching_setting(path: str | Path, paradigm: str, method: str,
                     value_of: Callable[[str], Any] | None = None) -> TunedSetting | None:
    """The search of `paradigm` and `method` in the tuning file whose other fixed values equal the run's
    (`value_of(key)`), the most specific first, or None."""
    return _matching(read_tuning(path)[1], paradigm, method, value_of)


def _matching(settings: list[TunedSetting], paradigm: str, method: str,
              value_of: Callable[[str], Any] | None) -> TunedSetting | None:
    """matching_setting's choice among a file's `settings`."""
    mine = [s for s in settings if (s.paradigm, s.method) == (paradigm, method)]
    if value_of is not None:  # a file tuned --for federation.qffl_q=0.1,1,5 holds three federated/prefix settings
        mine = [s for s in mine if all(_plain(value_of(k)) == _plain(v) for k, v in s.fixed.items())]
    return max(mine, key=lambda s: len(s.fixed)) if mine else None  # max keeps the first of equals


def tuned_setting(path: str | Path, paradigm: str, method: str,
                  value_of: Callable[[str], Any] | None = None) -> TunedSetting:
    """The search of `paradigm` and `method` in the tuning file whose other fixed values (`--for` keys beyond those)
    equal the run's (`value_of(key)`), the most specific first, or a ConfigError that says which ones it holds."""
    _, settings = read_tuning(path)
    found = _matching(settings, paradigm, method, value_of)
    if found is not None:
        return found
    held = "; ".join(s.describe() for s in settings) or "none"
    keys = sorted({k for s in settings if (s.paradigm, s.method) == (paradigm, method) for k in s.fixed})
    own = {k: _plain(value_of(k)) for k in keys} if value_of is not None else {}
    tune_for = " --for ".join(f"{k}={v}" for k, v in own.items()) if own else f"paradigm={paradigm}"
    raise ConfigError(f"tuning.file = {str(path)!r} has no tuned values for paradigm = {paradigm!r} with peft.method = "
                      f"{method!r}{''.join(f' and {k} = {v!r}' for k, v in own.items())} (it holds {held}); tune that "
                      f"setting (mfpt tune ... --for {tune_for}) or leave tuning.file empty.")


def apply_tuning(raw: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` (a nested config dict) with the tuning file's chosen values for its paradigm and method.

    `given` are the --set overrides: a key both tuned and given there is refused, since one of the two would be
    silently ignored; the values of the TOML file give way to the tuned ones."""
    tuning = raw.get("tuning", {})
    path = tuning.get("file", "") if isinstance(tuning, Mapping) else ""
    if not path:
        return dict(raw)
    from mfpt.config.schema import ExperimentConfig, set_dotted  # the paradigm and method as the config defaults them

    defaults = ExperimentConfig()
    paradigm = str(raw.get("paradigm", defaults.paradigm.value))
    peft = raw.get("peft", {})
    method = str(peft.get("method", defaults.peft.method.value)) if isinstance(peft, Mapping) else defaults.peft.method.value

    def value_of(key: str) -> Any:  # the run's own value of a dotted key: the raw config's, else the default
        section, _, name = key.rpartition(".")
        given = raw.get(section, {}) if section else raw
        if isinstance(given, Mapping) and name in given:
            return given[name]
        return getattr(getattr(defaults, section) if section else defaults, name, None)

    setting = tuned_setting(path, paradigm, method, value_of)
    values = setting.values()
    clash = sorted(set(values) & set(given))
    if clash:
        raise ConfigError(f"{clash[0]} is set with --set and chosen by tuning.file = {path!r}; drop one of the two.")
    return set_dotted(dict(raw), values)
