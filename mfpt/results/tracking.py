"""Experiment trackers ([tracking]): what the run records goes to TensorBoard and MLflow as well, as it is written.

The run folder stays the record (metrics.jsonl, results.json, report.md); a tracker gets a copy for the tools
researchers already use. Each metrics.jsonl row becomes scalars at step = its round, named
`<split>/<metric>/<language or client>` (test/accuracy/swh, train/loss/hau, privacy/epsilon); each evaluation adds
the means (test/accuracy/mean, test/accuracy/low_resource_mean); each round adds its bytes. The resolved config goes
in as parameters, and report.md and results.json as artefacts when the run ends. Only the server (or the one
process of `mfpt run`) writes to trackers; nothing of a client's beyond its scalar metrics reaches them.

Both use their own libraries' writers (TensorBoard's SummaryWriter, MLflow's client with a sqlite file by default),
so no tracker server is needed. An MLflow run is resumed with its run: its id is kept in tracking.json.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol

from mfpt.config import ExperimentConfig, to_flat
from mfpt.core import files
from mfpt.core.errors import ConfigError

log = logging.getLogger("mfpt")

TRACKING_FILE = "tracking.json"
EVAL_METRICS = ("accuracy", "macro_f1", "chrf", "loss")
# MLflow keeps a parameter's value up to this many characters (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MLFLOW_PARAM_CHARS = 6000
INSTALL_HINT = "install the tracking extra (pip install 'mfpt[tracking]'; `make setup` has it)"


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_scalars(self, step: int, values: Mapping[str, float]) -> None: ...
    def log_files(self, paths: Iterable[Path]) -> None: ...
    def close(self) -> None: ...
    def end(self, status: str) -> None: ...


def require_installed(cfg: ExperimentConfig) -> None:
    """Refuse, in one line, a tracker whose library is not installed (run at start and by `mfpt validate`)."""
    modules = {"tensorboard": ("tensorboard", "TensorBoard"), "mlflow": ("mlflow", "MLflow")}
    for backend in cfg.tracking.backends:
        module, name = modules[backend]
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"tracking.backends names {backend!r}, but {name} is not installed: {INSTALL_HINT}, "
                              f"or remove {backend!r} from tracking.backends.") from None


class TensorBoardTracker:
    """Scalars and text in TensorBoard event files (`tensorboard --logdir <folder>`)."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(folder))

    def log_params(self, params: Mapping[str, Any]) -> None:
        lines = "\n".join(f"{key} = {value!r}" for key, value in sorted(params.items()))
        self.writer.add_text("config", "```\n" + lines + "\n```")

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_files(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.writer.add_text(path.name, "```\n" + path.read_text(encoding="utf-8") + "\n```")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def end(self, status: str) -> None:
        self.writer.close()


def local_artifact_root(uri: str) -> str | None:
    """Beside a local sqlite store, its artefacts (`mlflow-artifacts/` in the database's folder); MLflow would put them
    in ./mlruns of whatever directory the run was started from. None (the server's own choice) for other stores."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix):]).expanduser().resolve().parent / "mlflow-artifacts").as_uri()


class MlflowTracker:
    """One MLflow run per mfpt run, in `uri` (a sqlite file by default); reopened by id when the run resumes."""

    def __init__(self, uri: str, experiment: str, run_name: str, out_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        known = files.read_json(out_dir / TRACKING_FILE) if (out_dir / TRACKING_FILE).is_file() else {}
        self.resumed = known.get("mlflow_uri") == uri and bool(known.get("mlflow_run_id"))
        if self.resumed:
            self.run_id = str(known["mlflow_run_id"])
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(
            experiment, artifact_location=local_artifact_root(uri))
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        files.write_json(out_dir / TRACKING_FILE, {**known, "mlflow_uri": uri, "mlflow_run_id": self.run_id,
                                                   "mlflow_experiment": experiment})

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.resumed:  # MLflow keeps a parameter's first value; the resumed run's config is the same one
            return
        from mlflow.entities import Param

        items = [Param(key, str(value)[:MLFLOW_PARAM_CHARS]) for key, value in sorted(params.items())]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_files(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        """Nothing to release: the run stays open for the artefacts that come after results.json (report.md)."""

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def scalars_of_rows(rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """{round: {name: value}} for metrics.jsonl rows: evaluations per language, train losses per client, epsilon."""
    out: dict[int, dict[str, float]] = {}
    for row in rows:
        split, step = str(row["split"]), int(row["round"])
        values = out.setdefault(step, {})
        if "lang" in row and "accuracy" in row:
            name = f"{split}_selected" if row.get("selected") else split
            for metric in EVAL_METRICS:
                if row.get(metric) is not None:  # a generation's chrf, a classifier's macro_f1
                    values[f"{name}/{metric}/{row['lang']}"] = float(row[metric])
        elif split == "train":
            values[f"train/loss/{row['client']}"] = float(row["loss"])
            values[f"train/steps/{row['client']}"] = float(row["steps"])
        elif split == "privacy" and row.get("epsilon") is not None:
            values["privacy/epsilon"] = float(row["epsilon"])
        elif split in ("refused", "missing"):
            values[f"clients/{split}"] = values.get(f"clients/{split}", 0.0) + 1.0
    return {step: {k: v for k, v in values.items() if math.isfinite(v)} for step, values in out.items() if values}


class Trackers:
    """The run's trackers; every call goes to each of them. Without [tracking] backends it does nothing."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    @classmethod
    def open(cls, cfg: ExperimentConfig, out_dir: Path) -> "Trackers":
        """The trackers cfg.tracking names, opened on out_dir (a resumed run continues its MLflow run)."""
        if not cfg.tracking.backends:
            return cls([])
        require_installed(cfg)
        opened: list[Tracker] = []
        for backend in cfg.tracking.backends:
            if backend == "tensorboard":
                folder = Path(cfg.tracking.tensorboard_dir).expanduser() if cfg.tracking.tensorboard_dir else out_dir / "tensorboard"
                opened.append(TensorBoardTracker(folder))
            else:
                uri = cfg.tracking.mlflow_uri or f"sqlite:///{out_dir / 'mlflow.db'}"
                opened.append(MlflowTracker(uri, cfg.tracking.mlflow_experiment or cfg.name, out_dir.name, out_dir))
        return cls(opened)

    def start(self, cfg: ExperimentConfig) -> None:
        params = to_flat(cfg)
        for tracker in self.trackers:
            tracker.log_params(params)

    def rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """metrics.jsonl rows, as they are appended."""
        if not self.trackers:
            return
        for step, values in sorted(scalars_of_rows(rows).items()):
            self.scalars(step, values)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for tracker in self.trackers:
            try:
                tracker.log_scalars(step, values)
            except Exception as err:  # a tracker's failure must not end a federation that runs for days
                log.warning("tracker %s failed to log round %d (%s: %s); the run folder keeps everything",
                            type(tracker).__name__, step, type(err).__name__, err)

    def close(self) -> None:
        """Release the writers; the runs stay open for publish_run (after report.md is written)."""
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def finish(self, out_dir: Path, status: str = "FINISHED") -> None:
        """Attach report.md and results.json (those that exist) and end every tracker's run with `status`."""
        artefacts = [p for p in (out_dir / "report.md", out_dir / "results.json") if p.is_file()]
        for tracker in self.trackers:
            try:
                tracker.log_files(artefacts)
                tracker.end(status)
            except Exception as err:
                log.warning("tracker %s failed to end its run (%s: %s)", type(tracker).__name__, type(err).__name__, err)
        self.trackers = []


def publish_run(cfg: ExperimentConfig, out_dir: str | Path, status: str = "FINISHED") -> None:
    """After report.md is written (or the run failed): attach report.md and results.json to the run's trackers and
    end their runs with `status`."""
    if cfg.tracking.backends:
        folder = Path(out_dir).expanduser().resolve()
        Trackers.open(cfg, folder).finish(folder, status)
