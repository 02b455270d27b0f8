"""What every command that reads an experiment config shares: the CONFIG and --set arguments, and loading them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mfpt.config import ExperimentConfig, load_config


def config_args() -> argparse.ArgumentParser:
    """The CONFIG and --set arguments of every command that reads a config, as an argparse parent parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("config", nargs="?", help="experiment TOML file (omit for the defaults)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=0.01 --set data.languages=eng,swh (repeatable)")
    parser.add_argument("--tuned", metavar="TUNING_JSON",
                        help="use the hyperparameters `mfpt tune` chose on validation for the run's paradigm and "
                             "method (sets tuning.file)")
    return parser


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides, and tuning.file from --tuned."""
    overrides = list(args.set or [])
    if getattr(args, "tuned", None):
        overrides.append(f"tuning.file={json.dumps(str(Path(args.tuned).expanduser().resolve()))}")
    return overrides


def plan_folder(args: argparse.Namespace, first_point: list[str], suffix: str) -> Path:
    """--out, else the config's output_dir at the plan's first point plus `suffix` (a --set may be valid only with
    a grid or --for value, so the config is loaded only when --out is not given; without its tuning file's values,
    which never set output_dir and may clash with a --set)."""
    if args.out:
        return Path(args.out).expanduser().resolve()
    first = load_config(args.config, [*config_overrides(args), *first_point], apply_tuned=False)
    return Path(f"{first.output_dir.rstrip('/')}{suffix}").expanduser().resolve()


def load_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config of CONFIG, its --set overrides, --tuned and --out (as output_dir), validated."""
    overrides = config_overrides(args)
    if getattr(args, "out", None):
        overrides.append(f"output_dir={json.dumps(args.out)}")
    return load_config(args.config, overrides)
