"""`make demo`: federated prompt tuning vs local training on udhr-topics, then one report.

Each paradigm runs in its own process (`mfpt run`), with live progress; a finished run is reused and a
half-done one resumed, so an interrupted demo continues where it stopped. The report is runs/demo/report.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mfpt import io  # noqa: E402
from mfpt.report import render_comparison  # noqa: E402
from mfpt.sweep import clear_run_folder, run_state  # noqa: E402

CONFIG = ROOT / "configs" / "demo.toml"
OUT = ROOT / "runs" / "demo"
PARADIGMS = ("federated", "local")


def run(paradigm: str, out: Path, overrides: list[str]) -> Path:
    """Run (or resume, or reuse) one paradigm of the demo config; return its folder."""
    folder = out / paradigm
    state = run_state(folder)
    if state == "complete":
        print(f"== {paradigm}: already complete in {folder}, reusing it", flush=True)
        return folder
    if state == "empty":
        clear_run_folder(folder)
    command = [sys.executable, "-m", "mfpt.cli", "run", str(CONFIG), "--set", f"paradigm={paradigm}", "--out", str(folder)]
    for item in overrides:
        command += ["--set", item]
    if state == "partial":
        command += ["--resume", str(folder)]
    print(f"== {paradigm}: {' '.join(command[2:])}", flush=True)
    started = time.time()
    code = subprocess.run(command, cwd=ROOT).returncode
    if code != 0:
        sys.exit(f"demo: the {paradigm} run failed (exit {code}); run `make demo` again to resume it.")
    print(f"== {paradigm}: done in {time.time() - started:.0f} s", flush=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the mfpt demo (federated vs local) and write its report.")
    parser.add_argument("--out", type=Path, default=OUT, help="demo folder (default: runs/demo)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a key of configs/demo.toml for both runs (repeatable)")
    args = parser.parse_args(argv)
    started = time.time()
    results = [io.read_json(run(p, args.out, args.set) / "results.json") for p in PARADIGMS]
    report = render_comparison(results, args.out, title="mfpt demo: federated prompt tuning vs local training on udhr-topics")
    io.write_text(args.out / "report.md", report)
    print("\n" + report.split("\n| run |")[0])
    print(f"demo finished in {time.time() - started:.0f} s; report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
