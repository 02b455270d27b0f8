"""The `mfpt` command. Each module here parses one group of subcommands and calls the layer that does the work.

User errors (bad config, missing data, unknown names, refused updates) print one clear line and exit 2;
only bugs produce tracebacks. The transformers/peft version guard refuses the commands that build a model (they set
`builds_model`); the others run under any pair and say in one line that training would be refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

# Tests and air-gapped sites must never reach a model hub by accident; a user who wants the hub sets these to 0.
# (The command modules import no hub, tokenizer or Flower library: those load with the commands that use them.)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from mfpt.cli import distance, experiment, predict, prepare, privacy, sweep, tune, watch  # noqa: E402
from mfpt.cli.common import config_args  # noqa: E402
from mfpt.core.errors import UserError  # noqa: E402
from mfpt.model import compat  # noqa: E402

# Every command group, in the order `mfpt --help` lists them; each adds its subcommands with `add_parser`.
COMMANDS = (experiment, sweep, tune, distance, prepare, predict, privacy, watch)


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mfpt",
        description="Multilingual federated prompt tuning: every language a client that keeps its data and shares "
                    "only a small prompt, aggregated by a Flower server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Flower's and mfpt's debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = config_args()
    for command in COMMANDS:
        command.add_parser(sub, shared)
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
        if getattr(args, "builds_model", False):
            compat.ensure_supported_stack()  # before Ray, data or a model start
        elif problem := compat.installed_stack_problem():
            # validate, data, keys, report, ... load no model: they run, and say what training would meet.
            print(f"note: training would be refused here. {problem}", file=sys.stderr)
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
