"""The demo: its config validates against the shipped data, and a shortened demo runs end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import TINY_DATA, table_rows

from mfpt.config import load_config
from mfpt.data.clients import prepare
from mfpt.results.schema import read_result

ROOT = Path(__file__).resolve().parent.parent


def test_demo_config_validates_and_its_languages_exist_in_udhr_topics():
    cfg = load_config(ROOT / "configs" / "demo.toml")
    assert cfg.data.source == "udhr-topics" and len(cfg.data.languages) >= 12
    assert len(cfg.data.low_resource) >= 6 and set(cfg.data.low_resource) <= set(cfg.data.languages)
    prepared = prepare(cfg.replace(**{"model.name": "unused"}))
    assert prepared.labels == ("civil_society", "economic_social_cultural", "person", "political")
    for lang in cfg.data.languages:
        rows = {split: len(prepared.language_rows(lang, split)) for split in ("train", "validation", "test")}
        assert rows["train"] >= 30 and rows["validation"] == 7 and rows["test"] == 12, (lang, rows)


@pytest.mark.deployment
@pytest.mark.slow
def test_shortened_demo_runs_and_writes_the_report(tmp_path, tiny_xlmr):
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    overrides = [f'model.name="{tiny_xlmr}"', "data.source=files", f'data.path="{TINY_DATA}"', "data.languages=eng,swh",
                 "data.low_resource=swh", "federation.rounds=1", "model.max_seq_length=32", "peft.num_virtual_tokens=4",
                 'model.text_prefix=""']
    assert demo.main(["--out", str(tmp_path / "demo"), *sum((["--set", o] for o in overrides), [])]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| federated / prefix |" in report and "| local / prefix |" in report
    seed = load_config(ROOT / "configs" / "demo.toml").seed
    results = {p: read_result(tmp_path / "demo" / f"paradigm={p}__seed={seed}") for p in ("federated", "local")}
    table = table_rows(report, "## Results")  # columns: eng, swh† (low-resource), mean, low-res mean, held-out mean, ...
    for paradigm, result in results.items():
        row = table[f"{paradigm} / prefix"]
        assert row[:4] == [f"{100 * v:.1f}" for v in (result.score("eng"), result.score("swh"),
                                                      result.average.accuracy, result.low_resource_average.accuracy)]
    gains = table_rows(report, "Gain of federated over each baseline")["local / prefix"]
    assert gains[:2] == [f"{100 * (results['federated'].score(lang) - results['local'].score(lang)):+.1f}"
                         for lang in ("eng", "swh")]
    assert "less)" in report  # bytes per round compared with federated full fine-tuning
    assert "](curves_all.png)" in report and (tmp_path / "demo" / "curves_all.png").stat().st_size > 1000
    assert demo.main(["--out", str(tmp_path / "demo"), *sum((["--set", o] for o in overrides), [])]) == 0  # reuses runs

