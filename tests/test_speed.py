"""Speed keys (issue 14): train.precision, train.group_by_length, federation.evaluate_every, data.selection, and
the bounded per-process cache. Each test fails if its key stops doing what its help text says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import LABELS, LANGS, TINY_DATA, InProcessGrid, federated_config, metrics_rows

from mfpt.analysis.report import write_run_report
from mfpt.config import ConfigError, Precision, describe, load_config
from mfpt.data.sources import DataError
from mfpt.experiments.paradigms import run_experiment
from mfpt.federation import node as client_module
from mfpt.federation.protocol import ARRAYS, CONFIG, ROUND_KEY
from mfpt.federation.server import run_federated
from mfpt.model import precision as precision_module
from mfpt.model.factory import build_model
from mfpt.model.precision import autocast_dtype
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint
from mfpt.results.recorder import RunRecorder
from mfpt.results.schema import METRICS_FILE, read_result
from mfpt.train.batching import length_grouped_order, shuffled_order
from mfpt.train.dpsgd import DpSgd
from mfpt.train.encoding import encode
from mfpt.train.loop import train
from mfpt.train.runtime import ENCODED_ENTRIES, Runtime
from mfpt.train.schedule import best_round, choice_for, evaluated_rounds, evaluates_in_round

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture
def data_with_validation(tmp_path) -> Path:
    """The fixture data with a third of each language's training rows moved to a validation split."""
    frame = pd.read_json(TINY_DATA, lines=True)
    train = frame["split"] == "train"
    rank = frame[train].groupby("lang").cumcount()
    frame.loc[rank[rank % 3 == 0].index, "split"] = "validation"
    path = tmp_path / "with-validation.jsonl"
    frame.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def test_every_new_key_is_listed_with_help():
    text = describe()
    for key in ("train.precision", "train.group_by_length", "federation.evaluate_every", "data.selection"):
        line = next(line for line in text.splitlines() if line.strip().startswith(key + " ="))
        help_line = text.splitlines()[text.splitlines().index(line) + 1]
        assert len(help_line.strip()) > 30, key


def _evaluations(grid: InProcessGrid) -> list[tuple[int, str]]:
    """(round, split) of every evaluation message the grid sent."""
    return [(round_, split) for round_, split, msg in grid.log if msg.metadata.message_type == "evaluate"]


# ------------------------------------------------------------------------------------------ precision


def test_auto_precision_is_bf16_only_where_the_device_runs_it_fast(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    assert autocast_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp16", cpu) is torch.float16


def test_results_record_the_precision_auto_resolved_to(monkeypatch):
    """Runs of one seed can differ between machines; versions.compute says where and at what precision each ran."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: True)
    assert precision_module.describe_compute(cpu, "auto").endswith(", bf16 autocast")
    monkeypatch.setattr(precision_module, "cpu_has_fast_bf16", lambda: False)
    assert precision_module.describe_compute(cpu, "auto").endswith(", fp32")
    assert precision_module.describe_compute(cpu, "fp16").startswith("cpu")
    assert precision_module.describe_compute(cpu, "fp16").endswith(", fp16 autocast")


def _activation_dtypes(cfg, precision: str, monkeypatch=None, dp=None):
    """Train 2 steps under `precision` (DP-SGD with `dp`); the dtypes seen at a frozen Linear's output, and the model."""
    cfg = cfg.replace(**{"train.precision": precision})
    classifier = build_model(cfg, len(LABELS))
    frame = pd.read_json(TINY_DATA, lines=True)
    frame = frame[(frame["lang"] == "eng") & (frame["split"] == "train")]
    data = encode(frame, classifier.tokenizer, LABELS, 32)
    seen: list[torch.dtype] = []
    linear = next(m for n, m in classifier.model.named_modules() if isinstance(m, torch.nn.Linear) and "query" in n)
    handle = linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        stats = train(classifier.model, data, classifier.tokenizer, cfg.train, 2, seed=0, device=torch.device("cpu"), dp=dp)
    finally:
        handle.remove()
    return seen, classifier.model, stats


def test_bf16_runs_the_forward_in_bf16_and_keeps_trainable_tensors_fp32(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path)
    seen, model, stats = _activation_dtypes(cfg, "bf16")
    assert seen and set(seen) == {torch.bfloat16}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainable)
    assert np.isfinite(stats.mean_loss) and stats.steps == 2
    seen32, _, _ = _activation_dtypes(cfg, "fp32")
    assert set(seen32) == {torch.float32}


