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

import numpy as np
import pytest
import torch
from conftest import LABELS, LANGS, Crash, InProcessGrid, federated_config, metrics_rows, train_reply
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from mfpt.analysis.report import write_run_report
from mfpt.config import ConfigError
from mfpt.data.clients import client_layout
from mfpt.federation.mods.reply_audit import audit_mod, describe, outgoing_problems
from mfpt.federation.protocol import ARRAYS, CONFIG, EXAMPLES_KEY, METRICS, ROUND_KEY, TRAIN_LOSS_KEY
from mfpt.federation.server import FederationError, handshake, rejoin_fn, run_federated
from mfpt.federation.strategies.base import NodeInfo, make_strategy
from mfpt.model.factory import build_model
from mfpt.model.state import state_spec, trainable_state
from mfpt.results.checkpoints import ResumeError, load_checkpoint
from mfpt.results.recorder import RunRecorder

pytestmark = pytest.mark.usefixtures("task_identity")

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
    return train_reply(Message(RecordDict(), dst_node_id=node_id, message_type="train"), index, state, steps=2)


class _Grid(InProcessGrid):
    """Connected node ids only: enough for configure_train."""

    def __init__(self, ids):
        super().__init__(0)
        self.alive = set(ids)


def test_poisoned_updates_are_refused_and_the_round_goes_on(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.max_update_norm": 1.0, "federation.min_clients": 1,
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
    # Flower keeps a round's replies until the next round's arrive: the strategy has let go of their updates.
    assert all(not reply.content.array_records for reply in replies)
    refused = {r["client"]: r["reason"] for r in metrics_rows(cfg.output_dir, "refused")}
    assert set(refused) == {"swh", "hau", "yor"}
    assert "NaN" in refused["swh"]
    assert "shape" in refused["hau"]
    assert "max_update_norm" in refused["yor"]
    assert recorder.refusals == 3
    (row,) = metrics_rows(cfg.output_dir, "train")
    assert row["client"] == "eng"
    # Its distance from the global state it trained from, recorded to set a bound from honest updates by.
    numel = sum(v.numel() for v in state.values())
    assert row["update_norm"] == pytest.approx(0.01 * numel ** 0.5, rel=1e-3)


def test_max_update_norm_must_not_be_negative(make_config, tmp_path):
    with pytest.raises(ConfigError, match="federation.max_update_norm"):
        federated_config(make_config, tmp_path, **{"federation.max_update_norm": -1.0})


def test_silent_node_is_logged_missing_and_too_few_replies_keep_the_state(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.min_clients": 2})
    strategy, state, _ = _strategy(cfg, tmp_path)
    strategy.configure_train(1, ArrayRecord(state), ConfigRecord(), _Grid([100, 101, 102]))
    arrays, _ = strategy.aggregate_train(1, [_train_reply(100, 0, state), _train_reply(101, 1, state)])
    assert arrays is not None  # 2 replies >= min_clients
    missing = metrics_rows(cfg.output_dir, "missing")
    assert [(r["client"], r["stage"], r["node"]) for r in missing] == [("hau", "train", 102)]
    strategy.configure_train(2, ArrayRecord(state), ConfigRecord(), _Grid([100, 101, 102]))
    arrays, _ = strategy.aggregate_train(2, [_train_reply(100, 0, state)])
    assert arrays is None  # 1 reply < min_clients: the global state is left as it was
    assert len(metrics_rows(cfg.output_dir, "missing")) == 3


# ------------------------------------------------------------------------------------------ whole runs in-process


def _final(out_dir: Path, rounds: int):
    return load_checkpoint(Path(out_dir) / "checkpoints" / f"round-{rounds:04d}.safetensors")


def test_handshake_tolerates_missing_nodes_only_down_to_min_clients(make_config, tmp_path):
    grid = InProcessGrid(3)
    grid.alive.discard(102)
    cfg = federated_config(make_config, tmp_path, **{"federation.min_clients": 2, "federation.round_timeout": 1.0})
    nodes = handshake(grid, cfg)
    assert sorted(n.client.lang for n in nodes.values()) == ["eng", "swh"]
    with pytest.raises(FederationError, match="Only 2 of 3 client nodes"):
        handshake(grid, federated_config(make_config, tmp_path, **{"federation.round_timeout": 1.0}))


def test_dead_node_is_missing_then_rejoins_with_a_new_node_id(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 3, "federation.min_clients": 2})
    grid = InProcessGrid(3)

    def crash(msg: Message) -> bool:
        # hau's node dies after round 1's evaluation; it restarts (new node id) once round 2 is over.
        config = msg.content.config_records.get(CONFIG)
        round_ = int(config[ROUND_KEY]) if config is not None and ROUND_KEY in config else 0
        if round_ == 2 and 102 in grid.alive:
            grid.alive.discard(102)
        if round_ == 2 and msg.metadata.message_type == "evaluate" and 202 not in grid.contexts:
            grid.add_node(202, 2)  # back during round 2's evaluation: new node id, joins at round 3
        return False

    grid.crash = crash
    results = run_federated(grid, cfg, quiet=True).to_json()
    missing = metrics_rows(cfg.output_dir, "missing")
    assert {(r["round"], r["client"], r["stage"]) for r in missing} == {(2, "hau", "train"), (2, "hau", "evaluate")}
    trained = {(r["round"], r["client"]) for r in metrics_rows(cfg.output_dir, "train")}
    assert (1, "hau") in trained and (2, "hau") not in trained and (3, "hau") in trained
    assert results["refused_updates"] == 0


@pytest.mark.parametrize("strategy", ["fedadam"])
def test_server_crash_then_resume_equals_uninterrupted_run(make_config, tmp_path, strategy):
    rounds = 3
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": rounds, "federation.strategy": strategy,
                                         "federation.server_lr": 0.05, "output_dir": str(tmp_path / "full")})
    run_federated(InProcessGrid(3), cfg, quiet=True)
    full = _final(cfg.output_dir, rounds)

    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    # The server dies as it starts round 2's training, after round 1's checkpoint was written.
    with pytest.raises(Crash):
        run_federated(InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                                    and int(m.content[CONFIG][ROUND_KEY]) == 2), cut, quiet=True)
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["completed_round"] == 1
    run_federated(InProcessGrid(3), cut, resume=True, quiet=True)
    resumed = _final(cut.output_dir, rounds)

    assert resumed.server_state and set(resumed.server_state) == set(full.server_state)  # m_t / v_t restored
    for key in full.state:
        torch.testing.assert_close(resumed.state[key], full.state[key], rtol=0, atol=0)
    for key in full.server_state:
        np.testing.assert_array_equal(resumed.server_state[key], full.server_state[key])
    rounds_seen = sorted({r["round"] for r in metrics_rows(cut.output_dir, "train")})
    assert rounds_seen == [1, 2, 3]


