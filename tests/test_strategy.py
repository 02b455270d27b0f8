"""Aggregation maths: FedAvg through the mfpt strategy equals the hand-computed weighted (or uniform) mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import IdleGrid, RecordingListener, train_reply
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from mfpt.config import StrategyName, load_config
from mfpt.data.clients import ClientSpec
from mfpt.federation.protocol import CONFIG, PROXIMAL_MU_KEY, TRAIN_STEPS_KEY
from mfpt.federation.strategies.base import STRATEGIES, NodeInfo, make_strategy
from mfpt.model.state import state_spec
from mfpt.train.loop import proximal_term

pytestmark = pytest.mark.usefixtures("task_identity")


def _reply(node_id: int, index: int, state: dict, n: int, loss: float = 1.0) -> Message:
    request = Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=node_id, message_type=MessageType.TRAIN)
    return train_reply(request, index, state, examples=n, loss=loss)


def _setup(weighting: str):
    cfg = load_config(None, {"data.languages": ["eng", "swh", "yor"], "data.labels": ["a", "b"],
                             "federation.weighting": weighting})
    sizes = [10, 30, 60]
    nodes = {100 + i: NodeInfo(100 + i, i, ClientSpec(lang), sizes[i], 5) for i, lang in enumerate(cfg.data.languages)}
    states = [{"prompt": torch.full((2, 3), float(i + 1)), "head": torch.tensor([i * 1.0, -i * 2.0])} for i in range(3)]
    strategy = make_strategy(cfg, nodes, state_spec(states[0]), RecordingListener())
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


# ------------------------------------------------------------------------------- every strategy, by its formula


SERVER = {"federation.server_lr": 0.5, "federation.server_momentum": 0.9, "federation.tau": 0.01,
          "federation.proximal_mu": 0.3, "federation.trim_fraction": 0.34, "federation.krum_keep": 2,
          "federation.qffl_q": 1.0, "federation.qffl_lr": 0.1}
LOSSES = [0.5, 1.0, 2.0]


def _flat(state: dict) -> np.ndarray:
    return np.concatenate([state[k].double().numpy().ravel() for k in sorted(state)])


def _krum_order(states: list[dict], f: int) -> list[int]:
    """Clients by Krum score (Blanchard et al., 2017): the sum of squared distances to the n - f - 2 nearest others."""
    flat = [_flat(s) for s in states]
    nearest = max(1, len(states) - f - 2)
    scores = [sorted(float(((a - b) ** 2).sum()) for j, b in enumerate(flat) if j != i)[:nearest]
              for i, a in enumerate(flat)]
    return sorted(range(len(states)), key=lambda i: (sum(scores[i]), i))


def _expected(name: str, x0: dict, mean: dict, cfg, states: list[dict], weights: np.ndarray) -> dict:
    """The new global state by each strategy's published update rule, after one round from x0."""
    f = cfg.federation
    delta = {k: mean[k].double() - x0[k].double() for k in x0}
    stacked = {k: torch.stack([s[k].double() for s in states]) for k in x0}
    if name in ("fedavg", "fedprox"):  # FedProx changes the clients' objective, not the server's average
        return mean
    if name == "fedmedian":  # coordinate-wise median (Yin et al., 2018), unweighted
        return {k: v.median(dim=0).values for k, v in stacked.items()}
    if name == "fedtrimmedavg":  # coordinate-wise: drop the int(beta n) smallest and largest, average the rest
        cut = int(f.trim_fraction * len(states))
        return {k: v.sort(dim=0).values[cut:len(states) - cut].mean(dim=0) for k, v in stacked.items()}
    if name in ("krum", "multikrum"):  # the best-scored state, or the example-weighted mean of the krum_keep best
        keep = _krum_order(states, f.byzantine_clients)[:1 if name == "krum" else f.krum_keep]
        w = weights[keep] / weights[keep].sum()
        return {k: sum(wi * states[i][k].double() for wi, i in zip(w, keep)) for k in x0}
    if name == "bulyan":  # Krum-selected theta = n - 2f states; per coordinate, the mean of the beta = theta - 2f
        theta = len(states) - 2 * f.byzantine_clients  # closest to their median (El Mhamdi et al., 2018)
        out = {}
        for k in x0:
            selected = torch.stack([states[i][k].double() for i in _krum_order(states, f.byzantine_clients)[:theta]])
            beta = theta - 2 * f.byzantine_clients
            order = (selected - selected.median(dim=0).values).abs().argsort(dim=0)[:beta]
            out[k] = selected.gather(0, order).mean(dim=0)
        return out
    if name == "qfedavg":  # q-FFL (Li et al., 2020): L = 1/lr, Δ_k = F_k^q L (x0 - x_k), h_k = q F_k^(q-1) ||L (x0 - x_k)||² + L F_k^q
        big_l, q = 1 / f.qffl_lr, f.qffl_q
        grads = [{k: big_l * (x0[k].double() - s[k].double()) for k in x0} for s in states]
        deltas = [{k: loss ** q * g[k] for k in x0} for g, loss in zip(grads, LOSSES)]
        hs = [q * loss ** (q - 1) * sum(float((g[k] ** 2).sum()) for k in x0) + big_l * loss ** q
              for g, loss in zip(grads, LOSSES)]
        return {k: x0[k].double() - sum(d[k] for d in deltas) / sum(hs) for k in x0}
    if name == "fedadagrad":  # Reddi et al., 2021, with Flower's beta_1 = 0: x0 + eta Δ / (sqrt(Δ²) + tau)
        return {k: x0[k] + f.server_lr * d / (d.abs() + f.tau) for k, d in delta.items()}
    if name == "fedavgm":  # SGD with momentum on the pseudo-gradient x0 - mean; momentum starts at the first one
        return {k: x0[k] + f.server_lr * delta[k] for k in x0}
    b1, b2 = 0.9, 0.99  # Flower's defaults, which mfpt keeps
    m = {k: (1 - b1) * d for k, d in delta.items()}
    if name == "fedyogi":
        v = {k: (1 - b2) * d ** 2 for k, d in delta.items()}  # v0 = 0: v - (1-b2)·d²·sign(v - d²)
        return {k: x0[k] + f.server_lr * m[k] / (v[k].sqrt() + f.tau) for k in x0}
    assert name == "fedadam", f"no formula for strategy {name!r}: add one here"
    v = {k: (1 - b2) * d ** 2 for k, d in delta.items()}
    eta = f.server_lr * np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)  # Flower's bias correction at round 1
    return {k: x0[k] + eta * m[k] / (v[k].sqrt() + f.tau) for k in x0}


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_updates_the_global_state_as_its_formula_says(name):
    cfg = load_config(None, {"data.languages": ["eng", "swh", "yor"], "data.labels": ["a", "b"],
                             "federation.strategy": name, **SERVER})
    sizes = [10, 30, 60]
    nodes = {100 + i: NodeInfo(100 + i, i, ClientSpec(lang), sizes[i], 5) for i, lang in enumerate(cfg.data.languages)}
    x0 = {"prompt": torch.full((2, 3), 0.5), "head": torch.tensor([0.25, -0.25])}
    states = [{"prompt": torch.full((2, 3), float(i + 1)), "head": torch.tensor([i * 1.0, -i * 2.0])} for i in range(3)]
    strategy = make_strategy(cfg, nodes, state_spec(x0), RecordingListener())
    sent = list(strategy.configure_train(1, ArrayRecord(x0), ConfigRecord({}), IdleGrid(nodes)))
    mu = [m.content[CONFIG].get(PROXIMAL_MU_KEY) for m in sent]
    assert mu == ([SERVER["federation.proximal_mu"]] * 3 if name == "fedprox" else [None] * 3)
    got = strategy.aggregate_train(1, [_reply(100 + i, i, states[i], sizes[i], LOSSES[i])
                                       for i in range(3)])[0].to_torch_state_dict()
    weights = np.array(sizes) / sum(sizes)
    mean = {k: sum(w * s[k] for w, s in zip(weights, states)).float() for k in x0}
    expected = _expected(name, x0, mean, cfg, states, np.array(sizes, dtype=float))
    for key in x0:
        assert got[key].dtype == torch.float32, "the global state keeps the model's dtype"
        assert torch.allclose(got[key].double(), expected[key].double(), atol=1e-5), (name, key)
    assert not torch.allclose(got["prompt"], x0["prompt"])


