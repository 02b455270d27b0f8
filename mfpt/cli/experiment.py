"""`mfpt run`, `mfpt validate`, `mfpt data` and `mfpt keys`: one experiment, its config and its data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mfpt.analysis.report import render_run_summary
from mfpt.cli.common import load_from_args
from mfpt.config import ConfigError, ExperimentConfig, describe, describe_markdown, to_toml


def cmd_run(args: argparse.Namespace) -> int:
    """Run one experiment."""
    from mfpt.experiments.paradigms import run_experiment
    from mfpt.results.recorder import ensure_output_dir

    cfg = load_from_args(args)
    if args.resume:
        cfg = cfg.replace(output_dir=str(args.resume))
    out = Path(cfg.output_dir).expanduser().resolve()
    ensure_output_dir(out)  # found now, not after the data and the model have loaded
    result = run_experiment(cfg, resume=bool(args.resume), quiet=args.quiet)
    print(render_run_summary(result))
    print(f"outputs in {out} (report.md, results.json, metrics.jsonl, checkpoints/)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a config without running it (local paths included) and print it fully resolved."""
    cfg = load_from_args(args)
    check_local_paths(cfg)
    print(to_toml(cfg), end="")
    return 0


def check_local_paths(cfg: ExperimentConfig) -> None:
    """Refuse the local paths `run` would refuse, found without reading them: data.path and a model.name folder."""
    data = cfg.data
    if data.source == "files" and not data.path:
        raise ConfigError("data.source = 'files' needs data.path: a JSONL, CSV or Parquet file in the universal schema.")
    if data.path and not Path(data.path).expanduser().exists():
        raise ConfigError(f"data.path = {data.path!r} does not exist; point it at the data file or folder.")
    model = Path(cfg.model.name).expanduser()
    if model.is_dir() and not (model / "config.json").is_file():
        raise ConfigError(f"model.name = {cfg.model.name!r} is a directory without config.json; "
                          "point it at a checkpoint folder.")
    if not model.exists() and (model.is_absolute() or cfg.model.name.startswith((".", "~"))):
        raise ConfigError(f"model.name = {cfg.model.name!r} looks like a local path but does not exist; "
                          "fix the path, or give a hub id such as xlm-roberta-base.")


def cmd_data(args: argparse.Namespace) -> int:
    """Print the clients, their example counts per split and label, and the label set."""
    from mfpt.data.clients import prepare, summary_table

    cfg = load_from_args(args)
    prepared = prepare(cfg)
    table = summary_table(prepared)
    print(f"source {cfg.data.source!r}: {len(prepared.training_clients())} training client(s), "
          f"{len(prepared.heldout)} held-out language(s), {len(prepared.labels)} labels: {', '.join(prepared.labels)}")
    print(table.to_string(index=False))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """List every config key with its default and meaning (as Markdown tables with --markdown)."""
    print(describe_markdown() if args.markdown else describe(), end="" if args.markdown else "\n")
    return 0


def add_parser(sub: Any, config_args: argparse.ArgumentParser) -> None:
    """The `run`, `validate`, `data` and `keys` subcommands."""
    run = sub.add_parser("run", help="run an experiment (federated in Flower simulation, or a baseline paradigm)",
                         description="Run the experiment of CONFIG on this machine and write results, checkpoints "
                                     "and report.md to output_dir.", parents=[config_args])
    run.add_argument("--out", help="output directory (overrides output_dir)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed round")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a config and print it resolved",
                              description="Validate CONFIG (and --set overrides) without running anything.",
                              parents=[config_args])
    validate.set_defaults(func=cmd_validate)

    data = sub.add_parser("data", help="show the clients and their data without training",
                          description="Load the data of CONFIG and print every client's example counts per split "
                                      "and label; fails early on anything training would fail on.",
                          parents=[config_args])
    data.set_defaults(func=cmd_data)

    keys = sub.add_parser("keys", help="list every config key with its default and meaning")
    keys.add_argument("--markdown", action="store_true", help="print Markdown tables (docs/configuration.md)")
    keys.set_defaults(func=cmd_keys)
