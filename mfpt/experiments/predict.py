"""`mfpt predict`: classify new texts with a finished run's exported model, tokenised exactly as training did.

From Python:

    from mfpt.experiments.predict import Predictor, predict_file
    predict_file("runs/fed", "articles.jsonl", "predictions.jsonl")       # a file in, a JSONL file out
    rows = Predictor.from_run("runs/fed").predict([{"text": "...", "lang": "sw"}])   # rows in, dicts out
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import pandas as pd

from mfpt.config import ConfigError, ExperimentConfig, Task, from_dict
from mfpt.core import files
from mfpt.core.errors import UserError
from mfpt.core.languages import UnknownLanguageError, normalize_language
from mfpt.data.sources import LABEL, LANG, READERS, TARGET, TEXT, TEXT_PAIR, refuse_empty_cells
from mfpt.results.schema import RunResult, read_result

if TYPE_CHECKING:  # torch, transformers and peft load only when a model does, not with the mfpt command
    from mfpt.model.factory import ClassifierModel

log = logging.getLogger("mfpt")

ID = "id"  # optional input column carried through to the predictions
Progress = Callable[[int, int], None]  # (rows done, rows in all)


class PredictError(UserError, ValueError):
    """A run folder, input file or output path `mfpt predict` cannot use; the message names it and the fix."""


@dataclass
class Predictor:
    """A finished run's shared model, ready to label universal-schema rows."""

    run_dir: Path
    result: RunResult
    cfg: ExperimentConfig
    classifier: "ClassifierModel"

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str = "auto", model: str | None = None) -> "Predictor":
        """Load RUN_DIR's exported adapter onto its base model (`model` if given, else the one the run recorded),
        with the run's labels, max length and text prefix."""
        from mfpt.model.factory import pick_device
        from mfpt.results.schema import ADAPTER_DIR

        run_dir = Path(run_dir).expanduser()
        result = read_result(finished_run(run_dir))
        adapter = run_dir / ADAPTER_DIR
        if not any((adapter / name).is_file() for name in ("adapter_config.json", "config.json")):
            raise PredictError(
                f"{str(run_dir)!r} has no exported model in {ADAPTER_DIR}/: a '{result.paradigm}' run "
                + ("keeps one model per language and exports none; " if result.paradigm in ("local", "transfer") else
                   "exports it when it finishes; ")
                + "predict needs a finished federated, centralized or zeroshot run."
            )
        try:
            cfg = from_dict(result.config)
        except ConfigError as err:
            raise PredictError(f"{str(run_dir / 'results.json')!r} holds a config this mfpt cannot read: {err}") from None
        if cfg.peft.method.value != "full":  # full fine-tuning exported the whole model: no base model needed
            cfg = cfg.replace(**{"model.name": base_model(result, model)})
        try:
            torch_device = pick_device(device)
        except (ConfigError, RuntimeError):
            raise PredictError(f"--device {device!r} is not available here; use auto, cpu, cuda, cuda:N or mps.") from None
        return cls(run_dir, result, cfg, _load(cfg, result, adapter, torch_device))

    @property
    def labels(self) -> list[str]:
        """The run's labels in id order."""
        return list(self.result.labels)

    def predict(self, rows: pd.DataFrame | Iterable[Mapping[str, Any]], origin: str = "input rows",
                progress: Progress | None = None) -> list[dict[str, Any]]:
        """One prediction per row: index (and id), lang, label, its probability, and every label's probability."""
        import torch

        frame = check_rows(rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows)), origin)
        self._warn_unseen(frame)
        from mfpt.model.precision import autocast_dtype, forward_context
        from mfpt.train.encoding import batches, encode_for

        model = self.classifier
        if self.cfg.data.task == Task.GENERATION:
            return self._generate(frame, progress)
        # encode() maps a gold label per row to its id; predictions have none, so every row gets the first label.
        encoded = encode_for(self.cfg, frame.assign(**{LABEL: self.labels[0]}), model.tokenizer, self.labels,
                             model.max_length)
        probabilities: list[list[float]] = []
        model.model.eval()
        # The evaluation's precision: a bf16 base (model.dtype) runs under the bf16 autocast it was evaluated with.
        autocast = forward_context(autocast_dtype(self.cfg.train.precision.value, model.device), model.device)
        with torch.inference_mode(), autocast:
            for inputs, _ in batches(encoded, self.cfg.train.eval_batch_size, model.tokenizer):
                logits = model.model(**{k: v.to(model.device) for k, v in inputs.items()}).logits.float()
                probabilities += torch.softmax(logits, dim=-1).cpu().tolist()
                if progress is not None:
                    progress(len(probabilities), len(frame))
        return [_prediction(i, frame, p, self.labels) for i, p in enumerate(probabilities)]

    def _generate(self, frame: pd.DataFrame, progress: Progress | None) -> list[dict[str, Any]]:
        """A generation run: each row's greedy generation, as evaluation made them (model.max_new_tokens tokens)."""
        import torch

        from mfpt.model.precision import autocast_dtype
        from mfpt.train.encoding import encode_for
        from mfpt.train.evaluation import generate

        model = self.classifier
        # encode_for wants a target per row: an empty one, which generation leaves off (only the prompt is fed).
        encoded = encode_for(self.cfg, frame.assign(**{TARGET: ""}), model.tokenizer, [], model.max_length)
        with torch.inference_mode():
            texts = generate(model.model.eval(), encoded, model.tokenizer, self.cfg.train.eval_batch_size,
                             model.device, autocast_dtype(self.cfg.train.precision.value, model.device),
                             self.cfg.model.max_new_tokens, progress)
        return [{**_row_identity(i, frame), "generation": text} for i, text in enumerate(texts)]

    def _warn_unseen(self, frame: pd.DataFrame) -> None:
        trained = set(self.result.languages)
        counts = frame[LANG].value_counts()
        unseen = [lang for lang in counts.index if lang not in trained]
        if not unseen:
            return
        described = ", ".join(f"{lang!r} ({counts[lang]} row(s)"
                              + (", held out: evaluated, never trained)" if lang in self.result.heldout_languages else ")")
                              for lang in sorted(unseen))
        log.warning("language(s) %s took no part in training this run (trained on %s); their predictions are "
                    "cross-lingual transfer, check them before trusting them", described, ", ".join(self.result.languages))


