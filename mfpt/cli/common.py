"""What every command that reads an experiment config shares: the CONFIG and --set arguments, and loading them."""

from __future__ import annotations

import argparse

from mfpt.config import ExperimentConfig, load_config


def config_args() -> argparse.ArgumentParser:
    """The CONFIG and --set arguments of every command that reads a config, as an argparse parent parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("config", nargs="?", help="experiment TOML file (omit for the defaults)")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=0.01 --set data.languages=eng,swh (repeatable)")
    return parser


def load_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The config of CONFIG, its --set overrides and --out (as output_dir), validated."""
    overrides = list(args.set or [])
    if getattr(args, "out", None):
        overrides.append(f"output_dir={args.out!r}".replace("'", '"'))
    return load_config(args.config, overrides)
