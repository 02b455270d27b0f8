"""`mfpt tune`: the same search for every setting, scored on validation only, and the choice used by later runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_DATA

from mfpt.config import ConfigError, load_config
from mfpt.config.specs import hyperparameters
from mfpt.experiments.sweep import SweepError, inprocess_runner
from mfpt.experiments.tune import (
    OBJECTIVE_ID,
    TUNING_FILE,
    parse_settings,
    plan_tuning,
    run_tuning,
    search_points,
    tuning_record,
    write_tuning,
)
from mfpt.results.schema import METRICS_FILE

GRID = [("train.lr", ["x0.1", "x1"])]


def _experiment(tmp_path: Path, tiny_xlmr: Path, data: Path = TINY_DATA) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "experiment.toml"
    path.write_text(f'name = "tune-test"\noutput_dir = "{tmp_path / "x"}"\n[model]\nname = "{tiny_xlmr}"\n'
                    f'max_seq_length = 32\n[peft]\nnum_virtual_tokens = 4\n[data]\nsource = "files"\npath = "{data}"\n'
                    'languages = ["eng", "swh"]\n[federation]\nrounds = 2\n[train]\nbatch_size = 8\nthreads = 1\n'
                    'device = "cpu"\n', encoding="utf-8")
    return path


def _tune(config: Path, out: Path, settings=("paradigm=local,centralized",), grid=GRID) -> dict:
    trials = plan_tuning(config, parse_settings(list(settings)), grid, [0], out)
    budget = len(search_points(grid, 0, 0))

    def record() -> None:
        write_tuning(out / TUNING_FILE, tuning_record(config, [], grid, [0], trials, budget))

    assert run_tuning(trials, out, str(config), record, runner=inprocess_runner, echo=lambda line: None) == {}
    return json.loads((out / TUNING_FILE).read_text(encoding="utf-8"))


def test_every_setting_gets_the_same_search_scored_on_validation_and_the_best_is_chosen(tmp_path, tiny_xlmr):
    tuning = _tune(_experiment(tmp_path, tiny_xlmr), tmp_path / "tune")
    assert [(s["paradigm"], s["method"]) for s in tuning["settings"]] == [("local", "prefix"), ("centralized", "prefix")]
    for setting in tuning["settings"]:
        # x0.1 and x1 of prefix's default 1e-2: the same two learning rates for every setting.
        assert [t["values"]["train.lr"] for t in setting["trials"]] == pytest.approx([1e-3, 1e-2])
        best = max(setting["trials"], key=lambda t: t["score"])
        assert setting["chosen"] == best["values"] and setting["score"] == best["score"]
        for trial in setting["trials"]:
            rows = [json.loads(line) for run in trial["runs"]
                    for line in (tmp_path / "tune" / setting["folder"] / run / METRICS_FILE)
                    .read_text(encoding="utf-8").splitlines()]
            assert {r["split"] for r in rows} == {"train", "validation"}  # nothing ever scored on test
            assert trial["seconds"] > 0 and trial["steps"] > 0
    assert tuning["trials_per_setting"] == 2 and "validation" in tuning["objective"]


def test_a_poisoned_test_split_changes_nothing_the_search_chooses(tmp_path, tiny_xlmr):
    """Test texts and labels replaced with garbage: if any trial read the test split, scores would move."""
    poisoned = tmp_path / "poisoned.jsonl"
    frame = pd.read_json(TINY_DATA, lines=True)
    test = frame["split"] == "test"
    frame.loc[test, "text"] = "zz"
    frame.loc[test, "label"] = "sport"
    frame.to_json(poisoned, orient="records", lines=True)
    clean = _tune(_experiment(tmp_path / "a", tiny_xlmr), tmp_path / "a" / "tune", settings=("paradigm=local",))
    dirty = _tune(_experiment(tmp_path / "b", tiny_xlmr, poisoned), tmp_path / "b" / "tune", settings=("paradigm=local",))
    assert [t["per_language"] for t in clean["settings"][0]["trials"]] == \
        [t["per_language"] for t in dirty["settings"][0]["trials"]]
    assert clean["settings"][0]["chosen"] == dirty["settings"][0]["chosen"]


def test_a_run_uses_and_cites_the_values_chosen_for_its_own_paradigm(tmp_path, tiny_xlmr):
    config = _experiment(tmp_path, tiny_xlmr)
    tuning = _tune(config, tmp_path / "tune")
    path = tmp_path / "tune" / TUNING_FILE
    for setting in tuning["settings"]:
        cfg = load_config(config, [f"paradigm={setting['paradigm']}", f'tuning.file="{path}"'])
        assert cfg.train.lr == setting["chosen"]["train.lr"]
        source = hyperparameters(cfg)["train.lr"]["source"]
        assert source.startswith(f"tuned on validation: {path}") and "best of 2 trial(s)" in source
    with pytest.raises(ConfigError, match="train.lr is set with --set and chosen by tuning.file"):
        load_config(config, ["paradigm=local", f'tuning.file="{path}"', "train.lr=0.5"])
    with pytest.raises(ConfigError, match="no tuned values for paradigm = 'federated'.*it holds local/prefix"):
        load_config(config, ["paradigm=federated", f'tuning.file="{path}"'])
    path.write_text("{}")
    with pytest.raises(ConfigError, match="is not a tuning file"):
        load_config(config, ["paradigm=local", f'tuning.file="{path}"'])


def test_the_search_space_and_settings_are_checked_before_anything_runs(tmp_path, tiny_xlmr):
    config = _experiment(tmp_path, tiny_xlmr)
    with pytest.raises(SweepError, match="needs a search space"):
        plan_tuning(config, parse_settings([]), [], [0], tmp_path / "t")
    with pytest.raises(SweepError, match="may not search 'paradigm'"):
        plan_tuning(config, parse_settings([]), [("paradigm", ["local"])], [0], tmp_path / "t")
    with pytest.raises(SweepError, match="setting paradigm=nope"):
        plan_tuning(config, parse_settings(["paradigm=nope"]), GRID, [0], tmp_path / "t")
    with pytest.raises(SweepError, match="--set 'paradigm' is also set by the tuning"):
        plan_tuning(config, parse_settings(["paradigm=local"]), GRID, [0], tmp_path / "t", ["paradigm=federated"])
    with pytest.raises(SweepError, match="--set 'data.eval_split' is also set by the tuning"):
        plan_tuning(config, parse_settings([]), GRID, [0], tmp_path / "t", ['data.eval_split="test"'])
    with pytest.raises(SweepError, match="'x' multiplies"):
        plan_tuning(config, parse_settings([]), [("model.name", ["x2"])], [0], tmp_path / "t")
    points = search_points([("train.lr", ["1", "2", "3"]), ("peft.init_std", ["0.1", "0.2"])], 3, 0)
    assert len(points) == 3 and points == search_points([("train.lr", ["1", "2", "3"]), ("peft.init_std", ["0.1", "0.2"])], 3, 0)


def test_a_second_search_into_the_same_folder_adds_its_settings_with_the_same_budget(tmp_path, tiny_xlmr):
    """Full fine-tuning tuned by its own command (it needs --set peft.method=full) joins the prompt settings' file."""
    config = _experiment(tmp_path, tiny_xlmr)
    out = tmp_path / "tune"
    _tune(config, out, settings=("paradigm=local",))
    trials = plan_tuning(config, parse_settings([]), GRID, [0], out, ["paradigm=local", "peft.method=full"])
    assert {t.folder for t in trials} == {"local__full"}
    run_tuning(trials, out, str(config), lambda: None, runner=inprocess_runner, echo=lambda line: None)
    write_tuning(out / TUNING_FILE, tuning_record(config, ["paradigm=local", "peft.method=full"], GRID, [0], trials, 2))
    tuning = json.loads((out / TUNING_FILE).read_text(encoding="utf-8"))
    assert [(s["paradigm"], s["method"]) for s in tuning["settings"]] == [("local", "prefix"), ("local", "full")]
    # x0.1 and x1 of full fine-tuning's own default, 2e-5: the same search, scaled to the method.
    assert [t["values"]["train.lr"] for t in tuning["settings"][1]["trials"]] == pytest.approx([2e-6, 2e-5])
    other = [("train.lr", ["x1", "x3"])]
    with pytest.raises(SweepError, match="another grid"):
        write_tuning(out / TUNING_FILE, tuning_record(config, [], other, [0], trials, 2))