def finished_run(folder: Path) -> Path:
    """`folder` when it holds a finished run; otherwise a PredictError that says what it holds and what to pass
    instead (the runs of a sweep folder, `--resume` for an unfinished run, the error of a failed one)."""
    from mfpt.results.schema import FAILURE_FILE, PROGRESS_FILE, RESULTS_FILE

    if not folder.is_dir():
        raise PredictError(f"Run folder {str(folder)!r} does not exist; pass the output_dir of a finished run.")
    if (folder / RESULTS_FILE).is_file():
        return folder
    if (folder / FAILURE_FILE).is_file():
        raise PredictError(f"{str(folder)!r} holds a run that failed ({files.read_json(folder / FAILURE_FILE)['error']}); "
                           "it exported no model.")
    if (folder / PROGRESS_FILE).is_file():
        raise PredictError(f"{str(folder)!r} holds a run that has not finished; finish it with "
                           f"`mfpt run --resume {folder}`, then predict.")
    runs = sorted(p.parent for p in folder.glob(f"*/{RESULTS_FILE}"))
    if runs:
        listed = "; ".join(f"{run} ({files.read_json(run / RESULTS_FILE).get('paradigm', '?')})" for run in runs)
        raise PredictError(f"{str(folder)!r} is a folder of {len(runs)} finished run(s), not one run; pass one of: "
                           f"{listed}.")
    raise PredictError(f"{str(folder)!r} holds no run (no results.json); pass the output_dir of a finished run.")


def base_model(result: RunResult, override: str | None = None) -> str:
    """The base model to load the adapter onto: `override` (--model), else model.name when it is found from here,
    else the folder the run resolved it to, else model.name as a hub id; a local folder found nowhere is refused."""
    if override:
        path = Path(override).expanduser()
        if override.startswith((".", "/", "~")) and not path.is_dir():
            raise PredictError(f"--model {override!r} is not a folder; pass the base model's checkpoint folder or hub id.")
        return str(path.resolve()) if path.is_dir() else override
    name = str(result.config.get("model", {}).get("name", result.model))
    if Path(name).expanduser().is_dir():
        return name
    recorded = result.model_path
    if recorded and Path(recorded).is_dir():
        return recorded
    if recorded and Path(recorded).is_absolute():
        raise PredictError(f"The run's base model {name!r} (the folder {recorded!r} when it ran) is not found from "
                           f"{os.getcwd()!r}; pass --model PATH_OR_HUB_ID (the same checkpoint), or run from the "
                           "folder the run was started in.")
    return name


