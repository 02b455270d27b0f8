"""The robust and fairness-aware strategies (Flower's FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan, QFedAvg,
and FedAdagrad) behind mfpt's mixin: each runs a federated run on the test fixture and resumes exactly; the robust
ones resist an outlier that drags FedAvg; what cannot work is refused in one line naming the keys.

Their one-round formulas are in tests/test_strategy.py with the other strategies'.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import Crash, InProcessGrid, RecordingListener, federated_config, train_reply
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from mfpt.config import ConfigError, load_config
from mfpt.data.clients import ClientSpec
from mfpt.federation.protocol import CONFIG, ROUND_KEY
from mfpt.federation.server import run_federated
from mfpt.federation.strategies.base import NodeInfo, make_strategy
from mfpt.model.state import state_spec
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint

pytestmark = pytest.mark.usefixtures("task_identity")

NEW = ["fedadagrad", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan", "qfedavg"]


@pytest.mark.parametrize("name", NEW)
def test_each_new_strategy_runs_on_the_fixture_and_resumes_exactly(name, make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.strategy": name, "federation.rounds": 3,
                                                     "output_dir": str(tmp_path / "full")})
    full = run_federated(InProcessGrid(3), cfg, quiet=True)
    assert set(full.per_language) == {"eng", "swh", "hau"} and full.refused_updates == 0
    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    with pytest.raises(Crash):  # the server dies as round 3 starts; round 2 is its last checkpoint
        run_federated(InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                                    and int(m.content[CONFIG][ROUND_KEY]) == 3), cut, quiet=True)
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["completed_round"] == 2
    resumed = run_federated(InProcessGrid(3), cut, resume=True, quiet=True)
    a = load_checkpoint(checkpoint_path(tmp_path / "full", 3))
    b = load_checkpoint(checkpoint_path(tmp_path / "cut", 3))
    assert a.state.keys() == b.state.keys() and a.server_state.keys() == b.server_state.keys()
    for key in a.state:
        torch.testing.assert_close(a.state[key], b.state[key], rtol=0, atol=0)
    if name == "fedadagrad":  # its accumulated squared updates travel in the checkpoint
        assert any(k.startswith("v_t/") for k in a.server_state)
    assert resumed.per_language == full.per_language


def _round(name: str, attackers: int = 1, **keys) -> dict[str, torch.Tensor]:
    """One round over 7 clients: 6 honest states near 1.0, `attackers` far away at 100."""
    languages = ["eng", "swh", "hau", "yor", "amh", "ibo", "zul"]
    cfg = load_config(None, {"data.languages": languages, "data.labels": ["a", "b"], "federation.strategy": name,
                             "federation.weighting": "uniform", **keys})
    nodes = {100 + i: NodeInfo(100 + i, i, ClientSpec(lang), 10, 5) for i, lang in enumerate(languages)}
    x0 = {"prompt": torch.zeros(4)}
    rng = np.random.default_rng(0)
    states = [{"prompt": torch.tensor(1.0 + 0.1 * rng.standard_normal(4), dtype=torch.float32)} for _ in range(7)]
    for i in range(attackers):
        states[-1 - i] = {"prompt": torch.full((4,), 100.0)}
    strategy = make_strategy(cfg, nodes, state_spec(x0), RecordingListener())
    strategy.configure_train(1, ArrayRecord(x0), ConfigRecord({}), _Idle(nodes))
    replies = [train_reply(Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=100 + i,
                                   message_type=MessageType.TRAIN), i, s) for i, s in enumerate(states)]
    return strategy.aggregate_train(1, replies)[0].to_torch_state_dict()


class _Idle:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


@pytest.mark.parametrize("name, keys", [("fedmedian", {}), ("fedtrimmedavg", {"federation.trim_fraction": 0.2}),
                                        ("krum", {"federation.byzantine_clients": 1}),
                                        ("multikrum", {"federation.byzantine_clients": 1, "federation.krum_keep": 3}),
                                        ("bulyan", {"federation.byzantine_clients": 1})])
def test_a_robust_rule_ignores_an_outlier_that_drags_fedavg(name, keys):
    fedavg = _round("fedavg")["prompt"]
    robust = _round(name, **keys)["prompt"]
    assert float(fedavg.mean()) > 10  # one client at 100 moves the mean by about 14
    assert float((robust - 1.0).abs().max()) < 0.5, robust  # the honest states are within 0.3 of 1.0


@pytest.mark.parametrize("overrides, named", [
    ({"federation.strategy": "krum", "federation.byzantine_clients": 1}, "needs at least 2f + 3"),
    ({"federation.strategy": "bulyan", "federation.byzantine_clients": 1}, "needs at least 4f + 3"),
    ({"federation.strategy": "multikrum", "federation.krum_keep": 4}, "federation.krum_keep = 4 exceeds"),
    ({"federation.strategy": "fedmedian", "privacy.secure_aggregation": True}, "aggregates with FedAvg only"),
    ({"federation.strategy": "fedtrimmedavg", "privacy.dp": "client", "federation.weighting": "uniform"},
     "privacy.dp = 'client' with federation.strategy = 'fedtrimmedavg'"),
    ({"federation.strategy": "krum", "personalization.method": "distance-weighted"}, "bypassing"),
    ({"federation.strategy": "fedtrimmedavg", "federation.trim_fraction": 0.5}, "federation.trim_fraction = 0.5"),
    ({"federation.strategy": "qfedavg", "federation.qffl_q": -1}, "federation.qffl_q = -1"),
])
def test_what_cannot_work_is_refused_naming_the_keys(overrides, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_config(None, {"data.languages": ["eng", "swh", "hau"], **overrides})


def test_what_can_work_is_allowed():
    load_config(None, {"data.languages": ["eng", "swh", "hau", "yor", "amh"], "federation.strategy": "krum",
                       "federation.byzantine_clients": 1})
    load_config(None, {"data.languages": ["eng", "swh", "hau"], "federation.strategy": "fedmedian",
                       "personalization.method": "finetune"})
    load_config(None, {"data.languages": ["eng", "swh", "hau"], "federation.strategy": "qfedavg",
                       "privacy.dp": "example", "privacy.noise_multiplier": 1.0})


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan"])
def test_a_deployed_node_accepts_a_krum_experiment_its_own_language_alone_could_not_run(name, tmp_path):
    """A node narrows the config to its own language to read its data; Krum's client count is the server's to check
    (before, every node refused a 16-language Krum run: '3 clients per round, but 1 train each round')."""
    from mfpt.experiments.preflight import preflight
    from mfpt.federation.node import node_data_config

    cfg = load_config(None, {"federation.strategy": name, "data.labels": ["a", "b"], "data.source": "udhr-topics",
                             "data.languages": ["eng", "fra", "deu", "spa", "swh", "hau", "yor", "amh"]})
    narrowed = node_data_config(cfg, ClientSpec("swh"), str(tmp_path / "swh.jsonl"))
    assert narrowed.data.languages == ("swh",) and cfg.federation.strategy.value == name
    assert any(line.startswith("deployed nodes:") for line in preflight(cfg))