def test_a_search_written_by_an_earlier_version_joins_unless_its_objective_differs(tmp_path, tiny_xlmr):
    """The objective's wording may change between versions (a file without objective_id predates the id); the
    objective itself may not."""
    config = _experiment(tmp_path, tiny_xlmr)
    out = tmp_path / "tune"
    earlier = _tune(config, out, settings=("paradigm=local",))
    assert earlier["objective_id"] == OBJECTIVE_ID
    del earlier["objective_id"]
    earlier["objective"] = "mean validation accuracy over the training languages after the last round"
    (out / TUNING_FILE).write_text(json.dumps(earlier), encoding="utf-8")
    trials = plan_tuning(config, parse_settings(["paradigm=centralized"]), GRID, [0], out)
    run_tuning(trials, out, str(config), lambda: None, runner=inprocess_runner, echo=lambda line: None)
    write_tuning(out / TUNING_FILE, tuning_record(config, [], GRID, [0], trials, 2))
    tuning = json.loads((out / TUNING_FILE).read_text(encoding="utf-8"))
    assert [s["paradigm"] for s in tuning["settings"]] == ["local", "centralized"]
    (out / TUNING_FILE).write_text(json.dumps({**tuning, "objective_id": "best-round/9"}), encoding="utf-8")
    with pytest.raises(SweepError, match="another objective_id"):
        write_tuning(out / TUNING_FILE, tuning_record(config, [], GRID, [0], trials, 2))


