"""`mfpt prepare`: turn a benchmark or a user's multilingual file into one universal-schema file per language.

Run on a machine that can reach the data (the hub, or a local copy of the authors' release); it writes
DIR/<lang>.jsonl for every language, a data card DIR/datacard.json (source, revision, counts per split and label,
sha256 of every language file) and DIR/README.md, the card in prose. Each site then receives only its own
language's file and points its SuperNode's `data-path` at it (docs/deploy.md).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from mfpt import __version__
from mfpt.config import DataConfig
from mfpt.core.files import atomic_write, json_line, sha256_file, write_json, write_text
from mfpt.core.languages import language_name, normalize_languages
from mfpt.core.registry import UnknownNameError, unknown_name_message
from mfpt.data.benchmarks import BENCHMARKS, Provenance, load_benchmark_with_provenance
from mfpt.data.sources import (
    CARD_NAME,
    LABEL,
    LANG,
    SPLIT,
    TARGET,
    TEXT,
    TEXT_PAIR,
    DataError,
    is_generation_frame,
    read_table,
)

FILES = "files"  # `mfpt prepare files`: split the user's own multilingual file instead of a benchmark
README_NAME = "README.md"
CARD_SCHEMA = "mfpt.datacard/1"
# What a language file keeps, in this order (a generation file: target instead of label).
SCHEMA_COLUMNS = (TEXT, TEXT_PAIR, LABEL, TARGET, LANG, SPLIT)
UNSPLIT = "unsplit"  # the split name the card counts rows under when the input has no split column


def read_source(name: str, path: str = "", languages: Sequence[str] = (),
                train_pool: str = "train") -> tuple[pd.DataFrame, Provenance]:
    """The rows of a benchmark (`path`: a local copy, empty: the hub) or of a user's file (`name` = 'files'),
    restricted to `languages` (empty: all), and where they came from."""
    if name == FILES:
        return _read_user_file(path, languages)
    info = BENCHMARKS.get(name)
    if info is None:
        raise UnknownNameError(unknown_name_message("benchmark", name, [*BENCHMARKS, FILES]))
    data = DataConfig(source=name, path=path, languages=tuple(languages), train_pool=train_pool)
    return load_benchmark_with_provenance(info, data)


def _read_user_file(path: str, languages: Sequence[str]) -> tuple[pd.DataFrame, Provenance]:
    if not path:
        raise DataError("`mfpt prepare files` needs --path: a JSONL, CSV or Parquet file with columns text, label, "
                        "lang (optional: text_pair, split), or text, target, lang for a generation task.")
    source = Path(path).expanduser()
    frame = read_table(source)  # refuses a missing file, a missing column and empty cells, naming them
    wanted = normalize_languages(list(languages))
    if wanted:
        absent = [lang for lang in wanted if lang not in set(frame[LANG])]
        if absent:
            raise DataError(f"Language(s) {absent} are not in {str(source)!r}; it has "
                            f"{', '.join(sorted(set(frame[LANG])))}. Fix --languages.")
        frame = frame[frame[LANG].isin(wanted)]
    return frame, Provenance(FILES, str(source.resolve()), "local")


def write_language_file(path: Path, rows: pd.DataFrame) -> Path:
    """Atomically write `rows` as JSON lines, one object per row (non-ASCII text kept as is)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in rows.to_dict(orient="records"):
                handle.write(json_line(record))

    return atomic_write(path, write)


def card_labels(frame: pd.DataFrame, benchmark: str) -> list[str]:
    """The label order for the experiment file's data.labels: the benchmark's own (label id = position, including
    labels absent from the asked languages), else the labels present, sorted."""
    if is_generation_frame(frame):
        return []
    info = BENCHMARKS.get(benchmark)
    return list(info.labels) if info is not None else sorted(set(frame[LABEL]))


