"""`mfpt tune`: hyperparameters chosen on the validation split, the same search for every setting compared."""

from __future__ import annotations

import argparse
from typing import Any

from mfpt.cli.common import config_overrides, plan_folder
from mfpt.experiments.sweep import parse_grid, parse_seeds
from mfpt.experiments.tune import (
    TUNING_FILE,
    parse_settings,
    plan_tuning,
    run_tuning,
    search_points,
    tuning_record,
    write_tuning,
)


def cmd_tune(args: argparse.Namespace) -> int:
    """Plan every trial, run what is missing, write tuning.json; 1 when a trial failed."""
    grid = parse_grid(args.grid or [])
    seeds = parse_seeds(args.seeds)
    overrides = config_overrides(args)
    settings = parse_settings(args.for_ or [])
    out = plan_folder(args, settings[0].overrides(), "-tune")
    trials = plan_tuning(args.config, settings, grid, seeds, out, overrides, args.trials)
    budget = len(search_points(grid, args.trials, min(seeds)))
    print(f"tuning {len(settings)} setting(s) x {budget} trial(s) x {len(seeds)} seed(s) on the validation split, "
          f"into {out}")
    for folder, start in {t.folder: t.start for t in trials}.items():
        print(f"  {folder} {start}")  # what each setting keeps of the config's tuning.file, or why nothing
    path = out / TUNING_FILE

    def record() -> None:
        write_tuning(path, tuning_record(args.config, overrides, grid, seeds, trials, budget))

    failed = run_tuning(trials, out, args.config, record)
    content = tuning_record(args.config, overrides, grid, seeds, trials, budget)
    write_tuning(path, content)
    print("\n" + "\n".join(summary_lines(content)))
    print(f"wrote {path}; use it with --tuned {path} (mfpt run, mfpt sweep) or tuning.file")
    for name, reason in failed.items():
        print(f"  failed: {name}: {reason}")
    return 1 if failed else 0


def summary_lines(content: dict[str, Any]) -> list[str]:
    """The tuning file as a table: each setting (named by all its --for values), its choice, score and cost."""
    lines = ["setting | chosen | mean validation accuracy | trials | trial hours"]
    for entry in content["settings"]:
        hours = sum(t["seconds"] for t in entry["trials"]) / 3600
        chosen = ", ".join([*(f"{k} = {v}" for k, v in entry["chosen"].items()),
                            *(f"{k} = {v['value']} (kept)" for k, v in entry.get("kept", {}).items())])
        # the other --for values name the setting too: --for federation.qffl_q=0.1,1 gives two federated / prefix
        name = " with ".join([f"{entry['paradigm']} / {entry['method']}",
                              *(f"{k} = {v}" for k, v in entry["setting"].items() if k not in ("paradigm", "peft.method"))])
        lines.append(f"{name} | {chosen} | {100 * entry['score']:.1f} | {len(entry['trials'])}/"
                     f"{content['trials_per_setting']} | {hours:.2f}")
    return lines


_EPILOG = """\
examples:
  # every paradigm of the paper's comparison, the same three learning rates around each method's default
  mfpt tune configs/demo.toml --for paradigm=federated,local,centralized,transfer,zeroshot \\
      --grid train.lr=x0.3,x1,x3 --seeds 0 --out runs/tune
  # then every run uses the learning rate chosen for its own paradigm
  mfpt sweep configs/demo.toml --grid paradigm=federated,local --seeds 0,1,2 --tuned runs/tune/tuning.json
  # a second search starts from the first: its trials keep each setting's tuned train.lr, and so does a run of it
  mfpt tune configs/demo.toml --tuned runs/tune/tuning.json --set federation.strategy=qfedavg \
      --grid federation.qffl_lr=1000,10000 --seeds 0 --out runs/qffl-tune
Run the same command again to continue an interrupted search: finished trials are kept.
"""


def add_parser(sub: Any, config_args: argparse.ArgumentParser) -> None:
    """The `mfpt tune` subcommand."""
    parser = sub.add_parser(
        "tune", help="choose hyperparameters on the validation split (the same search for every setting)",
        description="Search --grid for every setting of --for, each trial a run scored on the validation split with "
                    "the test split dropped; write DIR/tuning.json with every trial and the chosen values.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[config_args])
    parser.add_argument("--for", dest="for_", action="append", metavar="KEY=V1,V2,...",
                        help="the settings compared, each tuned on its own (repeatable; default: the config's own)")
    parser.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                        help="the search space (repeatable; a value xK is K times the setting's own value)")
    parser.add_argument("--trials", type=int, default=0,
                        help="a seeded random subset of this many grid points, the same for every setting (0 = all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; a trial's score is their mean (default: 0)")
    parser.add_argument("--out", help="tuning folder (default: output_dir of the config + '-tune')")
    parser.set_defaults(func=cmd_tune, builds_model=True)