def test_a_trial_whose_clients_failed_gets_no_score_is_never_chosen_and_fails_the_command(tmp_path, tiny_xlmr):
    """A federated full fine-tuning trial once lost most of its clients to out-of-memory kills and still finished
    with the one language left scored; such a trial is not comparable and must not win the search."""
    config = _experiment(tmp_path, tiny_xlmr)
    out = tmp_path / "tune"
    trials = plan_tuning(config, parse_settings(["paradigm=local"]), GRID, [0], out)

    def runner_losing_clients_at_x1(run, config_path, resume, log) -> None:
        inprocess_runner(run, config_path, resume, log)
        if run.cfg.train.lr == pytest.approx(1e-2):  # as if swh's client had been killed: 1 language left
            path = run.folder / "results.json"
            result = json.loads(path.read_text(encoding="utf-8"))
            result.update(refused_updates=4, unscored=["swh"], average={"accuracy": 0.99, "macro_f1": 0.99})
            result["per_language"].pop("swh")
            path.write_text(json.dumps(result), encoding="utf-8")

    budget = len(search_points(GRID, 0, 0))
    failed = run_tuning(trials, out, str(config), lambda: None, runner=runner_losing_clients_at_x1,
                        echo=lambda line: None)
    assert len(failed) == 1 and "4 client repl(ies) failed" in next(iter(failed.values()))
    assert "swh not scored" in next(iter(failed.values()))
    setting = tuning_record(config, [], GRID, [0], trials, budget)["settings"][0]
    broken = [t for t in setting["trials"] if t["values"]["train.lr"] == pytest.approx(1e-2)][0]
    assert broken["score"] is None and "problem" in broken
    assert setting["chosen"]["train.lr"] == pytest.approx(1e-3)  # the only comparable trial, whatever 0.99 says


def test_a_relative_grid_value_is_written_as_the_number_it_means():
    """x3 of 2e-5 is 6e-05 in the trial's folder and the tuning file, not the float product 6.000000000000001e-05."""
    from mfpt.config import ExperimentConfig
    from mfpt.experiments.tune import _concrete

    base = ExperimentConfig().replace(**{"train.lr": 2e-5})
    assert _concrete([("train.lr", "x3"), ("train.lr", "x0.3")], base) == (("train.lr", "6e-05"), ("train.lr", "6e-06"))
    # an integer key gets an integer (the config refuses 2.0 for local_epochs), and a fraction of one is refused
    assert _concrete([("train.local_epochs", "x2")], base) == (("train.local_epochs", "2"),)
    with pytest.raises(SweepError, match="train.local_epochs is an integer"):
        _concrete([("train.local_epochs", "x0.5")], base)


