"""The mfpt command: bad input gives one clear line and exit 2 (never a traceback); good input runs."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_DATA

from mfpt.cli import main


@pytest.fixture
def base_args(tmp_path, tiny_xlmr):
    return ["--set", f'model.name="{tiny_xlmr}"', "--set", f'data.path="{TINY_DATA}"', "--set", "model.max_seq_length=32",
            "--set", "peft.num_virtual_tokens=4", "--set", "federation.rounds=2", "--set", "train.batch_size=8",
            "--out", str(tmp_path / "run")]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--set", 'data.path="/nonexistent/data.jsonl"'], "/nonexistent/data.jsonl"),
        (["--set", "data.languages=eng,amh"], "['amh'] are not in the data"),
        (["--set", "peft.method=adapters"], "peft.method = 'adapters' is not allowed"),
        (["--set", "train.learning_rate=0.1"], "Unknown config key 'train.learning_rate'"),
        (["--set", "federation.rounds=-2"], "federation.rounds = -2"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(capsys, base_args, extra, expected):
    assert main(["run", *base_args, *extra, "--set", "paradigm=local"]) == 2
    err = _error(capsys)
    assert err.startswith("error: ") and expected in err


def test_missing_column_and_empty_client(capsys, tmp_path, base_args):
    no_label = tmp_path / "no_label.jsonl"
    no_label.write_text(json.dumps({"text": "a", "lang": "en"}) + "\n")
    assert main(["run", *base_args, "--set", f'data.path="{no_label}"']) == 2
    assert "lacks column(s) 'label'" in _error(capsys)
    one_sided = tmp_path / "one_sided.jsonl"
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "lang": "en", "split": "train"} for i in range(6)]
    rows += [{"text": "x", "label": "a", "lang": "en", "split": "test"}, {"text": "y", "label": "a", "lang": "sw", "split": "test"}]
    one_sided.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["run", *base_args, "--set", f'data.path="{one_sided}"']) == 2
    assert "'swh' has no 'train' examples" in _error(capsys)


def test_missing_config_file(capsys):
    assert main(["validate", "/nonexistent/exp.toml"]) == 2
    assert "does not exist" in _error(capsys)


def test_run_writes_outputs_and_prints_the_table(capsys, tmp_path, base_args):
    assert main(["run", *base_args, "--set", "paradigm=local"]) == 0
    out = capsys.readouterr().out
    assert "| eng | hau | swh | yor |" in out.replace("|  |", "|")
    for name in ("results.json", "metrics.jsonl", "report.md", "config.toml"):
        assert (tmp_path / "run" / name).is_file()
    assert main(["run", *base_args, "--set", "paradigm=local"]) == 2  # a second run never overwrites the first
    assert "--resume" in _error(capsys)


def test_validate_checks_an_experiment_against_a_sites_privacy_floor(capsys, base_args):
    dp = [*base_args[:-2], "--set", 'privacy.dp="client"', "--set", 'federation.weighting="uniform"',
          "--set", "privacy.noise_multiplier=0.8"]
    assert main(["validate", *dp, "--node-config", "require-dp='client' min-noise-multiplier=0.5"]) == 0
    assert "# ok: node privacy floor: the experiment meets it" in capsys.readouterr().out
    assert main(["validate", *dp, "--node-config", "min-noise-multiplier=1.0 require-secure-aggregation=true"]) == 2
    err = _error(capsys)
    assert "min-noise-multiplier=1 but the noise multiplier is 0.8" in err and "require-secure-aggregation=true" in err
    assert main(["validate", *dp, "--node-config", "require-dp=maybe"]) == 2
    assert "--node-config" in _error(capsys)


def test_validate_data_and_keys(capsys, base_args):
    assert main(["validate", *base_args[:-2]]) == 0
    assert "[peft]" in capsys.readouterr().out
    assert main(["data", *base_args[:-2]]) == 0
    out = capsys.readouterr().out
    assert "4 training client(s)" in out and "health, politics, sport" in out
    assert main(["keys"]) == 0
    assert "peft.init_std" in capsys.readouterr().out



def test_validate_warns_of_settings_that_run_but_train_little(capsys, base_args):
    qffl = [*base_args[:-2], "--set", 'federation.strategy="qfedavg"', "--set", "data.languages=eng,hau,swh,yor"]
    assert main(["validate", *qffl]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# warning:")]
    assert len(warnings) == 1 and "federation.qffl_lr = 0" in warnings[0] and "mfpt tune" in warnings[0]
    assert main(["validate", *qffl, "--set", "federation.qffl_lr=1000"]) == 0
    assert "# warning:" not in capsys.readouterr().out
    dp = [*base_args[:-2], "--set", 'privacy.dp="client"', "--set", 'federation.weighting="uniform"']
    assert main(["validate", *dp]) == 0  # the client count is unknown until the data's languages are read
    out = capsys.readouterr().out
    assert "# warning: data.languages is empty" in out and "client-level DP's delta" in out
    assert "training clients" not in out  # neither "1/N = 1/0" nor "with 0 training clients"
    assert main(["validate", *dp, "--set", "data.languages=eng,hau,swh,yor"]) == 0
    out = capsys.readouterr().out  # privacy's warnings too: 4 clients cannot dilute client-level noise
    assert "# ok: privacy: delta 1e-05 is below 1/N = 1/4" in out
    assert "# warning: privacy.dp = 'client' with 4 training clients" in out
    assert main(["privacy", *dp, "--set", "privacy.noise_multiplier=1"]) == 0  # it reads the data's languages
    assert "warning: privacy.dp = 'client' with 4 training clients" in capsys.readouterr().out

def _one_line_error(capsys) -> str:
    err = _error(capsys)
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_out_that_is_an_existing_file_is_refused_naming_it(capsys, tmp_path, base_args):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    assert main(["run", *base_args[:-2], "--out", str(existing), "--set", "paradigm=local"]) == 2
    err = _one_line_error(capsys)
    assert str(existing) in err and "is an existing file" in err
    assert existing.read_text() == "keep me"


def test_sweep_out_that_is_a_file_is_refused_not_a_traceback(capsys, tmp_path, base_args):
    existing = tmp_path / "sweep.txt"
    existing.write_text("")
    assert main(["sweep", *base_args[:-2], "--grid", "paradigm=local", "--out", str(existing)]) == 2
    assert str(existing) in _one_line_error(capsys)


@pytest.mark.parametrize("extra, expected", [
    (["--set", "data.languages=en,eng"], "'en' and 'eng' both mean 'eng'"),
    (["--set", "data.languages=eng,xx1"], "Unknown language code 'xx1'"),
    (["--set", "data.languages=eng,swh", "--set", "data.heldout_languages=sw"], "a held-out language must never train"),
    (["--set", "data.languages=swh,hau", "--set", "paradigm=transfer"], "transfer.sources lists ['eng']"),
    (["--set", "paradigm=zeroshot", "--set", "transfer.sources=[]"], "transfer.sources"),
    (["--set", "data.languages=swh,hau", "--set", "data.low_resource=yor"], "data.low_resource lists ['yor']"),
    (["--set", "data.labels=sport"], "at least 2 labels"),
    (["--set", 'data.path="/nonexistent/news.jsonl"'], "data.path = '/nonexistent/news.jsonl' does not exist"),
    (["--set", 'data.path=""'], "needs data.path"),
    (["--set", 'model.name="/nonexistent/encoder"'], "looks like a local path but does not exist"),
])
def test_validate_refuses_what_run_would_refuse(capsys, base_args, extra, expected):
    assert main(["validate", *base_args[:-2], *extra]) == 2
    assert expected in _one_line_error(capsys)


def test_validate_refuses_a_model_folder_without_config(capsys, tmp_path, base_args):
    (tmp_path / "encoder").mkdir()
    assert main(["validate", *base_args[:-2], "--set", f'model.name="{tmp_path / "encoder"}"']) == 2
    assert "is a directory without config.json" in _one_line_error(capsys)


def test_duplicated_language_is_refused_by_run_in_one_line(capsys, base_args):
    assert main(["run", *base_args, "--set", "data.languages=en,eng,swh"]) == 2
    assert "list each language once" in _one_line_error(capsys)


def test_config_paths_of_the_wrong_kind_are_refused(capsys, tmp_path):
    assert main(["validate", str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys)
    latin1 = tmp_path / "exp.toml"
    latin1.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    assert main(["validate", str(latin1)]) == 2
    assert "is not UTF-8 text" in _one_line_error(capsys)


def test_report_on_an_empty_or_truncated_run_is_refused(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "holds no results.json" in _one_line_error(capsys)
    (empty / "results.json").write_text('{"schema_version": 1, "name": ')
    assert main(["report", str(empty)]) == 2
    assert "is not valid JSON" in _one_line_error(capsys)


def test_a_sweep_set_that_is_valid_only_with_its_grid_values_plans(capsys, tmp_path, base_args, monkeypatch):
    """--set attack.languages=yor with --grid attack.kind=...: the config without a grid value is not a run, so it
    must not be validated on its own (it was, for the default --out, and refused the sweep)."""
    from types import SimpleNamespace

    import mfpt.cli.sweep as sweep_cli

    planned = []
    monkeypatch.setattr(sweep_cli, "run_sweep", lambda runs, out, config: planned.extend(runs) or SimpleNamespace(
        ran=[], resumed=[], skipped=[], failed={}))
    monkeypatch.setattr(sweep_cli, "finish_sweep", lambda *args, **kwargs: [])
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", *base_args[:-2], "--set", "attack.languages=yor", "--grid", "attack.kind=sign-flip,backdoor"]) == 0
    assert [r.cfg.attack.kind.value for r in planned] == ["sign-flip", "backdoor"]
    assert {r.cfg.attack.languages for r in planned} == {("yor",)}
    assert (tmp_path / "runs" / "mfpt-sweep" / "sweep.json").is_file()  # the config's output_dir + '-sweep'
    assert main(["run", *base_args, "--set", "attack.languages=yor"]) == 2  # alone it is refused, naming every kind
    assert "(label-flip, sign-flip, scale, noise, backdoor)" in _error(capsys)