def _expected_over_rounds(name: str, x0: dict, means: list[dict], cfg) -> dict:
    """The global state after len(means) rounds by the published rules, with the server optimiser's state (momentum,
    first and second moments) carried from round to round as Flower's strategies carry it."""
    f, b1, b2 = cfg.federation, 0.9, 0.99
    x = {k: v.double() for k, v in x0.items()}
    m = {k: torch.zeros_like(v) for k, v in x.items()}
    v = {k: torch.zeros_like(t) for k, t in x.items()}
    for t, mean in enumerate(means, start=1):
        delta = {k: mean[k].double() - x[k] for k in x}
        if name == "fedavgm":  # momentum on the pseudo-gradient -delta; the first round's is the gradient itself
            m = {k: (f.server_momentum * m[k] if t > 1 else 0) - delta[k] for k in x}
            x = {k: x[k] - f.server_lr * m[k] for k in x}
            continue
        m = {k: b1 * m[k] + (1 - b1) * delta[k] for k in x}
        if name == "fedyogi":
            v = {k: v[k] - (1 - b2) * delta[k] ** 2 * torch.sign(v[k] - delta[k] ** 2) for k in x}
            x = {k: x[k] + f.server_lr * m[k] / (v[k].sqrt() + f.tau) for k in x}
        else:  # fedadam, with Flower's bias correction, which counts round t as step t + 1
            v = {k: b2 * v[k] + (1 - b2) * delta[k] ** 2 for k in x}
            eta = f.server_lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
            x = {k: x[k] + eta * m[k] / (v[k].sqrt() + f.tau) for k in x}
    return x


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedavgm"])
def test_server_optimisers_carry_their_state_over_three_rounds(name):
    cfg = load_config(None, {"data.languages": ["eng", "swh"], "data.labels": ["a", "b"], "federation.strategy": name,
                             "federation.weighting": "uniform", **SERVER})
    nodes = {100 + i: NodeInfo(100 + i, i, ClientSpec(lang), 10, 5) for i, lang in enumerate(cfg.data.languages)}
    x0 = {"prompt": torch.full((2, 3), 0.5), "head": torch.tensor([0.25, -0.25])}
    strategy = make_strategy(cfg, nodes, state_spec(x0), RecordingListener())
    x, means = x0, []
    for round_ in (1, 2, 3):
        # Each round the two clients move the state differently (and not always the same way), so that momentum
        # and moments from earlier rounds matter.
        states = [{k: v + (i + 1) * (-1) ** round_ * 0.3 * round_ for k, v in x.items()} for i in range(2)]
        means.append({k: (states[0][k] + states[1][k]) / 2 for k in x})
        list(strategy.configure_train(round_, ArrayRecord(x), ConfigRecord({}), IdleGrid(nodes)))
        x = strategy.aggregate_train(round_, [_reply(100 + i, i, states[i], 10) for i in range(2)])[0].to_torch_state_dict()
    expected = _expected_over_rounds(name, x0, means, cfg)
    for key in x0:
        assert torch.allclose(x[key].double(), expected[key], atol=1e-5), (name, key, x[key], expected[key])
    # Without the carried state round 3 would be another round 1: the two must differ.
    fresh = _expected_over_rounds(name, {k: v.double() for k, v in _expected_over_rounds(name, x0, means[:2], cfg).items()},
                                  means[2:], cfg)
    assert not torch.allclose(fresh["prompt"], expected["prompt"], atol=1e-4)


