"""`mfpt predict`: label new texts with a finished run's model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd

from mfpt.experiments.predict import predict_file


def _progress_line(done: int, total: int) -> None:
    print(f"\rpredicted {done}/{total} rows", end="\n" if done == total else "", file=sys.stderr, flush=True)


def cmd_predict(args: argparse.Namespace) -> int:
    """Label the rows of --input with RUN_DIR's model; write one JSON line per row to --out."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the command prints its own progress line
    predictions = predict_file(args.run_dir, args.input, args.out, device=args.device,
                               progress=None if args.quiet else _progress_line, model=args.model)
    if predictions and "label" not in predictions[0]:  # a generation run writes each row's generation
        print(f"wrote {len(predictions)} generations to {args.out}")
        return 0
    counts = pd.Series([p["label"] for p in predictions]).value_counts()
    print(f"wrote {len(predictions)} predictions to {args.out} ("
          + ", ".join(f"{label} {n}" for label, n in counts.items()) + ")")
    return 0


def add_parser(subparsers: Any, config_args: argparse.ArgumentParser) -> None:
    """Register `mfpt predict`."""
    predict = subparsers.add_parser(
        "predict", help="label new texts with a finished run's model",
        description="Load RUN_DIR's exported model (federated, centralized or zeroshot runs) and write one JSON line "
                    "per input row: index (and id), lang, label, its probability and every label's probability (a generation "
                    "run: index (and id), lang and the row's generation).")
    predict.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a finished run")
    predict.add_argument("--input", required=True, metavar="FILE",
                         help="JSONL, CSV or Parquet file with columns text and lang (optional: text_pair, id)")
    predict.add_argument("--out", required=True, metavar="FILE", help="where to write the predictions (JSONL)")
    predict.add_argument("--model", metavar="PATH_OR_HUB_ID",
                         help="the base model to load the run's adapter onto (default: the one the run recorded; "
                              "needed when its folder is not found from here)")
    predict.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N or mps")
    predict.add_argument("--quiet", action="store_true", help="no progress line")
    predict.set_defaults(func=cmd_predict, builds_model=True)
