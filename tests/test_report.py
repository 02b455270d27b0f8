"""Reports over many runs: every number equals what the results files say (recomputed here), plus figures,
held-out blocks, gains, the distance section and the `mfpt report` command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_run, table_rows

from mfpt.analysis.grouping import ReportError, load_runs
from mfpt.analysis.report import render_report, write_report
from mfpt.core import files
from mfpt.results.schema import read_result

PNG = b"\x89PNG\r\n\x1a\n"






def expected(values: list[float], signed: bool = False) -> str:
    """mean ± sample std (x100, one decimal), computed independently of mfpt.analysis.report."""
    arr = 100 * np.array(values)
    mean = f"{arr.mean():+.1f}" if signed else f"{arr.mean():.1f}"
    return mean if len(arr) == 1 else f"{mean} ± {arr.std(ddof=1):.1f}"


ACC = {  # paradigm -> seed -> language accuracies (eng, swh, hau trained; yor held out)
    "federated": {0: [0.60, 0.50, 0.40, 0.30], 1: [0.70, 0.55, 0.45, 0.35]},
    "local": {0: [0.50, 0.40, 0.20, None], 1: [0.55, 0.35, 0.25, None]},
    "transfer": {0: [0.55, 0.45, 0.30, 0.25], 1: [0.50, 0.40, 0.35, 0.20]},
}
TRAINED, HELD = ["eng", "swh", "hau"], "yor"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path, str]:
    """12 fake runs (3 paradigms x 2 sizes x 2 seeds), rendered once: (runs folder, report folder, Markdown)."""
    root = tmp_path_factory.mktemp("report")
    for paradigm, seeds in ACC.items():
        for seed, accs in seeds.items():
            for size in (8, 0):
                shift = 0.0 if size == 0 else -0.1
                fake_run(root / "runs", paradigm, seed, {l: a + shift for l, a in zip(TRAINED, accs)},
                         {HELD: accs[3] + shift} if accs[3] is not None else {}, size=size)
    runs = load_runs([root / "runs"])
    assert len(runs) == 12
    return root / "runs", root / "out", write_report(runs, root / "out").read_text(encoding="utf-8")


@pytest.fixture
def runs_dir(rendered) -> Path:
    return rendered[0]


def test_tables_equal_the_results_recomputed(rendered) -> None:
    runs_dir, _, md = rendered
    for size, heading in ((8, "## Results: data.train_per_language = 8"), (0, "## Results: data.train_per_language = all")):
        table = table_rows(md, heading)
        for paradigm in ACC:
            results = [read_result(runs_dir / f"{paradigm}-{size}-{seed}") for seed in (0, 1)]
            row = table[f"{paradigm} / prefix"]
            for i, lang in enumerate(TRAINED):
                assert row[i] == expected([r.per_language[lang].accuracy for r in results])
            means = [np.mean([r.per_language[lang].accuracy for lang in TRAINED]) for r in results]
            assert row[3] == expected(means)
            assert row[4] == expected([r.per_language["hau"].accuracy for r in results])  # low-resource
            held = [r.heldout[HELD].accuracy for r in results if HELD in r.heldout]
            assert row[5] == (expected(held) if held else "-")
            assert row[6:] == ["1,000", "12.0 KB" if paradigm == "federated" else "0 B", "0,1"]
            assert table_rows(md[md.index(heading):], "Budgets:")[f"{paradigm} / prefix"][0] == "6 each"
        held_table = table_rows(md[md.index(heading):], "Held-out languages")
        assert held_table["local / prefix"][0] == "-" and "not evaluated" in held_table["local / prefix"][-1]


def test_gains_are_paired_differences_per_language(rendered) -> None:
    md = rendered[2]
    section = md[md.index("## Results: data.train_per_language = all"):]
    gains = table_rows(section, "Gain of federated over each baseline")
    for other in ("local", "transfer"):
        row = gains[f"{other} / prefix"]
        for i, lang in enumerate(TRAINED):
            assert row[i] == expected([ACC["federated"][s][i] - ACC[other][s][i] for s in (0, 1)], signed=True)
        assert row[-1] == "2"  # paired seeds
    assert gains["transfer / prefix"][5] == expected([ACC["federated"][s][3] - ACC["transfer"][s][3] for s in (0, 1)],
                                                     signed=True)  # held-out yor


def test_the_spread_across_languages_names_the_worst_and_is_recomputed(rendered) -> None:
    md = rendered[2]
    section = md[md.index("## Results: data.train_per_language = all"):]
    spread = table_rows(section, "Spread across the training languages")
    for paradigm, seeds in ACC.items():
        trained = {s: accs[:3] for s, accs in seeds.items()}
        means = np.mean(list(trained.values()), axis=0)
        assert spread[f"{paradigm} / prefix"][0] == TRAINED[int(np.argmin(means))]
        assert spread[f"{paradigm} / prefix"][1] == expected([min(v) for v in trained.values()])
        assert spread[f"{paradigm} / prefix"][2] == expected([max(v) for v in trained.values()])
        assert spread[f"{paradigm} / prefix"][3] == expected([float(np.std(v, ddof=1)) for v in trained.values()])


def test_figures_curves_and_data_efficiency(rendered) -> None:
    runs_dir, out, md = rendered
    for name in ("data_efficiency.png", "curves_train_per_language-8.png", "curves_train_per_language-all.png"):
        assert f"]({name})" in md and (out / name).read_bytes()[:8] == PNG
    efficiency = table_rows(md, "## Data efficiency")
    fed = [read_result(runs_dir / f"federated-8-{s}").average.accuracy for s in (0, 1)]
    assert efficiency["federated / prefix"][0] == expected(fed)
    curve = table_rows(md[md.index("train_per_language = all"):], "Mean accuracy by round")["federated / prefix"]
    last = [np.mean(ACC["federated"][s][:3]) for s in (0, 1)]  # fake curves reach the final accuracy at round 3
    assert curve[-1] == expected(last)


def test_distance_section_when_gains_over_local_and_transfer_exist(rendered) -> None:
    _, out, md = rendered
    assert "### Language distance and federated gains" in md
    assert "](distance_train_per_language-all/distance_heatmaps.png)" in md
    assert (out / "distance_train_per_language-all" / "distance_heatmaps.png").read_bytes()[:8] == PNG


def test_an_aggregators_clean_cost_per_language_is_set_against_language_distance(tmp_path: Path) -> None:
    """FedMedian's accuracy minus FedAvg's, per language and paired by seed, is a gain of the distance analysis."""
    accs = {"fedavg": {0: [0.6, 0.5, 0.4, 0.3, 0.5], 1: [0.7, 0.5, 0.5, 0.4, 0.4]},
            "fedmedian": {0: [0.6, 0.4, 0.3, 0.1, 0.5], 1: [0.7, 0.5, 0.4, 0.2, 0.3]}}
    langs = ["eng", "swh", "hau", "yor", "amh"]
    for strategy, seeds in accs.items():
        for seed, values in seeds.items():
            fake_run(tmp_path / "runs", "federated", seed, dict(zip(langs, values)), strategy=strategy)
    md = write_report(load_runs([tmp_path / "runs"]), tmp_path / "out").read_text(encoding="utf-8")
    section = md[md.index("#### Distance to the rest of the federation"):]
    header = next(line for line in section.splitlines() if line.startswith("|"))
    column = [c.strip() for c in header.strip("|").split("|")].index("fedmedian - fedavg") - 1
    table = {name.split()[0]: cells for name, cells in table_rows(section, "####").items()}
    for i, lang in enumerate(langs):
        cost = np.mean([accs["fedmedian"][s][i] - accs["fedavg"][s][i] for s in (0, 1)])
        assert float(table[lang][column]) == pytest.approx(100 * cost, abs=0.051), lang
    assert re.search(r"\| syntactic \| federation \| fedmedian - fedavg \| 5 \| -?\d", md)  # a correlation


def test_federated_rows_are_compared_with_their_references_one_change_at_a_time(tmp_path: Path) -> None:
    """Among federated rows, each aggregator is set against FedAvg under the same attack and each attacked row against
    its aggregator's clean run (never two changes in one number); every row against the baselines; and each table
    names the row it subtracts from."""
    langs = ["eng", "swh", "hau"]
    sign_flip = {"kind": "sign-flip", "languages": ["hau"]}
    runs = {("federated", "fedavg", None): 0.6, ("federated", "fedmedian", None): 0.5, ("local", "fedavg", None): 0.3,
            ("federated", "fedavg", "sign-flip"): 0.2, ("federated", "fedmedian", "sign-flip"): 0.45}
    for (paradigm, strategy, attack), acc in runs.items():
        fake_run(tmp_path / "runs", paradigm, 0, dict.fromkeys(langs, acc), strategy=strategy,
                 attack=sign_flip if attack else None)
    md = write_report(load_runs([tmp_path / "runs"]), tmp_path / "out").read_text(encoding="utf-8")
    section = md[md.index("Gain of federated over each baseline"):md.index("Budgets")]
    tables: dict[str, dict[str, str]] = {}  # minuend -> subtrahend -> mean gain
    for block in section.split("\n\n")[1:]:
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
        if not rows:
            continue
        minuend = rows[0][0].removesuffix(" minus")
        tables[minuend] = {row[0]: row[rows[0].index("mean")] for row in rows[2:]}
    attacked = "attacked: sign-flip by hau"
    assert tables == {
        "federated / prefix / fedavg": {"local / prefix / fedavg": "+30.0"},
        "federated / prefix / fedmedian": {"federated / prefix / fedavg": "-10.0", "local / prefix / fedavg": "+20.0"},
        f"federated / prefix / fedavg / {attacked}": {"federated / prefix / fedavg": "-40.0",
                                                      "local / prefix / fedavg": "-10.0"},
        f"federated / prefix / fedmedian / {attacked}": {"federated / prefix / fedmedian": "-5.0",
                                                         f"federated / prefix / fedavg / {attacked}": "+25.0",
                                                         "local / prefix / fedavg": "+15.0"}}


def test_an_update_norm_bound_is_a_server_rule_compared_with_plain_fedavg(tmp_path: Path) -> None:
    """FedAvg with federation.max_update_norm is its own row, set against plain FedAvg under the same attack (what
    the bound saves) and clean (what it costs, also per language in the distance analysis)."""
    import json

    langs = ["eng", "swh", "hau", "yor", "amh"]
    sign_flip = {"kind": "sign-flip", "languages": ["hau"]}
    for (bound, attack), acc in {(0, False): 0.6, (5, False): 0.55, (0, True): 0.2, (5, True): 0.5}.items():
        folder = fake_run(tmp_path / "runs" / f"bound-{bound}", "federated", 0, dict.fromkeys(langs, acc),
                          attack=sign_flip if attack else None)
        path = folder / "results.json"  # a real run records the key, 0 (off) or the bound
        result = json.loads(path.read_text(encoding="utf-8"))
        result["config"]["federation"]["max_update_norm"] = bound
        path.write_text(json.dumps(result), encoding="utf-8")
    md = write_report(load_runs([tmp_path / "runs"]), tmp_path / "out").read_text(encoding="utf-8")
    bounded, attacked = "federated / prefix / fedavg + norm bound 5", "attacked: sign-flip by hau"
    assert table_rows(md, f"| {bounded} minus")["federated / prefix / fedavg"][5] == "-5.0"  # the mean column
    assert table_rows(md, f"| {bounded} / {attacked} minus") == {
        f"federated / prefix / fedavg / {attacked}": ["+30.0"] * 5 + ["+30.0", "+30.0", "1"],
        bounded: ["-5.0"] * 5 + ["-5.0", "-5.0", "1"]}
    assert "fedavg + norm bound 5 - fedavg |" in md[md.index("#### Distance to the rest of the federation"):]


def test_several_federated_rows_each_get_their_gain_over_local_in_the_distance_analysis(tmp_path: Path) -> None:
    """With FedAvg and FedMedian beside local training, each federated row's gain per language is its own column
    (one name for both would keep only the last)."""
    langs = ["eng", "swh", "hau", "yor", "amh"]
    for paradigm, strategy, acc in (("federated", "fedavg", 0.6), ("federated", "fedmedian", 0.5), ("local", "fedavg", 0.3)):
        fake_run(tmp_path / "runs", paradigm, 0, dict.fromkeys(langs, acc), strategy=strategy)
    md = write_report(load_runs([tmp_path / "runs"]), tmp_path / "out").read_text(encoding="utf-8")
    section = md[md.index("#### Distance to the rest of the federation"):]
    table = {name.split()[0]: cells for name, cells in table_rows(section, "####").items()}
    header = [c.strip() for c in next(line for line in section.splitlines() if line.startswith("|")).strip("|").split("|")]
    for label, gain in (("federated / prefix / fedavg - local", "30.0"), ("federated / prefix / fedmedian - local", "20.0")):
        assert table["swh"][header.index(label) - 1] == gain


def test_a_backdoor_gets_its_success_rate_table_recomputed(tmp_path: Path) -> None:
    """Per backdoored setting: the success rate over the training languages, the honest ones and the honest
    low-resource ones (hau), mean ± std over seeds, each with the same texts' rate without the trigger in brackets;
    a clean setting has no row."""
    langs, success = ["eng", "swh", "hau", "yor"], {0: [0.2, 0.4, 0.6, 0.9], 1: [0.1, 0.3, 0.5, 0.8]}
    untriggered = {0: [0.1, 0.2, 0.3, 0.2], 1: [0.3, 0.2, 0.1, 0.4]}
    for seed, rates in success.items():
        fake_run(tmp_path / "runs", "federated", seed, dict.fromkeys(langs, 0.5))
        attack = {"kind": "backdoor", "languages": ["yor"], "from_round": 1, "backdoor_round": 3,
                  "backdoor_success": dict(zip(langs, rates)), "backdoor_success_mean": float(np.mean(rates)),
                  "backdoor_untriggered": dict(zip(langs, untriggered[seed])),
                  "backdoor_untriggered_mean": float(np.mean(untriggered[seed]))}
        fake_run(tmp_path / "runs", "federated", seed, dict.fromkeys(langs, 0.4), attack=attack)
    md = write_report(load_runs([tmp_path / "runs"]), tmp_path / "out").read_text(encoding="utf-8")
    table = table_rows(md, "Backdoor success rate")
    (label,) = table
    assert "attacked: backdoor by yor" in label

    def cell(select) -> str:
        return f"{expected([select(r) for r in success.values()])} ({expected([select(r) for r in untriggered.values()])})"

    assert table[label] == [cell(np.mean), cell(lambda r: np.mean(r[:3])),  # yor attacked: not honest
                            cell(lambda r: r[2]), "0,1"]


def test_a_report_of_generation_runs_is_in_chrf(tmp_path: Path) -> None:
    """Tables, gains and curves of generation runs measure chrF++; the second table is the exact-match rate."""
    chrf = {"federated": [0.6, 0.5, 0.4], "local": [0.5, 0.3, 0.2]}
    for paradigm, values in chrf.items():
        fake_run(tmp_path / "runs", paradigm, 0, dict(zip(TRAINED, values)), generation=True)
    md = write_report(load_runs([tmp_path / "runs"]), tmp_path / "out").read_text(encoding="utf-8")
    table = table_rows(md, "## Results")
    assert table["federated / prefix"][:3] == ["60.0", "50.0", "40.0"]  # chrF++, not the exact matches (half)
    assert table_rows(md, "Exact match (%)")["federated / prefix"][:3] == ["30.0", "25.0", "20.0"]
    gains = table_rows(md, "Gain of federated over each baseline (chrF++ points")
    assert gains["local / prefix"][:3] == ["+10.0", "+20.0", "+20.0"]
    assert "Mean chrF++ by round" in md and "Macro-F1" not in md


def test_distance_error_is_printed_not_raised(tmp_path: Path) -> None:
    for paradigm, accs in (("federated", {"eng": 0.6, "swh": 0.5}), ("local", {"eng": 0.5, "swh": 0.4})):
        fake_run(tmp_path / "runs", paradigm, 0, accs, low=())
    md = write_report(load_runs([tmp_path / "runs"]), tmp_path / "out").read_text(encoding="utf-8")
    assert "Distance analysis not shown: The distance analysis needs gains for at least 3 languages" in md


def test_same_setting_and_seed_twice_is_refused(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", "local", 0, {"eng": 0.5})
    fake_run(tmp_path / "b", "local", 0, {"eng": 0.5})
    with pytest.raises(ReportError, match="same setting and seed 0"):
        render_report(load_runs([tmp_path / "a", tmp_path / "b"]), tmp_path / "out")


def test_report_command(runs_dir: Path, tmp_path: Path, capsys) -> None:
    from mfpt.cli import main

    assert main(["report", str(runs_dir / "local-0-0"), str(runs_dir / "federated-0-0"), "--out", str(tmp_path / "r")]) == 0
    assert re.search(r"\| federated / prefix \| 60\.0 \|", (tmp_path / "r" / "report.md").read_text(encoding="utf-8"))
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no results.json" in capsys.readouterr().err


def test_render_report_is_pure_and_links_no_figure_it_was_not_given(runs_dir: Path, tmp_path: Path) -> None:
    runs = load_runs([runs_dir / "federated-0-0", runs_dir / "local-0-0"])
    md = render_report(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert "| federated / prefix | 60.0 |" in md and "![" not in md and "Language distance" not in md


def test_old_file_without_schema_version_and_unknown_paradigm_is_reported(runs_dir: Path, tmp_path: Path) -> None:
    folder = fake_run(tmp_path / "runs", "fedprox", 0, {"eng": 0.5, "swh": 0.4, "hau": 0.3}, {"yor": 0.2})
    data = files.read_json(folder / "results.json")
    del data["schema_version"]  # version 0: written before the schema had a version
    files.write_json(folder / "results.json", data)
    md = write_report(load_runs([folder, runs_dir / "federated-0-0"]), tmp_path / "out").read_text(encoding="utf-8")
    assert table_rows(md, "## Results")["fedprox / prefix"][:4] == ["50.0", "40.0", "30.0", "40.0"]
    assert table_rows(md, "Held-out languages")["fedprox / prefix"][-1] == "-"  # no spec: no model to name
    assert table_rows(md, "Gain of federated over each baseline")["fedprox / prefix"][0] == "+10.0"


def test_communication_is_compared_with_full_fine_tuning(tmp_path: Path) -> None:
    folder = fake_run(tmp_path / "runs", "federated", 0, {"eng": 0.6, "swh": 0.5})
    data = files.read_json(folder / "results.json")
    data["communication"] |= {"bytes_up_per_round": 3000, "bytes_down_per_round": 5000, "clients_per_round": 2}
    files.write_json(folder / "results.json", data)
    md = render_report(load_runs([folder]), tmp_path / "out")
    # 8 KB per round for 1,000 of 10,000 parameters: the whole model would send 80 KB, so 90% is saved.
    assert "- Communication of federated / prefix: 8.0 KB per round for 2 clients" in md
    assert "about 80.0 KB (90.00% less)." in md
    # full fine-tuning is that reference: no comparison of it with itself
    data["method"], data["config"]["peft"]["method"] = "full", "full"
    data["trainable_params"] = data["total_params"]
    files.write_json(folder / "results.json", data)
    md = render_report(load_runs([folder]), tmp_path / "out")
    assert "- Communication of federated / full: 8.0 KB per round for 2 clients (the trainable tensors down and up " \
           "for training, down again for evaluation): the whole model." in md and "% less" not in md


def test_a_run_report_says_what_its_numbers_mean(tmp_path):
    """Rows scored and the majority class beside the scores, the bytes in words, the folder as the title."""
    from mfpt.analysis.report import write_run_report

    folder = fake_run(tmp_path, "federated", 0, {"eng": 0.5, "hau": 0.6})
    folder = folder.rename(tmp_path / "my-run")
    text = write_run_report(folder).read_text(encoding="utf-8")
    assert text.startswith("# my-run: federated / prefix") and "(experiment `t`)" in text
    rows = table_rows(text, "Accuracy (%)")
    assert rows["rows scored"][:2] == ["9", "9"]
    assert rows["majority class"][:3] == ["44.4", "44.4", "44.4"]
    assert "each of 2 clients sends its 1.0 KB of trainable tensors" in text
    assert "from the model loaded to the results written" in text
    assert "Update norms" not in text  # none recorded


def test_a_run_report_sums_up_the_accepted_update_norms(tmp_path):
    """What federation.max_update_norm is set from: median, 95th percentile and max of the recorded norms."""
    from mfpt.analysis.report import render_run_report

    folder = fake_run(tmp_path, "federated", 0, {"eng": 0.5, "hau": 0.6})
    norms = [0.5, 1.0, 2.0, 4.0, 40.0]
    curves = [{"round": 1 + i // 2, "split": "train", "lang": "eng", "update_norm": n} for i, n in enumerate(norms)]
    text = render_run_report(read_result(folder), curves)
    assert (f"- Update norms (L2 of what a client sent minus the state it trained from, 5 accepted updates): median 2, "
            f"95th percentile {np.percentile(norms, 95):.4g}, max 40; federation.max_update_norm = off.") in text


def test_a_sweep_report_marks_the_majority_class_and_names_its_seeds(tmp_path):
    runs = [fake_run(tmp_path, p, s, {"eng": 0.5 + s / 10, "hau": 0.6}) for p in ("federated", "local") for s in (0, 1)]
    text = write_report(load_runs(runs), tmp_path / "report").read_text(encoding="utf-8")
    rows = table_rows(text, "## Results")
    assert rows["majority class"][:2] == ["44.4", "44.4"] and rows["rows scored"][:2] == ["9", "9"]
    from mfpt.cli.sweep import sweep_title

    assert sweep_title(tmp_path / "runs" / "sweep") == "Sweep runs/sweep"
    assert sweep_title(tmp_path / "paradigms") == "Sweep paradigms"


def test_keys_of_another_peft_method_do_not_split_a_setting(tmp_path):
    """Two seeds of a prefix run recorded under different LoRA defaults are one setting; LoRA runs that differ in
    them are two."""
    import json

    from mfpt.analysis.grouping import group_runs, load_runs

    folders = [fake_run(tmp_path / "runs", "federated", seed, {"eng": 0.5, "hau": 0.4}) for seed in (0, 1)]
    for folder, modules in zip(folders, (["query", "value"], [])):
        path = folder / "results.json"
        result = json.loads(path.read_text(encoding="utf-8"))
        result["config"]["peft"]["lora_target_modules"] = modules
        path.write_text(json.dumps(result), encoding="utf-8")
    groups = group_runs(load_runs([tmp_path / "runs"]))
    assert len(groups) == 1 and groups[0].seeds == [0, 1]
    for folder in folders:  # the same two runs as LoRA runs: the modules now set them apart
        path = folder / "results.json"
        result = json.loads(path.read_text(encoding="utf-8"))
        result["method"], result["config"]["peft"]["method"] = "lora", "lora"
        path.write_text(json.dumps(result), encoding="utf-8")
    assert len(group_runs(load_runs([tmp_path / "runs"]))) == 2


def test_keys_of_another_server_strategy_do_not_split_a_setting(tmp_path):
    """FedAvg recorded with federation.byzantine_clients = 3 (as in a sweep over aggregators) and FedAvg without it are
    one setting, beside MultiKrum in one table; two MultiKrum runs that differ in it are two rows of that table, named
    by it, each compared with FedAvg."""
    import json

    from mfpt.analysis.grouping import contexts, group_runs, load_runs

    def with_byzantine(folder: Path, count: int) -> None:
        path = folder / "results.json"
        result = json.loads(path.read_text(encoding="utf-8"))
        result["config"]["federation"]["byzantine_clients"] = count
        path.write_text(json.dumps(result), encoding="utf-8")

    accs = {"eng": 0.5, "hau": 0.4}
    with_byzantine(fake_run(tmp_path / "runs", "federated", 0, accs), 3)
    fake_run(tmp_path / "runs", "federated", 1, accs)
    with_byzantine(fake_run(tmp_path / "runs", "federated", 0, accs, strategy="multikrum"), 3)
    [ctx] = contexts(group_runs(load_runs([tmp_path / "runs"])))
    assert {g.label: g.seeds for g in ctx.groups} == {"federated / prefix / fedavg": [0, 1],
                                                      "federated / prefix / multikrum": [0]}
    with_byzantine(fake_run(tmp_path / "runs", "federated", 1, accs, strategy="multikrum"), 1)
    [ctx] = contexts(group_runs(load_runs([tmp_path / "runs"])))  # a strategy's own key is a row, not a table
    assert {g.label: g.seeds for g in ctx.groups} == {"federated / prefix / fedavg": [0, 1],
                                                      "federated / prefix / multikrum (byzantine_clients 1)": [1],
                                                      "federated / prefix / multikrum (byzantine_clients 3)": [0]}
    md = render_report(load_runs([tmp_path / "runs"]), tmp_path / "report")
    for count in (1, 3):
        gains = table_rows(md, f"| federated / prefix / multikrum (byzantine_clients {count}) minus")
        assert list(gains) == ["federated / prefix / fedavg"]  # each against FedAvg, not against each other


def test_a_run_whose_clients_failed_is_listed_before_the_tables(tmp_path):
    import json

    from mfpt.analysis.grouping import load_runs
    from mfpt.analysis.report import render_report

    ok = fake_run(tmp_path / "runs", "federated", 0, {"eng": 0.5, "hau": 0.4})
    broken = fake_run(tmp_path / "runs", "federated", 1, {"eng": 0.6})
    path = broken / "results.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    result.update(languages=["eng", "hau"], refused_updates=3, unscored=["hau"])
    path.write_text(json.dumps(result), encoding="utf-8")
    text = render_report(load_runs([tmp_path / "runs"]), tmp_path / "report")
    section = text.split("## Runs whose clients failed", 1)[1].split("## Protocols", 1)[0]
    assert broken.name in section and "3 client repl(ies) refused or failed; not scored: hau" in section
    assert ok.name not in section