def test_a_setting_tuned_for_another_key_is_used_only_by_runs_with_that_value(tmp_path):
    """`--for federation.qffl_q=1,5` gives two federated/prefix settings: each run takes its own q's choice, never
    the first in the file."""
    def setting(fixed: dict, qffl_lr: float, score: float) -> dict:
        return {"paradigm": "federated", "method": "prefix", "setting": {"paradigm": "federated", **fixed},
                "chosen": {"federation.qffl_lr": qffl_lr}, "score": score, "trials": [{}, {}]}

    path = tmp_path / TUNING_FILE
    path.write_text(json.dumps({"schema": "mfpt.tuning/1", "settings": [
        setting({"federation.qffl_q": "1"}, 1000.0, 0.5), setting({"federation.qffl_q": "5"}, 100.0, 0.4),
        setting({}, 10.0, 0.3)]}), encoding="utf-8")
    tuned = [f'tuning.file="{path}"', 'federation.strategy="qfedavg"']
    for q, qffl_lr, score in (("1", 1000.0, "50.0"), ("5.0", 100.0, "40.0"), ("2", 10.0, "30.0")):
        cfg = load_config(None, [*tuned, f"federation.qffl_q={q}"])
        assert cfg.federation.qffl_lr == qffl_lr  # q = 2 has no search of its own: the one without a fixed q
        assert f"mean validation accuracy {score}%" in hyperparameters(cfg)["federation.qffl_lr"]["source"]
    path.write_text(json.dumps({"schema": "mfpt.tuning/1", "settings": [
        setting({"federation.qffl_q": "1"}, 1000.0, 0.5), setting({"federation.qffl_q": "5"}, 100.0, 0.4)]}))
    with pytest.raises(ConfigError, match=r"federation.qffl_q = 2 \(it holds federated/prefix with federation.qffl_q "
                                          r"= 1; .*--for federation.qffl_q=2\)"):
        load_config(None, [*tuned, "federation.qffl_q=2"])


def test_a_value_kept_through_a_chain_of_searches_names_every_file_in_order():
    from mfpt.config.tuning import TunedSetting

    first = TunedSetting("federated", "prefix", {"train.lr": 0.01}, 0.5, 2).source("train.lr", "a.json")
    second = TunedSetting("federated", "prefix", {}, 0.6, 2, kept={"train.lr": {"value": 0.01, "source": first}})
    by_b = second.source("train.lr", "b.json")
    assert by_b == first + " (kept by b.json, whose search started from it)"
    third = TunedSetting("federated", "prefix", {}, 0.6, 2, kept={"train.lr": {"value": 0.01, "source": by_b}})
    fourth = TunedSetting("federated", "prefix", {}, 0.6, 2,
                          kept={"train.lr": {"value": 0.01, "source": third.source("train.lr", "c.json")}})
    assert fourth.source("train.lr", "d.json") == (
        first + " (kept by b.json, then by c.json, then by d.json, each search starting from the one before)")


def test_the_summary_names_each_setting_by_all_its_for_values():
    from mfpt.cli.tune import summary_lines

    content = {"trials_per_setting": 2, "settings": [
        {"paradigm": "federated", "method": "prefix", "setting": {"federation.qffl_q": q},
         "chosen": {"federation.qffl_lr": 1000}, "score": score, "trials": [{"seconds": 1800}, {"seconds": 1800}]}
        for q, score in (("1", 0.5), ("5", 0.4))]}
    assert summary_lines(content)[1:] == [
        "federated / prefix with federation.qffl_q = 1 | federation.qffl_lr = 1000 | 50.0 | 2/2 | 1.00",
        "federated / prefix with federation.qffl_q = 5 | federation.qffl_lr = 1000 | 40.0 | 2/2 | 1.00"]