def test_strategy_registry_matches_the_config_type():
    assert STRATEGIES.names() == [s.value for s in StrategyName]


def test_proximal_term_is_its_formula_and_pulls_back_to_the_anchor():
    w = {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor([[3.0]], requires_grad=True)}
    anchor = {"a": torch.tensor([0.0, 4.0]), "b": torch.tensor([[1.0]])}
    term = proximal_term(w, anchor, mu=0.5)
    assert term.item() == pytest.approx(0.5 / 2 * (1 + 4 + 4))
    term.backward()
    assert torch.equal(w["a"].grad, 0.5 * (w["a"].detach() - anchor["a"]))
    assert torch.equal(w["b"].grad, 0.5 * (w["b"].detach() - anchor["b"]))


def test_fedprox_keeps_a_clients_update_closer_to_the_global_state(make_config):
    """The same client, seed and steps: the larger mu, the smaller ||w - global|| after local training."""
    from mfpt.data.clients import resolve
    from mfpt.federation.node import ClientNode
    from mfpt.federation.protocol import ROUND_KEY, config_entries
    from mfpt.model.state import state_distance

    cfg = resolve(make_config(**{"federation.strategy": "fedprox", "train.lr": 0.05, "train.max_steps": 6,
                                  "train.local_epochs": 3}))
    node = ClientNode.for_message(config_entries(cfg), {"partition-id": 0})
    start = {k: v.clone() for k, v in node.runtime.initial_state.items()}
    drift = {}
    for mu in (0.0, 50.0):
        new, metrics = node.train(start, {ROUND_KEY: 1, PROXIMAL_MU_KEY: mu})
        drift[mu] = state_distance(new, start)
        assert metrics[TRAIN_STEPS_KEY] == 6
    assert 0 < drift[50.0] < drift[0.0]
