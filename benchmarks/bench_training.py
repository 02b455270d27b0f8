"""Benchmark of mfpt's training loop against Hugging Face `Trainer` + peft, side by side in one process.

Both train the same peft model (built once by mfpt.model.factory.build_model from the demo config; every run starts from the
same initial trainable state) on the same tokenised examples, with the same batch size, learning rate and number of
steps. Runs alternate (mfpt, Trainer, mfpt, Trainer, ...) so that a busy machine slows both alike; the median of
`--repeats` runs is compared. Variants:
- fp32:  mfpt with train.precision = fp32, Trainer with its defaults (what a user would write);
- bf16:  mfpt with train.precision = bf16 (what `auto` picks on a CPU with AVX512-BF16/AMX or a CUDA GPU with bf16),
         Trainer with bf16=True;
- mfpt bf16 + train.group_by_length.
Achieved FLOP/s: the matmul FLOPs of each forward actually run (counted from the padded input shapes by a forward
hook; the encoder is frozen, so a training step is one forward plus one backward of about the same cost, 2x
forward) divided by the run's wall time, against the device's measured matmul peak (the best of several
square matmuls, fp32 and bf16). Accuracy: after each variant's last run, both models are evaluated on the same
test examples (same steps, so the figures should agree within noise).

Run:  python benchmarks/bench_training.py [--model DIR] [--steps 20] [--repeats 3] [--languages eng,swh,hau]
      [--max-length 64] [--set peft.num_virtual_tokens=32] (CUDA is used when present: train.device = auto)
At the paper's scale (a GPU, or a CPU-only site sizing its hardware):
      python benchmarks/bench_training.py --shape xlm-roberta-base --preset configs/paper/xnli.toml \
          --preset-test-examples 5010 --steps 20 --repeats 2
--shape builds an encoder of that architecture with random weights (no hub needed: speed does not depend on the
weights), with the offline encoder's tokenizer. --preset takes the batch size, max_seq_length and prompt from a
preset and prints the hours its training and evaluation would take at the measured speeds (clients one after
another, so an upper bound where several train at once).
It prints its figures; nothing is asserted (speed is measured here, never in unit tests).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mfpt.config import Precision, load_config
from mfpt.data.clients import ClientSpec, prepare
from mfpt.model.factory import build_model
from mfpt.model.state import load_trainable_state, trainable_state
from mfpt.train.encoding import Encoded, encode
from mfpt.train.evaluation import evaluate
from mfpt.train.loop import train
from mfpt.model.precision import cpu_has_fast_bf16


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The best FLOP/s of `repeats` square (size x size) matmuls in `dtype`: the device's practical peak."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * size ** 3 / best


SHAPES = {
    # xlm-roberta-base's published config (the paper's encoder); vocab_size follows the tokenizer actually used.
    "xlm-roberta-base": dict(model_type="xlm-roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1),
}


def random_encoder(shape: str, tokenizer_dir: Path, out: Path) -> Path:
    """A checkpoint folder with `shape`'s architecture, random weights and the tokenizer of `tokenizer_dir`."""
    import shutil

    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    params = dict(SHAPES[shape])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(params.pop("model_type"), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **params)
    torch.manual_seed(0)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    AutoModel.from_config(config).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # a folder with config.json is always complete
    return out


def preset_estimate(preset, seconds_per_step: float, seconds_per_example: float, test_examples: int) -> str:
    """Hours a preset's training and evaluation take at the measured per-step and per-example speeds."""
    from mfpt.train.loop import steps_per_round
    from mfpt.train.schedule import evaluated_rounds

    fed, data = preset.federation, preset.data
    languages = len(data.languages)
    if not data.train_per_language:
        raise SystemExit(f"benchmark: {preset.name} has data.train_per_language = 0 (all of a benchmark's rows); "
                         "the estimate needs a number of training examples per language.")
    per_round = steps_per_round(data.train_per_language, preset.train)
    steps = fed.rounds * round(languages * fed.fraction_train) * per_round
    evaluations = len(evaluated_rounds(fed.rounds, fed.evaluate_every))
    examples = evaluations * round(languages * fed.fraction_evaluate) * test_examples
    train_h, eval_h = steps * seconds_per_step / 3600, examples * seconds_per_example / 3600
    return (f"{preset.name}: {steps:,} training steps ({fed.rounds} rounds x {languages} clients x "
            f"{per_round} steps) = {train_h:.1f} h, and {evaluations} "
            f"evaluations of {test_examples:,} test examples x {languages} languages = {eval_h:.1f} h: "
            f"{train_h + eval_h:.1f} h for one run, clients one after another")