def test_dp_sgd_runs_its_forward_in_bf16_but_never_in_fp16(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path)
    seen, model, stats = _activation_dtypes(cfg, "bf16", dp=DpSgd(clip_norm=1.0, noise_multiplier=1.0))
    assert seen and set(seen) == {torch.bfloat16} and np.isfinite(stats.mean_loss)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    seen16, _, _ = _activation_dtypes(cfg, "fp16", dp=DpSgd(clip_norm=1.0, noise_multiplier=1.0))
    assert set(seen16) == {torch.float32}  # per-example gradients without loss scaling would underflow in fp16


def test_fp16_scales_the_loss_and_still_steps_fp32_tensors(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path)
    before = {n: p.detach().clone() for n, p in build_model(cfg, len(LABELS)).model.named_parameters() if p.requires_grad}
    seen, model, stats = _activation_dtypes(cfg, "fp16")
    assert set(seen) == {torch.float16} and np.isfinite(stats.mean_loss)
    after = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the scaled steps were taken, not skipped


def test_bf16_federated_update_is_fp32_and_evaluation_uses_bf16(make_config, tmp_path, monkeypatch):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 1, "train.precision": "bf16"})
    calls = []
    original = precision_module.forward_context

    def spy(dtype, device):
        calls.append(dtype)
        return original(dtype, device)

    monkeypatch.setattr("mfpt.train.loop.forward_context", spy)
    monkeypatch.setattr("mfpt.train.evaluation.forward_context", spy)
    run_federated(InProcessGrid(3), cfg, quiet=True)
    state = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    assert state and all(v.dtype == torch.float32 for v in state.values())
    assert calls and set(calls) == {torch.bfloat16}  # training and evaluation forwards


def test_unknown_precision_is_one_config_error(make_config):
    with pytest.raises(ConfigError, match="train.precision"):
        make_config(**{"train.precision": "int8"})
    assert make_config(**{"train.precision": "auto"}).train.precision == Precision.AUTO


# ------------------------------------------------------------------------------------------ group_by_length


