"""`mfpt run`, `mfpt validate`, `mfpt data` and `mfpt keys`: one experiment, its config and its data."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mfpt.analysis.report import render_run_summary
from mfpt.cli.common import load_from_args
from mfpt.config import ConfigError, describe, describe_markdown, to_toml


def cmd_run(args: argparse.Namespace) -> int:
    """Run one experiment."""
    started = time.monotonic()
    from mfpt.experiments.paradigms import run_experiment
    from mfpt.results.recorder import check_resumable, ensure_output_dir, resumable_folder, saved_config

    if args.resume:
        out = Path(args.resume).expanduser().resolve()
        resumable_folder(out)
        given = args.config or args.set or args.tuned
        # `mfpt run --resume DIR` alone continues DIR with the config it was started with, from any directory.
        cfg = load_from_args(args) if given else saved_config(out)
        cfg = cfg.replace(output_dir=str(out), **({"model.name": args.model} if args.model else {}))
        # Everything --resume refuses is found now, before Ray, the data or the model start.
        check_resumable(out, cfg)
    else:
        cfg = load_from_args(args)
        cfg = cfg.replace(**{"model.name": args.model}) if args.model else cfg
        out = Path(cfg.output_dir).expanduser().resolve()
        ensure_output_dir(out)  # found now, not after the data and the model have loaded
    result = run_experiment(cfg, resume=bool(args.resume), quiet=args.quiet)
    print(render_run_summary(result))
    print(f"outputs in {out} (report.md, results.json, metrics.jsonl, checkpoints/)")
    print(f"finished in {time.monotonic() - started:.0f} s: {result.wall_seconds:.0f} s from the model loaded to the "
          "results written (results.json's wall_seconds, over every resume), the rest start-up")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a config as every run, node and client would (mfpt.experiments.preflight), print it fully resolved,
    then what was checked, as TOML comments (so the output stays a valid config)."""
    from mfpt.experiments.preflight import preflight, validate_warnings

    cfg = load_from_args(args)
    node_config = {}
    if args.node_config:
        from flwr.common.config import parse_config_args

        try:
            node_config = parse_config_args([args.node_config])
        except Exception:  # noqa: BLE001 - Flower raises click's exception for a malformed string
            raise ConfigError(f"--node-config {args.node_config!r} is not a node config; write it as for "
                              "flower-supernode, e.g. \"require-dp='client' min-noise-multiplier=1.0\".") from None
    passed = preflight(cfg, node_config)
    print(to_toml(cfg), end="")
    print("\n" + "\n".join([*(f"# ok: {line}" for line in passed), *(f"# warning: {w}" for w in validate_warnings(cfg))]))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Print the clients, their example counts per split and label, and the label set."""
    from mfpt.data.clients import prepare, summary_table

    cfg = load_from_args(args)
    prepared = prepare(cfg)
    table = summary_table(prepared)
    print(f"source {cfg.data.source!r}: {len(prepared.training_clients())} training client(s), "
          f"{len(prepared.heldout)} held-out language(s), " + (f"{len(prepared.labels)} labels: {', '.join(prepared.labels)}" if prepared.labels else "a generation task (text -> target)"))
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
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue an interrupted run from its last completed round (alone: with the config it was "
                          "started with)")
    run.add_argument("--model", metavar="PATH_OR_HUB_ID",
                     help="the base model (sets model.name); with --resume, the same checkpoint found at another path")
    run.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    run.set_defaults(func=cmd_run, builds_model=True)

    validate = sub.add_parser("validate", help="check a config and print it resolved",
                              description="Validate CONFIG (and --set overrides) without running anything.",
                              parents=[config_args])
    validate.add_argument("--node-config", metavar="NODE_CONFIG",
                          help="a site's SuperNode --node-config: check the experiment against its privacy floor "
                               "(require-dp, min-noise-multiplier, max-epsilon, max-clip-norm, "
                               "require-secure-aggregation, min-clients)")
    validate.set_defaults(func=cmd_validate)

    data = sub.add_parser("data", help="show the clients and their data without training",
                          description="Load the data of CONFIG and print every client's example counts per split "
                                      "and label; fails early on anything training would fail on.",
                          parents=[config_args])
    data.set_defaults(func=cmd_data)

    keys = sub.add_parser("keys", help="list every config key with its default and meaning")
    keys.add_argument("--markdown", action="store_true", help="print Markdown tables (docs/configuration.md)")
    keys.set_defaults(func=cmd_keys)
