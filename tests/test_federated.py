"""End to end: a 3-language, 2-round Flower simulation writes every output; real client messages carry only
trainable tensors and scalar metrics."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from mfpt.data.clients import prepare
from mfpt.experiments.paradigms import run_experiment
from mfpt.federation.protocol import ARRAYS, METRICS
from mfpt.federation.strategies import base as strategy_module
from mfpt.model.factory import build_model
from mfpt.model.state import trainable_state
from mfpt.results.checkpoints import load_checkpoint

# Every test here reads one real Flower simulation (Ray).
pytestmark = pytest.mark.ray

LANGS = ["eng", "swh", "yor"]


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory, tiny_xlmr):
    """One real simulation shared by the tests below (Ray start-up dominates its ~20 s)."""
    from conftest import TINY_DATA

    from mfpt.config import load_config

    out = tmp_path_factory.mktemp("fed") / "run"
    cfg = load_config(None, {"name": "e2e", "output_dir": str(out), "model.name": str(tiny_xlmr), "model.max_seq_length": 32,
                             "data.path": str(TINY_DATA), "data.languages": ["en", "sw", "yo"], "data.low_resource": ["swh", "yor"],
                             "peft.num_virtual_tokens": 4, "federation.rounds": 2, "train.batch_size": 8,
                             "train.threads": 1, "train.device": "cpu"})
    seen: dict[str, list] = {"train": [], "evaluate": []}
    original_train, original_eval = strategy_module.MfptStrategy.aggregate_train, strategy_module.MfptStrategy.aggregate_evaluate

    def record_train(self, server_round, replies):
        replies = list(replies)
        seen["train"].extend(copy.deepcopy(m.content) for m in replies)  # as they arrived (the strategy lets go of arrays)
        return original_train(self, server_round, replies)

    def record_eval(self, server_round, replies):
        replies = list(replies)
        seen["evaluate"].extend(m.content for m in replies)
        return original_eval(self, server_round, replies)

    mp = pytest.MonkeyPatch()
    mp.setattr(strategy_module.MfptStrategy, "aggregate_train", record_train)
    mp.setattr(strategy_module.MfptStrategy, "aggregate_evaluate", record_eval)
    try:
        results = run_experiment(cfg, quiet=True).to_json()
    finally:
        mp.undo()
    return cfg, out, results, seen


def test_results_json_has_the_schema_and_every_language(federated_run):
    cfg, out, results, _ = federated_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == results
    for key in ("name", "paradigm", "method", "model", "trainable_params", "total_params", "rounds", "languages",
                "per_language", "average", "communication", "wall_seconds"):
        assert key in results
    assert results["paradigm"] == "federated" and results["method"] == "prefix" and results["rounds"] == 2
    assert results["languages"] == LANGS and set(results["per_language"]) == set(LANGS)
    for metrics in results["per_language"].values():
        assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["macro_f1"] <= 1 and metrics["n_test"] == 9
    mean = sum(m["accuracy"] for m in results["per_language"].values()) / 3
    assert results["average"]["accuracy"] == pytest.approx(mean)
    comm = results["communication"]
    raw = 3 * 4 * results["trainable_params"]  # 3 clients x float32 values; Flower adds names, dtypes and shapes
    assert raw <= comm["bytes_up_per_round"] <= raw + 3 * 10 * 300
    assert comm["total_bytes"] == 2 * comm["bytes_up_per_round"] + 2 * comm["bytes_down_per_round"]
    # Each client's training rows after the validation hold-out, in batches of 8, for 2 rounds.
    prepared = prepare(cfg)
    train_rows = {lang: len(prepared.language_rows(lang, "train")) for lang in LANGS}
    assert all(20 <= n < 27 for n in train_rows.values())  # 27 rows, less the 10% validation hold-out
    assert results["local_steps"] == {lang: 2 * math.ceil(n / 8) for lang, n in train_rows.items()}


def test_metrics_checkpoints_report_and_adapter(federated_run):
    cfg, out, results, _ = federated_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["round"], r["lang"], r["split"]) for r in rows} == {(r, lang, s) for r in (1, 2) for lang in LANGS for s in ("train", "test")}
    assert (out / "config.toml").is_file()
    final = load_checkpoint(out / "checkpoints" / "round-0002.safetensors")
    assert final.round == 2 and (out / "checkpoints" / "round-0001.safetensors").is_file()
    report = (out / "report.md").read_text()
    assert all(lang in report for lang in LANGS) and "Trainable parameters" in report

    from transformers import AutoModelForSequenceClassification

    from mfpt.model.export import load_adapter

    base = AutoModelForSequenceClassification.from_pretrained(cfg.model.name, num_labels=3)
    exported = load_adapter(base, out / "adapter")
    ours = build_model(cfg.replace(**{"data.languages": LANGS, "data.labels": ["health", "politics", "sport"]}), 3)
    from mfpt.model.state import load_trainable_state

    load_trainable_state(ours.model, final.state)
    batch = ours.tokenizer(["kiballni the today"], return_tensors="pt")
    exported.eval(), ours.model.eval()
    with torch.no_grad():
        assert torch.allclose(exported(**batch).logits, ours.model(**batch).logits, atol=1e-6)


def test_client_messages_carry_only_trainable_tensors_and_scalar_metrics(federated_run):
    cfg, _, results, seen = federated_run
    model = build_model(cfg.replace(**{"data.languages": LANGS, "data.labels": ["health", "politics", "sport"]}), 3)
    trainable = trainable_state(model.model)
    assert len(seen["train"]) == 2 * 3 and len(seen["evaluate"]) == 2 * 3
    for content in seen["train"]:
        assert set(content.keys()) == {ARRAYS, METRICS}
        assert not content.config_records
        arrays = content[ARRAYS].to_torch_state_dict()
        assert set(arrays) == set(trainable)  # exactly the trainable tensors, by name
        assert all(arrays[k].shape == trainable[k].shape for k in arrays)
        assert all(isinstance(v, (int, float)) for v in content[METRICS].values())
    for content in seen["evaluate"]:
        assert set(content.keys()) == {METRICS}  # evaluation never sends weights back
        assert all(isinstance(v, (int, float)) for v in content[METRICS].values())
