"""Benchmark of the efficiency choices of issue 2, each as a ratio against its naive baseline in the same run.

1. A client handling a message with the per-process runtime (model loaded once, data tokenised once) against
   building the model and tokenising the data for every message.
2. Evaluation with dynamic padding against padding every batch to model.max_seq_length.

Run:  python benchmarks/bench_efficiency.py [--model DIR] [--lang swh] [--repeats 3]
The default model is the offline encoder (models/multilingual-e5-small, from `make encoder`). It prints its
figures; nothing is asserted (speed is measured here, never in unit tests).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mfpt.config import load_config
from mfpt.data.clients import ClientSpec, prepare
from mfpt.model.factory import build_model
from mfpt.model.state import load_trainable_state, trainable_state
from mfpt.train.encoding import Encoded, encode
from mfpt.train.evaluation import evaluate
from mfpt.train.loop import steps_per_round, train
from mfpt.train.runtime import get_runtime


def timed(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "multilingual-e5-small"))
    parser.add_argument("--lang", default="swh")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256,
                        help="model.max_seq_length (the presets use 128-256; the demo's 64 truncates most paragraphs)")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"benchmark: no checkpoint at {args.model}; run `make encoder` or pass --model DIR.")
    cfg = load_config(ROOT / "configs" / "demo.toml", {"model.name": args.model, "data.languages": [args.lang],
                                                        "data.low_resource": [], "train.max_steps": 2,
                                                        "model.max_seq_length": args.max_length})
    client = ClientSpec(prepare(cfg).languages[0])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runtime = get_runtime(cfg)
    state = trainable_state(runtime.classifier.model)

    def message_with_runtime() -> None:
        model = get_runtime(cfg).classifier.model
        load_trainable_state(model, state)
        data = runtime.encoded(client, "train")
        train(model, data, runtime.classifier.tokenizer, cfg.train, steps_per_round(len(data), cfg.train), 0,
              runtime.classifier.device)

    def message_rebuilding_everything() -> None:
        fresh = build_model(cfg, len(runtime.data.labels))
        data = encode(prepare(cfg).client_rows(client, "train"), fresh.tokenizer, runtime.data.labels,
                      fresh.max_length, cfg.model.text_prefix)
        load_trainable_state(fresh.model, state)
        train(fresh.model, data, fresh.tokenizer, cfg.train, steps_per_round(len(data), cfg.train), 0, fresh.device)

    cached = timed(message_with_runtime, args.repeats)
    rebuilt = timed(message_rebuilding_everything, args.repeats)

    test = runtime.encoded(client, "test")
    tokenizer = runtime.classifier.tokenizer
    padded = Encoded([tokenizer.pad(dict(f), padding="max_length", max_length=runtime.classifier.max_length) for f in test.features],
                     test.labels)
    model, device, labels = runtime.classifier.model, runtime.classifier.device, len(runtime.data.labels)
    dynamic = timed(lambda: evaluate(model, test, tokenizer, 16, device, labels), args.repeats)
    to_max = timed(lambda: evaluate(model, padded, tokenizer, 16, device, labels), args.repeats)
    mean_len = statistics.mean(len(f["input_ids"]) for f in test.features)

    print(f"model {args.model} ({runtime.classifier.total_params:,} parameters), client {client.lang}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"1. train message, runtime reused:   {cached:7.2f} s")
    print(f"   train message, rebuild each time: {rebuilt:7.2f} s   -> reuse is {rebuilt / cached:.1f}x faster")
    print(f"2. evaluation, dynamic padding:     {dynamic:7.2f} s   (mean {mean_len:.0f} tokens)")
    print(f"   evaluation, padded to {runtime.classifier.max_length:<4}:      {to_max:7.2f} s   -> dynamic is "
          f"{to_max / dynamic:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
