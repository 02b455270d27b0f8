"""Federated runs under every PEFT method, with sampled clients and several clients per language, and on sentence
pairs: the settings a run takes from the config, each run end to end on the in-process grid."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import LABELS, LANGS, TINY_DATA, InProcessGrid, federated_config, metrics_rows

from mfpt.data.sources import TEXT_PAIR
from mfpt.federation.server import run_federated
from mfpt.model.factory import build_model
from mfpt.model.state import trainable_state
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint
from mfpt.train.encoding import encode

pytestmark = pytest.mark.usefixtures("task_identity")

METHODS = {
    "prefix": {"peft.method": "prefix"},
    "prefix-projection": {"peft.method": "prefix", "peft.prefix_projection": True, "peft.encoder_hidden_size": 16},
    "prompt": {"peft.method": "prompt"},
    "ptuning": {"peft.method": "ptuning", "peft.encoder_hidden_size": 16},
    "lora": {"peft.method": "lora"},
    "full": {"peft.method": "full", "train.lr": 1e-3},
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_exchanges_its_whole_trainable_state(method, make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 1, **METHODS[method]})
    initial = trainable_state(build_model(cfg, len(LABELS)).model)
    run_federated(InProcessGrid(3), cfg, quiet=True)
    after = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    assert after.keys() == initial.keys()  # exactly the trainable tensors travelled, by name
    changed = {key for key in initial if not torch.equal(after[key], initial[key])}
    # The method's own tensors (prompt, prompt encoder, LoRA matrices) and the head all moved in one round.
    own = {key for key in initial if not key.startswith(("base_model.model.classifier", "classifier"))} or set(initial)
    assert own & changed, (method, sorted(initial)[:5])
    assert any("classifier" in key for key in changed), method
    assert all(torch.isfinite(v).all() for v in after.values())
    if method in ("prefix-projection", "ptuning"):  # the reparameterising MLP itself trains and travels
        assert any("mlp" in key or "transform" in key or "lstm" in key for key in changed), sorted(changed)


def test_sampled_clients_and_several_clients_per_language_in_a_run(make_config, tmp_path):
    overrides = {"federation.clients_per_language": 2, "federation.fraction_train": 0.5,
                 "federation.fraction_evaluate": 0.5, "federation.rounds": 3, "federation.min_clients": 1}
    cfg = federated_config(make_config, tmp_path, **overrides)
    result = run_federated(InProcessGrid(6), cfg, quiet=True)
    train = metrics_rows(cfg.output_dir, "train")
    by_round = {r: sorted(row["client"] for row in train if row["round"] == r) for r in (1, 2, 3)}
    assert all(len(clients) == 3 for clients in by_round.values())  # round(6 x 0.5) of the six shards each round
    assert {c for clients in by_round.values() for c in clients} <= {f"{lang}#{s}" for lang in LANGS for s in (0, 1)}
    assert len({tuple(c) for c in by_round.values()}) > 1  # a new sample every round
    assert set(result.local_steps) == {c for clients in by_round.values() for c in clients}
    evaluated = {r: {row["lang"] for row in metrics_rows(cfg.output_dir, "test") if row["round"] == r} for r in (1, 2, 3)}
    assert all(langs and langs <= set(LANGS) for langs in evaluated.values())
    # A language none of whose clients was sampled for the last evaluation is named, not averaged in silently.
    assert set(result.unscored) == set(LANGS) - evaluated[3] and set(result.per_language) == evaluated[3]
    # The sample is the seed's: the same config samples the same clients again.
    again = cfg.replace(output_dir=str(tmp_path / "again"))
    run_federated(InProcessGrid(6), again, quiet=True)
    assert [(r["round"], r["client"]) for r in metrics_rows(again.output_dir, "train")] == \
        [(r["round"], r["client"]) for r in train]


@pytest.fixture
def pair_data(tmp_path) -> Path:
    """The fixture data as sentence pairs: each text paired with the next text of its language."""
    frame = pd.read_json(TINY_DATA, lines=True)
    frame[TEXT_PAIR] = frame.groupby("lang")["text"].transform(lambda texts: list(texts[1:]) + list(texts[:1]))
    path = tmp_path / "pairs.jsonl"
    frame.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def test_sentence_pairs_are_tokenised_as_pairs_and_trained(make_config, tmp_path, pair_data):
    cfg = federated_config(make_config, tmp_path, **{"data.path": str(pair_data), "federation.rounds": 1})
    built = build_model(cfg, len(LABELS))
    frame = pd.read_json(pair_data, lines=True).head(4)
    encoded = encode(frame, built.tokenizer, LABELS, 32)
    expected = built.tokenizer(frame["text"].tolist(), frame[TEXT_PAIR].tolist(), truncation=True, max_length=32)
    assert [f["input_ids"] for f in encoded.features] == expected["input_ids"]
    single = encode(frame.drop(columns=[TEXT_PAIR]), built.tokenizer, LABELS, 32)
    assert all(len(p["input_ids"]) > len(s["input_ids"]) for p, s in zip(encoded.features, single.features))
    initial = trainable_state(built.model)
    result = run_federated(InProcessGrid(3), cfg, quiet=True)
    after = load_checkpoint(checkpoint_path(Path(cfg.output_dir), 1)).state
    assert any(not torch.equal(after[k], initial[k]) for k in initial) and set(result.per_language) == set(LANGS)
