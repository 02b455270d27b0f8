"""`RunResult`: the typed, versioned content of a run's results.json, written by the recorder and read by every report.

Every paradigm writes the same schema. `to_json` gives the JSON object (key order kept for people reading the
file); `from_json` reads one back, including the files written before the schema had a version (version 0: same
keys, no `schema_version`), and refuses a newer or damaged file with a message that names the problem.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mfpt.core import files
from mfpt.core.errors import UserError

# 2: adds `personalization` (absent = None in older files, which read unchanged).
# 3: adds `hyperparameters` and `epochs` (absent = {} in older files).
SCHEMA_VERSION = 3
# A run folder (output_dir): what each file is, in one place for everything that writes or reads one.
RESULTS_FILE = "results.json"  # this RunResult
METRICS_FILE = "metrics.jsonl"  # one line per round x language x split, plus train, refused, missing, privacy lines
CONFIG_FILE = "config.toml"  # the resolved config the run was started with (resume refuses another one)
FAILURE_FILE = "failure.json"  # written instead of results.json by a run that scored no language: its error
PROGRESS_FILE = "progress.json"  # the last completed round, bytes so far, local steps: what resume starts from
# What the run is doing now (the round and stage in progress, the clients sampled for it), for `mfpt watch`.
LIVE_FILE = "live.json"
CHECKPOINTS_DIR = "checkpoints"  # round-NNNN.safetensors (mfpt.results.checkpoints)
ADAPTER_DIR = "adapter"  # the final shared model in peft's format (`mfpt predict` loads it)
REPORT_FILE = "report.md"  # mfpt.analysis.report's view of the above
PERSONAL_SPLIT = "personalized"  # metrics.jsonl rows of the per-language (personalised) states
BACKDOOR_SPLIT = "backdoor"  # metrics.jsonl rows of [attack] backdoor: triggered texts, accuracy = success rate


class ResultsError(UserError, ValueError):
    """A results.json that cannot be read as a RunResult; the message names the file and the problem."""


class Headline:
    """What a score is judged by: chrF++ for a generation task, accuracy otherwise."""

    accuracy: float
    chrf: float | None

    @property
    def headline(self) -> float:
        return self.accuracy if self.chrf is None else self.chrf


def value(score: Headline, metric: str | None = None) -> float:
    """`metric` of a score (a field name), or its headline when None."""
    return score.headline if metric is None else getattr(score, metric)


@dataclass(frozen=True)
class LanguageScore(Headline):
    """One language's final evaluation."""

    accuracy: float
    macro_f1: float | None
    loss: float
    n_test: int
    # Accuracy of always answering the evaluation set's most frequent label (None in results of older mfpt).
    majority: float | None = None
    # Generation (data.task = generation): chrF++ in [0, 1]; accuracy is then the exact-match rate, macro_f1 None.
    chrf: float | None = None


@dataclass(frozen=True)
class MeanScore(Headline):
    """An unweighted mean over languages (the XTREME convention)."""

    accuracy: float
    macro_f1: float | None
    chrf: float | None = None  # generation only


@dataclass(frozen=True)
class Communication:
    """Bytes of trainable tensors sent, per round and in all (0 for paradigms that send nothing).

    Every array counts, both ways: refused uploads too, and `after_rounds_bytes`, what was sent after the last round
    (the test scoring of the round best-validation chose, a personalisation's fine-tuning phase), which total_bytes
    includes. full_model_bytes is one copy of the whole model in fp32: what federated full fine-tuning would send
    per client and direction."""

    bytes_up_per_round: int = 0
    bytes_down_per_round: int = 0
    total_bytes: int = 0
    full_model_bytes: int = 0
    clients_per_round: float = 0
    rounds_recorded: int = 0
    after_rounds_bytes: int = 0


@dataclass(frozen=True)
class Personalization:
    """Each language's personalised state's final evaluation (personalization.method != none), beside the global
    state's in RunResult.per_language / heldout; held-out languages got the URIEL-weighted combination."""

    method: str
    per_language: dict[str, LanguageScore]
    heldout: dict[str, LanguageScore]
    average: MeanScore | None
    low_resource_average: MeanScore | None
    heldout_average: MeanScore | None
    extra_bytes: int = 0  # bytes of the finetune phase after the last round (not in `communication`)

    def gain(self, global_scores: Mapping[str, LanguageScore], metric: str | None = None) -> dict[str, float]:
        """Personalised minus global `metric` (default: the headline) per language present in both (trained and
        held-out)."""
        mine = {**self.per_language, **self.heldout}
        return {lang: value(mine[lang], metric) - value(score, metric)
                for lang, score in global_scores.items() if lang in mine}


