"""`mfpt predict`: a finished run's model labels new rows exactly as its own evaluation did; bad input is refused."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_DATA

from mfpt.cli import main
from mfpt.config import load_config
from mfpt.core import files
from mfpt.data.clients import prepare
from mfpt.experiments.predict import Predictor, predict_file
from mfpt.results.schema import read_result

LANGS = ["eng", "swh", "hau"]
LABELS = ["health", "politics", "sport"]


def _config(tiny_xlmr: Path, out: Path, paradigm: str):
    return load_config(None, {
        "name": "predict", "paradigm": paradigm, "output_dir": str(out), "model.name": str(tiny_xlmr),
        "model.max_seq_length": 32, "model.text_prefix": "q: ", "data.source": "files", "data.path": str(TINY_DATA),
        "data.languages": LANGS, "data.heldout_languages": ["yor"], "data.labels": LABELS,
        "peft.num_virtual_tokens": 4, "federation.rounds": 2, "federation.round_timeout": 5.0,
        "train.batch_size": 8, "train.eval_batch_size": 5, "train.lr": 0.05, "train.local_epochs": 4, "train.threads": 1, "train.device": "cpu",
    })


@pytest.fixture(scope="module", params=["federated", "centralized"])
def finished_run(request, tiny_xlmr, tmp_path_factory):
    """A finished 2-round run on the fixture data: federated (in-process grid) or centralized (in-process)."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    cfg = _config(tiny_xlmr, out, request.param)
    if request.param == "federated":
        from conftest import InProcessGrid, flower_run_identity

        from mfpt.federation.server import run_federated

        with flower_run_identity():
            run_federated(InProcessGrid(len(LANGS) + 1), cfg, quiet=True)
    else:
        from mfpt.experiments.paradigms import run_experiment

        run_experiment(cfg, quiet=True)
    return cfg, out


def _test_rows(cfg, langs) -> pd.DataFrame:
    """The test split of `langs`, built the way the run built its clients' evaluation data."""
    prepared = prepare(cfg)
    return pd.concat([prepared.language_rows(lang, cfg.data.eval_split) for lang in langs], ignore_index=True)


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1
    return err


def test_predict_reproduces_the_runs_own_test_accuracy(finished_run, tmp_path, capsys):
    cfg, out = finished_run
    rows = _test_rows(cfg, LANGS + ["yor"])
    source = tmp_path / "tomorrow.jsonl"
    rows.drop(columns=["label", "split"]).assign(id=[f"a{i}" for i in range(len(rows))]).to_json(
        source, orient="records", lines=True)
    predictions_file = tmp_path / "predictions.jsonl"
    assert main(["predict", str(out), "--input", str(source), "--out", str(predictions_file)]) == 0
    assert f"wrote {len(rows)} predictions" in capsys.readouterr().out
    predictions = files.read_jsonl(predictions_file)
    assert [p["index"] for p in predictions] == list(range(len(rows)))
    assert [p["id"] for p in predictions] == [f"a{i}" for i in range(len(rows))]
    result = read_result(out)
    for lang in LANGS + ["yor"]:
        mine = [(p, gold) for p, gold in zip(predictions, rows["label"]) if p["lang"] == lang]
        accuracy = sum(p["label"] == gold for p, gold in mine) / len(mine)
        assert accuracy == result.score(lang), lang  # exactly the run's final evaluation of that language
        # The mean loss is sensitive to every logit, so it catches any difference in tokenisation or model set-up.
        loss = sum(-math.log(p["probabilities"][gold]) for p, gold in mine) / len(mine)
        assert loss == pytest.approx(result.score(lang, "loss"), rel=1e-5), lang
    first = predictions[0]
    assert set(first["probabilities"]) == set(LABELS)
    assert first["probability"] == max(first["probabilities"].values())
    assert first["label"] == max(first["probabilities"], key=first["probabilities"].get)
    assert abs(sum(first["probabilities"].values()) - 1) < 1e-5


def test_probabilities_equal_the_training_paths_on_the_final_checkpoint(finished_run):
    """The model and tokens predict builds from adapter/ equal what training evaluated, to float precision."""
    _assert_training_path_probabilities(*finished_run)