def test_a_second_search_starts_from_the_first_and_passes_its_choice_on(tmp_path, tiny_xlmr):
    """A search of another key keeps the learning rate an earlier search chose for the setting (its trials train at
    it, and a run of the new file gets it, naming both files), but never a key it searches or one given with --set."""
    config = _experiment(tmp_path, tiny_xlmr)
    first, lr = tmp_path / "lr-tune.json", 0.0042  # an earlier search's choice, unlike any default
    first.write_text(json.dumps({"schema": "mfpt.tuning/1", "settings": [
        {"paradigm": "local", "method": "prefix", "setting": {"paradigm": "local"}, "chosen": {"train.lr": lr},
         "score": 0.5, "trials": [{}, {}]}]}), encoding="utf-8")
    out, grid, tuned = tmp_path / "std-tune", [("peft.init_std", ["0.01", "0.05"])], [f'tuning.file="{first}"']
    trials = plan_tuning(config, parse_settings(["paradigm=local"]), grid, [0], out, tuned)
    assert {run.cfg.train.lr for t in trials for run in t.runs} == {lr} and lr != load_config(config).train.lr
    assert trials[0].start.startswith(f"keeps train.lr = {lr} (tuned on validation: {first}")
    assert {run.cfg.tuning.file for t in trials for run in t.runs} == {""}  # the trials themselves read no file
    assert run_tuning(trials, out, str(config), lambda: None, runner=inprocess_runner, echo=lambda line: None) == {}
    write_tuning(out / TUNING_FILE, tuning_record(config, tuned, grid, [0], trials, 2))
    setting = json.loads((out / TUNING_FILE).read_text(encoding="utf-8"))["settings"][0]
    assert setting["kept"]["train.lr"]["value"] == lr and str(first) in setting["kept"]["train.lr"]["source"]

    cfg = load_config(config, ["paradigm=local", f'tuning.file="{out / TUNING_FILE}"'])
    assert cfg.train.lr == lr and cfg.peft.init_std == setting["chosen"]["peft.init_std"]
    source = hyperparameters(cfg)["train.lr"]["source"]
    assert source.startswith(f"tuned on validation: {first}") and f"kept by {out / TUNING_FILE}" in source
    with pytest.raises(ConfigError, match="train.lr is set with --set and chosen by tuning.file"):
        load_config(config, ["paradigm=local", f'tuning.file="{out / TUNING_FILE}"', "train.lr=0.5"])
    # searching the key again, or giving it with --set, keeps nothing of it
    again = plan_tuning(config, parse_settings(["paradigm=local"]), GRID, [0], tmp_path / "t1", tuned)
    default = load_config(config).train.lr
    assert all(not t.kept for t in again)
    assert again[0].start == (f"keeps nothing of {first}: every key it holds for local/prefix (train.lr) is searched "
                              "now or given with --set")
    assert sorted(run.cfg.train.lr for t in again for run in t.runs) == pytest.approx([0.1 * default, default])
    given = plan_tuning(config, parse_settings(["paradigm=local"]), grid, [0], tmp_path / "t2", [*tuned, "train.lr=0.5"])
    assert all(not t.kept for t in given) and {run.cfg.train.lr for t in given for run in t.runs} == {0.5}
    # without a tuning file (or with --set tuning.file=""), the search starts from the config
    plain = plan_tuning(config, parse_settings(["paradigm=local"]), grid, [0], tmp_path / "t3", ['tuning.file=""'])
    assert all(not t.kept for t in plain) and {run.cfg.train.lr for t in plain for run in t.runs} == {default}
    assert plain[0].start == "starts from the config's values (no tuning.file)"
    # a file without a search of the setting: its defaults, and the line says why
    other = plan_tuning(config, parse_settings(["paradigm=federated"]), grid, [0], tmp_path / "t4", tuned)
    assert all(not t.kept for t in other) and {run.cfg.train.lr for t in other for run in t.runs} == {
        load_config(config, ["paradigm=federated"]).train.lr}
    assert other[0].start == (f"starts from the config's values: {first} holds no search of federated/prefix with "
                              "this setting's values")
