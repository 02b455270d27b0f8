"""`mfpt prepare`: a benchmark (or your own file) as one universal-schema file per language, plus a data card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mfpt.data.benchmarks import BENCHMARKS
from mfpt.data.prepare import CARD_NAME, FILES, read_source, rows_per_split, write_prepared


def add_parser(subparsers: Any, config_args: argparse.ArgumentParser) -> None:
    """Add the `prepare` subcommand to an argparse subparsers object (func=cmd_prepare)."""
    parser = subparsers.add_parser(
        "prepare",
        help="write one universal-schema file per language from a benchmark or your own file, plus a data card",
        description="Read BENCHMARK from the hub (or --path: a local copy of the authors' release or a clone of the "
                    "hub repository), or split your own file with `mfpt prepare files --path FILE`, and write "
                    "OUT/<lang>.jsonl per language, OUT/datacard.json and OUT/README.md.",
    )
    parser.add_argument("benchmark", metavar="BENCHMARK", help=f"one of {', '.join([*BENCHMARKS, FILES])}")
    parser.add_argument("--out", required=True, help="directory for the language files and the data card")
    parser.add_argument("--path", default="", help="a local copy of the benchmark, or (for 'files') your "
                        "JSONL/CSV/Parquet file with columns text, label, lang [, text_pair, split]")
    parser.add_argument("--languages", nargs="+", default=[], metavar="LANG",
                        help="only these languages (any ISO 639-1/639-3/BCP-47/FLORES code; commas also work)")
    parser.add_argument("--train-pool", choices=("train", "validation"), default="train",
                        help="benchmarks: where training rows come from, as data.train_pool (default: %(default)s)")
    parser.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run `mfpt prepare` and print where each language file went."""
    languages = [code for item in args.languages for code in item.split(",") if code.strip()]
    frame, provenance = read_source(args.benchmark, args.path, languages, args.train_pool)
    out = Path(args.out).expanduser()
    card = write_prepared(frame, provenance, out, args.train_pool)
    print(f"{provenance.benchmark} ({provenance.location}, revision {card['revision']}): "
          f"{len(card['languages'])} language file(s) in {out}")
    for entry in card["languages"].values():
        print(f"  {entry['file']}: {rows_per_split(entry)}")
    print(f"data card: {out / CARD_NAME}")
    return 0
