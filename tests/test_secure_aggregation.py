"""Secure aggregation (privacy.secure_aggregation): Flower's SecAgg+ workflow run against the real ClientApp in this
process. The aggregate equals plain FedAvg within the quantisation error, the server never receives a client's
real update, a client that drops out within SecAgg+'s threshold does not stop the round, and evaluation per
language and checkpoints keep working."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LABELS, LANGS, InProcessGrid, federated_config, metrics_rows
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from mfpt.federation.protocol import ARRAYS
from mfpt.federation.server import run_federated
from mfpt.results.checkpoints import load_checkpoint

pytestmark = pytest.mark.usefixtures("task_identity")


class SerialisingGrid(InProcessGrid):
    """InProcessGrid with a run id and a private copy of each message per node, as real transport gives."""

    class _Run:
        run_id = 1

    @property
    def run(self):
        return self._Run()

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive([copy.deepcopy(m) for m in messages], timeout=timeout))
        # What arrived, copied: the strategy lets go of each update's arrays once aggregated.
        self.replies = getattr(self, "replies", []) + [copy.deepcopy(r) for r in replies]
        return replies


def _final(out_dir, round_: int):
    return load_checkpoint(Path(out_dir) / "checkpoints" / f"round-{round_:04d}.safetensors").state


def test_secure_aggregate_equals_plain_fedavg_and_the_server_never_sees_an_update(make_config, tmp_path):
    plain_cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 1, "output_dir": str(tmp_path / "plain")})
    plain_grid = SerialisingGrid(3)
    run_federated(plain_grid, plain_cfg, quiet=True)
    updates = {r.metadata.src_node_id: r.content[ARRAYS].to_torch_state_dict() for r in plain_grid.replies
               if r.metadata.message_type == "train"}

    secure_cfg = plain_cfg.replace(**{"privacy.secure_aggregation": True, "output_dir": str(tmp_path / "secure")})
    grid = SerialisingGrid(3)
    result = run_federated(grid, secure_cfg, quiet=True)

    plain, secure = _final(plain_cfg.output_dir, 1), _final(secure_cfg.output_dir, 1)
    for key in plain:
        # SecAgg+ quantises each value into 2**22 steps over [-8, 8]: 3.8e-6 per step.
        torch.testing.assert_close(secure[key], plain[key], rtol=0, atol=2e-5)
    assert any(not torch.equal(secure[k], plain[k]) for k in plain), "the secure path really ran (quantised)"

    train_replies = [r for r in grid.replies if r.metadata.message_type == "train" and not r.has_error()]
    masked = [r for r in train_replies if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked) == 3
    for reply in train_replies:  # no reply carries a tensor: the legacy parameters record is emptied
        assert all(len(record) == 0 for record in reply.content.array_records.values())
    for reply in masked:
        from flwr.common import bytes_to_ndarray

        vectors = [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        real = updates[reply.metadata.src_node_id]
        # The first entry is the weight; then one masked integer vector per tensor, nothing like the real values.
        for vector, tensor in zip(vectors[1:], real.values()):
            assert vector.shape == tuple(tensor.shape)
            assert not np.allclose(vector.astype(np.float64), tensor.numpy(), atol=1.0)
            assert np.abs(vector.astype(np.float64)).mean() > 1e6  # uniform masks mod 2**32

    assert set(result.per_language) == set(LANGS)  # per-language evaluation still works
    assert result.privacy["secure_aggregation"] is True and result.privacy["dp"] == "none"


def test_a_client_dropping_out_within_the_threshold_does_not_stop_the_round(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 2, "privacy.secure_aggregation": True,
                                         "federation.min_clients": 2})
    grid = SerialisingGrid(3)

    def crash(msg) -> bool:
        # hau's node (102) dies when round 1 asks for the masked vectors, after it shared its key shares.
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
        if configs is not None and configs.get(Key.STAGE) == "collect_masked_vectors" and msg.metadata.dst_node_id == 102:
            grid.alive.discard(102)
        return False

    grid.crash = crash
    run_federated(grid, cfg, quiet=True)
    trained = {(r["round"], r["client"]) for r in metrics_rows(cfg.output_dir, "train")}
    assert (1, "eng") in trained and (1, "swh") in trained and (1, "hau") not in trained
    assert {(r["round"], r["client"]) for r in metrics_rows(cfg.output_dir, "missing") if r["stage"] == "train"} >= {(1, "hau")}
    first, second = _final(cfg.output_dir, 1), _final(cfg.output_dir, 2)
    assert all(torch.isfinite(t).all() for t in first.values())
    assert json.loads((Path(cfg.output_dir) / "progress.json").read_text())["completed_round"] == 2
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_secure_aggregation_with_client_level_dp_clips_on_the_node_and_accounts(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 1, "privacy.secure_aggregation": True,
                                         "privacy.dp": "client", "privacy.clip_at": "client",
                                         "federation.weighting": "uniform", "privacy.noise_multiplier": 0.0,
                                         "privacy.clip_norm": 0.01, "output_dir": str(tmp_path / "dp")})
    grid = SerialisingGrid(3)
    result = run_federated(grid, cfg, quiet=True)
    start = {k: v for k, v in load_checkpoint(Path(cfg.output_dir) / "checkpoints" / "round-0001.safetensors").state.items()}
    initial = _initial_state(cfg)
    moved = float(torch.sqrt(sum(((start[k].double() - initial[k].double()) ** 2).sum() for k in initial)))
    assert moved <= 0.01 + 1e-4  # a mean of updates each clipped to 0.01 (plus quantisation)
    assert result.privacy["dp"] == "client" and result.privacy["secure_aggregation"] is True


def _initial_state(cfg):
    from mfpt.model.factory import build_model
    from mfpt.model.state import trainable_state

    return trainable_state(build_model(cfg, len(LABELS)).model)


def test_resume_of_a_secure_run_continues_from_its_checkpoint(make_config, tmp_path):
    from conftest import Crash

    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 2, "privacy.secure_aggregation": True})
    stage = {"n": 0}

    def crash(msg) -> bool:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
        if configs is not None and configs.get(Key.STAGE) == "setup":
            stage["n"] += 1
        return stage["n"] > 3 * 1  # the server dies as round 2's SecAgg+ set-up begins
    with pytest.raises(Crash):
        run_federated(SerialisingGrid(3, crash=crash), cfg, quiet=True)
    assert json.loads((Path(cfg.output_dir) / "progress.json").read_text())["completed_round"] == 1
    run_federated(SerialisingGrid(3), cfg, resume=True, quiet=True)
    assert sorted({r["round"] for r in metrics_rows(cfg.output_dir, "train")}) == [1, 2]
    assert (Path(cfg.output_dir) / "results.json").is_file()


@pytest.mark.ray
def test_secure_aggregation_completes_in_flowers_simulation(make_config):
    from mfpt.experiments.paradigms import run_experiment

    cfg = make_config(**{"data.languages": ["en", "sw", "yo"], "federation.rounds": 1, "privacy.secure_aggregation": True})
    result = run_experiment(cfg, quiet=True)
    assert set(result.per_language) == {"eng", "swh", "yor"} and result.privacy["secure_aggregation"] is True
    assert (Path(cfg.output_dir) / "checkpoints" / "round-0001.safetensors").is_file()


def test_secure_aggregation_refuses_a_round_of_one_client(make_config, tmp_path):
    from mfpt.config import ConfigError

    cfg = federated_config(make_config, tmp_path, **{"privacy.secure_aggregation": True, "federation.fraction_train": 0.34})
    with pytest.raises(ConfigError, match="federation.fraction_train"):
        run_federated(SerialisingGrid(3), cfg, quiet=True)


def test_the_dp_noise_is_sized_to_the_updates_secagg_averaged_not_to_the_sample():
    """A client that goes silent in SecAgg+ is no failure to Flower's DP wrapper; the noise on the average of the
    survivors must be noise_multiplier x clip_norm / survivors (here 1 x 1 / 2), not / sampled (1 / 3)."""
    from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from mfpt.federation.secure_aggregation import SummedUpdatesDpClipping

    zeros = ndarrays_to_parameters([np.zeros(200_000, dtype=np.float32)])

    class Average:  # the inner strategy: the (already unmasked) average of the survivors, here all zeros
        def aggregate_fit(self, server_round, results, failures) -> tuple[Parameters, dict]:
            return zeros, {}

    wrapper = SummedUpdatesDpClipping(Average(), noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=3)
    survivors = [(None, FitRes(Status(Code.OK, ""), zeros, 1, {})) for _ in range(2)]
    noised, _ = wrapper.aggregate_fit(1, survivors, [])
    std = float(np.std(parameters_to_ndarrays(noised)[0]))
    assert std == pytest.approx(1 / 2, rel=0.02)
    assert wrapper.aggregate_fit(1, survivors, [RuntimeError("a client's error reply")]) == (None, {})