@dataclass(frozen=True)
class RunResult:
    """What one run produced, and everything needed to say how (config, versions, protocol)."""

    name: str
    paradigm: str
    method: str
    model: str
    seed: int
    trainable_params: int
    total_params: int
    rounds: int
    languages: list[str]
    heldout_languages: list[str]
    low_resource: list[str]
    labels: list[str]
    per_language: dict[str, LanguageScore]
    heldout: dict[str, LanguageScore]
    average: MeanScore | None
    low_resource_average: MeanScore | None
    heldout_average: MeanScore | None
    communication: Communication
    local_steps: dict[str, int]
    protocol: str
    refused_updates: int
    wall_seconds: float
    config: dict[str, Any]
    # Which round's model the scores are from and why (data.selection): {"rule", "round", "reason"}.
    selection: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    # Private runs: {dp, epsilon (None = infinite), delta, noise_multiplier, clip_norm, secure_aggregation,
    # accountant, ...} (mfpt.privacy.accounting.PrivacyPlan.summary); None for runs without [privacy].
    privacy: dict[str, Any] | None = None
    personalization: Personalization | None = None
    # Attack experiments ([attack]): {kind, languages, from_round, factor} (mfpt.config.specs.attack_summary); None
    # for a clean run.
    attack: dict[str, Any] | None = None
    # Trained or held-out languages with no score in the reported round (their evaluation was missing or refused):
    # the means above leave them out, so a mean over fewer languages is never mistaken for the full one.
    unscored: list[str] = field(default_factory=list)
    # The learning rates and stage budgets with where each came from: {key: {"value", "source"}}, the source being
    # "tuned on validation (...)", "default (...)" or "set in the config" (mfpt.config.specs.hyperparameters).
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Passes over its own training data each learner made in the whole run (steps / batches per epoch, by round).
    epochs: dict[str, float] = field(default_factory=dict)
    # The base model as resolved when the run started: the absolute folder when model.name was a local folder (so
    # that predict and resume find it from any working directory), else model.name itself (a hub id).
    model_path: str = ""
    schema_version: int = SCHEMA_VERSION

    # ---------------------------------------------------------------------------------------- reading
    def score(self, lang: str, metric: str | None = None) -> float | None:
        """A language's final `metric` (default: the headline, accuracy or chrF++), trained or held out (None when it
        was not evaluated)."""
        found = self.per_language.get(lang) or self.heldout.get(lang)
        return None if found is None else value(found, metric)

    def unscored_training_languages(self) -> list[str]:
        """The training languages without a score in the reported round (their evaluation failed or was refused)."""
        return [lang for lang in self.unscored if lang in self.languages]

    def lost_clients(self) -> bool:
        """Whether a client's reply was refused or failed, or a training language went unscored: its means are then
        over fewer languages, or of a model fewer clients trained."""
        return bool(self.refused_updates or self.unscored_training_languages())

    def mean(self, block: str, metric: str | None = None) -> float | None:
        """`metric` (default: the headline) of a mean block: 'average', 'low_resource_average' or 'heldout_average'
        (None when absent)."""
        found = getattr(self, block)
        return None if found is None else value(found, metric)

    @property
    def generation(self) -> bool:
        """A generation task's results (chrF++ is the headline, accuracy the exact-match rate)."""
        return any(s.chrf is not None for s in (*self.per_language.values(), *self.heldout.values()))

    # ---------------------------------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """The JSON object of results.json (`schema_version` first)."""
        data = dataclasses.asdict(self)
        data.pop("schema_version")
        return {"schema_version": self.schema_version, **data}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "results.json") -> "RunResult":
        """Read a results.json object; version 0 (no `schema_version`) is read as version 1, newer ones are refused."""
        if not isinstance(data, Mapping):
            raise ResultsError(f"{source}: expected a JSON object, found {type(data).__name__}.")
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ResultsError(f"{source}: schema_version {version!r} is newer than this mfpt reads ({SCHEMA_VERSION}); "
                               "upgrade mfpt to read it.")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ResultsError(f"{source}: missing key(s) {', '.join(missing)}; it was not written by mfpt's recorder "
                               "(or is truncated): re-run or resume that run.")
        values = {k: v for k, v in data.items() if k in names}
        try:
            values["per_language"] = _scores(values["per_language"])
            values["heldout"] = _scores(values["heldout"])
            for block in ("average", "low_resource_average", "heldout_average"):
                values[block] = MeanScore(**values[block]) if values[block] is not None else None
            values["communication"] = Communication(**values["communication"])
            if values.get("personalization") is not None:
                values["personalization"] = _personalization(values["personalization"])
        except (TypeError, AttributeError) as err:
            raise ResultsError(f"{source}: a score or communication block is malformed ({err}).") from None
        values["schema_version"] = SCHEMA_VERSION
        return cls(**values)


def _personalization(block: Mapping[str, Any]) -> Personalization:
    values = dict(block)
    values["per_language"], values["heldout"] = _scores(values["per_language"]), _scores(values["heldout"])
    for key in ("average", "low_resource_average", "heldout_average"):
        values[key] = MeanScore(**values[key]) if values.get(key) is not None else None
    return Personalization(**values)


def _scores(block: Mapping[str, Mapping[str, Any]]) -> dict[str, LanguageScore]:
    return {lang: LanguageScore(**score) for lang, score in block.items()}


def write_result(out_dir: Path, result: RunResult) -> Path:
    """Write `out_dir/results.json` atomically."""
    return files.write_json(out_dir / RESULTS_FILE, result.to_json())


def read_result(path: str | Path) -> RunResult:
    """Read a results.json file (or the one in a run folder) as a RunResult."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(f"{str(path)!r} does not exist: the run has not finished (resume it with --resume).")
    try:
        data = files.read_json(path)
    except ValueError as err:
        raise ResultsError(f"{str(path)!r} is not valid JSON ({err}); the run did not finish writing it.") from None
    return RunResult.from_json(data, source=str(path))