def _padded_tokens(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> int:
    return sum(int(lengths[order[i:i + batch_size]].max()) * len(order[i:i + batch_size])
               for i in range(0, len(order), batch_size))


def test_group_by_length_pads_less_and_is_reproducible():
    lengths = np.random.default_rng(1).integers(5, 120, size=203)
    grouped = length_grouped_order(lengths, 8, np.random.default_rng(7))
    assert sorted(grouped.tolist()) == list(range(203))  # a permutation: every example once
    np.testing.assert_array_equal(grouped, length_grouped_order(lengths, 8, np.random.default_rng(7)))
    assert not np.array_equal(grouped, length_grouped_order(lengths, 8, np.random.default_rng(8)))
    shuffled = shuffled_order(203, np.random.default_rng(7))
    assert _padded_tokens(lengths, grouped, 8) < 0.8 * _padded_tokens(lengths, shuffled, 8)
    # 203 = 25 batches of 8 + one of 3, all in one chunk sorted by length: the short batch holds the 3 shortest
    # examples, and it comes last (so every earlier slice of 8 is a whole batch).
    assert sorted(lengths[grouped[200:]].tolist()) == sorted(lengths.tolist())[:3]
    assert all(lengths[grouped[i:i + 8]].min() >= lengths[grouped[200:]].max() for i in range(0, 200, 8))


def test_train_with_group_by_length_sees_shorter_padded_batches(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"train.batch_size": 4})
    classifier = build_model(cfg, len(LABELS))
    frame = pd.read_json(TINY_DATA, lines=True)
    frame = frame[frame["split"] == "train"]
    data = encode(frame, classifier.tokenizer, LABELS, 32)

    def padded(group: bool) -> list[int]:
        widths: list[int] = []
        handle = classifier.model.register_forward_pre_hook(
            lambda module, args, kwargs: widths.append(kwargs["input_ids"].numel()), with_kwargs=True)
        try:
            train(classifier.model, data, classifier.tokenizer, cfg.train.__class__(
                **{**cfg.train.__dict__, "group_by_length": group}), len(data) // 4, seed=3, device=torch.device("cpu"))
        finally:
            handle.remove()
        return widths

    grouped, plain = padded(True), padded(False)
    assert sum(grouped) < sum(plain)
    assert grouped == padded(True)  # same seed, same batches


# ------------------------------------------------------------------------------------------ evaluate_every


def test_evaluated_rounds_are_every_nth_and_the_last():
    assert evaluated_rounds(7, 3) == [3, 6, 7]
    assert evaluated_rounds(6, 3) == [3, 6]
    assert evaluated_rounds(4, 1) == [1, 2, 3, 4]
    assert not evaluates_in_round(1, 7, 3) and evaluates_in_round(7, 7, 3)


def test_federated_evaluate_every_3_over_7_rounds_evaluates_rounds_3_6_7(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 7, "federation.evaluate_every": 3,
                                         "train.max_steps": 1})
    grid = InProcessGrid(3)
    result = run_federated(grid, cfg, quiet=True)
    assert sorted({r["round"] for r in metrics_rows(cfg.output_dir, "test")}) == [3, 6, 7]
    assert sorted({r["round"] for r in metrics_rows(cfg.output_dir, "train")}) == list(range(1, 8))
    assert _evaluations(grid) == [(3, "test")] * 3 + [(6, "test")] * 3 + [(7, "test")] * 3
    assert result.selection["round"] == 7 and result.selection["rule"] == "last"
    assert not metrics_rows(cfg.output_dir, "missing")  # a skipped evaluation is not a silent client


def test_local_evaluate_every_3_over_7_rounds_evaluates_rounds_3_6_7(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"paradigm": "local", "federation.rounds": 7,
                                         "federation.evaluate_every": 3, "train.max_steps": 1})
    run_experiment(cfg, quiet=True)
    assert sorted({r["round"] for r in metrics_rows(cfg.output_dir, "test")}) == [3, 6, 7]


def test_evaluate_every_must_be_positive(make_config):
    with pytest.raises(ConfigError, match="federation.evaluate_every"):
        make_config(**{"federation.evaluate_every": 0})


# ------------------------------------------------------------------------------------------ best-validation


def test_best_round_is_the_highest_mean_validation_accuracy_earliest_on_ties():
    assert best_round({1: 0.40, 2: 0.61, 3: 0.61, 4: 0.55}) == 2
    assert best_round({3: 0.2, 6: 0.9, 7: 0.5}) == 6


