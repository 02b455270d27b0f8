"""Benchmark of what the federation costs on top of the clients' own compute, side by side in one run.

1. Overhead per round: a real federation (mfpt's ServerApp logic, Flower messages and records, the real ClientApp
   with its audit mod) on an in-process Flower Grid that hands each message to the ClientApp in this process, one
   after another. Client compute is the time spent inside the training loop and the evaluation
   (mfpt.train.loop.train / evaluate); overhead is the rest of the round's wall time: messages, (de)serialising the
   trainable state, config decoding, update checks, aggregation, recording and the round's checkpoint.
2. The same federation with a naive client that rebuilds the model and re-reads and re-tokenises its data for
   every message, as Flower's quickstart does (`Net()` and `load_data()` inside each handler); runs alternate.
3. Peak memory against the number of simulated clients (10, 100, 300 by default): each count runs in a fresh
   process with a tiny random encoder, 10 languages (1, 10, 30 clients each, the same data), 10% of the clients
   sampled per round, 3 rounds; the process's peak RSS is compared (MB per extra client).

Run:  python benchmarks/bench_federation.py [--model DIR] [--languages eng,fra,swh,hau] [--rounds 2]
      [--steps 2] [--repeats 2] [--clients 10,100,300] [--memory-only]
It prints its figures; nothing is asserted (speed is measured here, never in unit tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import mfpt.federation.node as client_module  # noqa: E402
import mfpt.train.runtime as runtime_module  # noqa: E402
from mfpt.client_app import app as client_app  # noqa: E402
from mfpt.config import load_config
from mfpt.federation.server import run_federated
from mfpt.results.recorder import RunRecorder


class InProcessGrid(Grid):
    """A Flower Grid whose nodes are the real ClientApp in this process, served one message after another."""

    def __init__(self, num_clients: int) -> None:
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i, node_config={"partition-id": i},
                                          state=RecordDict(), run_config={}) for i in range(num_clients)}

    def set_run(self, run) -> None: ...
    @property
    def run(self): ...
    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def push_messages(self, messages):  # send_and_receive is all mfpt's server uses
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        return [client_app(msg, self.contexts[msg.metadata.dst_node_id]) for msg in messages]


class Clock:
    """Client compute (inside train/evaluate) and the wall time of each round, from the recorder's end_round."""

    def __init__(self) -> None:
        self.compute = 0.0
        self.marks: list[tuple[float, float]] = []  # (wall time, compute so far) at the start and each round's end
        self._patches: list[tuple[object, str, object]] = []

    def install(self) -> None:
        for name in ("train", "evaluate"):
            self._wrap(client_module, name)
        original_end = RunRecorder.end_round
        original_begin = RunRecorder.begin
        clock = self

        def begin(recorder, resume):
            result = original_begin(recorder, resume)
            clock.marks.append((time.perf_counter(), clock.compute))
            return result

        def end_round(recorder, *args, **kwargs):  # whatever the recorder's signature grows to
            original_end(recorder, *args, **kwargs)
            clock.marks.append((time.perf_counter(), clock.compute))

        self._set(RunRecorder, "begin", begin)
        self._set(RunRecorder, "end_round", end_round)

    def _wrap(self, module, name: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.compute += time.perf_counter() - start

        self._set(module, name, timed)

    def _set(self, owner, name: str, value) -> None:
        self._patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def remove(self) -> None:
        for owner, name, value in reversed(self._patches):
            setattr(owner, name, value)
        self._patches.clear()

    def rounds(self) -> list[tuple[float, float]]:
        """(wall seconds, client compute seconds) of each round after the first (the first also loads the model
        and tokenises every client's data in the handshake)."""
        pairs = list(zip(self.marks, self.marks[1:]))[1:]
        return [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]


def naive_runtime(cfg):
    """What Flower's quickstart does in every handler: build the model and load and tokenise the data afresh."""
    return runtime_module._runtime.__wrapped__(runtime_module._model_key(cfg))


def federation(cfg, clients: int, naive: bool) -> tuple[float, list[tuple[float, float]]]:
    """Run one federation; its wall seconds and each round's (wall, compute) after the first."""
    clock = Clock()
    clock.install()
    if naive:
        clock._set(client_module, "get_runtime", naive_runtime)
    try:
        start = time.perf_counter()
        run_federated(InProcessGrid(clients), cfg, quiet=True)
        return time.perf_counter() - start, clock.rounds()
    finally:
        clock.remove()


# ------------------------------------------------------------------------------------------ memory (child process)


def tiny_model(folder: Path, tokenizer_source: str) -> Path:
    """A 2-layer, hidden-32 random BERT with the offline encoder's tokenizer (the tests' kind of tiny model)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


LANGUAGES = ["eng", "fra", "deu", "spa", "rus", "swh", "hau", "yor", "amh", "zul"]
WORDS = "rain river school market health vote match goal court law crop bank song field road city".split()


def synthetic_data(path: Path, per_language: int = 60) -> Path:
    """Short random-word texts with 3 labels: the same file for every client count."""
    rng = np.random.default_rng(0)
    rows = []
    for lang in LANGUAGES:
        for split, n in (("train", per_language), ("test", per_language // 5)):
            for i in range(n):
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 20))))
                rows.append({"text": text, "label": ["a", "b", "c"][i % 3], "lang": lang, "split": split})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def memory_child(clients: int, model: Path, data: Path, out: Path) -> int:
    """Run 3 rounds with `clients` simulated clients (10% sampled); print the peak RSS in MB as JSON."""
    per_language = clients // len(LANGUAGES)
    cfg = load_config(None, {"name": "mem", "output_dir": str(out), "model.name": str(model),
                             "model.max_seq_length": 32, "data.source": "files", "data.path": str(data),
                             "data.languages": LANGUAGES, "data.labels": ["a", "b", "c"],
                             "federation.clients_per_language": per_language, "federation.rounds": 3,
                             "federation.fraction_train": 0.1, "federation.fraction_evaluate": 0.1,
                             "peft.num_virtual_tokens": 4, "train.batch_size": 8, "train.threads": 1,
                             "train.device": "cpu"})
    before = status_mb("VmHWM")
    start = time.perf_counter()
    run_federated(InProcessGrid(per_language * len(LANGUAGES)), cfg, quiet=True)
    print(json.dumps({"clients": clients, "peak_mb": status_mb("VmHWM"), "start_mb": before,
                      "end_mb": status_mb("VmRSS"), "seconds": time.perf_counter() - start}))
    return 0


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB: VmRSS (resident now) or VmHWM (peak).

    Not getrusage's ru_maxrss: Linux carries it over from the parent through fork and exec, so a child started by
    a parent that holds the real encoder would report the parent's peak (2.2 GB here) whatever it used itself."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_by_clients(counts: list[int], model_dir: str) -> list[dict]:
    """Peak RSS of a fresh process per client count."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = tiny_model(tmp_path / "tiny", model_dir)
        data = synthetic_data(tmp_path / "data.jsonl")
        found = []
        for clients in counts:
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(clients), "--tiny", str(model),
                                  "--data", str(data), "--out", str(tmp_path / f"run-{clients}")],
                                 capture_output=True, text=True, check=True)
            found.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "multilingual-e5-small"))
    parser.add_argument("--languages", default="eng,fra,swh,hau")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="train.max_steps per round (0 = the demo's full epoch)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clients", default="10,100,300")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--memory-only", action="store_true", help="only part 3 (peak memory by number of clients)")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tiny", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # messages built outside Flower's runtime
    if args.memory_child:
        return memory_child(args.memory_child, Path(args.tiny), Path(args.data), Path(args.out))
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"benchmark: no checkpoint at {args.model}; run `make encoder` or pass --model DIR.")
    if not args.memory_only:
        overhead(args)
    memory_report([int(c) for c in args.clients.split(",")], args.model)
    return 0


