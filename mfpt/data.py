"""Client data: load a language-tagged dataset in the universal schema, split it, cap it, and cut it into clients."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mfpt.errors import UserError
from mfpt.config import DataConfig, ExperimentConfig, Partition
from mfpt.registry import Registry

# Universal schema. Every source ends in a DataFrame with these columns, so nothing downstream knows its origin.
TEXT, TEXT_PAIR, LABEL, LANG, SPLIT = "text", "text_pair", "label", "lang", "split"
SPLITS = ("train", "validation", "test")

# A source turns the data section of the config into a universal-schema DataFrame (label as str, lang canonical,
# split filled in). Sources may read only the languages asked for; selection, caps and splits happen here after.
DataSource = Callable[[DataConfig], pd.DataFrame]
DATA_SOURCES: Registry[DataSource] = Registry("data source")


class DataError(UserError, ValueError):
    """Data that cannot serve the experiment; the message names the file, column or language and the fix."""


@dataclass(frozen=True)
class ClientSpec:
    """One federated client: a language, or shard `shard` of it when a language is split among several clients."""

    lang: str
    shard: int = 0
    heldout: bool = False  # evaluation-only: a held-out language never trains, it only tests the global model

    def name(self, shards: int) -> str:
        return self.lang if shards == 1 or self.heldout else f"{self.lang}#{self.shard}"


@dataclass
class PreparedData:
    """The experiment's data after selection, splitting and caps; each client takes its own rows from it."""

    frame: pd.DataFrame
    languages: tuple[str, ...]
    heldout: tuple[str, ...]
    labels: tuple[str, ...]
    clients: tuple[ClientSpec, ...]
    shards: int
    seed: int
    partition: Partition
    alpha: float

    def training_clients(self) -> tuple[ClientSpec, ...]:
        """The clients that train (held-out languages only evaluate)."""
        return tuple(c for c in self.clients if not c.heldout)

    def language_rows(self, lang: str, split: str) -> pd.DataFrame:
        """Every row of one language and split."""
        rows = self.frame[(self.frame[LANG] == lang) & (self.frame[SPLIT] == split)]
        return rows.reset_index(drop=True)

    def client_rows(self, client: ClientSpec, split: str) -> pd.DataFrame:
        """The rows client `client` holds for `split` (its shard of its language)."""
        rows = self.language_rows(client.lang, split)
        if self.shards == 1 or client.heldout:
            return rows
        # Training data follows the configured partition; evaluation data is split IID so that the language's
        # clients together hold exactly its evaluation set.
        scheme = self.partition if split == "train" else Partition.IID
        parts = shard_indices(rows[LABEL].to_numpy(), self.shards, scheme, self.alpha, (self.seed, client.lang, split))
        return rows.iloc[parts[client.shard]].reset_index(drop=True)


# ------------------------------------------------------------------------------------------ reading

