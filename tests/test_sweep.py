"""Sweeps: grid parsing, run folders, resuming an interrupted sweep, and sweep.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mfpt.core import files
from mfpt.experiments.sweep import (
    SweepError,
    finish_sweep,
    inprocess_runner,
    parse_grid,
    parse_seeds,
    plan_sweep,
    run_name,
    run_sweep,
)
from mfpt.results.recorder import RunRecorder
from mfpt.results.schema import read_result

LANGS = ["eng", "swh", "hau", "yor"]  # the last one held out


def _overrides(tiny_xlmr: Path) -> list[str]:
    from conftest import TINY_DATA

    return [f'model.name="{tiny_xlmr}"', "model.max_seq_length=32", "data.source=files", f'data.path="{TINY_DATA}"',
            "data.languages=eng,swh,hau", "data.heldout_languages=yor", "data.low_resource=hau",
            "peft.num_virtual_tokens=4", "federation.rounds=2", "train.batch_size=8", "train.threads=1",
            "train.device=cpu", "transfer.source_epochs=1"]


def test_grid_values_split_on_commas_or_semicolons() -> None:
    grid = parse_grid(["paradigm=federated,local", "data.languages=eng,swh;eng,hau", "data.train_per_language=8"])
    assert grid == [("paradigm", ["federated", "local"]), ("data.languages", ["eng,swh", "eng,hau"]),
                    ("data.train_per_language", ["8"])]
    assert parse_seeds("0, 1,2") == [0, 1, 2]


@pytest.mark.parametrize("items, message", [
    (["paradigm"], "needs the form"),
    (["seed=0,1"], "use --seeds"),
    (["paradigm=local", "paradigm=federated"], "given twice"),
    (["paradigm=local,local"], "repeats a value"),
])
def test_bad_grid_is_refused_with_the_fix(items: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_grid(items)


def test_plan_is_seed_major_validated_and_named_by_values(tmp_path: Path, tiny_xlmr: Path) -> None:
    grid = parse_grid(["paradigm=local,centralized", "data.train_per_language=6,0"])
    runs = plan_sweep(None, grid, [0, 1], tmp_path, _overrides(tiny_xlmr))
    assert len(runs) == 8 and [r.seed for r in runs] == [0] * 4 + [1] * 4
    assert runs[1].name == run_name([("paradigm", "local"), ("data.train_per_language", "0")], 0) \
        == "paradigm=local__data.train_per_language=0__seed=0"
    assert runs[1].cfg.data.train_per_language == 0 and runs[1].cfg.seed == 0
    assert Path(runs[1].cfg.output_dir) == tmp_path.resolve() / runs[1].name
    with pytest.raises(SweepError, match="run paradigm=nope__seed=0: paradigm = 'nope' is not allowed"):
        plan_sweep(None, parse_grid(["paradigm=nope"]), [0], tmp_path, _overrides(tiny_xlmr))
    with pytest.raises(SweepError, match="also set by the sweep"):
        plan_sweep(None, grid, [0], tmp_path, [*_overrides(tiny_xlmr), "paradigm=local"])


class Killed(BaseException):
    """What the sweep sees when it is killed mid-run (not an Exception: nothing may catch it)."""


def test_killed_sweep_resumes_only_missing_runs(tmp_path: Path, tiny_xlmr: Path, monkeypatch) -> None:
    grid = parse_grid(["paradigm=local,centralized,zeroshot"])
    runs = plan_sweep(None, grid, [0, 1], tmp_path, _overrides(tiny_xlmr))
    calls: list[tuple[str, bool]] = []
    finish = RunRecorder.finish

    def dies_in_third_run(run, config, resume, log):
        calls.append((run.name, resume))
        if len(calls) == 3:  # killed after its last round was recorded, before results.json
            monkeypatch.setattr(RunRecorder, "finish", lambda self: (_ for _ in ()).throw(Killed()))
        inprocess_runner(run, config, resume, log)

    with pytest.raises(Killed):
        run_sweep(runs, tmp_path, runner=dies_in_third_run, echo=lambda _: None)
    monkeypatch.setattr(RunRecorder, "finish", finish)
    assert [name for name, _ in calls] == [r.name for r in runs[:3]]
    # A fourth folder with leftovers of a run that never completed a round: cleared and restarted.
    (runs[3].folder).mkdir()
    files.write_text(runs[3].folder / "metrics.jsonl", '{"round": 1, "split": "train"}\n')
    calls.clear()
    outcome = run_sweep(runs, tmp_path, runner=lambda *a: (calls.append((a[0].name, a[2])), inprocess_runner(*a)),
                        echo=lambda _: None)
    assert outcome.skipped == [r.name for r in runs[:2]]
    assert outcome.resumed == [runs[2].name] and outcome.ran == [r.name for r in runs[3:]] and not outcome.failed
    assert calls == [(runs[2].name, True)] + [(r.name, False) for r in runs[3:]]
    assert all(row["split"] != "train" or row["round"] >= 1 for row in files.read_jsonl(runs[3].folder / "metrics.jsonl"))
    # A third pass has nothing left to do.
    assert run_sweep(runs, tmp_path, runner=None, echo=lambda _: None).skipped == [r.name for r in runs]  # type: ignore[arg-type]

    written = finish_sweep(runs, ["paradigm"], tmp_path, "t")
    with open(written[0], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(runs) * len(LANGS)
    assert len({(r["run"], r["lang"]) for r in rows}) == len(rows)
    assert list(rows[0]) == ["run", "paradigm", "seed", "method", "lang", "heldout", "low_resource", "accuracy",
                             "macro_f1", "chrf", "n_test", "trainable_params", "total_bytes", "backdoor_success",
                             "backdoor_untriggered"]
    for row in rows:
        result = read_result(tmp_path / row["run"])
        score = result.score(row["lang"])
        expected = "" if score is None else score
        assert row["accuracy"] == str(expected) and row["paradigm"] == result.paradigm
        assert row["heldout"] == str(row["lang"] == "yor") and row["low_resource"] == str(row["lang"] == "hau")
    assert (tmp_path / "sweep.md").read_text(encoding="utf-8").startswith("# t")


def test_folder_with_foreign_files_is_not_cleared(tmp_path: Path, tiny_xlmr: Path) -> None:
    runs = plan_sweep(None, parse_grid(["paradigm=local"]), [0], tmp_path, _overrides(tiny_xlmr))
    runs[0].folder.mkdir()
    (runs[0].folder / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="files mfpt did not write"):
        run_sweep(runs, tmp_path, runner=inprocess_runner, echo=lambda _: None)
    assert (runs[0].folder / "notes.txt").exists()


@pytest.mark.deployment
def test_cli_sweep_runs_subprocesses_then_skips_them(tmp_path: Path, tiny_xlmr: Path, capsys) -> None:
    from mfpt.cli import main

    argv = ["sweep", "--grid", "paradigm=local,zeroshot", "--seeds", "0", "--out", str(tmp_path / "sw")]
    for item in _overrides(tiny_xlmr):
        argv += ["--set", item]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 ran, 0 resumed, 0 already complete, 0 failed" in out
    assert (tmp_path / "sw" / "logs" / "paradigm=local__seed=0.log").exists()
    assert main(argv) == 0
    assert "0 ran, 0 resumed, 2 already complete, 0 failed" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "sw")]) == 0
    assert (tmp_path / "sw" / "report" / "report.md").exists()