@pytest.mark.parametrize("method", ["prompt", "lora", "full"])
def test_every_method_predicts_as_it_was_evaluated(tiny_xlmr, tmp_path, method):
    """Input prompts (head re-pointed past the virtual tokens), LoRA and full fine-tuning load as they trained."""
    from mfpt.experiments.paradigms import run_experiment

    cfg = _config(tiny_xlmr, tmp_path / "run", "centralized").replace(
        **{"peft.method": method, "federation.rounds": 1, "train.max_steps": 2})
    run_experiment(cfg, quiet=True)
    _assert_training_path_probabilities(cfg, tmp_path / "run")


def _assert_training_path_probabilities(cfg, out: Path) -> None:
    import torch

    from mfpt.data.clients import ClientSpec
    from mfpt.model.state import load_trainable_state
    from mfpt.results.checkpoints import checkpoint_path, load_checkpoint
    from mfpt.train.encoding import batches
    from mfpt.train.runtime import get_runtime

    runtime = get_runtime(cfg)
    final = load_checkpoint(checkpoint_path(out, cfg.federation.rounds))
    # In-process paradigms checkpoint each learner's state as "learner::tensor"; a federated run the state itself.
    load_trainable_state(runtime.classifier.model, {k.split("::")[-1]: v for k, v in final.state.items()})
    encoded = runtime.encoded(ClientSpec("swh"), cfg.data.eval_split)  # the tokens the run evaluated on
    runtime.classifier.model.eval()
    with torch.inference_mode():
        expected = torch.cat([torch.softmax(runtime.classifier.model(**inputs).logits.float(), -1)
                              for inputs, _ in batches(encoded, cfg.train.eval_batch_size, runtime.classifier.tokenizer)])
    predicted = Predictor.from_run(out).predict(_test_rows(cfg, ["swh"])[["text", "lang"]])
    got = torch.tensor([[p["probabilities"][label] for label in LABELS] for p in predicted])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)


def test_python_api_matches_the_command_and_warns_about_unseen_languages(finished_run, tmp_path, caplog):
    cfg, out = finished_run
    rows = _test_rows(cfg, ["swh"]).head(4)
    predictor = Predictor.from_run(out)
    assert predictor.labels == LABELS
    records = [{"text": t, "lang": "sw"} for t in rows["text"]]  # any form of the code: made canonical
    with caplog.at_level(logging.WARNING, logger="mfpt"):
        seen = predictor.predict(records)
    assert not caplog.records
    assert [p["lang"] for p in seen] == ["swh"] * 4
    in_file = tmp_path / "swh.csv"
    rows[["text", "lang"]].to_csv(in_file, index=False)
    from_file = predict_file(out, in_file, tmp_path / "out.jsonl")
    assert [p["probabilities"] for p in from_file] == [p["probabilities"] for p in seen]
    assert files.read_jsonl(tmp_path / "out.jsonl") == from_file
    with caplog.at_level(logging.WARNING, logger="mfpt"):
        foreign = predictor.predict([{"text": rows["text"][0], "lang": "fr"}, {"text": rows["text"][1], "lang": "yo"}])
    assert len(foreign) == 2 and foreign[0]["lang"] == "fra"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "'fra' (1 row(s))" in warning and "'yor' (1 row(s), held out" in warning


def test_adapter_is_loaded_with_the_runs_text_budget_and_prefix(finished_run):
    cfg, out = finished_run
    predictor = Predictor.from_run(out)
    assert predictor.cfg.model.text_prefix == "q: " and predictor.classifier.max_length == 32


@pytest.fixture
def run_dir(finished_run):
    return finished_run[1]


