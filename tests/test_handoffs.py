"""What one command writes, the next reads, as a user chains them: prepare -> run -> predict from another folder;
a sweep folder -> predict; --resume alone; a deployed node's config -> validate.

Each test runs the commands through `mfpt.cli.main` exactly as typed, in working directories a user would be in.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import TINY_DATA

from mfpt.cli import main
from mfpt.config import load_config
from mfpt.core import files
from mfpt.data.clients import client_layout
from mfpt.federation.node import node_data_config

pytestmark = pytest.mark.usefixtures("task_identity")

SMALL = ["--set", "federation.rounds=1", "--set", "model.max_seq_length=32", "--set", "peft.num_virtual_tokens=4",
         "--set", "train.batch_size=8", "--set", "train.threads=1", "--set", "train.device=\"cpu\""]


@pytest.fixture
def cwd(monkeypatch):
    """Change the working directory for the test (restored after)."""
    return lambda path: monkeypatch.chdir(Path(path))


def _error(capsys) -> str:
    return capsys.readouterr().err


def test_prepare_then_run_on_its_folder_then_predict_from_another_folder(tmp_path, tiny_xlmr, cwd, capsys):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "models").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copytree(tiny_xlmr, project / "models" / "tiny")
    cwd(project)
    assert main(["prepare", "files", "--path", str(TINY_DATA), "--out", "prepared"]) == 0
    # The prepared folder, data card and README included, is what run reads (relative paths, as a user types them).
    assert main(["run", *SMALL, "--set", 'paradigm="centralized"', "--set", 'data.source="files"',
                 "--set", 'data.path="prepared"', "--set", 'model.name="models/tiny"', "--out", "runs/c"]) == 0
    result = files.read_json(project / "runs" / "c" / "results.json")
    assert result["model_path"] == str((project / "models" / "tiny").resolve())
    assert set(result["per_language"]) == set(result["languages"]) == {"eng", "hau", "swh", "yor"}
    (elsewhere / "in.jsonl").write_text(json.dumps({"text": "hello world", "lang": "eng"}) + "\n")
    cwd(elsewhere)  # models/tiny means nothing here: the run folder's record finds the base model
    assert main(["predict", str(project / "runs" / "c"), "--input", "in.jsonl", "--out", "p.jsonl", "--quiet"]) == 0
    assert json.loads((elsewhere / "p.jsonl").read_text())["label"] in result["labels"]
    # The base model moved: one line that says so and names --model, which then works.
    shutil.move(project / "models" / "tiny", tmp_path / "moved")
    assert main(["predict", str(project / "runs" / "c"), "--input", "in.jsonl", "--out", "p.jsonl"]) == 2
    assert "is not found from" in (err := _error(capsys)) and "pass --model" in err
    assert main(["predict", str(project / "runs" / "c"), "--input", "in.jsonl", "--out", "p.jsonl", "--quiet",
                 "--model", str(tmp_path / "moved")]) == 0


def test_a_prepared_file_changed_after_preparation_is_refused(tmp_path, capsys):
    assert main(["prepare", "files", "--path", str(TINY_DATA), "--out", str(tmp_path / "p")]) == 0
    with open(tmp_path / "p" / "swh.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "x", "label": "sport", "lang": "swh", "split": "train"}) + "\n")
    assert main(["data", "--set", 'data.source="files"', "--set", f'data.path="{tmp_path / "p"}"']) == 2
    assert "swh.jsonl' (swh) differs from the file `mfpt prepare` wrote" in _error(capsys)


def test_resume_alone_reads_the_run_folder_and_refuses_early_naming_what_differs(tmp_path, tiny_xlmr, cwd, capsys):
    run = tmp_path / "run"
    base = [*SMALL, "--set", 'paradigm="local"', "--set", 'data.source="files"', "--set", f'data.path="{TINY_DATA}"',
            "--set", f'model.name="{tiny_xlmr}"', "--set", "federation.rounds=2"]
    assert main(["run", *base, "--out", str(run)]) == 0
    # An interrupted run: the last round and the results forgotten.
    os.remove(run / "results.json")
    files.write_json(run / "progress.json", {**files.read_json(run / "progress.json"), "completed_round": 1})
    (run / "checkpoints" / "round-0002.safetensors").unlink()
    assert main(["run", *base, "--set", "train.lr=0.5", "--resume", str(run)]) == 2
    assert "train.lr = 0.01 then, 0.5 now" in _error(capsys)
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no such folder" in _error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["run", "--resume", str(tmp_path / "empty")]) == 2
    assert "holds no run to resume" in _error(capsys)
    cwd(tmp_path)
    assert main(["run", "--resume", "run", "--quiet"]) == 0  # alone: the config it was started with
    assert files.read_json(run / "results.json")["rounds"] == 2
    assert main(["run", "--resume", "run"]) == 2
    assert "holds a finished run" in _error(capsys)


def test_validate_refuses_what_a_deployed_node_would_and_says_ok_when_all_pass(tmp_path, capsys):
    """On the old main, every node narrowed data.languages to its own but kept data.low_resource, and refused."""
    config = tmp_path / "experiment.toml"
    config.write_text('[data]\nsource = "files"\npath = "%s"\nlanguages = ["eng", "swh", "hau"]\n'
                      'low_resource = ["swh", "hau"]\n' % TINY_DATA)
    cfg = load_config(config)
    for client in client_layout(cfg.data.languages, (), 1):
        node = node_data_config(cfg, client, "site.jsonl")
        assert node.data.languages == (client.lang,)
        assert node.data.low_resource == ((client.lang,) if client.lang in ("swh", "hau") else ())
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "# ok: deployed nodes: the config of each of the 3 client nodes is valid" in out
    assert load_config(None, {}) is not None and "# ok: config" in out


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = files.write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == files.FILE_MODE == 0o666 & ~old
    assert stat.S_IMODE(path.stat().st_mode) & stat.S_IRGRP  # a group that shares the folder can read it


def test_checkpoints_and_the_adapter_follow_the_umask_and_carry_mfpts_model_card(tmp_path, tiny_xlmr):
    """safetensors and mkdtemp create 0600 / 0700 whatever the umask; peft leaves a template card."""
    from mfpt.analysis.model_card import write_model_card
    from mfpt.experiments.paradigms import run_experiment
    from mfpt.results.schema import read_result

    cfg = load_config(None, {"paradigm": "centralized", "model.name": str(tiny_xlmr), "data.source": "files",
                             "data.path": str(TINY_DATA), "federation.rounds": 1, "model.max_seq_length": 32,
                             "peft.num_virtual_tokens": 4, "train.threads": 1, "output_dir": str(tmp_path / "run")})
    old = os.umask(0o022)
    try:
        run_experiment(cfg, quiet=True)
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for path in [*run.rglob("*.safetensors"), run / "adapter", run / "results.json"]:
        assert stat.S_IMODE(path.stat().st_mode) & stat.S_IRGRP, path
    card = (run / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "More Information Needed" not in card
    assert f"base_model: {tiny_xlmr}" in card and "centralized / prefix" in card and "| eng |" in card
    assert "No formal privacy guarantee" in card and f"mfpt predict {run}" in card
    assert write_model_card(read_result(run), run) == run / "adapter" / "README.md"
