"""Benchmark of what one deployment message costs a SuperNode: the fresh ClientApp process Flower starts for it.

Flower 1.42's SuperNode runs each message in a new `flwr-clientapp` process (supernode/runtime/run_clientapp.py:
pull one message, run the app, push the reply, exit), so nothing a process keeps survives to the next message.
This benchmark runs, in fresh Python processes, what such a process does for one train message of an experiment:
import the ClientApp, read the node's file, load the model, tokenise the node's training split, train one round
and evaluate; and it times each phase. The same work in a process that already holds the model and the
tokenised data (what a simulation's Ray actor and an in-process run reuse) is the "train + evaluate" part alone.

Run:  python benchmarks/bench_clientapp_process.py [--config configs/demo.toml] [--lang hau] [--repeats 3]
It prints its figures; nothing is asserted (speed is measured here, never in unit tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("import", "config", "data", "model", "tokenise", "train", "evaluate")


def child(entries_path: str, node_config_path: str) -> None:
    """One ClientApp process for one train message, then the evaluate the server sends next; phases on stdout."""
    started = time.perf_counter()
    times: dict[str, float] = {}
    import mfpt.client_app  # noqa: F401  (what Flower loads first)
    import mfpt.federation.node as node_module
    import mfpt.train.runtime as runtime_module

    times["import"] = time.perf_counter() - started

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    runtime_module.prepare = timed("data", runtime_module.prepare)
    runtime_module.build_model = timed("model", runtime_module.build_model)
    runtime_module.encode_for = timed("tokenise", runtime_module.encode_for)
    entries = json.loads(Path(entries_path).read_text(encoding="utf-8"))
    node_config = json.loads(Path(node_config_path).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    node = node_module.ClientNode.for_message(entries, node_config)
    times["config"] = time.perf_counter() - t0 - times.get("data", 0.0) - times.get("model", 0.0)
    state = dict(node.runtime.initial_state)
    node_module.train = timed("train", node_module.train)
    node_module.evaluate = timed("evaluate", node_module.evaluate)
    node.train(state, {"mfpt.round": 1})
    node.evaluate(state, None, {"mfpt.round": 1})
    times["total"] = time.perf_counter() - started
    print("PHASES " + json.dumps(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.toml"))
    parser.add_argument("--lang", default="hau", help="the node's language")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    sys.path.insert(0, str(ROOT))
    from mfpt.config import load_config
    from mfpt.data.clients import prepare, resolve
    from mfpt.data.sources import LANG, SPLIT
    from mfpt.federation.protocol import config_entries

    cfg = resolve(load_config(args.config))
    cfg = cfg.replace(**{"train.threads": 1})  # one site's process; the benchmark may share its machine
    data = prepare(cfg)
    client = next(c for c in data.clients if c.lang == args.lang)
    with tempfile.TemporaryDirectory() as tmp:
        node_file = Path(tmp) / f"{args.lang}.jsonl"
        frames = []
        for split in ("train", "validation", "test"):
            rows = data.client_rows(client, split).copy()
            rows[SPLIT], rows[LANG] = split, args.lang
            frames.append(rows)
        import pandas as pd

        pd.concat(frames).to_json(node_file, orient="records", lines=True, force_ascii=False)
        (Path(tmp) / "entries.json").write_text(json.dumps(config_entries(cfg)), encoding="utf-8")
        (Path(tmp) / "node.json").write_text(json.dumps({"lang": args.lang, "data-path": str(node_file)}),
                                             encoding="utf-8")
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / "entries.json"),
                                   str(Path(tmp) / "node.json")], capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - t0
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PHASES ")), None)
            if line is None:
                raise SystemExit(f"child failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
            phases = json.loads(line[len("PHASES "):])
            phases["process"] = wall
            runs.append(phases)
    print(f"{cfg.model.name}, node {args.lang!r} ({len(data.client_rows(client, 'train'))} training rows), "
          f"{args.repeats} fresh processes; median seconds")
    median = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in (*PHASES, "total", "process")}
    work = median["train"] + median["evaluate"]
    for name in (*PHASES, "process"):
        print(f"  {name:<9} {median[name]:7.2f} s")
    print(f"  the message's own work (train + evaluate): {work:.2f} s; the whole process: {median['process']:.2f} s "
          f"= {median['process'] / work:.1f}x the work")


if __name__ == "__main__":
    main()