def test_recorder_reports_the_round_a_constructed_history_selects(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"data.selection": "best-validation", "federation.rounds": 4})
    recorder = RunRecorder(cfg, Path(cfg.output_dir), 10, 100, quiet=True)
    recorder.begin(False)
    history = {1: [0.3, 0.4, 0.5], 2: [0.7, 0.6, 0.8], 3: [0.9, 0.2, 0.4], 4: [0.6, 0.6, 0.6]}  # means .4 .7 .5 .6
    rows = [{"round": r, "split": "validation", "lang": lang, "accuracy": a, "macro_f1": a, "loss": 1.0, "n_test": 5,
             "heldout": False} for r, accs in history.items() for lang, a in zip(LANGS, accs)]
    rows += [{"round": 2, "split": "test", "lang": lang, "accuracy": 0.55, "macro_f1": 0.5, "loss": 1.0, "n_test": 9,
              "heldout": False, "selected": True} for lang in LANGS]
    Path(cfg.output_dir, METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert recorder.selected_round() == 2
    result = recorder.finish()
    assert result.selection["round"] == 2 and "best mean validation accuracy (70.0%)" in result.selection["reason"]
    assert result.average.accuracy == pytest.approx(0.55) and result.per_language["eng"].n_test == 9
    assert "round 2" in write_run_report(cfg.output_dir).read_text(encoding="utf-8")
    assert choice_for(cfg.replace(**{"data.selection": "last"}), {1: 0.4, 2: 0.7, 4: 0.6}).round == 4


def test_federated_best_validation_scores_test_once_with_the_best_rounds_state(make_config, tmp_path, data_with_validation):
    cfg = federated_config(make_config, tmp_path, **{"data.path": str(data_with_validation), "data.selection": "best-validation",
                                         "federation.rounds": 3, "train.lr": 0.05})
    grid = InProcessGrid(3)
    result = run_federated(grid, cfg, quiet=True)
    validation = metrics_rows(cfg.output_dir, "validation")
    assert sorted({r["round"] for r in validation}) == [1, 2, 3]
    means = {r: np.mean([v["accuracy"] for v in validation if v["round"] == r]) for r in (1, 2, 3)}
    chosen = best_round(means)
    test = metrics_rows(cfg.output_dir, "test")
    assert {r["round"] for r in test} == {chosen} and all(r["selected"] for r in test) and len(test) == 3
    assert result.selection == read_result(cfg.output_dir).selection and result.selection["round"] == chosen
    # Every round's evaluation asked for validation; one extra message per node asked for test, with the chosen state.
    assert _evaluations(grid) == [(r, "validation") for r in (1, 2, 3) for _ in range(3)] + [(chosen, "test")] * 3
    test_state = [m for m in grid.sent if m.metadata.message_type == "evaluate"][-1].content[ARRAYS].to_torch_state_dict()
    server = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 3)).server_state
    assert server["selection/round"].tolist() == [chosen]  # kept in every round's checkpoint: a resume keeps it
    kept = load_checkpoint(checkpoint_path(Path(cfg.output_dir), chosen)).state
    for key, value in kept.items():
        torch.testing.assert_close(test_state[key], value, rtol=0, atol=0)
        np.testing.assert_array_equal(server[f"selection/state/{key}"], value.numpy())


def test_local_best_validation_scores_the_selected_round_on_test(make_config, tmp_path, data_with_validation):
    cfg = federated_config(make_config, tmp_path, **{"paradigm": "local", "data.path": str(data_with_validation),
                                         "data.selection": "best-validation", "federation.rounds": 3})
    result = run_experiment(cfg, quiet=True)
    validation = metrics_rows(cfg.output_dir, "validation")
    means = {r: np.mean([v["accuracy"] for v in validation if v["round"] == r]) for r in (1, 2, 3)}
    assert result.selection["round"] == best_round(means)
    assert {r["round"] for r in metrics_rows(cfg.output_dir, "test")} == {best_round(means)}


def test_best_validation_needs_a_validation_split_and_the_test_split(make_config, tmp_path):
    with pytest.raises(ConfigError, match="data.eval_split"):
        make_config(**{"data.selection": "best-validation", "data.eval_split": "validation"})
    with pytest.raises(ConfigError, match="data.train_pool"):
        make_config(**{"data.selection": "best-validation", "data.train_pool": "validation"})
    # The fixture has no validation rows: with none carved from training either, nothing can be selected on.
    cfg = federated_config(make_config, tmp_path, **{"paradigm": "local", "data.selection": "best-validation",
                                                     "data.validation_fraction": 0.0})
    with pytest.raises(DataError, match="data.selection = 'best-validation' needs a validation split"):
        run_experiment(cfg, quiet=True)


# ------------------------------------------------------------------------------------------ bounded cache