class FlopCounter:
    """Matmul FLOPs of every forward of a BERT/XLM-R-shaped encoder with `prefix` virtual tokens per layer."""

    def __init__(self, model: torch.nn.Module, config, prefix: int) -> None:
        self.flops = 0.0
        d, layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
        self.per_token = layers * (8 * d * d + 4 * d * ffn)  # Q, K, V, O projections and the two FFN matmuls
        self.per_token_pair = layers * 4 * d  # attention scores and the weighted sum over values
        self.prefix = prefix
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        batch, length = kwargs["input_ids"].shape
        self.flops += batch * (length * self.per_token + length * (length + self.prefix) * self.per_token_pair)

    def take(self) -> float:
        flops, self.flops = self.flops, 0.0
        return flops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "multilingual-e5-small"))
    parser.add_argument("--languages", default="eng,fra,swh,hau", help="the demo languages whose data is pooled")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64, help="model.max_seq_length (the demo's 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-examples", type=int, default=192)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="more overrides of configs/demo.toml (e.g. peft.num_virtual_tokens=32)")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="benchmark an encoder of this architecture with random weights (tokenizer: --model's)")
    parser.add_argument("--preset", type=Path, help="take batch size, max_seq_length and [peft] from this preset and "
                        "print the hours it would take")
    parser.add_argument("--preset-test-examples", type=int, default=0,
                        help="test examples per language for the estimate (default: the preset's "
                             "data.test_per_language; XNLI's full test split is 5010)")
    args = parser.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"benchmark: no checkpoint at {args.model}; run `make encoder` or pass --model DIR.")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    preset = load_config(args.preset) if args.preset else None
    test_examples = args.preset_test_examples or (preset.data.test_per_language if preset else 0)
    if preset is not None:
        if not test_examples:
            sys.exit(f"benchmark: {args.preset} scores every test example (data.test_per_language = 0); "
                     "pass --preset-test-examples N (XNLI: 5010).")
        p = preset.peft
        args.set = [f"peft.method=\"{p.method.value}\"", f"peft.num_virtual_tokens={p.num_virtual_tokens}",
                    f"peft.prefix_projection={str(p.prefix_projection).lower()}", *args.set]
        args.batch_size, args.max_length = preset.train.batch_size, preset.model.max_seq_length
    if args.shape:
        args.model = str(random_encoder(args.shape, Path(args.model), Path("/tmp") / f"mfpt-bench-{args.shape}"))
    languages = args.languages.split(",")
    cfg = load_config(ROOT / "configs" / "demo.toml", [*args.set, f"model.name={args.model}",
                                                       f"data.languages={languages!r}".replace("'", '"'),
                                                       "data.low_resource=[]", f"model.max_seq_length={args.max_length}",
                                                       f"train.batch_size={args.batch_size}", "train.precision=\"fp32\""])
    prepared = prepare(cfg)
    classifier = build_model(cfg, len(prepared.labels))
    model, tokenizer, device = classifier.model, classifier.tokenizer, classifier.device
    frames = [prepared.client_rows(ClientSpec(lang), "train") for lang in prepared.languages]
    import pandas as pd

    data = encode(pd.concat(frames, ignore_index=True), tokenizer, prepared.labels, classifier.max_length,
                  cfg.model.text_prefix)
    test_frames = [prepared.client_rows(ClientSpec(lang), "test") for lang in prepared.languages]
    test_all = encode(pd.concat(test_frames, ignore_index=True), tokenizer, prepared.labels, classifier.max_length,
                      cfg.model.text_prefix)
    pick = np.random.default_rng(0).permutation(len(test_all))[:args.eval_examples]
    test = Encoded([test_all.features[i] for i in pick], test_all.labels[pick])
    initial = trainable_state(model)
    encoder_config = model.base_model.config if hasattr(model, "base_model") else model.config
    counter = FlopCounter(model, encoder_config, cfg.peft.num_virtual_tokens)
    num_labels = len(prepared.labels)

    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    rows = [{**f, "labels": int(label)} for f, label in zip(data.features, data.labels)]
    hf_data = Dataset.from_list(rows)
    collator = DataCollatorWithPadding(tokenizer)

    def run_mfpt(precision: str, group: bool, steps: int) -> tuple[float, float, float]:
        load_trainable_state(model, initial)
        train_cfg = cfg.replace(**{"train.precision": precision, "train.group_by_length": group}).train
        counter.take()
        start = time.perf_counter()
        stats = train(model, data, tokenizer, train_cfg, steps, seed=0, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, counter.take(), stats.mean_loss

    def run_trainer(bf16: bool, steps: int) -> tuple[float, float, float]:
        load_trainable_state(model, initial)
        out = Path("/tmp/mfpt-bench-trainer")
        # Trainer's defaults, as a user would write them, with the same batch, steps and learning rate as mfpt;
        # no checkpoints, logs or reports (they would only add I/O to its side).
        targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=args.batch_size,
                                  max_steps=steps, learning_rate=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                  max_grad_norm=cfg.train.grad_clip, lr_scheduler_type="constant",
                                  warmup_steps=0, bf16=bf16, save_strategy="no", logging_strategy="no",
                                  report_to=[], seed=0, disable_tqdm=True, use_cpu=device.type == "cpu")
        trainer = Trainer(model=model, args=targs, train_dataset=hf_data, data_collator=collator)
        counter.take()
        start = time.perf_counter()
        result = trainer.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, counter.take(), float(result.training_loss)

    variants = {
        "mfpt fp32": lambda steps=args.steps: run_mfpt("fp32", False, steps),
        "Trainer fp32 (defaults)": lambda steps=args.steps: run_trainer(False, steps),
        "mfpt bf16": lambda steps=args.steps: run_mfpt("bf16", False, steps),
        "Trainer bf16": lambda steps=args.steps: run_trainer(True, steps),
        "mfpt bf16 + group_by_length": lambda steps=args.steps: run_mfpt("bf16", True, steps),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    flops: dict[str, float] = {}
    losses: dict[str, float] = {}
    accuracy: dict[str, float] = {}
    eval_seconds: dict[str, float] = {}
    for name, fn in variants.items():  # a 2-step warm-up each (allocator, oneDNN kernels, Trainer's first call)
        fn(min(2, args.steps))
    for repeat in range(args.repeats):
        for name, fn in variants.items():
            seconds, flops[name], losses[name] = fn()
            times[name].append(seconds)
            if repeat == args.repeats - 1:  # the state this run trained, scored on the same test examples for all
                precision = Precision.BF16 if "bf16" in name else Precision.FP32
                start = time.perf_counter()
                accuracy[name] = evaluate(model, test, tokenizer, 64, device, num_labels, precision).accuracy
                eval_seconds[name] = time.perf_counter() - start

    threads = torch.get_num_threads()
    peak32 = matmul_peak(torch.float32, device)
    peak16 = matmul_peak(torch.bfloat16, device)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["Trainer fp32 (defaults)"]
    where = f"CUDA ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else \
        f"CPU, {threads} threads, AVX512-BF16/AMX: {'yes' if cpu_has_fast_bf16() else 'no'}"
    print(f"model {args.model}: {cfg.peft.method.value} with {cfg.peft.num_virtual_tokens} virtual tokens, "
          f"{classifier.trainable_params:,} trainable of {classifier.total_params:,}; {where}")
    print(f"{len(data)} training examples ({', '.join(prepared.languages)}), batch {args.batch_size}, {args.steps} steps, "
          f"max_seq_length {args.max_length}; median of {args.repeats} alternating runs after a 2-step warm-up each")
    print(f"measured matmul peak: fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s")
    print(f"{'variant':<30} {'s/run':>7} {'steps/s':>8} {'vs Trainer fp32':>16} {'GFLOP/s':>8} {'% of peak':>10} "
          f"{'loss':>6} {'test acc':>9}")
    for name in variants:
        rate = 2 * flops[name] / median[name]  # forward + backward (frozen encoder: input gradients only)
        peak = peak16 if "bf16" in name else peak32
        print(f"{name:<30} {median[name]:7.2f} {args.steps / median[name]:8.2f} {base / median[name]:15.2f}x "
              f"{rate / 1e9:8.1f} {100 * rate / peak:9.0f}% {losses[name]:6.3f} {100 * accuracy[name]:8.1f}%")
    print(f"(test acc on {len(test)} test examples after {args.steps} steps from the same initial state; "
          f"'vs Trainer fp32' = Trainer fp32 time / variant time)")
    if preset is not None:
        for name in ("mfpt fp32", "mfpt bf16", "mfpt bf16 + group_by_length"):
            per_example = eval_seconds[name] / len(test)
            print(f"estimate with {name} ({args.steps / median[name]:.2f} steps/s, {1 / per_example:.0f} test "
                  f"examples/s): " + preset_estimate(preset, median[name] / args.steps, per_example, test_examples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
