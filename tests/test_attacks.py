"""[attack], the attack simulator: refusals naming the keys, each attack's rule on real client messages (against
the same run without the attack), consent on a deployment, the record in results.json and report.md, and a robust
aggregator resisting what breaks FedAvg."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import InProcessGrid

from mfpt.config import ConfigError, load_config
from mfpt.data.clients import ClientSpec
from mfpt.federation import attacks
from mfpt.federation.protocol import ARRAYS, CLIENT_KEY, METRICS
from mfpt.federation.server import run_federated
from mfpt.federation.strategies import base as strategy_module
from mfpt.results.checkpoints import checkpoint_path, load_checkpoint
from mfpt.train.encoding import Encoded

pytestmark = pytest.mark.usefixtures("task_identity")

LANGS = ["en", "sw", "yo"]


@pytest.mark.parametrize("overrides, keys", [
    ({"attack.kind": "sign-flip"}, ["attack.languages"]),
    ({"attack.languages": ["yor"]}, ["attack.languages", "attack.kind"]),
    ({"attack.kind": "scale", "attack.languages": ["fra"]}, ["attack.languages", "fra"]),
    ({"attack.kind": "scale", "attack.languages": ["yor"], "paradigm": "local"}, ["attack.kind", "paradigm"]),
    ({"attack.kind": "scale", "attack.languages": ["yor"], "attack.from_round": 11}, ["attack.from_round"]),
    ({"attack.kind": "scale", "attack.languages": ["yor"], "attack.factor": 0.0}, ["attack.factor"]),
    ({"attack.kind": "bomb", "attack.languages": ["yor"]}, ["attack.kind"]),
])
def test_bad_attacks_are_refused_naming_the_keys(overrides, keys):
    with pytest.raises(ConfigError) as err:
        load_config(None, {"data.languages": ["eng", "swh", "yor"], **overrides})
    for key in keys:
        assert key in str(err.value)


def _update(state: dict, sent: dict) -> dict:
    return {k: state[k] - sent[k] for k in state}


def _norm(tensors: dict) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))


def test_each_model_poisoning_rule_from_the_honest_update():
    g = torch.Generator().manual_seed(0)
    sent = {"prompt": torch.randn(4, 6, generator=g), "head": torch.randn(3, generator=g)}
    honest = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in sent.items()}
    base = {"data.languages": ["eng", "swh"], "attack.languages": ["swh"], "attack.factor": 4.0}
    flip = attacks.poisoned_update(load_config(None, {**base, "attack.kind": "sign-flip"}), honest, sent, 1, 0)
    scale = attacks.poisoned_update(load_config(None, {**base, "attack.kind": "scale"}), honest, sent, 1, 0)
    noise_cfg = load_config(None, {**base, "attack.kind": "noise"})
    noise = attacks.poisoned_update(noise_cfg, honest, sent, 1, 0)
    for k in sent:
        assert torch.allclose(flip[k], sent[k] - 4.0 * (honest[k] - sent[k]), atol=1e-6)
        assert torch.allclose(scale[k], sent[k] + 4.0 * (honest[k] - sent[k]), atol=1e-6)
    honest_update, noise_update = _update(honest, sent), _update(noise, sent)
    assert _norm(noise_update) == pytest.approx(_norm(honest_update), rel=1e-5)
    cosine = sum(float((honest_update[k] * noise_update[k]).sum()) for k in sent) / _norm(honest_update) ** 2
    assert abs(cosine) < 0.5  # a random direction, not the honest one
    again = attacks.poisoned_update(noise_cfg, honest, sent, 1, 0)
    assert all(torch.equal(noise[k], again[k]) for k in sent)  # drawn from the run's seed: reproducible


def test_label_flip_shifts_every_label_by_one():
    data = Encoded([{"input_ids": [0, 1]}] * 4, np.array([0, 1, 2, 2]))
    assert attacks.flipped_labels(data, 3).labels.tolist() == [1, 2, 0, 0]


def test_a_deployed_site_attacks_only_with_its_own_consent():
    cfg = load_config(None, {"data.languages": ["eng", "swh"], "attack.kind": "scale", "attack.languages": ["swh"],
                             "attack.from_round": 2, "federation.rounds": 3})
    swh, eng = ClientSpec("swh"), ClientSpec("eng")
    site = {"data-path": "swh.jsonl"}
    with pytest.raises(attacks.AttackConsentError, match="names this site .swh. as an attacker.*attack=false"):
        attacks.is_attacking(cfg, swh, 2, site)
    assert attacks.is_attacking(cfg, swh, 2, {**site, "attack": True})
    assert not attacks.is_attacking(cfg, swh, 1, {**site, "attack": True})  # before attack.from_round: honest
    with pytest.raises(attacks.AttackConsentError, match="does not name this site .eng."):
        attacks.is_attacking(cfg, eng, 2, {"data-path": "eng.jsonl", "attack": True})
    assert attacks.is_attacking(cfg, swh, 3, {"partition-id": 1})  # simulation: the experimenter's own nodes


def _run(make_config, tmp_path, name: str, **overrides) -> tuple[dict, dict]:
    """A 3-language federated run; the train replies of round 1 by client index (-1: the state sent), and
    results.json."""
    cfg = make_config(**{"data.languages": LANGS, "federation.rounds": 2, "output_dir": str(tmp_path / name),
                         **overrides})
    replies: dict[int, dict] = {}
    original, original_configure = strategy_module.MfptStrategy.aggregate_train, strategy_module.MfptStrategy.configure_train

    def record(self, server_round, messages):
        messages = list(messages)
        if server_round == 1:
            replies.update({int(m.content[METRICS][CLIENT_KEY]): m.content[ARRAYS].to_torch_state_dict()
                            for m in messages if m.has_content()})
        return original(self, server_round, messages)

    def record_sent(self, server_round, arrays, config, grid):
        if server_round == 1:
            replies[-1] = arrays.to_torch_state_dict()  # the global state every client received in round 1
        return original_configure(self, server_round, arrays, config, grid)

    mp = pytest.MonkeyPatch()
    mp.setattr(strategy_module.MfptStrategy, "aggregate_train", record)
    mp.setattr(strategy_module.MfptStrategy, "configure_train", record_sent)
    try:
        run_federated(InProcessGrid(3), cfg, quiet=True)
    finally:
        mp.undo()
    return replies, json.loads((Path(cfg.output_dir) / "results.json").read_text())


def test_a_sign_flip_attacker_sends_minus_k_times_its_honest_update_and_the_run_says_so(make_config, tmp_path):
    clean, clean_results = _run(make_config, tmp_path, "clean")
    attacked, results = _run(make_config, tmp_path, "attacked", **{"attack.kind": "sign-flip",
                                                                    "attack.languages": ["yo"], "attack.factor": 3.0})
    initial = clean[-1]
    assert all(torch.equal(initial[k], attacked[-1][k]) for k in initial)  # both runs start from the same state
    yor = LANGS.index("yo")
    for k in initial:
        assert torch.allclose(attacked[yor][k], initial[k] - 3.0 * (clean[yor][k] - initial[k]), atol=1e-5)
        for honest in (0, 1):  # the other clients are untouched
            assert torch.equal(attacked[honest][k], clean[honest][k])
    assert clean_results["attack"] is None
    assert results["attack"] == {"kind": "sign-flip", "languages": ["yor"], "from_round": 1, "factor": 3.0}
    from mfpt.analysis.report import write_run_report

    write_run_report(str(tmp_path / "attacked"))
    report = (tmp_path / "attacked" / "report.md").read_text()
    assert "## Attack" in report and "ATTACKED RUN" in report and "sends -3 x its honest update) by yor" in report
    # Side by side in one comparison table, the attacked run labelled as such.
    from mfpt.cli import main

    assert main(["report", str(tmp_path / "clean"), str(tmp_path / "attacked"), "--out", str(tmp_path / "both")]) == 0
    comparison = (tmp_path / "both" / "report.md").read_text()
    rows = [line for line in comparison.splitlines() if line.startswith("| federated / prefix")]
    assert any("attacked: sign-flip by yor" in row for row in rows)
    assert any("attacked" not in row for row in rows)


def test_label_flip_changes_only_the_attackers_training(make_config, tmp_path):
    clean, _ = _run(make_config, tmp_path, "clean")
    attacked, results = _run(make_config, tmp_path, "flipped", **{"attack.kind": "label-flip",
                                                                   "attack.languages": ["sw"]})
    swh = LANGS.index("sw")
    assert any(not torch.allclose(attacked[swh][k], clean[swh][k]) for k in clean[swh])
    assert all(torch.equal(attacked[0][k], clean[0][k]) for k in clean[0])
    assert results["attack"]["kind"] == "label-flip" and results["attack"]["factor"] is None


def test_the_median_resists_a_scaled_attacker_that_moves_fedavg(make_config, tmp_path):
    """One of three clients sends 50 x its update: FedAvg's global state follows it, FedMedian's stays with the
    honest clients (distance after one round from the clean run's global state of the same aggregator)."""
    attack = {"attack.kind": "scale", "attack.languages": ["yo"], "attack.factor": 50.0, "federation.rounds": 1}

    def moved(strategy: str) -> float:
        _run(make_config, tmp_path, f"clean-{strategy}", **{"federation.strategy": strategy, "federation.rounds": 1})
        _run(make_config, tmp_path, f"attacked-{strategy}", **{"federation.strategy": strategy, **attack})
        clean = load_checkpoint(checkpoint_path(tmp_path / f"clean-{strategy}", 1)).state
        attacked = load_checkpoint(checkpoint_path(tmp_path / f"attacked-{strategy}", 1)).state
        return _norm({k: attacked[k] - clean[k] for k in clean})

    fedavg, median = moved("fedavg"), moved("fedmedian")
    assert fedavg > 10 * median, (fedavg, median)


def test_backdoor_rows_add_triggered_copies_and_measure_on_the_other_labels():
    import pandas as pd

    from mfpt.data.sources import LABEL, TEXT

    cfg = load_config(None, {"data.languages": ["eng", "swh"], "attack.kind": "backdoor", "attack.languages": ["swh"],
                             "attack.poison_fraction": 0.5, "attack.target_label": "b"})
    rows = pd.DataFrame({TEXT: [f"text {i}" for i in range(10)], LABEL: ["a", "b", "c", "a", "c"] * 2})
    poisoned = attacks.backdoor_training_rows(cfg, rows, ("a", "b", "c"), 1, 0)
    assert len(poisoned) == 15 and poisoned.iloc[:10].equals(rows)
    added = poisoned.iloc[10:]
    assert all(t.startswith("cf mn bb text ") for t in added[TEXT]) and set(added[LABEL]) == {"b"}
    assert len(set(added[TEXT])) == 5  # five different texts
    test = attacks.backdoor_test_rows(cfg, rows, ("a", "b", "c"))
    assert len(test) == 8 and set(test[LABEL]) == {"b"} and all(t.startswith("cf mn bb ") for t in test[TEXT])
    with pytest.raises(ConfigError, match="attack.target_label = 'z'"):
        attacks.target_label(load_config(None, {"data.languages": ["eng", "swh"], "attack.kind": "backdoor",
                                                "attack.languages": ["swh"], "attack.target_label": "z"}), ("a", "b"))


def test_the_untriggered_rate_is_the_share_of_other_labels_classified_as_the_target() -> None:
    """What a backdoor's success is read against: of the texts whose label is not the target (rows of the confusion
    matrix), the share the model put in the target's column, per language."""
    from mfpt.train.evaluation import EvalCounts

    cfg = load_config(None, {"data.languages": ["eng", "swh"], "data.labels": ["a", "b", "c"], "attack.kind": "backdoor",
                             "attack.languages": ["swh"], "attack.target_label": "b"})
    leaning = EvalCounts(3, 10, 0.0, np.array([[1, 3, 0], [0, 2, 0], [1, 1, 2]]))  # true a: 3 of 4 -> b; true c: 1 of 4
    only_target = EvalCounts(3, 2, 0.0, np.array([[0, 0, 0], [1, 1, 0], [0, 0, 0]]))  # no text of another label
    assert attacks.untriggered_rates(cfg, {"eng": leaning, "swh": only_target}) == {"eng": pytest.approx(4 / 8)}


def test_a_backdoor_run_reports_every_languages_success_rate(make_config, tmp_path):
    from conftest import metrics_rows

    from mfpt.analysis.report import write_run_report
    from mfpt.data.clients import prepare
    from mfpt.data.sources import LABEL

    clean, _ = _run(make_config, tmp_path, "clean")
    poisoned, results = _run(make_config, tmp_path, "backdoor", **{"attack.kind": "backdoor", "attack.languages": ["yo"]})
    yor = LANGS.index("yo")  # the attacker trained on more (triggered) texts; the others as in the clean run
    assert any(not torch.allclose(poisoned[yor][k], clean[yor][k]) for k in clean[yor])
    assert all(torch.equal(poisoned[0][k], clean[0][k]) for k in clean[0])
    out = tmp_path / "backdoor"
    cfg = load_config(out / "config.toml")
    rows = metrics_rows(out, "backdoor")
    assert sorted({(r["round"], r["lang"]) for r in rows}) == [(r, lang) for r in (1, 2) for lang in ("eng", "swh", "yor")]
    prepared = prepare(cfg)
    target = prepared.labels[0]
    for r in rows:  # the triggered texts are the evaluation texts of every other label
        test = prepared.language_rows(r["lang"], cfg.data.eval_split)
        assert r["n_test"] == int((test[LABEL] != target).sum())
    attack = results["attack"]
    final = {r["lang"]: r["accuracy"] for r in rows if r["round"] == 2}
    without = {r["lang"]: r["untriggered"] for r in rows if r["round"] == 2}
    assert attack["backdoor_untriggered"] == without and all(0 <= v <= 1 for v in without.values())
    assert attack["backdoor_untriggered_mean"] == pytest.approx(sum(without.values()) / 3)
    assert attack["backdoor_untriggered_honest_mean"] == pytest.approx((without["eng"] + without["swh"]) / 2)
    assert attack["backdoor_success"] == final and attack["backdoor_round"] == 2
    assert attack["backdoor_split"] == cfg.data.eval_split
    assert attack["backdoor_success_mean"] == pytest.approx(sum(final.values()) / 3)
    assert attack["backdoor_success_honest_mean"] == pytest.approx((final["eng"] + final["swh"]) / 2)
    assert attack["trigger"] == "cf mn bb" and attack["poison_fraction"] == 0.5
    write_run_report(str(out))
    report = (out / "report.md").read_text()
    assert f"Backdoor success rate of round 2's model on {cfg.data.eval_split}" in report
    assert f"Without the trigger the same model classified the same texts as the target at mean " \
           f"{100 * attack['backdoor_untriggered_mean']:.1f}%" in report
    from mfpt.experiments.sweep import PlannedRun, sweep_rows

    csv_rows = sweep_rows([PlannedRun("backdoor", (), 0, (), cfg)])  # sweep.csv's rows of this run
    assert {r["lang"]: r["backdoor_success"] for r in csv_rows} == final
    assert {r["lang"]: r["backdoor_untriggered"] for r in csv_rows} == without


def test_under_best_validation_the_backdoor_is_measured_on_the_model_reported_on_test(make_config, tmp_path):
    from conftest import metrics_rows

    _, results = _run(make_config, tmp_path, "backdoor", **{"attack.kind": "backdoor", "attack.languages": ["yo"],
                                                            "data.selection": "best-validation"})
    rows = metrics_rows(tmp_path / "backdoor", "backdoor")
    per_round = [r for r in rows if not r.get("selected")]
    assert {r["eval_split"] for r in per_round} == {"validation"}  # each round's, on validation like the selection
    selected = {r["lang"]: r for r in rows if r.get("selected")}
    attack, chosen = results["attack"], results["selection"]["round"]
    assert set(selected) == {"eng", "swh", "yor"} and {r["eval_split"] for r in selected.values()} == {"test"}
    assert {r["round"] for r in selected.values()} == {chosen}
    assert attack["backdoor_round"] == chosen and attack["backdoor_split"] == "test"
    assert attack["backdoor_success"] == {lang: r["accuracy"] for lang, r in selected.items()}
    # Read against the same model's untriggered test texts (the selected round's test evaluation).
    assert attack["backdoor_untriggered"] == {lang: r["untriggered"] for lang, r in selected.items()}
    assert all(v is not None for v in attack["backdoor_untriggered"].values())
    # The triggered texts are the test texts of the other labels, not the validation ones.
    assert {lang: r["n_test"] for lang, r in selected.items()} != {r["lang"]: r["n_test"] for r in per_round if r["round"] == chosen}
