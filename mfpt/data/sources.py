"""Data sources: the universal schema every source ends in, the registry of sources, and the local-file sources.

Benchmark sources live in mfpt.data.benchmarks and register here too; mfpt.data imports both, so every source is
registered before one is looked up.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from mfpt.config import DataConfig
from mfpt.core.errors import UserError
from mfpt.core.files import sha256_file
from mfpt.core.languages import UnknownLanguageError, normalize_language
from mfpt.core.registry import Registry

# Universal schema. Every source ends in a DataFrame with these columns, so nothing downstream knows its origin.
# A generation source (data.task = generation) gives `target` instead of `label`.
TEXT, TEXT_PAIR, LABEL, LANG, SPLIT, TARGET = "text", "text_pair", "label", "lang", "split", "target"
SPLITS = ("train", "validation", "test")
# The label column of a generation frame: one value for every row, so the label-stratified splits, caps and shards
# (mfpt.data.clients) are plain seeded random ones there.
NO_LABEL = "-"


def is_generation_frame(frame: pd.DataFrame) -> bool:
    """A generation task's rows: a target, and the label column check_schema filled with NO_LABEL."""
    return TARGET in frame.columns and bool((frame[LABEL] == NO_LABEL).all())

# A source turns the data section of the config into a universal-schema DataFrame (label as str, lang canonical,
# split filled in). Sources may read only the languages asked for; selection, caps and splits happen after.
DataSource = Callable[[DataConfig], pd.DataFrame]
DATA_SOURCES: Registry[DataSource] = Registry("data source")


class DataError(UserError, ValueError):
    """Data that cannot serve the experiment; the message names the file, column or language and the fix."""


# ------------------------------------------------------------------------------------------ universal-schema files

READERS = {
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".json": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".csv": lambda p: pd.read_csv(p, dtype={LABEL: str, LANG: str, SPLIT: str}, keep_default_na=False),
    ".tsv": lambda p: pd.read_csv(p, sep="\t", dtype={LABEL: str, LANG: str, SPLIT: str}, keep_default_na=False),
    ".parquet": pd.read_parquet,
}


# `mfpt prepare` writes this data card next to its language files; a folder holding one is read as the card says.
CARD_NAME = "datacard.json"


