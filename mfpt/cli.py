"""Command line: `mfpt run | data | validate | keys`, plus `sweep`, `report`, `distance` and `predict` from their modules.

User errors (bad config, missing data, unknown names, refused updates) print one clear line and exit 2;
only bugs produce tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from mfpt import distance, predict, prepare, privacy, privacy_audit, sweep  # each adds its subcommands (add_cli)
from mfpt.compat import ensure_supported_stack
from mfpt.config import ConfigError, ExperimentConfig, describe, load_config, to_toml
from mfpt.errors import UserError
from mfpt.report import render_run_summary

# Tests and air-gapped sites must never reach a model hub by accident; a user who wants the hub sets these to 0.
# (The modules above import no hub, tokenizer or Flower library: those load with the commands that use them.)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _load(args: argparse.Namespace) -> ExperimentConfig:
    overrides = list(args.set or [])
    if getattr(args, "out", None):
        overrides.append(f"output_dir={args.out!r}".replace("'", '"'))
    return load_config(args.config, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    """Run one experiment."""
    from mfpt.paradigms import run_experiment  # torch, transformers and Flower: seconds the other commands never need
    from mfpt.results import ensure_output_dir

    cfg = _load(args)
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
    cfg = _load(args)
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
    from mfpt.data import prepare, summary_table  # the data sources and their libraries load only for this command

    cfg = _load(args)
    prepared = prepare(cfg)
    table = summary_table(prepared, cfg.data.eval_split)
    print(f"source {cfg.data.source!r}: {len(prepared.training_clients())} training client(s), "
          f"{len(prepared.heldout)} held-out language(s), {len(prepared.labels)} labels: {', '.join(prepared.labels)}")
    print(table.to_string(index=False))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """List every config key with its default and meaning."""
    print(describe())
    return 0


def _config_args() -> argparse.ArgumentParser:
    """The CONFIG and --set arguments of every command that reads a config, as an argparse parent parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("config", nargs="?", help="experiment TOML file (omit for the defaults)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=0.01 --set data.languages=eng,swh (repeatable)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mfpt",
        description="Multilingual federated prompt tuning: every language a client that keeps its data and shares "
                    "only a small prompt, aggregated by a Flower server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower's and mfpt's debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_args = _config_args()

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
    keys.set_defaults(func=cmd_keys)

    # Subcommands that live in their own modules (each module owns its arguments and help).
    distance.add_cli(sub)
    prepare.add_cli(sub)
    predict.add_cli(sub)
    sweep.add_cli(sub, config_args)
    privacy.add_cli(sub, config_args)
    privacy_audit.add_cli(sub, config_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mfpt` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mfpt").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
        for noisy in ("transformers", "peft", "datasets"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        ensure_supported_stack()
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        # A path the user gave that is of the wrong kind or not theirs to write, met past the commands' own checks.
        where = f" {err.filename!r}" if err.filename else ""
        print(f"error: cannot use{where}: {err.strerror}; pass a path of the right kind that you can write.",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