_READERS = {
    ".jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".json": lambda p: pd.read_json(p, lines=True, dtype=False),
    ".csv": lambda p: pd.read_csv(p, dtype={LABEL: str, LANG: str, SPLIT: str}, keep_default_na=False),
    ".tsv": lambda p: pd.read_csv(p, sep="\t", dtype={LABEL: str, LANG: str, SPLIT: str}, keep_default_na=False),
    ".parquet": pd.read_parquet,
}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a JSONL, CSV, TSV or Parquet file, or every such file in a directory, into one DataFrame."""
    path = Path(path).expanduser()
    if not str(path) or not path.exists():
        raise DataError(
            f"Data file {str(path)!r} does not exist; set data.path to a JSONL, CSV or Parquet file "
            "(or a directory of them) in the universal schema."
        )
    files = sorted(p for p in path.iterdir() if p.suffix in _READERS) if path.is_dir() else [path]
    if not files:
        raise DataError(f"Directory {str(path)!r} holds no {', '.join(_READERS)} files.")
    frames = []
    for file in files:
        reader = _READERS.get(file.suffix.lower())
        if reader is None:
            raise DataError(f"Data file {str(file)!r} has an unknown extension; use one of {', '.join(_READERS)}.")
        try:
            frame = reader(file)
        except ValueError as err:
            raise DataError(f"Data file {str(file)!r} could not be parsed as {file.suffix}: {err}") from None
        frames.append(check_schema(frame, str(file)))
    return pd.concat(frames, ignore_index=True)


def check_schema(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Refuse missing columns and empty cells; return text/label/lang as clean strings, languages normalised."""
    missing = [c for c in (TEXT, LABEL, LANG) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{origin} lacks column(s) {', '.join(map(repr, missing))}; the universal schema needs text, label, "
            f"lang (optional: text_pair, split). Columns found: {', '.join(map(str, frame.columns))}."
        )
    frame = frame.copy()
    for column in (TEXT, LABEL, LANG) + ((TEXT_PAIR,) if TEXT_PAIR in frame.columns else ()):
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise DataError(f"{origin}: column {column!r} is empty in {int(empty.sum())} row(s), first at row {row}.")
        frame[column] = frame[column].astype(str) if column != LABEL else frame[column].map(_label_str)
    frame[LANG] = [_normalize(code, origin) for code in frame[LANG]]
    if SPLIT in frame.columns:
        frame[SPLIT] = frame[SPLIT].astype(str).str.strip().str.lower().replace({"dev": "validation", "valid": "validation"})
        bad = sorted(set(frame[SPLIT]) - set(SPLITS))
        if bad:
            raise DataError(f"{origin}: column 'split' has value(s) {bad}; allowed: {', '.join(SPLITS)}.")
    return frame


def _label_str(value: object) -> str:
    # Integer labels (possibly read as floats, e.g. 1.0) become "1", so ints and their strings mean the same label.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _normalize(code: object, origin: str) -> str:
    from mfpt.languages import UnknownLanguageError

    try:
        return _normalize_cached(str(code))
    except UnknownLanguageError as err:
        raise DataError(f"{origin}: {err}") from None


@functools.lru_cache(maxsize=4096)
def _normalize_cached(code: str) -> str:
    # Datasets repeat a handful of codes thousands of times; normalising each distinct code once is enough.
    from mfpt.languages import normalize_language

    return normalize_language(code)


@DATA_SOURCES.register("files")
def load_files(data: DataConfig) -> pd.DataFrame:
    """Local files in the universal schema (data.path)."""
    if not data.path:
        raise DataError("data.source = 'files' needs data.path: a JSONL, CSV or Parquet file in the universal schema.")
    return read_table(data.path)


UDHR_TOPICS_PATH = Path(__file__).resolve().parent.parent / "data" / "udhr-topics" / "udhr-topics.jsonl"


@DATA_SOURCES.register("udhr-topics")
def load_udhr_topics(data: DataConfig) -> pd.DataFrame:
    """The shipped UDHR topic-classification dataset (data/udhr-topics; data.path overrides its location)."""
    path = Path(data.path) if data.path else UDHR_TOPICS_PATH
    if not path.exists():
        raise DataError(
            f"udhr-topics file {str(path)!r} is missing; rebuild it with `python scripts/build_udhr_topics.py`."
        )
    return read_table(path)


# ------------------------------------------------------------------------------------------ preparing


def load_source(data: DataConfig) -> pd.DataFrame:
    """The configured source's rows, in the universal schema."""
    if data.source not in DATA_SOURCES:
        import mfpt.benchmarks  # noqa: F401  (registers the benchmark loaders on first use)
    return DATA_SOURCES.get(data.source)(data)


def source_labels(data: DataConfig) -> tuple[str, ...]:
    """The label order a benchmark declares, if the source is one (else empty)."""
    try:
        from mfpt.benchmarks import BENCHMARKS
    except ImportError:
        return ()
    info = BENCHMARKS.get(data.source)
    return tuple(info.labels) if info is not None else ()


