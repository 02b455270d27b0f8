"""Faults at the strategy level: poisoned updates, dead/silent and rejoining nodes, server crash + resume,
disk checks and the audit of outgoing messages.

The federation here runs in this process: `InProcessGrid` is a Flower `Grid` that hands each message to the real
ClientApp (mods included) of a node that is "alive", so a node can die, come back under a new node id, or the
server can crash between two rounds, deterministically and in seconds. tests/test_deployment.py does the same
with real SuperLink/SuperNode processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from mfpt.audit import audit_mod, describe, outgoing_problems  # noqa: E402
from mfpt.client_app import app as client_app  # noqa: E402
from mfpt.config import ConfigError  # noqa: E402
from mfpt.data import client_layout  # noqa: E402
from mfpt.model import build_model, state_spec, trainable_state  # noqa: E402
from mfpt.results import ResumeError, RunRecorder, load_checkpoint  # noqa: E402
from mfpt.federation import FederationError, handshake, rejoin_fn, run_federated  # noqa: E402
from mfpt.protocol import CLIENT_KEY, EXAMPLES_KEY  # noqa: E402
from mfpt.strategy import NodeInfo, make_strategy  # noqa: E402

LANGS = ["eng", "swh", "hau"]
LABELS = ["health", "politics", "sport"]


@pytest.fixture(autouse=True)
def _task_identity():
    # Messages built outside a Flower process need a run id (Flower's own in-process simulation sets the same).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


class Crash(RuntimeError):
    """The 'server' dies (raised from the grid, so the ServerApp stops mid-run)."""


class InProcessGrid(Grid):
    """A Grid whose nodes are the real ClientApp in this process; nodes can die, join or misbehave."""

    def __init__(self, num_clients: int, tamper: dict[int, Callable[[Message], Message]] | None = None,
                 crash: Callable[[Message], bool] | None = None) -> None:
        self.contexts: dict[int, Context] = {}
        self.alive: set[int] = set()
        self.tamper = tamper or {}
        self.crash = crash
        self.sent: list[Message] = []
        for index in range(num_clients):
            self.add_node(100 + index, index)

    def add_node(self, node_id: int, partition: int) -> None:
        self.contexts[node_id] = Context(run_id=1, node_id=node_id, node_config={"partition-id": partition},
                                         state=RecordDict(), run_config={})
        self.alive.add(node_id)

    # Grid API ---------------------------------------------------------------------------------------------
    def set_run(self, run) -> None: ...
    @property
    def run(self): ...
    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.alive)

    def push_messages(self, messages):  # pragma: no cover - send_and_receive is all the strategies use
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            if self.crash is not None and self.crash(msg):
                raise Crash(f"server killed before sending {msg.metadata.message_type}")
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if node not in self.alive:
                continue  # a dead node never answers; the round times out without it
            reply = client_app(msg, self.contexts[node])
            replies.append(self.tamper[node](reply) if node in self.tamper else reply)
        return replies


def _cfg(make_config, tmp_path, **overrides):
    base = {"data.languages": ",".join(LANGS), "data.labels": ",".join(LABELS), "output_dir": str(tmp_path / "run"),
            "federation.round_timeout": 5.0}
    base.update(overrides)
    return make_config(**base)


def _rows(out_dir: Path, split: str) -> list[dict]:
    lines = (Path(out_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# ------------------------------------------------------------------------------------------ poisoned updates


def _strategy(cfg, tmp_path):
    model = build_model(cfg, len(LABELS))
    state = trainable_state(model.model)
    layout = client_layout(tuple(cfg.data.languages), (), 1)
    nodes = {100 + i: NodeInfo(100 + i, i, c, 10, 5) for i, c in enumerate(layout)}
    recorder = RunRecorder(cfg, Path(cfg.output_dir), model.trainable_params, model.total_params, quiet=True)
    recorder.begin(False)
    return make_strategy(cfg, nodes, state_spec(state), recorder), state, recorder


def _train_reply(node_id: int, index: int, state: dict[str, torch.Tensor]) -> Message:
    request = Message(RecordDict(), dst_node_id=node_id, message_type="train")
    metrics = MetricRecord({CLIENT_KEY: index, EXAMPLES_KEY: 10, "train-loss": 1.0, "train-steps": 2})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=request)


class _Grid(InProcessGrid):
    def __init__(self, ids):
        self.alive, self.contexts, self.tamper, self.crash, self.sent = set(ids), {}, {}, None, []


def test_poisoned_updates_are_refused_and_the_round_goes_on(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, **{"federation.max_update_norm": 1.0, "federation.min_clients": 1,
                                         "data.languages": "eng,swh,hau,yor"})
    strategy, state, recorder = _strategy(cfg, tmp_path)
    strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), _Grid([100, 101, 102, 103]))
    name = next(iter(state))
    good = {k: v + 0.01 for k, v in state.items()}
    nan = {k: v.clone() for k, v in state.items()}
    nan[name].view(-1)[0] = float("nan")
    shape = dict(state, **{name: torch.zeros(3, 3)})
    far = {k: v + 10.0 for k, v in state.items()}  # norm of the difference >> 1.0
    replies = [_train_reply(100, 0, good), _train_reply(101, 1, nan), _train_reply(102, 2, shape), _train_reply(103, 3, far)]
    arrays, _ = strategy.aggregate_train(1, replies)
    # Only the good update is aggregated (FedAvg of one update = that update).
    assert arrays is not None
    for key, value in arrays.to_torch_state_dict().items():
        torch.testing.assert_close(value, good[key])
    refused = {r["client"]: r["reason"] for r in _rows(cfg.output_dir, "refused")}
    assert set(refused) == {"swh", "hau", "yor"}
    assert "NaN" in refused["swh"]
    assert "shape" in refused["hau"]
    assert "max_update_norm" in refused["yor"]
    assert recorder.refusals == 3
    assert [r["client"] for r in _rows(cfg.output_dir, "train")] == ["eng"]


def test_max_update_norm_must_not_be_negative(make_config, tmp_path):
    with pytest.raises(ConfigError, match="federation.max_update_norm"):
        _cfg(make_config, tmp_path, **{"federation.max_update_norm": -1.0})


def test_silent_node_is_logged_missing_and_too_few_replies_keep_the_state(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, **{"federation.min_clients": 2})
    strategy, state, _ = _strategy(cfg, tmp_path)
    strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), _Grid([100, 101, 102]))
    arrays, _ = strategy.aggregate_train(1, [_train_reply(100, 0, state), _train_reply(101, 1, state)])
    assert arrays is not None  # 2 replies >= min_clients
    missing = _rows(cfg.output_dir, "missing")
    assert [(r["client"], r["stage"], r["node"]) for r in missing] == [("hau", "train", 102)]
    strategy.configure_train(2, ArrayRecord(state), ConfigRecord(), _Grid([100, 101, 102]))
    arrays, _ = strategy.aggregate_train(2, [_train_reply(100, 0, state)])
    assert arrays is None  # 1 reply < min_clients: the global state is left as it was
    assert len(_rows(cfg.output_dir, "missing")) == 3


# ------------------------------------------------------------------------------------------ whole runs in-process


def _final(out_dir: Path, rounds: int):
    return load_checkpoint(Path(out_dir) / "checkpoints" / f"round-{rounds:04d}.safetensors")


def test_handshake_tolerates_missing_nodes_only_down_to_min_clients(make_config, tmp_path):
    grid = InProcessGrid(3)
    grid.alive.discard(102)
    cfg = _cfg(make_config, tmp_path, **{"federation.min_clients": 2, "federation.round_timeout": 1.0})
    nodes = handshake(grid, cfg)
    assert sorted(n.client.lang for n in nodes.values()) == ["eng", "swh"]
    with pytest.raises(FederationError, match="Only 2 of 3 client nodes"):
        handshake(grid, _cfg(make_config, tmp_path, **{"federation.round_timeout": 1.0}))


def test_dead_node_is_missing_then_rejoins_with_a_new_node_id(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, **{"federation.rounds": 3, "federation.min_clients": 2})
    grid = InProcessGrid(3)

    def crash(msg: Message) -> bool:
        # hau's node dies after round 1's evaluation; it restarts (new node id) once round 2 is over.
        config = msg.content.config_records.get("config")
        round_ = int(config["mfpt.round"]) if config is not None and "mfpt.round" in config else 0
        if round_ == 2 and 102 in grid.alive:
            grid.alive.discard(102)
        if round_ == 2 and msg.metadata.message_type == "evaluate" and 202 not in grid.contexts:
            grid.add_node(202, 2)  # back during round 2's evaluation: new node id, joins at round 3
        return False

    grid.crash = crash
    results = run_federated(grid, cfg, quiet=True).to_json()
    missing = _rows(cfg.output_dir, "missing")
    assert {(r["round"], r["client"], r["stage"]) for r in missing} == {(2, "hau", "train"), (2, "hau", "evaluate")}
    trained = {(r["round"], r["client"]) for r in _rows(cfg.output_dir, "train")}
    assert (1, "hau") in trained and (2, "hau") not in trained and (3, "hau") in trained
    assert results["refused_updates"] == 0


@pytest.mark.parametrize("strategy", ["fedadam"])
def test_server_crash_then_resume_equals_uninterrupted_run(make_config, tmp_path, strategy):
    rounds = 3
    cfg = _cfg(make_config, tmp_path, **{"federation.rounds": rounds, "federation.strategy": strategy,
                                         "federation.server_lr": 0.05, "output_dir": str(tmp_path / "full")})
    run_federated(InProcessGrid(3), cfg, quiet=True)
    full = _final(cfg.output_dir, rounds)

    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    # The server dies as it starts round 2's training, after round 1's checkpoint was written.
    with pytest.raises(Crash):
        run_federated(InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                                    and int(m.content["config"]["mfpt.round"]) == 2), cut, quiet=True)
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["completed_round"] == 1
    run_federated(InProcessGrid(3), cut, resume=True, quiet=True)
    resumed = _final(cut.output_dir, rounds)

    assert resumed.server_state and set(resumed.server_state) == set(full.server_state)  # m_t / v_t restored
    for key in full.state:
        torch.testing.assert_close(resumed.state[key], full.state[key], rtol=0, atol=0)
    for key in full.server_state:
        np.testing.assert_array_equal(resumed.server_state[key], full.server_state[key])
    rounds_seen = sorted({r["round"] for r in _rows(cut.output_dir, "train")})
    assert rounds_seen == [1, 2, 3]


def test_damaged_checkpoint_resumes_federation_from_the_last_intact_round(make_config, tmp_path, caplog):
    rounds = 3
    cfg = _cfg(make_config, tmp_path, **{"federation.rounds": rounds, "federation.strategy": "fedadam",
                                         "federation.server_lr": 0.05, "output_dir": str(tmp_path / "full")})
    run_federated(InProcessGrid(3), cfg, quiet=True)
    full = _final(cfg.output_dir, rounds)
    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    with pytest.raises(Crash):  # dies as round 3 starts, after round 2's checkpoint
        run_federated(InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                                    and int(m.content["config"]["mfpt.round"]) == 3), cut, quiet=True)
    damaged = tmp_path / "cut" / "checkpoints" / "round-0002.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-40])
    trained_rounds: list[int] = []  # read as each message leaves: the config record is reused across rounds
    grid = InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                         and trained_rounds.append(int(m.content["config"]["mfpt.round"])) is not None)
    with caplog.at_level("WARNING", logger="mfpt"):
        run_federated(grid, cut, resume=True, quiet=True)
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert str(damaged) in warnings and "resuming from round 1" in warnings
    assert trained_rounds == [2, 2, 2, 3, 3, 3]  # round 2 is trained again from round 1's intact state
    resumed = _final(cut.output_dir, rounds)
    for key in full.state:
        torch.testing.assert_close(resumed.state[key], full.state[key], rtol=0, atol=0)
    for key in full.server_state:
        np.testing.assert_array_equal(resumed.server_state[key], full.server_state[key])
    train_rows = [(r["round"], r["client"]) for r in _rows(cut.output_dir, "train")]
    assert sorted(train_rows) == sorted((r, lang) for r in (1, 2, 3) for lang in LANGS)  # nothing counted twice


def test_checkpoint_with_nan_is_damaged_and_progress_or_config_damage_is_refused(make_config, tmp_path):
    from mfpt.results import DamagedCheckpointError, checkpoint_path, save_checkpoint

    path = save_checkpoint(tmp_path / "round-0001.safetensors", 1, {"w": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(DamagedCheckpointError, match="'state/w' holds NaN"):
        load_checkpoint(path)
    cfg = _cfg(make_config, tmp_path)
    out = Path(cfg.output_dir)
    RunRecorder(cfg, out, 10, 10, quiet=True).begin(False)
    save_checkpoint(checkpoint_path(out, 1), 1, {"w": torch.ones(2)}, {})
    (out / "progress.json").write_text('{"completed_round": ')
    with pytest.raises(ResumeError, match="progress.json' is damaged"):
        RunRecorder(cfg, out, 10, 10, quiet=True).begin(True)
    (out / "progress.json").write_text('{"completed_round": 1}')
    assert RunRecorder(cfg, out, 10, 10, quiet=True).begin(True).round == 1
    (out / "config.toml").unlink()
    with pytest.raises(ResumeError, match="config.toml' cannot be read"):
        RunRecorder(cfg, out, 10, 10, quiet=True).begin(True)


def test_poisoned_client_end_to_end_is_refused_and_run_completes(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, **{"federation.min_clients": 2})

    def poison(reply: Message) -> Message:
        if reply.metadata.message_type == "train":
            state = reply.content["arrays"].to_torch_state_dict()
            state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
            reply.content["arrays"] = ArrayRecord(state)
        return reply

    results = run_federated(InProcessGrid(3, tamper={101: poison}), cfg, quiet=True).to_json()
    refused = _rows(cfg.output_dir, "refused")
    assert {(r["round"], r["client"]) for r in refused} == {(1, "swh"), (2, "swh")}
    assert results["refused_updates"] == 2
    assert (Path(cfg.output_dir) / "checkpoints" / "round-0002.safetensors").exists()


def test_rejoin_handshake_replaces_the_clients_old_node(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path)
    grid = InProcessGrid(3)
    strategy, state, _ = _strategy(cfg, tmp_path)
    strategy.rejoin = rejoin_fn(cfg)
    grid.alive.discard(101)
    grid.add_node(301, 1)
    strategy.refresh_nodes(grid)
    assert 101 not in strategy.nodes and strategy.nodes[301].client.lang == "swh"


# ------------------------------------------------------------------------------------------ disk checks


def test_disk_without_room_for_the_checkpoints_is_reported_before_training(make_config, tmp_path, monkeypatch):
    import shutil as _shutil

    cfg = _cfg(make_config, tmp_path)
    recorder = RunRecorder(cfg, Path(cfg.output_dir), trainable_params=10_000_000, total_params=10_000_000, quiet=True)
    monkeypatch.setattr("mfpt.results.shutil.disk_usage", lambda p: _shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ResumeError, match="MiB free"):
        recorder.begin(False)
    assert not (Path(cfg.output_dir) / "config.toml").exists()


def test_unwritable_output_directory_is_reported_before_training(make_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = _cfg(make_config, tmp_path, output_dir=str(blocker / "run"))
    with pytest.raises((ResumeError, OSError)):
        RunRecorder(cfg, Path(cfg.output_dir), 10, 10, quiet=True).begin(False)
    with pytest.raises(ResumeError, match="is an existing file"):  # the path itself a file: refused, named
        RunRecorder(cfg.replace(output_dir=str(blocker)), blocker, 10, 10, quiet=True).begin(False)


# ------------------------------------------------------------------------------------------ audit of outgoing messages


def _request(kind: str, arrays: dict | None = None) -> Message:
    content = RecordDict({"config": ConfigRecord({"x": 1})})
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    return Message(content, dst_node_id=5, message_type=kind)


def test_audit_mod_passes_trainable_tensors_and_scalars_and_logs_them():
    state = {"prompt": torch.zeros(4, 8), "head": torch.ones(3)}
    request = _request("train", state)
    ok = Message(RecordDict({"arrays": ArrayRecord({k: v + 1 for k, v in state.items()}),
                             "metrics": MetricRecord({"train-loss": 0.5, "num-examples": 3})}), reply_to=request)
    assert outgoing_problems(ok, request) == []
    assert describe(ok).startswith("arrays=ArrayRecord[2 tensors], metrics=MetricRecord[2 keys];")
    assert audit_mod(request, None, lambda m, c: ok) is ok


@pytest.mark.parametrize("content, why", [
    (lambda: {"arrays": ArrayRecord({"prompt": torch.zeros(4, 8), "head": torch.ones(3), "tokens": torch.ones(7)})},
     "not sent by the server"),
    (lambda: {"arrays": ArrayRecord({"prompt": torch.zeros(5, 8), "head": torch.ones(3)})}, "shape"),
    (lambda: {"metrics": MetricRecord({"outputs": [1.0, 2.0]})}, "not a scalar"),
    (lambda: {"text": ConfigRecord({"sample": "a sentence of the local data"})}, "may not leave the node"),
])
def test_audit_mod_refuses_anything_else(content, why):
    request = _request("train", {"prompt": torch.zeros(4, 8), "head": torch.ones(3)})
    bad = Message(RecordDict(content()), reply_to=request)
    out = audit_mod(request, None, lambda m, c: bad)
    assert out.has_error() and why in out.error.reason


def test_audit_mod_refuses_arrays_in_an_evaluate_reply():
    request = _request("evaluate", {"prompt": torch.zeros(4, 8)})
    bad = Message(RecordDict({"arrays": ArrayRecord({"prompt": torch.zeros(4, 8)})}), reply_to=request)
    assert audit_mod(request, None, lambda m, c: bad).has_error()


def test_a_language_without_a_final_score_is_named_and_left_out_of_the_means(make_config, tmp_path):
    cfg = _cfg(make_config, tmp_path, **{"federation.rounds": 2, "federation.min_clients": 2})
    grid = InProcessGrid(3)

    def crash(msg: Message) -> bool:
        # hau's node dies before the last round's evaluation: the run completes without hau's final score.
        config = msg.content.config_records.get("config")
        round_ = int(config["mfpt.round"]) if config is not None and "mfpt.round" in config else 0
        if round_ == 2 and msg.metadata.message_type == "evaluate":
            grid.alive.discard(102)
        return False

    grid.crash = crash
    result = run_federated(grid, cfg, quiet=True)
    assert result.unscored == ["hau"] and set(result.per_language) == {"eng", "swh"}
    assert result.average.accuracy == pytest.approx(np.mean([s.accuracy for s in result.per_language.values()]))
    report = (Path(cfg.output_dir) / "report.md").read_text(encoding="utf-8")
    assert "Not scored in the reported round:** hau" in report