def test_damaged_checkpoint_resumes_federation_from_the_last_intact_round(make_config, tmp_path, caplog):
    rounds = 3
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": rounds, "federation.strategy": "fedadam",
                                         "federation.server_lr": 0.05, "output_dir": str(tmp_path / "full")})
    run_federated(InProcessGrid(3), cfg, quiet=True)
    full = _final(cfg.output_dir, rounds)
    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    with pytest.raises(Crash):  # dies as round 3 starts, after round 2's checkpoint
        run_federated(InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                                    and int(m.content[CONFIG][ROUND_KEY]) == 3), cut, quiet=True)
    damaged = tmp_path / "cut" / "checkpoints" / "round-0002.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-40])
    trained_rounds: list[int] = []  # read as each message leaves: the config record is reused across rounds
    grid = InProcessGrid(3, crash=lambda m: m.metadata.message_type == "train"
                         and trained_rounds.append(int(m.content[CONFIG][ROUND_KEY])) is not None)
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
    train_rows = [(r["round"], r["client"]) for r in metrics_rows(cut.output_dir, "train")]
    assert sorted(train_rows) == sorted((r, lang) for r in (1, 2, 3) for lang in LANGS)  # nothing counted twice


def test_checkpoint_with_nan_is_damaged_and_progress_or_config_damage_is_refused(make_config, tmp_path):
    from mfpt.results.checkpoints import DamagedCheckpointError, checkpoint_path, save_checkpoint

    path = save_checkpoint(tmp_path / "round-0001.safetensors", 1, {"w": torch.tensor([1.0, float("nan")])}, {})
    with pytest.raises(DamagedCheckpointError, match="'state/w' holds NaN"):
        load_checkpoint(path)
    cfg = federated_config(make_config, tmp_path)
    out = Path(cfg.output_dir)
    RunRecorder(cfg, out, 10, 10, quiet=True).begin(False)
    save_checkpoint(checkpoint_path(out, 1), 1, {"w": torch.ones(2)}, {})
    (out / "progress.json").write_text('{"completed_round": ')
    with pytest.raises(ResumeError, match="progress.json' is damaged"):
        RunRecorder(cfg, out, 10, 10, quiet=True).begin(True)
    (out / "progress.json").write_text('{"completed_round": 1}')
    assert RunRecorder(cfg, out, 10, 10, quiet=True).begin(True).round == 1
    (out / "config.toml").unlink()
    with pytest.raises(ResumeError, match="config.toml' is missing; without it the run cannot be resumed"):
        RunRecorder(cfg, out, 10, 10, quiet=True).begin(True)


