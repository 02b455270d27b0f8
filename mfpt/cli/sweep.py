"""`mfpt sweep` (a grid of experiments x seeds, resumable) and `mfpt report` (one report over finished runs)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mfpt.analysis.grouping import load_runs
from mfpt.analysis.report import write_report
from mfpt.cli.common import config_overrides, plan_folder
from mfpt.core import files
from mfpt.experiments.sweep import (
    SWEEP_JSON,
    SweepError,
    finish_sweep,
    parse_grid,
    parse_seeds,
    plan_sweep,
    run_sweep,
    sweep_warnings,
)


def sweep_title(out: Path) -> str:
    """The default title of sweep.md: the sweep's folder name ('Sweep runs/paradigms'), never 'Sweep sweep'."""
    return f"Sweep {out.parent.name}/{out.name}" if out.name.lower() in ("sweep", "sweeps") else f"Sweep {out.name}"


def cmd_sweep(args: argparse.Namespace) -> int:
    """`mfpt sweep`: plan, run what is missing, write sweep.csv and sweep.md."""
    grid = parse_grid(args.grid or [])
    seeds = parse_seeds(args.seeds)
    overrides = config_overrides(args)
    out = plan_folder(args, [f"{key}={values[0]}" for key, values in grid], "-sweep")
    runs = plan_sweep(args.config, grid, seeds, out, overrides)
    for warning in sweep_warnings(runs):
        print(f"warning: {warning}")
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / SWEEP_JSON, {"config": str(Path(args.config).resolve()) if args.config else None,
                                     "set": overrides, "grid": dict(grid), "seeds": seeds,
                                     "runs": [{"name": r.name, "values": dict(r.values), "seed": r.seed} for r in runs]})
    print(f"sweep of {len(runs)} run(s) into {out}")
    outcome = run_sweep(runs, out, args.config)
    written = finish_sweep(runs, [k for k, _ in grid], out, title=args.title or sweep_title(out), failed=outcome.failed)
    print(f"\n{len(outcome.ran)} ran, {len(outcome.resumed)} resumed, {len(outcome.skipped)} already complete, "
          f"{len(outcome.failed)} failed.")
    for name, reason in outcome.failed.items():
        print(f"  failed: {name}: {reason}")
    print("wrote " + ", ".join(str(p) for p in written))
    if outcome.failed:
        print("Run the same command again to retry the failed runs (complete ones are skipped).")
    return 1 if outcome.failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    """`mfpt report`: one report from finished runs and sweeps."""
    dirs = [Path(d) for d in args.dirs]
    if args.out:
        out = Path(args.out)
    elif len(dirs) == 1:
        out = dirs[0] / "report"
    else:
        raise SweepError("Several folders need --out DIR for the report.")
    path = write_report(load_runs(dirs), out, title=args.title)
    print(f"wrote {path}")
    return 0


_SWEEP_EPILOG = """\
examples:
  # the method comparison, two seeds
  mfpt sweep configs/demo.toml --grid paradigm=federated,local,centralized,transfer,zeroshot --seeds 0,1
  # data efficiency
  mfpt sweep configs/demo.toml --grid paradigm=federated,local --grid data.train_per_language=8,16,0 --seeds 0,1,2
  # prompt length
  mfpt sweep configs/demo.toml --grid peft.num_virtual_tokens=8,16,32 --seeds 0,1,2 --out runs/prompt-length
Run the same command again to resume an interrupted sweep: complete runs are skipped, half-done ones resumed.
"""


def add_parser(subparsers: Any, config_args: argparse.ArgumentParser) -> None:
    """Add `sweep` and `report` to the mfpt command line; `config_args` is the parent parser of the CONFIG and
    --set arguments that `mfpt run` takes too."""
    sweep = subparsers.add_parser(
        "sweep", help="run a grid of experiments x seeds (resumable), then write sweep.csv and sweep.md",
        description="Run the cross product of --grid values and --seeds, each run in its own folder and its own "
                    "process, skipping complete runs and resuming half-done ones; then write sweep.csv (one row "
                    "per run x language) and sweep.md (the report over all runs).",
        epilog=_SWEEP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[config_args])
    sweep.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                       help="a config key and its values (repeatable; the sweep is the cross product). Separate "
                            "values with ';' instead of ',' for list-valued keys")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    sweep.add_argument("--out", help="sweep folder (default: output_dir of the config + '-sweep')")
    sweep.add_argument("--title", help="title of sweep.md")
    sweep.set_defaults(func=cmd_sweep, builds_model=True)

    report = subparsers.add_parser(
        "report", help="one report (Markdown + PNG) from finished runs and sweeps",
        description="Read results.json and metrics.jsonl of every run under each DIR (a run folder or a sweep "
                    "folder) and write report.md with its figures. Nothing is re-run.")
    report.add_argument("dirs", nargs="+", metavar="DIR")
    report.add_argument("--out", help="report folder (default: DIR/report when one DIR is given)")
    report.add_argument("--title", default="Report", help="report title")
    report.set_defaults(func=cmd_report)