def test_runtime_keeps_at_most_a_bounded_number_of_tokenised_splits(make_config, tmp_path):
    from mfpt.data.clients import ClientSpec, prepare

    cfg = federated_config(make_config, tmp_path)
    classifier = build_model(cfg, len(LABELS))
    runtime = Runtime(cfg, prepare(cfg), classifier)
    rows = pd.read_json(TINY_DATA, lines=True).head(3)
    for i in range(ENCODED_ENTRIES + 10):
        runtime.encode_rows(("pool", i), rows)
    assert len(runtime._encoded) == ENCODED_ENTRIES
    assert ("pool", 0) not in runtime._encoded and ("pool", ENCODED_ENTRIES + 9) in runtime._encoded
    assert len(runtime.encoded(ClientSpec("eng", 0), "train")) == 24


def test_best_validation_state_survives_a_server_crash_and_resume(make_config, tmp_path, data_with_validation):
    from conftest import Crash

    cfg = federated_config(make_config, tmp_path, **{"data.path": str(data_with_validation), "data.selection": "best-validation",
                                         "federation.rounds": 3, "train.lr": 0.05, "output_dir": str(tmp_path / "full")})
    full = run_federated(InProcessGrid(3), cfg, quiet=True)
    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    with pytest.raises(Crash):  # dies before round 3's training, after round 2's checkpoint
        run_federated(InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                                    and int(m.content[CONFIG][ROUND_KEY]) == 3), cut, quiet=True)
    resumed = run_federated(InProcessGrid(3), cut, resume=True, quiet=True)
    assert resumed.selection == full.selection
    assert resumed.per_language == full.per_language


# ------------------------------------------------------------------------------------------ the benchmark's estimate


REPO = Path(__file__).resolve().parent.parent


def _benchmark(name: str):
    """A script of benchmarks/ imported as a module (benchmarks/ is not a package)."""
    import importlib.util

    path = REPO / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_federation_clock_sees_every_round_and_the_naive_client_runs(make_config, tmp_path):
    """The benchmark's instrumentation still fits the recorder and the client (it broke silently once)."""
    bench = _benchmark("bench_federation")
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 3, "train.max_steps": 1})
    for naive in (False, True):
        wall, rounds = bench.federation(cfg.replace(output_dir=str(tmp_path / f"run-{naive}")), len(LANGS), naive)
        assert len(rounds) == 2  # rounds 2 and 3: the first also loads the model
        assert all(0 < compute < round_wall for round_wall, compute in rounds) and wall > sum(w for w, _ in rounds)
    assert client_module.get_runtime is not bench.naive_runtime  # the patches are undone


def test_bench_federation_memory_figures_are_this_process_own():
    bench = _benchmark("bench_federation")
    assert bench.status_mb("VmHWM") >= bench.status_mb("VmRSS") > 0


def test_preset_estimate_counts_the_xnli_presets_steps_and_evaluations():
    """50 rounds x 15 clients x ceil(2000/32)=63 steps; evaluate_every=5 -> 10 evaluations of 15 x 5010 examples."""
    preset = load_config(REPO / "configs" / "paper" / "xnli.toml", ["federation.evaluate_every=5"])
    line = _benchmark("bench_training").preset_estimate(preset, seconds_per_step=0.5, seconds_per_example=0.01, test_examples=5010)
    assert "47,250 training steps" in line and "10 evaluations of 5,010" in line
    # 47,250 x 0.5 s = 6.56 h of training, 10 x 15 x 5,010 x 0.01 s = 2.09 h of evaluation: 8.65 h
    assert "= 6.6 h" in line and "= 2.1 h" in line and "8.7 h for one run" in line


def test_preset_estimate_refuses_a_preset_without_a_training_size():
    preset = load_config(REPO / "configs" / "paper" / "xnli.toml", ["data.train_per_language=0"])
    with pytest.raises(SystemExit, match="train_per_language = 0"):
        _benchmark("bench_training").preset_estimate(preset, 1.0, 1.0, 5010)