def test_poisoned_client_end_to_end_is_refused_and_run_completes(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.min_clients": 2})

    def poison(reply: Message) -> Message:
        if reply.metadata.message_type == "train":
            state = reply.content[ARRAYS].to_torch_state_dict()
            state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
            reply.content[ARRAYS] = ArrayRecord(state)
        return reply

    results = run_federated(InProcessGrid(3, tamper={101: poison}), cfg, quiet=True).to_json()
    refused = metrics_rows(cfg.output_dir, "refused")
    assert {(r["round"], r["client"]) for r in refused} == {(1, "swh"), (2, "swh")}
    assert results["refused_updates"] == 2
    assert (Path(cfg.output_dir) / "checkpoints" / "round-0002.safetensors").exists()


def test_rejoin_handshake_replaces_the_clients_old_node(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path)
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

    cfg = federated_config(make_config, tmp_path)
    recorder = RunRecorder(cfg, Path(cfg.output_dir), trainable_params=10_000_000, total_params=10_000_000, quiet=True)
    monkeypatch.setattr("mfpt.results.recorder.shutil.disk_usage", lambda p: _shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(ResumeError, match="MiB free"):
        recorder.begin(False)
    assert not (Path(cfg.output_dir) / "config.toml").exists()


def test_unwritable_output_directory_is_reported_before_training(make_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = federated_config(make_config, tmp_path, output_dir=str(blocker / "run"))
    with pytest.raises((ResumeError, OSError)):
        RunRecorder(cfg, Path(cfg.output_dir), 10, 10, quiet=True).begin(False)
    with pytest.raises(ResumeError, match="is an existing file"):  # the path itself a file: refused, named
        RunRecorder(cfg.replace(output_dir=str(blocker)), blocker, 10, 10, quiet=True).begin(False)


# ------------------------------------------------------------------------------------------ audit of outgoing messages


def _request(kind: str, arrays: dict | None = None) -> Message:
    content = RecordDict({CONFIG: ConfigRecord({"x": 1})})
    if arrays is not None:
        content[ARRAYS] = ArrayRecord(arrays)
    return Message(content, dst_node_id=5, message_type=kind)


def test_audit_mod_passes_trainable_tensors_and_scalars_and_logs_them():
    state = {"prompt": torch.zeros(4, 8), "head": torch.ones(3)}
    request = _request("train", state)
    ok = Message(RecordDict({ARRAYS: ArrayRecord({k: v + 1 for k, v in state.items()}),
                             METRICS: MetricRecord({TRAIN_LOSS_KEY: 0.5, EXAMPLES_KEY: 3})}), reply_to=request)
    assert outgoing_problems(ok, request) == []
    assert describe(ok).startswith("arrays=ArrayRecord[2 tensors], metrics=MetricRecord[2 keys];")
    assert audit_mod(request, None, lambda m, c: ok) is ok


@pytest.mark.parametrize("content, why", [
    (lambda: {ARRAYS: ArrayRecord({"prompt": torch.zeros(4, 8), "head": torch.ones(3), "tokens": torch.ones(7)})},
     "not sent by the server"),
    (lambda: {ARRAYS: ArrayRecord({"prompt": torch.zeros(5, 8), "head": torch.ones(3)})}, "shape"),
    (lambda: {METRICS: MetricRecord({"outputs": [1.0, 2.0]})}, "not a scalar"),
    (lambda: {"text": ConfigRecord({"sample": "a sentence of the local data"})}, "may not leave the node"),
])
def test_audit_mod_refuses_anything_else(content, why):
    request = _request("train", {"prompt": torch.zeros(4, 8), "head": torch.ones(3)})
    bad = Message(RecordDict(content()), reply_to=request)
    out = audit_mod(request, None, lambda m, c: bad)
    assert out.has_error() and why in out.error.reason


def test_audit_mod_refuses_arrays_in_an_evaluate_reply():
    request = _request("evaluate", {"prompt": torch.zeros(4, 8)})
    bad = Message(RecordDict({ARRAYS: ArrayRecord({"prompt": torch.zeros(4, 8)})}), reply_to=request)
    assert audit_mod(request, None, lambda m, c: bad).has_error()


def test_a_language_without_a_final_score_is_named_and_left_out_of_the_means(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 2, "federation.min_clients": 2})
    grid = InProcessGrid(3)

    def crash(msg: Message) -> bool:
        # hau's node dies before the last round's evaluation: the run completes without hau's final score.
        config = msg.content.config_records.get(CONFIG)
        round_ = int(config[ROUND_KEY]) if config is not None and ROUND_KEY in config else 0
        if round_ == 2 and msg.metadata.message_type == "evaluate":
            grid.alive.discard(102)
        return False

    grid.crash = crash
    result = run_federated(grid, cfg, quiet=True)
    assert result.unscored == ["hau"] and set(result.per_language) == {"eng", "swh"}
    assert result.average.accuracy == pytest.approx(np.mean([s.accuracy for s in result.per_language.values()]))
    report = write_run_report(cfg.output_dir).read_text(encoding="utf-8")  # what the ServerApp writes next
    assert "Not scored in the reported round:** hau" in report
