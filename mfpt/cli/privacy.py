"""`mfpt privacy` (the epsilon a config gives, without training) and `mfpt audit-privacy` (the canary audit)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mfpt.cli.common import config_overrides
from mfpt.config import DpMode, load_config
from mfpt.experiments.canary_audit import AUDIT_FILE, audit, render
from mfpt.privacy.accounting import describe_plan, train_sizes


def cmd_privacy(args: argparse.Namespace) -> int:
    """Print the epsilon a config's privacy settings give, without training."""
    from mfpt.data.clients import resolve

    cfg = load_config(args.config, config_overrides(args))
    if cfg.privacy.dp == DpMode.CLIENT and not cfg.data.languages:
        cfg = resolve(cfg)  # client-level DP's delta and warnings count the clients: the data's languages
    sizes = train_sizes(cfg) if cfg.privacy.dp == DpMode.EXAMPLE else None
    print(describe_plan(cfg, sizes))
    return 0


def cmd_audit_privacy(args: argparse.Namespace) -> int:
    """Run the canary audit of a config and print the leakage table."""
    cfg = load_config(args.config, config_overrides(args))
    out = Path(args.out or Path(cfg.output_dir).expanduser() / "privacy-audit").resolve()
    found = audit(cfg, out, canaries=args.canaries, repeats=args.repeats, lang=args.client or "", quiet=args.quiet)
    print(render(found, args.canaries))
    print(f"details in {out / AUDIT_FILE}")
    return 0


def add_parser(sub: Any, config_args: argparse.ArgumentParser) -> None:
    """The `mfpt privacy` and `mfpt audit-privacy` subcommands."""
    parser = sub.add_parser("privacy", help="print the (epsilon, delta) a config's [privacy] settings give",
                            description="Compute, without training, the differential-privacy account of CONFIG: "
                                        "the noise multiplier (from privacy.target_epsilon when set) and epsilon "
                                        "after each round, so the noise can be chosen before a run.",
                            parents=[config_args])
    parser.set_defaults(func=cmd_privacy)
    parser = sub.add_parser("audit-privacy", help="measure how exposed planted canaries are, without and with [privacy]",
                            description="Plant canary sentences in one client's training data, train federated "
                                        "without and with the config's privacy settings, and report the canaries' "
                                        "membership-inference AUC/advantage and exposure beside test accuracy.",
                            parents=[config_args])
    parser.add_argument("--out", help="output folder (default: OUTPUT_DIR/privacy-audit)")
    parser.add_argument("--canaries", type=int, default=20, help="planted canaries (as many fresh ones are drawn)")
    parser.add_argument("--repeats", type=int, default=4, help="copies of each planted canary in the training data")
    parser.add_argument("--client", help="language whose data gets the canaries (default: the first low-resource)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.set_defaults(func=cmd_audit_privacy, builds_model=True)