def resolve_labels(frame: pd.DataFrame, data: DataConfig) -> tuple[str, ...]:
    """The global label order: data.labels, else the benchmark's, else sorted (numerically when all integers)."""
    present = set(frame[LABEL])
    declared = tuple(data.labels) or source_labels(data)
    if declared:
        unknown = sorted(present - set(declared))
        if unknown:
            raise DataError(f"Label(s) {unknown} occur in the data but not in data.labels {list(declared)}; add them.")
        return declared
    if all(v.lstrip("-").isdigit() for v in present):
        return tuple(sorted(present, key=int))
    return tuple(sorted(present))


def split_missing(frame: pd.DataFrame, test_fraction: float, seed: int) -> pd.DataFrame:
    """Give rows without a split a seeded, stratified (language x label) train/test assignment."""
    if SPLIT in frame.columns:
        return frame
    frame = frame.copy()
    frame[SPLIT] = "train"
    rng = np.random.default_rng(seed)
    for _, index in frame.groupby([LANG, LABEL], sort=True).groups.items():
        index = np.array(sorted(index))
        n_test = int(round(len(index) * test_fraction))
        if len(index) >= 2:
            n_test = min(max(n_test, 1), len(index) - 1)
        frame.loc[rng.permutation(index)[:n_test], SPLIT] = "test"
    return frame