def overhead(args) -> None:
    """Part 1 and 2: overhead per round, and the naive rebuild-per-message client."""
    languages = args.languages.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        def cfg_for(name: str):
            return load_config(ROOT / "configs" / "demo.toml", [
                *args.set, f"model.name={json.dumps(args.model)}", f"data.languages={json.dumps(languages)}",
                "data.low_resource=[]", f"federation.rounds={args.rounds}", f"train.max_steps={args.steps}",
                "train.threads=0", f"output_dir={json.dumps(str(Path(tmp) / name))}"])

        cfg = cfg_for("warm")
        federation(cfg, len(languages), naive=False)  # warm-up: loads the model, tokenises, first kernels
        walls: dict[str, list[float]] = {"mfpt": [], "naive": []}
        rounds: dict[str, list[tuple[float, float]]] = {"mfpt": [], "naive": []}
        for repeat in range(args.repeats):
            for kind in ("mfpt", "naive"):
                wall, per_round = federation(cfg_for(f"{kind}-{repeat}"), len(languages), naive=kind == "naive")
                walls[kind].append(wall)
                rounds[kind] += per_round
    print(f"federation on an in-process Flower grid: {args.model}, {len(languages)} clients ({', '.join(languages)}), "
          f"{args.rounds} rounds, configs/demo.toml otherwise; {args.repeats} alternating runs after a warm-up")
    for kind, label in (("mfpt", "mfpt (model and data kept per process)"),
                        ("naive", "naive (rebuilds model + data per message)")):
        wall = sum(w for w, _ in rounds[kind])
        compute = sum(c for _, c in rounds[kind])
        print(f"  {label:<44} round wall {wall / len(rounds[kind]):6.2f} s, client compute {compute / len(rounds[kind]):6.2f} s"
              f" -> overhead {100 * (1 - compute / wall):5.1f}% of a round; whole run {statistics.median(walls[kind]):6.1f} s")
    mfpt_round = sum(w for w, _ in rounds["mfpt"]) / len(rounds["mfpt"])
    naive_round = sum(w for w, _ in rounds["naive"]) / len(rounds["naive"])
    print(f"  naive round / mfpt round: {naive_round / mfpt_round:.2f}x")


def memory_report(counts: list[int], model: str) -> None:
    """Part 3: peak and resident memory by number of simulated clients."""
    memory = memory_by_clients(counts, model)
    print(f"peak memory of a federation process by number of simulated clients (tiny random encoder, "
          f"{len(LANGUAGES)} languages, 10% of clients per round, 3 rounds; fresh process each):")
    for row in memory:
        print(f"  {row['clients']:>4} clients: peak RSS {row['peak_mb']:7.1f} MB, resident after the run "
              f"{row['end_mb']:7.1f} MB ({row['seconds']:.0f} s)")
    first, last = memory[0], memory[-1]
    if last["clients"] > first["clients"]:
        extra = last["clients"] - first["clients"]
        print(f"  -> per extra client ({first['clients']} -> {last['clients']}): peak "
              f"{(last['peak_mb'] - first['peak_mb']) / extra:.3f} MB, resident {(last['end_mb'] - first['end_mb']) / extra:.3f} MB")


if __name__ == "__main__":
    sys.exit(main())
