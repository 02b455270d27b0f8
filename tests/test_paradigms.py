"""Paradigms: one results schema, the data every training call sees, step budgets, and transfer's resume."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from conftest import InProcessGrid, interrupt_at_round

from mfpt.config.specs import PARADIGMS
from mfpt.core import files
from mfpt.data.clients import ClientSpec
from mfpt.experiments import paradigms
from mfpt.experiments.paradigms import run_experiment
from mfpt.federation.server import run_federated
from mfpt.results.checkpoints import ResumeError
from mfpt.results.schema import SCHEMA_VERSION, RunResult, read_result
from mfpt.train.loop import steps_per_round
from mfpt.train.runtime import Runtime, get_runtime

SCHEMA = {"name", "paradigm", "method", "model", "seed", "trainable_params", "total_params", "rounds", "languages",
          "heldout_languages", "low_resource", "labels", "per_language", "heldout", "average", "low_resource_average",
          "heldout_average", "communication", "local_steps", "protocol", "refused_updates", "wall_seconds", "config",
          "selection", "versions", "created", "privacy", "personalization", "attack", "unscored", "hyperparameters", "epochs",
          "model_path",
          "schema_version"}
LANGS = ["eng", "swh", "hau"]
IN_PROCESS = [name for name in PARADIGMS.names() if name != "federated"]


@pytest.fixture
def config(make_config):
    def make(paradigm: str, **overrides):
        base = {"paradigm": paradigm, "data.languages": LANGS, "data.heldout_languages": ["yor"],
                "data.low_resource": ["hau"], "transfer.source_epochs": 1}
        return make_config(**(base | overrides))

    return make


@pytest.fixture
def trained_on(monkeypatch):
    """Every call of train(): (Counter of the languages of the rows it trained on, steps taken)."""
    langs_of: dict[int, Counter] = {}
    calls: list[tuple[Counter, int]] = []
    encode_rows, train = Runtime.encode_rows, paradigms.train

    def recording_encode_rows(self, key, rows):
        data = encode_rows(self, key, rows)
        langs_of[id(data)] = Counter(rows["lang"])
        return data

    def recording_train(model, data, *args, **kwargs):
        stats = train(model, data, *args, **kwargs)
        calls.append((langs_of[id(data)], stats.steps))
        return stats

    monkeypatch.setattr(Runtime, "encode_rows", recording_encode_rows)
    monkeypatch.setattr(paradigms, "train", recording_train)
    return calls


def _train_counts(cfg, lang: str) -> int:
    return len(get_runtime(cfg).data.language_rows(lang, "train"))


@pytest.mark.parametrize("paradigm", IN_PROCESS)
def test_every_paradigm_writes_the_shared_schema(config, paradigm: str) -> None:
    cfg = config(paradigm)
    result = run_experiment(cfg, quiet=True)
    results = result.to_json()
    assert set(results) == SCHEMA and results["schema_version"] == SCHEMA_VERSION
    assert files.read_json(f"{cfg.output_dir}/results.json") == results
    assert RunResult.from_json(results) == result == read_result(cfg.output_dir)
    assert results["paradigm"] == paradigm and list(results["per_language"]) == LANGS
    assert results["protocol"] and results["low_resource_average"]["accuracy"] == results["per_language"]["hau"]["accuracy"]
    # Held-out languages are evaluated by the one shared model; `local` has one model per language, so none.
    assert list(results["heldout"]) == ([] if paradigm == "local" else ["yor"])
    # where and at what precision it ran (the fixture's config trains in fp32 on the CPU)
    assert results["versions"]["compute"].startswith("cpu") and results["versions"]["compute"].endswith(", fp32")


def test_local_trains_each_language_on_its_own_data_only(config, trained_on) -> None:
    cfg = config("local", **{"federation.rounds": 3})
    results = run_experiment(cfg, quiet=True).to_json()
    assert len(trained_on) == 3 * len(LANGS)
    for lang in LANGS:
        own = [(langs, steps) for langs, steps in trained_on if lang in langs]
        assert len(own) == 3  # one call per round
        for langs, steps in own:
            assert langs == Counter({lang: _train_counts(cfg, lang)})  # all of its rows, nobody else's
            assert steps == steps_per_round(_train_counts(cfg, lang), cfg.train)
        assert results["local_steps"][lang] == sum(steps for _, steps in own)


def test_centralized_sees_every_training_language_pooled(config, trained_on) -> None:
    cfg = config("centralized")
    run_experiment(cfg, quiet=True)
    everything = Counter({lang: _train_counts(cfg, lang) for lang in LANGS})  # held-out yor never trains
    assert [langs for langs, _ in trained_on] == [everything] * cfg.federation.rounds


@pytest.mark.parametrize("paradigm", ["transfer", "zeroshot"])
def test_transfer_stage_one_sees_sources_then_each_language_its_own(config, trained_on, paradigm: str) -> None:
    cfg = config(paradigm, **{"transfer.sources": ["eng", "swh"]})
    results = run_experiment(cfg, quiet=True).to_json()
    stage1, *stage2 = trained_on
    assert stage1[0] == Counter({"eng": _train_counts(cfg, "eng"), "swh": _train_counts(cfg, "swh")})
    assert results["local_steps"]["source"] == stage1[1]
    if paradigm == "zeroshot":
        assert stage2 == []
    else:
        assert sorted(next(iter(langs)) for langs, _ in stage2) == sorted(LANGS * cfg.federation.rounds)
        assert all(len(langs) == 1 for langs, _ in stage2)


@pytest.mark.parametrize("max_steps", [0, 2])
def test_local_step_budget_equals_a_federated_clients(config, max_steps: int) -> None:
    cfg = config("local", **{"federation.rounds": 3, "train.max_steps": max_steps, "train.batch_size": 4})
    results = run_experiment(cfg, quiet=True).to_json()
    runtime = get_runtime(cfg)
    for lang in LANGS:  # what the ClientApp trains on, and its steps per round (client_app.train_round)
        client_data = runtime.encoded(ClientSpec(lang), "train")
        assert results["local_steps"][lang] == 3 * steps_per_round(len(client_data), cfg.train)


def test_federated_and_local_share_schema_and_step_budget(config, tmp_path, task_identity) -> None:
    """The federation (the real ServerApp logic and ClientApp, on the in-process grid) against `local`."""
    fed_cfg = config("federated", output_dir=str(tmp_path / "fed"))
    clients = len(fed_cfg.data.languages) + len(fed_cfg.data.heldout_languages)
    fed = run_federated(InProcessGrid(clients), fed_cfg, quiet=True).to_json()
    local = run_experiment(config("local", output_dir=str(tmp_path / "local")), quiet=True).to_json()
    assert set(fed) == set(local) == SCHEMA and fed["versions"]["compute"] == local["versions"]["compute"]
    assert fed["local_steps"] == local["local_steps"] and set(fed["local_steps"]) == set(LANGS)
    assert fed["communication"]["total_bytes"] > 0 and local["communication"]["total_bytes"] == 0
    assert list(fed["heldout"]) == ["yor"]


def test_transfer_resumes_after_stage_one_without_repeating_it(config, tmp_path, monkeypatch) -> None:
    whole = run_experiment(config("transfer", output_dir=str(tmp_path / "whole")), quiet=True).to_json()
    cfg = config("transfer", output_dir=str(tmp_path / "cut"))
    interrupt_at_round(cfg, monkeypatch, 1)
    assert files.read_json(tmp_path / "cut" / "progress.json")["completed_round"] == 0
    resumed = run_experiment(cfg, resume=True, quiet=True).to_json()
    rows = files.read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert sum(1 for r in rows if r["round"] == 0 and r["split"] == "train") == 1  # stage 1 recorded once
    assert resumed["local_steps"] == whole["local_steps"]
    assert resumed["per_language"] == whole["per_language"] and resumed["heldout"] == whole["heldout"]


def test_damaged_checkpoint_resumes_from_the_last_intact_round(config, tmp_path, monkeypatch, caplog, capsys) -> None:
    from mfpt.cli import main

    whole = run_experiment(config("local", **{"federation.rounds": 3, "output_dir": str(tmp_path / "whole")}),
                           quiet=True).to_json()
    cfg = config("local", **{"federation.rounds": 3, "output_dir": str(tmp_path / "cut")})
    interrupt_at_round(cfg, monkeypatch, 3)
    damaged = tmp_path / "cut" / "checkpoints" / "round-0002.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a disk that filled up, a copy cut short
    with caplog.at_level("WARNING", logger="mfpt"):
        resumed = run_experiment(cfg, resume=True, quiet=True).to_json()
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert str(damaged) in warnings and "resuming from round 1" in warnings
    rows = files.read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert Counter((r["round"], r["lang"]) for r in rows if r["split"] == "train") == Counter(
        {(round_, lang): 1 for round_ in (1, 2, 3) for lang in LANGS})  # round 2 re-recorded, never counted twice
    assert resumed["local_steps"] == whole["local_steps"]
    assert resumed["per_language"] == whole["per_language"]

    (tmp_path / "cut" / "results.json").unlink()  # interrupted again, and then nothing intact left: one line
    for round_ in (1, 2, 3):
        path = tmp_path / "cut" / "checkpoints" / f"round-{round_:04d}.safetensors"
        path.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["run", str(tmp_path / "cut" / "config.toml"), "--resume", str(tmp_path / "cut"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No intact checkpoint") and err.count("\n") == 1 and "--out" in err


def test_resume_drops_a_metrics_line_cut_short_by_the_crash(config, tmp_path, monkeypatch) -> None:
    whole = run_experiment(config("local", **{"output_dir": str(tmp_path / "whole")}), quiet=True).to_json()
    cfg = config("local", **{"output_dir": str(tmp_path / "cut")})
    interrupt_at_round(cfg, monkeypatch, 2)
    with open(tmp_path / "cut" / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"round": 2, "split": "tra')  # the append the crash interrupted
    resumed = run_experiment(cfg, resume=True, quiet=True).to_json()
    assert resumed["per_language"] == whole["per_language"] and resumed["local_steps"] == whole["local_steps"]
    assert all(r["round"] in (1, 2) for r in files.read_jsonl(tmp_path / "cut" / "metrics.jsonl"))


def test_resume_accepts_a_config_written_before_newer_sections_but_not_another_setting(config, tmp_path, monkeypatch) -> None:
    whole = run_experiment(config("local", **{"output_dir": str(tmp_path / "whole")}), quiet=True).to_json()
    cfg = config("local", **{"output_dir": str(tmp_path / "cut")})
    interrupt_at_round(cfg, monkeypatch, 2)
    saved = tmp_path / "cut" / "config.toml"
    # As an mfpt without [privacy] and [personalization] wrote it: those sections' defaults are what the run used.
    old = re.sub(r"\n\[(privacy|personalization)\]\n(?:[^\[]*\n)*?(?=\n\[|\Z)", "\n", saved.read_text(encoding="utf-8"))
    assert "[privacy]" not in old and "[personalization]" not in old
    saved.write_text(old, encoding="utf-8")
    resumed = run_experiment(cfg, resume=True, quiet=True).to_json()
    assert resumed["per_language"] == whole["per_language"]
    with pytest.raises(ResumeError, match="config differs"):
        run_experiment(cfg.replace(**{"train.lr": cfg.train.lr * 2}), resume=True, quiet=True)