def prepared_files(folder: Path) -> list[Path]:
    """The language files a `mfpt prepare` folder's data card lists, each checked against its recorded sha256 (a
    file changed after preparation would silently change the experiment)."""
    card_path = folder / CARD_NAME
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        entries = {lang: (entry["file"], entry["sha256"]) for lang, entry in card["languages"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{str(card_path)!r} is not a data card of `mfpt prepare` ({type(err).__name__}: {err}); run "
                        "`mfpt prepare` again into an empty folder, or remove the card to read the folder's files "
                        "as they are.") from None
    listed = []
    for lang, (name, digest) in entries.items():
        file = folder / name
        if not file.is_file():
            raise DataError(f"{str(file)!r} ({lang}), listed in {CARD_NAME}, is missing; copy the whole prepared "
                            "folder, or run `mfpt prepare` again.")
        if sha256_file(file) != digest:
            raise DataError(f"{str(file)!r} ({lang}) differs from the file `mfpt prepare` wrote (sha256 in "
                            f"{CARD_NAME}); run `mfpt prepare` again, or remove {CARD_NAME} if the change is meant.")
        listed.append(file)
    return sorted(listed)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a JSONL, CSV, TSV or Parquet file, or every such file in a directory, into one DataFrame (a folder of
    `mfpt prepare`: the files its data card lists, checked)."""
    path = Path(path).expanduser()
    if not str(path) or not path.exists():
        raise DataError(
            f"Data file {str(path)!r} does not exist; set data.path to a JSONL, CSV or Parquet file "
            "(or a directory of them) in the universal schema."
        )
    if path.is_dir() and (path / CARD_NAME).is_file():
        files = prepared_files(path)
    else:
        files = sorted(p for p in path.iterdir() if p.suffix in READERS and p.name != CARD_NAME) if path.is_dir() else [path]
    if not files:
        raise DataError(f"Directory {str(path)!r} holds no {', '.join(READERS)} files.")
    frames = []
    for file in files:
        reader = READERS.get(file.suffix.lower())
        if reader is None:
            raise DataError(f"Data file {str(file)!r} has an unknown extension; use one of {', '.join(READERS)}.")
        try:
            frame = reader(file)
        except ValueError as err:
            raise DataError(f"Data file {str(file)!r} could not be parsed as {file.suffix}: {err}") from None
        frames.append(check_schema(frame, str(file)))
    return pd.concat(frames, ignore_index=True)


def check_schema(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Refuse missing columns and empty cells; return text/label/lang as clean strings, languages normalised.

    A frame with `target` and no `label` is a generation frame: its label column is filled with NO_LABEL."""
    generation = TARGET in frame.columns and LABEL not in frame.columns
    missing = [c for c in (TEXT, TARGET if generation else LABEL, LANG) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{origin} lacks column(s) {', '.join(map(repr, missing))}; the universal schema needs text, label, "
            f"lang (optional: text_pair, split), or text, target, lang for data.task = 'generation'. Columns found: "
            f"{', '.join(map(str, frame.columns))}."
        )
    frame = frame.copy()
    columns = (TEXT, TARGET if generation else LABEL, LANG) + ((TEXT_PAIR,) if TEXT_PAIR in frame.columns else ())
    refuse_empty_cells(frame, columns, origin)
    if generation:
        frame[LABEL] = NO_LABEL
    for column in columns:
        frame[column] = frame[column].astype(str) if column != LABEL else frame[column].map(_label_str)
    frame[LANG] = [_normalize(code, origin) for code in frame[LANG]]
    if TARGET in frame.columns:
        frame[TARGET] = frame[TARGET].astype(str)
    if SPLIT in frame.columns:
        frame[SPLIT] = frame[SPLIT].astype(str).str.strip().str.lower().replace({"dev": "validation", "valid": "validation"})
        bad = sorted(set(frame[SPLIT]) - set(SPLITS))
        if bad:
            raise DataError(f"{origin}: column 'split' has value(s) {bad}; allowed: {', '.join(SPLITS)}.")
    return frame


def refuse_empty_cells(frame: pd.DataFrame, columns: Iterable[str], origin: str,
                       error: type[UserError] = DataError) -> None:
    """Raise `error` for the first of `columns` with empty cells (missing or blank): how many, and the first row."""
    for column in columns:
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise error(f"{origin}: column {column!r} is empty in {int(empty.sum())} row(s), first at row {row}; "
                        "fill or drop those rows.")


def _label_str(value: object) -> str:
    # Integer labels (possibly read as floats, e.g. 1.0) become "1", so ints and their strings mean the same label.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _normalize(code: object, origin: str) -> str:
    try:
        return _normalize_cached(str(code))
    except UnknownLanguageError as err:
        raise DataError(f"{origin}: {err}") from None


@functools.lru_cache(maxsize=4096)
def _normalize_cached(code: str) -> str:
    # Datasets repeat a handful of codes thousands of times; normalising each distinct code once is enough.
    return normalize_language(code)


@DATA_SOURCES.register("files")
def load_files(data: DataConfig) -> pd.DataFrame:
    """Local files in the universal schema (data.path)."""
    if not data.path:
        raise DataError("data.source = 'files' needs data.path: a JSONL, CSV or Parquet file in the universal schema.")
    return read_table(data.path)


UDHR_TOPICS_PATH = Path(__file__).resolve().parents[2] / "data" / "udhr-topics" / "udhr-topics.jsonl"


@DATA_SOURCES.register("udhr-topics")
def load_udhr_topics(data: DataConfig) -> pd.DataFrame:
    """The shipped UDHR topic-classification dataset (data/udhr-topics; data.path overrides its location)."""
    path = Path(data.path) if data.path else UDHR_TOPICS_PATH
    if not path.exists():
        raise DataError(
            f"udhr-topics file {str(path)!r} is missing; rebuild it with `python scripts/build_udhr_topics.py`."
        )
    return read_table(path)


@DATA_SOURCES.register("udhr-translation")
def load_udhr_translation(data: DataConfig) -> pd.DataFrame:
    """Translation between English and each language of udhr-topics (data.direction), on its parallel paragraphs.

    A pair is the n-th paragraph of one article in both declarations, for the articles both split into the same
    number of paragraphs (otherwise the paragraphs need not be translations of each other). Each pair keeps its
    article's split, and the held-out articles are the same in every language, so no test paragraph, in any language
    or direction, is trained on."""
    topics = load_udhr_topics(data)
    if "article" not in topics.columns:
        raise DataError("udhr-translation needs udhr-topics with its 'article' column; rebuild it with "
                        "`python scripts/build_udhr_topics.py`.")
    topics = topics.assign(_position=topics.groupby([LANG, "article"]).cumcount(),
                           _paragraphs=topics.groupby([LANG, "article"])[TEXT].transform("size"))
    english = topics[topics[LANG] == "eng"][["article", "_position", "_paragraphs", TEXT]]
    pairs = topics[topics[LANG] != "eng"].merge(english, on=["article", "_position", "_paragraphs"],
                                                 suffixes=("", "_eng"))
    source, target = (TEXT, f"{TEXT}_eng") if data.direction.value == "to-english" else (f"{TEXT}_eng", TEXT)
    return check_schema(pd.DataFrame({TEXT: pairs[source].to_numpy(), TARGET: pairs[target].to_numpy(),
                                      LANG: pairs[LANG].to_numpy(), SPLIT: pairs[SPLIT].to_numpy()}),
                        "udhr-translation")