def _load(cfg: ExperimentConfig, result: RunResult, adapter: Path, device: Any) -> "ClassifierModel":
    """load_exported, with a damaged adapter folder refused in one line naming it."""
    from safetensors import SafetensorError

    from mfpt.model.export import load_exported

    try:
        return load_exported(cfg, len(result.labels), adapter, device)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        if isinstance(err, UserError):
            raise
        raise PredictError(f"The exported model in {str(adapter)!r} could not be loaded ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); it is damaged or was written by "
                           "another model: export it again by resuming the run.") from None


def _prediction(index: int, frame: pd.DataFrame, probabilities: list[float], labels: list[str]) -> dict[str, Any]:
    best = max(range(len(labels)), key=probabilities.__getitem__)
    return {**_row_identity(index, frame), "label": labels[best], "probability": probabilities[best],
            "probabilities": dict(zip(labels, probabilities))}


def _row_identity(index: int, frame: pd.DataFrame) -> dict[str, Any]:
    """What names a prediction's input row: its index, its id when the input has one, its language."""
    row: dict[str, Any] = {"index": index}
    if ID in frame.columns:
        value = frame[ID].iloc[index]
        row[ID] = value.item() if hasattr(value, "item") else value  # numpy scalars are not JSON
    row["lang"] = frame[LANG].iloc[index]
    return row


def check_rows(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Refuse rows without text or lang, or with empty cells; return them with text as str and lang canonical."""
    if frame.empty:
        raise PredictError(f"{origin} holds no rows; give a JSONL, CSV or Parquet file with columns text and lang "
                           "(optional: text_pair, id).")
    missing = [c for c in (TEXT, LANG) if c not in frame.columns]
    if missing:
        raise PredictError(f"{origin} lacks column(s) {', '.join(map(repr, missing))}; predict needs text and lang "
                           f"(optional: text_pair, id). Columns found: {', '.join(map(str, frame.columns))}.")
    frame = frame.reset_index(drop=True)
    refuse_empty_cells(frame, (TEXT, LANG) + ((TEXT_PAIR,) if TEXT_PAIR in frame.columns else ()), origin,
                       PredictError)
    codes = {}
    for code in frame[LANG].astype(str).unique():
        try:
            codes[code] = normalize_language(code)
        except UnknownLanguageError as err:
            raise PredictError(f"{origin}: {err}") from None
    return frame.assign(**{TEXT: frame[TEXT].astype(str), LANG: frame[LANG].astype(str).map(codes)})


def read_rows(path: str | os.PathLike) -> pd.DataFrame:
    """One JSONL, CSV, TSV or Parquet file of rows to label."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PredictError(f"Input file {str(path)!r} does not exist; pass a JSONL, CSV or Parquet file.")
    if path.is_dir():
        raise PredictError(f"Input {str(path)!r} is a directory; pass one JSONL, CSV or Parquet file.")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise PredictError(f"Input file {str(path)!r} has an unknown extension; use one of {', '.join(READERS)}.")
    if path.stat().st_size == 0:
        raise PredictError(f"Input file {str(path)!r} is empty; it needs rows with columns text and lang.")
    try:
        return reader(path)
    except (ValueError, OSError, ImportError) as err:  # pandas' parse errors are ValueErrors
        raise PredictError(f"Input file {str(path)!r} could not be read as {path.suffix}: "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def check_output(out: str | os.PathLike, input_path: str | os.PathLike | None = None) -> Path:
    """The output path, refused before any work when it is a folder, the input itself, or cannot be written."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise PredictError(f"--out {str(out)!r} is a directory; pass a file name such as predictions.jsonl.")
    if input_path is not None and out.exists() and out.resolve() == Path(input_path).expanduser().resolve():
        raise PredictError(f"--out {str(out)!r} is the input file; predictions never overwrite their input.")
    try:
        files.write_text(out.parent / f".{out.name}.write-test", "ok").unlink()
    except OSError as err:
        raise PredictError(f"--out {str(out)!r} cannot be written ({err.strerror or err}); pick a writable folder.") from None
    return out


def predict_file(run_dir: str | os.PathLike, input_path: str | os.PathLike, out: str | os.PathLike,
                 device: str = "auto", progress: Progress | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """Label every row of `input_path` with RUN_DIR's model and write the predictions to `out` as JSONL, atomically."""
    out = check_output(out, input_path)
    origin = f"Input file {str(input_path)!r}"
    rows = check_rows(read_rows(input_path), origin)  # refused before the model loads, not after
    predictions = Predictor.from_run(run_dir, device, model).predict(rows, origin=origin, progress=progress)
    files.write_text(out, "".join(files.json_line(p) for p in predictions))
    return predictions