def stratified_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` rows in label proportion (deterministic for a seed); all rows if n is 0 or exceeds the frame."""
    if n == 0 or n >= len(frame):
        return frame
    rng = np.random.default_rng(seed)
    shuffled = frame.iloc[rng.permutation(len(frame))]
    # Ranking each row within its label, scaled by the label's size, interleaves labels proportionally.
    rank = shuffled.groupby(LABEL, sort=False).cumcount() / shuffled.groupby(LABEL, sort=False)[LABEL].transform("size")
    return shuffled.assign(_rank=rank.to_numpy()).sort_values("_rank", kind="stable").head(n).drop(columns="_rank")


def shard_indices(labels: np.ndarray, shards: int, scheme: Partition, alpha: float, key: tuple) -> list[np.ndarray]:
    """Row indices of each shard: IID (even random split) or label-wise Dirichlet(alpha) (Hsu et al., 2019)."""
    rng = np.random.default_rng(derive_data_seed(*key))
    if scheme == Partition.IID:
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), shards)]
    parts: list[list[int]] = [[] for _ in range(shards)]
    for label in sorted(set(labels.tolist())):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * shards)) * len(rows)).astype(int)[:-1]
        for shard, chunk in enumerate(np.split(rows, cuts)):
            parts[shard].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=int)) for p in parts]


def prepare(cfg: ExperimentConfig) -> PreparedData:
    """Load the source, pick languages, assign splits, cap per language, and lay out the clients."""
    data = cfg.data
    frame = split_missing(load_source(data), data.test_fraction, cfg.seed)
    available = sorted(set(frame[LANG]))
    languages = normalize_all(data.languages) or tuple(available)
    heldout = normalize_all(data.heldout_languages)
    overlap = sorted(set(languages) & set(heldout))
    if overlap:
        raise DataError(f"Language(s) {overlap} are both in data.languages and data.heldout_languages; pick one.")
    absent = [lang for lang in languages + heldout if lang not in available]
    if absent:
        raise DataError(
            f"Language(s) {absent} are not in the data (source {data.source!r}). Available: {', '.join(available)}."
        )
    labels = resolve_labels(frame, data)
    frame = frame[frame[LANG].isin(languages + heldout)]
    pieces = []
    for lang in languages + heldout:
        for split in SPLITS:
            rows = frame[(frame[LANG] == lang) & (frame[SPLIT] == split)]
            cap = data.train_per_language if split == "train" else data.test_per_language if split == data.eval_split else 0
            pieces.append(stratified_sample(rows, cap, derive_data_seed(cfg.seed, lang, split)))
    frame = pd.concat(pieces, ignore_index=True)
    shards = cfg.federation.clients_per_language
    clients = client_layout(languages, heldout, shards)
    prepared = PreparedData(frame, languages, heldout, labels, clients, shards, cfg.seed,
                            cfg.federation.partition, cfg.federation.dirichlet_alpha)
    for lang in languages:
        for split in ("train", data.eval_split):
            if prepared.language_rows(lang, split).empty:
                raise DataError(
                    f"Language {lang!r} has no {split!r} examples; a client needs both. Check the data's split "
                    f"column, data.test_fraction, or drop {lang!r} from data.languages."
                )
    for lang in heldout:
        if prepared.language_rows(lang, data.eval_split).empty:
            raise DataError(f"Held-out language {lang!r} has no {data.eval_split!r} examples to evaluate on.")
    for client in prepared.training_clients():
        if shards > 1 and prepared.client_rows(client, "train").empty:
            raise DataError(
                f"Client {client.name(shards)} got no training examples from the {cfg.federation.partition.value} "
                f"partition; use fewer federation.clients_per_language or a larger federation.dirichlet_alpha."
            )
    return prepared


def client_layout(languages: tuple[str, ...], heldout: tuple[str, ...], shards: int) -> tuple[ClientSpec, ...]:
    """Every client in index order: each language's shards, then the held-out (evaluation-only) languages."""
    clients = tuple(ClientSpec(lang, shard) for lang in languages for shard in range(shards))
    return clients + tuple(ClientSpec(lang, 0, heldout=True) for lang in heldout)


def resolve(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with canonical language codes, and data.languages / data.labels filled in from the data when
    empty, so every party (server, clients, reports) agrees on them."""
    if cfg.data.languages and cfg.data.labels:
        languages, heldout, labels = (normalize_all(cfg.data.languages), normalize_all(cfg.data.heldout_languages),
                                      cfg.data.labels)
    else:
        prepared = prepare(cfg)
        languages, heldout, labels = prepared.languages, prepared.heldout, prepared.labels
    low_resource = normalize_all(cfg.data.low_resource)
    stray = [lang for lang in low_resource if lang not in languages + heldout]
    if stray:
        raise DataError(f"data.low_resource lists {stray}, which are not languages of this run "
                        f"({', '.join(languages + heldout)}); drop them or add them to data.languages.")
    return cfg.replace(**{"data.languages": list(languages), "data.labels": list(labels),
                          "data.heldout_languages": list(heldout), "data.low_resource": list(low_resource)})


def normalize_all(codes: tuple[str, ...]) -> tuple[str, ...]:
    """Canonical codes for a config list, refusing unknown codes and duplicates."""
    from mfpt.languages import UnknownLanguageError, normalize_languages

    try:
        return tuple(normalize_languages(codes))
    except UnknownLanguageError as err:
        raise DataError(str(err)) from None


def derive_data_seed(seed: int, lang: str, split: str) -> int:
    """A per-(language, split) sampling seed that does not depend on Python's salted str hash."""
    digest = hashlib.sha256(f"{seed}/{lang}/{split}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def summary_table(prepared: PreparedData, eval_split: str) -> pd.DataFrame:
    """Example counts per client and split, and per label, for `mfpt data`."""
    rows = []
    for client in prepared.training_clients():
        for split in ("train", eval_split):
            part = prepared.client_rows(client, split)
            counts = part[LABEL].value_counts()
            rows.append({"client": client.name(prepared.shards), "split": split, "n": len(part),
                         **{label: int(counts.get(label, 0)) for label in prepared.labels}})
    for lang in prepared.heldout:
        part = prepared.language_rows(lang, eval_split)
        counts = part[LABEL].value_counts()
        rows.append({"client": f"{lang} (held out)", "split": eval_split, "n": len(part),
                     **{label: int(counts.get(label, 0)) for label in prepared.labels}})
    return pd.DataFrame(rows)