def split_counts(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per split: the row count and the count of every label present (none for a generation task's rows)."""
    splits = rows[SPLIT] if SPLIT in rows.columns else pd.Series(UNSPLIT, index=rows.index)
    counts: dict[str, dict[str, Any]] = {}
    for split in sorted(set(splits), key=lambda s: (("train", "validation", "test", UNSPLIT).index(s), s)):
        labels = rows.loc[splits == split, LABEL].value_counts() if LABEL in rows.columns else pd.Series(dtype=int)
        counts[split] = {"rows": int((splits == split).sum()),
                         "labels": {str(k): int(v) for k, v in sorted(labels.items())}}
    return counts


def write_prepared(frame: pd.DataFrame, provenance: Provenance, out: Path, train_pool: str) -> dict[str, Any]:
    """Write DIR/<lang>.jsonl for every language in `frame`, then the data card and its README; returns the card."""
    if frame.empty:
        raise DataError(f"Nothing to write: {provenance.benchmark} at {provenance.location!r} gave no rows for the "
                        "asked languages.")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {str(out)!r} is a file; give a directory for the language files and the data card.")
    languages = list(pd.unique(frame[LANG]))
    stale = sorted(p.name for p in out.glob("*.jsonl") if p.stem not in languages) if out.is_dir() else []
    if stale:
        # A stray language file next to the card's would travel to a site, or be read by a directory data.path.
        raise DataError(f"--out {str(out)!r} already holds {', '.join(stale)}, which this run would not write; "
                        "choose an empty directory or remove them.")
    # A generation file keeps its targets and no label column (read back, it is a generation task again).
    generation = is_generation_frame(frame)
    columns = [c for c in SCHEMA_COLUMNS if c in frame.columns and not (c == LABEL and generation)]
    source: dict[str, str] = {"benchmark": provenance.benchmark}
    source["path" if provenance.revision == "local" else "hub_id"] = provenance.location
    if Path(provenance.location).is_file():  # a user's single file: its checksum is its revision
        source["sha256"] = sha256_file(Path(provenance.location))
    entries: dict[str, Any] = {}
    for lang in languages:
        rows = frame.loc[frame[LANG] == lang, columns].reset_index(drop=True)
        path = write_language_file(out / f"{lang}.jsonl", rows)
        entries[lang] = {"name": language_name(lang), "file": path.name, "rows": len(rows),
                         "sha256": sha256_file(path), "splits": split_counts(rows)}
    card = {
        "schema": CARD_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mfpt_version": __version__,
        "source": source,
        "revision": provenance.revision,
        "hub_ref": provenance.ref,
        "train_pool": train_pool if provenance.benchmark != FILES else "",
        "columns": columns,
        "labels": card_labels(frame, provenance.benchmark),
        "languages": entries,
    }
    write_json(out / CARD_NAME, card)
    write_text(out / README_NAME, render_card(card))
    return card


def rows_per_split(entry: dict[str, Any]) -> str:
    """'train 701, validation 99, test 204' for one language entry of a data card."""
    return ", ".join(f"{split} {counts['rows']}" for split, counts in entry["splits"].items())


def render_card(card: dict[str, Any]) -> str:
    """The data card as a short Markdown page: source, revision, and per language its file, counts and checksum."""
    source = card["source"]
    where = source.get("hub_id") or source.get("path")
    lines = [
        f"# Prepared data: {source['benchmark']}",
        "",
        f"- source: {source['benchmark']} ({where})",
        f"- revision: {card['revision']}" + (f" (hub branch {card['hub_ref']})" if card["hub_ref"] else ""),
        *([f"- train pool: {card['train_pool']}"] if card["train_pool"] else []),
        f"- columns: {', '.join(card['columns'])}",
        (f"- labels (the experiment file's data.labels, in this order): {', '.join(card['labels'])}" if card["labels"]
         else "- a generation task (text -> target, no labels): the experiment file sets data.task = \"generation\""),
        f"- written {card['created']} by mfpt {card['mfpt_version']}; the same facts are in {CARD_NAME}",
        "",
        "| language | file | rows per split | sha256 |",
        "|---|---|---|---|",
    ]
    for lang, entry in card["languages"].items():
        lines.append(f"| {lang} ({entry['name']}) | {entry['file']} | {rows_per_split(entry)} | `{entry['sha256']}` |")
    if card["labels"]:
        lines += ["", "Labels per split:", ""]
        for lang, entry in card["languages"].items():
            for split, counts in entry["splits"].items():
                labels = ", ".join(f"{label} {n}" for label, n in counts["labels"].items())
                lines.append(f"- {lang} {split}: {labels}")
    lang = next(iter(card["languages"]))
    lines += [
        "",
        "Give each site only its own file; check it there with `sha256sum <lang>.jsonl` against the table, then",
        "start its SuperNode with",
        f"`flower-supernode ... --node-config \"lang='{lang}' data-path='/data/{lang}.jsonl'\"` (docs/deploy.md).",
        "",
    ]
    return "\n".join(lines)