@pytest.mark.parametrize("content, expected", [
    ("", "is empty"),
    (json.dumps({"body": "x", "lang": "en"}) + "\n", "lacks column(s) 'text'"),
    (json.dumps({"text": "x"}) + "\n", "lacks column(s) 'lang'"),
    (json.dumps({"text": " ", "lang": "en"}) + "\n", "column 'text' is empty in 1 row(s)"),
    (json.dumps({"text": "x", "lang": "qqq1"}) + "\n", "qqq1"),
    ('{"text": "x", "lang"\n', "could not be read as .jsonl"),
])
def test_bad_input_files_are_refused_in_one_line(run_dir, tmp_path, capsys, content, expected):
    source = tmp_path / "in.jsonl"
    source.write_text(content)
    assert main(["predict", str(run_dir), "--input", str(source), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = _error(capsys)
    assert expected in err and str(source) in err
    assert not (tmp_path / "p.jsonl").exists()


def test_bad_paths_are_refused_in_one_line(run_dir, tmp_path, capsys):
    good = tmp_path / "in.jsonl"
    good.write_text(json.dumps({"text": "x", "lang": "en"}) + "\n")
    out = str(tmp_path / "p.jsonl")
    cases = [
        (["predict", str(run_dir), "--input", str(tmp_path), "--out", out], "is a directory"),
        (["predict", str(run_dir), "--input", str(tmp_path / "nope.jsonl"), "--out", out], "does not exist"),
        (["predict", str(run_dir), "--input", str(good), "--out", str(tmp_path)], "is a directory"),
        (["predict", str(run_dir), "--input", str(good), "--out", str(good)], "is the input file"),
        (["predict", str(run_dir), "--input", str(good), "--out", str(good / "p.jsonl")], "cannot be written"),
        (["predict", str(tmp_path / "no-run"), "--input", str(good), "--out", out], "does not exist"),
        (["predict", str(run_dir), "--input", str(good), "--out", out, "--device", "gpu"], "--device 'gpu'"),
    ]
    (tmp_path / "in.txt").write_text("text,lang\nx,en\n")
    cases.append((["predict", str(run_dir), "--input", str(tmp_path / "in.txt"), "--out", out], "unknown extension"))
    for argv, expected in cases:
        assert main(argv) == 2, argv
        assert expected in _error(capsys), argv
    assert json.loads(good.read_text()) == {"text": "x", "lang": "en"}  # the input is never overwritten


def test_unfinished_or_per_language_runs_are_refused_in_one_line(run_dir, tmp_path, capsys):
    good = tmp_path / "in.jsonl"
    good.write_text(json.dumps({"text": "x", "lang": "en"}) + "\n")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run_dir / "config.toml", unfinished / "config.toml")
    assert main(["predict", str(unfinished), "--input", str(good), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "holds no run (no results.json)" in _error(capsys)
    files.write_json(unfinished / "progress.json", {"completed_round": 1})
    assert main(["predict", str(unfinished), "--input", str(good), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert f"has not finished; finish it with `mfpt run --resume {unfinished}`" in _error(capsys)
    files.write_json(unfinished / "failure.json", {"error": "run 'x' scored no training language"})
    assert main(["predict", str(unfinished), "--input", str(good), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "holds a run that failed (run 'x' scored no training language)" in _error(capsys)

    # A sweep folder (what `make demo` writes): its runs are named, with their paradigms.
    sweep = tmp_path / "sweep"
    shutil.copytree(run_dir, sweep / "paradigm=federated__seed=0")
    assert main(["predict", str(sweep), "--input", str(good), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert f"is a folder of 1 finished run(s), not one run; pass one of: {sweep / 'paradigm=federated__seed=0'} " \
           f"({files.read_json(run_dir / 'results.json')['paradigm']})" in _error(capsys)

    local = tmp_path / "local"
    local.mkdir()
    result = files.read_json(run_dir / "results.json")
    files.write_json(local / "results.json", {**result, "paradigm": "local"})
    assert main(["predict", str(local), "--input", str(good), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "a 'local' run keeps one model per language" in _error(capsys)

    truncated = tmp_path / "truncated"
    shutil.copytree(run_dir, truncated)
    (truncated / "results.json").write_text((run_dir / "results.json").read_text()[:100])
    assert main(["predict", str(truncated), "--input", str(good), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "is not valid JSON" in _error(capsys)


def test_damaged_adapter_is_refused_in_one_line(run_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    weights = damaged / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    good = tmp_path / "in.jsonl"
    good.write_text(json.dumps({"text": "x", "lang": "en"}) + "\n")
    assert main(["predict", str(damaged), "--input", str(good), "--out", str(tmp_path / "p.jsonl")]) == 2
    err = _error(capsys)
    assert "could not be loaded" in err and str(damaged / "adapter") in err
