"""Client data: load a language-tagged dataset in the universal schema, split it, cap it, and cut it into clients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mfpt.config import DataConfig, ExperimentConfig, Partition, Selection, Task
from mfpt.core.seeds import derive_data_seed
from mfpt.data.benchmarks import BENCHMARKS  # importing it also registers the benchmark sources in DATA_SOURCES
from mfpt.data.sources import DATA_SOURCES, LABEL, LANG, SPLIT, SPLITS, DataError, is_generation_frame


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


# ------------------------------------------------------------------------------------------ preparing


def load_source(data: DataConfig) -> pd.DataFrame:
    """The configured source's rows, in the universal schema; a source without the columns data.task needs is
    refused (a generation task needs `target`, a classification one `label`)."""
    frame = DATA_SOURCES.get(data.source)(data)
    generation = data.task == Task.GENERATION
    if generation != is_generation_frame(frame):
        needed, has = ("target", "labels") if generation else ("label", "targets")
        raise DataError(f"data.task = {data.task.value!r} needs a {needed!r} column, but data source {data.source!r} "
                        f"gives {has}; set data.task = {'classification' if generation else 'generation'!r}, or use a "
                        f"source with {needed!r}.")
    return frame


def source_labels(data: DataConfig) -> tuple[str, ...]:
    """The label order a benchmark declares, if the source is one (else empty)."""
    info = BENCHMARKS.get(data.source)
    return tuple(info.labels) if info is not None else ()


def resolve_labels(frame: pd.DataFrame, data: DataConfig) -> tuple[str, ...]:
    """The global label order: data.labels, else the benchmark's, else sorted (numerically when all integers); none
    for a generation task."""
    if data.task == Task.GENERATION:
        return ()
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


def carve_validation(frame: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Move a seeded, label-stratified `fraction` of the training rows of every language without validation rows to
    the validation split (each label keeps at least one training row); languages with validation rows are kept."""
    if fraction <= 0:
        return frame
    has_validation = set(frame.loc[frame[SPLIT] == "validation", LANG])
    train = frame[(frame[SPLIT] == "train") & ~frame[LANG].isin(has_validation)]
    if train.empty:
        return frame
    frame = frame.copy()
    for (lang, _), index in train.groupby([LANG, LABEL], sort=True).groups.items():
        index = np.array(sorted(index))
        count = min(int(round(len(index) * fraction)), len(index) - 1)
        rng = np.random.default_rng(derive_data_seed(seed, lang, "validation-carve"))
        frame.loc[rng.permutation(index)[:max(count, 0)], SPLIT] = "validation"
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
    # The config made every language list canonical (and refused overlaps) when it was parsed.
    languages = tuple(data.languages) or tuple(available)
    heldout = tuple(data.heldout_languages)
    absent = [lang for lang in languages + heldout if lang not in available]
    if absent:
        raise DataError(
            f"Language(s) {absent} are not in the data (source {data.source!r}). Available: {', '.join(available)}."
        )
    labels = resolve_labels(frame, data)
    frame = frame[frame[LANG].isin(languages + heldout)]
    if data.drop_test:  # mfpt tune: nothing downstream can score on what is not here
        frame = frame[frame[SPLIT] != "test"]
    frame = carve_validation(frame, data.validation_fraction, cfg.seed)
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
    if data.selection == Selection.BEST_VALIDATION:
        for lang in languages:
            if prepared.language_rows(lang, "validation").empty:
                raise DataError(f"data.selection = 'best-validation' needs a validation split, but language {lang!r} "
                                "has no 'validation' rows; give the data a split column with validation rows, or "
                                "set data.selection = 'last'.")
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
    """The config with data.languages / data.labels filled in from the data when empty, so every party (server,
    clients, reports) agrees on them."""
    if cfg.data.languages and (cfg.data.labels or cfg.data.task == Task.GENERATION):
        languages, heldout, labels = cfg.data.languages, cfg.data.heldout_languages, cfg.data.labels
    else:
        prepared = prepare(cfg)
        languages, heldout, labels = prepared.languages, prepared.heldout, prepared.labels
    low_resource = cfg.data.low_resource
    stray = [lang for lang in low_resource if lang not in languages + heldout]
    if stray:
        raise DataError(f"data.low_resource lists {stray}, which are not languages of this run "
                        f"({', '.join(languages + heldout)}); drop them or add them to data.languages.")
    return cfg.replace(**{"data.languages": list(languages), "data.labels": list(labels),
                          "data.heldout_languages": list(heldout), "data.low_resource": list(low_resource)})




def summary_table(prepared: PreparedData) -> pd.DataFrame:
    """Example counts per client and split (train, validation, test), and per label, for `mfpt data`; held-out
    languages show the splits they are evaluated on."""
    rows = []

    def add(name: str, split: str, part: pd.DataFrame) -> None:
        counts = part[LABEL].value_counts()
        rows.append({"client": name, "split": split, "n": len(part),
                     **{label: int(counts.get(label, 0)) for label in prepared.labels}})

    for client in prepared.training_clients():
        for split in SPLITS:
            add(client.name(prepared.shards), split, prepared.client_rows(client, split))
    for lang in prepared.heldout:
        for split in ("validation", "test"):
            add(f"{lang} (held out)", split, prepared.language_rows(lang, split))
    return pd.DataFrame(rows)
