"""Resume after a crash, for the paradigms and settings the federated crash tests (test_faults.py) do not cover:
the pooled and source-only paradigms, example-level DP, and an evaluation schedule with gaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import LANGS, Crash, InProcessGrid, Killed, federated_config, interrupt_at_round, metrics_rows

from mfpt.experiments import paradigms
from mfpt.experiments.paradigms import run_experiment
from mfpt.federation.protocol import CONFIG, ROUND_KEY
from mfpt.federation.server import run_federated
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint
from mfpt.results.schema import read_result

pytestmark = pytest.mark.usefixtures("task_identity")


def _state(out_dir: str, round_: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint_path(Path(out_dir), round_)).state


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_centralized_resumes_mid_run_to_the_uninterrupted_state(make_config, tmp_path, monkeypatch):
    cfg = make_config(**{"paradigm": "centralized", "data.languages": LANGS, "federation.rounds": 3,
                         "output_dir": str(tmp_path / "full")})
    full = run_experiment(cfg, quiet=True)
    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    interrupt_at_round(cut, monkeypatch, 2)
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["completed_round"] == 1
    resumed = run_experiment(cut, resume=True, quiet=True)
    _assert_same_state(_state(cut.output_dir, 3), _state(cfg.output_dir, 3))
    assert resumed.per_language == full.per_language and resumed.local_steps == full.local_steps
    assert [r["round"] for r in metrics_rows(cut.output_dir, "train")] == [1, 2, 3]  # each round trained once


def test_zeroshot_killed_after_its_stage_resumes_without_training_again(make_config, tmp_path, monkeypatch):
    cfg = make_config(**{"paradigm": "zeroshot", "data.languages": LANGS, "transfer.source_epochs": 1,
                         "output_dir": str(tmp_path / "full")})
    full = run_experiment(cfg, quiet=True)
    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    export = paradigms._export_shared

    def dies_before_export(*args):
        raise Killed

    monkeypatch.setattr(paradigms, "_export_shared", dies_before_export)
    with pytest.raises(Killed):
        run_experiment(cut, quiet=True)
    monkeypatch.setattr(paradigms, "_export_shared", export)
    assert not (tmp_path / "cut" / "results.json").exists()
    trained: list[int] = []
    train_learner = paradigms._train_learner
    monkeypatch.setattr(paradigms, "_train_learner", lambda *a: trained.append(a[-1]) or train_learner(*a))
    resumed = run_experiment(cut, resume=True, quiet=True)
    assert trained == []  # the source stage's checkpoint was kept
    _assert_same_state(_state(cut.output_dir, 1), _state(cfg.output_dir, 1))
    assert resumed.per_language == full.per_language and (tmp_path / "cut" / "adapter").is_dir()


def _crash_at_train(round_: int):
    return lambda m: m.metadata.message_type == "train" and int(m.content[CONFIG][ROUND_KEY]) == round_


def test_example_level_dp_resumes_with_one_account_line_per_round(make_config, tmp_path):
    cfg = federated_config(make_config, tmp_path, **{"federation.rounds": 2, "privacy.dp": "example",
                                                     "privacy.noise_multiplier": 1.0})
    with pytest.raises(Crash):
        run_federated(InProcessGrid(3, crash=_crash_at_train(2)), cfg, quiet=True)
    result = run_federated(InProcessGrid(3), cfg, resume=True, quiet=True)
    account = metrics_rows(cfg.output_dir, "privacy")
    assert [r["round"] for r in account] == [1, 2]
    assert account[0]["epsilon"] < account[1]["epsilon"] == pytest.approx(result.privacy["epsilon"])
    assert sorted((r["round"], r["client"]) for r in metrics_rows(cfg.output_dir, "train")) == sorted(
        (r, lang) for r in (1, 2) for lang in LANGS)
    # The noise is drawn from OS entropy, never from the seed: the resumed run must not equal a fresh one bit for bit.
    fresh = run_federated(InProcessGrid(3), cfg.replace(output_dir=str(tmp_path / "fresh")), quiet=True)
    assert fresh.privacy["epsilon"] == pytest.approx(result.privacy["epsilon"])
    assert any(not torch.equal(a, b) for a, b in zip(_state(cfg.output_dir, 2).values(),
                                                       _state(str(tmp_path / "fresh"), 2).values()))


def test_a_resumed_run_keeps_the_evaluation_schedule_and_the_uninterrupted_state(make_config, tmp_path):
    overrides = {"federation.rounds": 5, "federation.evaluate_every": 2}
    full_cfg = federated_config(make_config, tmp_path, **overrides, output_dir=str(tmp_path / "full"))
    run_federated(InProcessGrid(3), full_cfg, quiet=True)
    cfg = full_cfg.replace(output_dir=str(tmp_path / "cut"))
    with pytest.raises(Crash):  # dies as round 4 starts: round 3 (not evaluated) is its last checkpoint
        run_federated(InProcessGrid(3, crash=_crash_at_train(4)), cfg, quiet=True)
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["completed_round"] == 3
    result = run_federated(InProcessGrid(3), cfg, resume=True, quiet=True)
    evaluated = [(r["round"], r["lang"]) for r in metrics_rows(cfg.output_dir, "test")]
    assert evaluated == [(r, lang) for r in (2, 4, 5) for lang in LANGS]
    _assert_same_state(_state(cfg.output_dir, 5), _state(full_cfg.output_dir, 5))
    assert result.per_language == read_result(full_cfg.output_dir).per_language


def test_keep_checkpoints_keeps_the_newest_and_the_selected_round_and_changes_no_result(make_config, tmp_path):
    cfg = make_config(**{"paradigm": "centralized", "data.languages": LANGS, "federation.rounds": 4,
                         "data.selection": "best-validation", "output_dir": str(tmp_path / "all")})
    every = run_experiment(cfg, quiet=True)
    few = cfg.replace(output_dir=str(tmp_path / "few"), keep_checkpoints=1)
    kept = run_experiment(few, quiet=True)
    chosen = every.selection["round"]
    assert chosen < 4, "the fixture should select an earlier round, or the test checks less"
    names = sorted(p.name for p in (tmp_path / "few" / "checkpoints").iterdir())
    assert names == sorted({checkpoint_path(tmp_path, r).name for r in (4, chosen)})
    assert len(list((tmp_path / "all" / "checkpoints").iterdir())) == 4
    # the selected round's test score came from its kept checkpoint, as in the run that kept them all
    assert kept.selection["round"] == chosen and kept.per_language == every.per_language
    _assert_same_state(_state(few.output_dir, 4), _state(cfg.output_dir, 4))


def test_a_run_keeping_one_checkpoint_resumes_to_the_uninterrupted_state(make_config, tmp_path, monkeypatch, caplog):
    cfg = make_config(**{"paradigm": "centralized", "data.languages": LANGS, "federation.rounds": 4,
                         "keep_checkpoints": 1, "output_dir": str(tmp_path / "full")})
    full = run_experiment(cfg, quiet=True)
    cut = cfg.replace(output_dir=str(tmp_path / "cut"))
    interrupt_at_round(cut, monkeypatch, 4)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["round-0003.safetensors"]
    resumed = run_experiment(cut, resume=True, quiet=True)
    _assert_same_state(_state(cut.output_dir, 4), _state(cfg.output_dir, 4))
    assert resumed.per_language == full.per_language


def test_a_resume_past_a_damaged_newest_checkpoint_names_the_deleted_rounds_once(tmp_path, caplog):
    from mfpt.results.checkpoints import ResumeError, last_intact_checkpoint, save_checkpoint

    path = save_checkpoint(checkpoint_path(tmp_path, 5), 5, {"w": torch.ones(2)}, {})
    path.write_bytes(b"not safetensors")
    with pytest.raises(ResumeError, match="cannot be resumed"):
        last_intact_checkpoint(tmp_path, 5)
    missing = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert missing == ["the checkpoints of rounds 1-4 are missing (deleted, or keep_checkpoints kept fewer)"]
    save_checkpoint(checkpoint_path(tmp_path, 2), 2, {"w": torch.ones(2)}, {})
    caplog.clear()
    assert last_intact_checkpoint(tmp_path, 5).round == 2
    assert any("rounds 3-4 are missing" in r.getMessage() for r in caplog.records)
