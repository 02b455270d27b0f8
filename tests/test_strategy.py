"""Aggregation maths: FedAvg through the mfpt strategy equals the hand-computed weighted (or uniform) mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from mfpt.config import load_config
from mfpt.data import ClientSpec
from mfpt.model import state_spec
from mfpt.strategy import CLIENT_KEY, EXAMPLES_KEY, RoundListener, NodeInfo, make_strategy


@pytest.fixture(autouse=True)
def task_identity():
    # Messages need a run identity, which Flower sets in a real run.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


def _reply(node_id: int, index: int, state: dict, n: int) -> Message:
    out = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node_id, message_type=MessageType.TRAIN)
    metrics = MetricRecord({CLIENT_KEY: index, EXAMPLES_KEY: n, "train-loss": 1.0, "train-steps": 1})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=out)


class Quiet(RoundListener):
    def __init__(self):
        self.refused = []

    def on_train(self, *a): ...
    def on_evaluate(self, *a): ...
    def on_refusal(self, round_, node, node_id, reason):
        self.refused.append(reason)


def _setup(weighting: str):
    cfg = load_config(None, {"data.languages": ["eng", "swh", "yor"], "data.labels": ["a", "b"],
                             "federation.weighting": weighting})
    sizes = [10, 30, 60]
    nodes = {100 + i: NodeInfo(100 + i, i, ClientSpec(lang), sizes[i], 5) for i, lang in enumerate(cfg.data.languages)}
    states = [{"prompt": torch.full((2, 3), float(i + 1)), "head": torch.tensor([i * 1.0, -i * 2.0])} for i in range(3)]
    strategy = make_strategy(cfg, nodes, state_spec(states[0]), Quiet())
    replies = [_reply(100 + i, i, states[i], sizes[i]) for i in (2, 0, 1)]  # arrival order does not matter
    return strategy, replies, states, sizes


def test_fedavg_is_the_example_weighted_mean():
    strategy, replies, states, sizes = _setup("examples")
    arrays, _ = strategy.aggregate_train(1, replies)
    got = arrays.to_torch_state_dict()
    weights = np.array(sizes) / sum(sizes)
    for key in ("prompt", "head"):
        expected = sum(w * s[key] for w, s in zip(weights, states))
        assert torch.allclose(got[key], expected.float(), atol=1e-6)
    assert got["prompt"][0, 0].item() == pytest.approx((10 * 1 + 30 * 2 + 60 * 3) / 100)


def test_uniform_weighting_is_the_plain_mean():
    strategy, replies, states, _ = _setup("uniform")
    got = strategy.aggregate_train(1, replies)[0].to_torch_state_dict()
    assert torch.allclose(got["prompt"], torch.full((2, 3), 2.0))
    assert torch.allclose(got["head"], torch.tensor([1.0, -2.0]))


def test_a_corrupt_update_is_refused_and_the_rest_aggregated():
    strategy, replies, states, sizes = _setup("examples")
    bad = _reply(101, 1, {"prompt": torch.full((2, 3), float("nan")), "head": torch.zeros(2)}, sizes[1])
    got = strategy.aggregate_train(1, [replies[0], replies[1], bad])[0].to_torch_state_dict()
    assert "NaN" in strategy.listener.refused[0]
    expected = (10 * 1 + 60 * 3) / 70
    assert got["prompt"][0, 0].item() == pytest.approx(expected)
