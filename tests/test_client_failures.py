"""A federation whose clients crash is never a silent success: each round says which clients failed and why, in
one line; a run that scored no language exits non-zero with the first client error; a sweep marks it failed,
lists it in sweep.md and starts it again from nothing on the next try.

The clients are the real ClientApp (mods included) on an in-process grid; the crash is a TypeError inside the
model's forward pass, as a user's broken model code would raise it.
"""

from __future__ import annotations

import logging
import re

import pytest
from conftest import InProcessGrid, federated_config, metrics_rows
from flwr.app import Message, RecordDict

from mfpt.cli import main
from mfpt.client_app import app as client_app
from mfpt.core.errors import error_line
from mfpt.experiments.sweep import finish_sweep, plan_sweep, run_state, run_sweep
from mfpt.federation.node import ClientNode
from mfpt.federation.server import run_federated
from mfpt.results.checkpoints import ResumeError
from mfpt.results.recorder import RunFailedError
from mfpt.results.schema import FAILURE_FILE, RESULTS_FILE

pytestmark = pytest.mark.usefixtures("task_identity")


def _break_clients(monkeypatch, languages=None):
    """Every client in `languages` (all if None) raises a TypeError when it trains or evaluates."""
    for method in ("train", "evaluate"):
        original = getattr(ClientNode, method)

        def broken(self, *args, _original=original, **kwargs):
            if languages is None or self.client.lang in languages:
                raise TypeError("forward() got an unexpected keyword argument 'cache'")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ClientNode, method, broken)


def test_an_exception_in_the_client_app_reaches_the_server_as_a_one_line_error_naming_its_type(make_config, tmp_path,
                                                                                                monkeypatch):
    from mfpt.federation.protocol import CONFIG
    from mfpt.federation.server import config_record

    cfg = federated_config(make_config, tmp_path)
    monkeypatch.setattr(ClientNode, "for_message", classmethod(lambda cls, *a: (_ for _ in ()).throw(KeyError("lang"))))
    from flwr.app import Context

    message = Message(RecordDict({CONFIG: config_record(cfg)}), dst_node_id=5, message_type="query")
    reply = client_app(message, Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={}))
    assert reply.has_error() and reply.error.reason == "KeyError: 'lang'"


def test_flowers_wrapped_reasons_are_shortened_to_the_exception_line():
    simulation = "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. " \
                 "Message: TypeError: boom'>"
    assert error_line(simulation) == "TypeError: boom"
    assert error_line("<class 'ZeroDivisionError'>:<'division by zero'>") == "ZeroDivisionError: division by zero"
    assert error_line("Traceback (most recent call last):\n  File x\nValueError: bad") == "ValueError: bad"
    assert len(error_line("x" * 1000)) == 300


def test_a_run_whose_every_client_crashes_fails_with_the_first_client_error(make_config, tmp_path, monkeypatch, caplog):
    cfg = federated_config(make_config, tmp_path)
    _break_clients(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="mfpt"), \
            pytest.raises(RunFailedError, match=r"scored no training language in any round.*first problem "
                                                r"\(round 1, eng\): client error: TypeError: forward\(\) got an unexpected keyword"):
        run_federated(InProcessGrid(3), cfg, quiet=True)
    # One line per round and stage, every client's error in it.
    summaries = [r.getMessage() for r in caplog.records if "usable repl" in r.getMessage()]
    assert len(summaries) == 4  # 2 rounds x (train, evaluation)
    assert all(re.search(rf"{lang}: (evaluation: )?client error: TypeError", line)
               for line in summaries for lang in ("eng", "swh", "hau"))
    assert "0 usable replies (fewer than 1: the global state is unchanged" in summaries[0]
    incomplete = metrics_rows(cfg.output_dir, "incomplete")
    assert {(r["round"], r["stage"]) for r in incomplete} == {(1, "train"), (2, "train"), (1, "evaluation"), (2, "evaluation")}
    assert set(incomplete[0]["errors"]) == {"eng", "swh", "hau"}
    out = tmp_path / "run"
    assert (out / FAILURE_FILE).is_file() and not (out / RESULTS_FILE).exists()
    # A failed run is neither continued nor silently overwritten.
    with pytest.raises(ResumeError, match="holds a run that failed"):
        run_federated(InProcessGrid(3), cfg, resume=True, quiet=True)


def test_a_run_with_some_clients_crashing_finishes_and_names_them_every_round(make_config, tmp_path, monkeypatch, caplog):
    cfg = federated_config(make_config, tmp_path, **{"federation.min_clients": 1})
    _break_clients(monkeypatch, languages={"swh"})
    with caplog.at_level(logging.WARNING, logger="mfpt"):
        result = run_federated(InProcessGrid(3), cfg, quiet=True)
    assert set(result.per_language) == {"eng", "hau"} and result.unscored == ["swh"]
    summaries = [r.getMessage() for r in caplog.records if "usable repl" in r.getMessage()]
    assert len(summaries) == 4 and all("swh: " in s and "TypeError" in s and "eng:" not in s for s in summaries)
    assert not metrics_rows(cfg.output_dir, "incomplete")  # 2 usable of min_clients = 1: the rounds were complete


def test_the_cli_exits_non_zero_and_a_sweep_marks_the_run_failed_then_retries_it(make_config, tmp_path, monkeypatch,
                                                                                  capsys):
    cfg = federated_config(make_config, tmp_path)
    _break_clients(monkeypatch)
    runs = plan_sweep(None, [("federation.rounds", ["1"])], [0], tmp_path / "sweep",
                      [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in _flat(cfg).items()])

    def runner(run, config, resume, log):
        run_federated(InProcessGrid(3), run.cfg, resume=resume, quiet=True)

    outcome = run_sweep(runs, tmp_path / "sweep", runner=runner, echo=lambda line: None)
    assert list(outcome.failed) == [runs[0].name] and "TypeError" in outcome.failed[runs[0].name]
    assert run_state(runs[0].folder) == "failed"
    report = finish_sweep(runs, ["federation.rounds"], tmp_path / "sweep", "Sweep", failed=outcome.failed)[-1]
    text = report.read_text(encoding="utf-8")
    assert "## Runs that failed" in text and runs[0].name in text and "No run finished." in text
    # Fixed: the next try starts the run again from nothing and it completes.
    monkeypatch.undo()
    outcome = run_sweep(runs, tmp_path / "sweep", runner=runner, echo=lambda line: None)
    assert outcome.ran == [runs[0].name] and run_state(runs[0].folder) == "complete"
    assert not (runs[0].folder / FAILURE_FILE).exists()
    # The CLI turns the failure into one line and exit status 2 (mfpt run on the failed folder's config).
    monkeypatch.setattr("mfpt.experiments.paradigms.run_federated_simulation",
                        lambda cfg, resume=False, quiet=False: (_ for _ in ()).throw(RunFailedError("scored nothing")))
    assert main(["run", "--set", f"data.path={cfg.data.path!r}".replace("'", '"'), "--set", f'model.name="{cfg.model.name}"',
                 "--set", 'data.source="files"', "--out", str(tmp_path / "cli")]) == 2
    assert "error: scored nothing" in capsys.readouterr().err


def _flat(cfg) -> dict:
    from mfpt.config import to_dict

    flat = {}
    for section, values in to_dict(cfg).items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
    return {k: v for k, v in flat.items() if k in {"model.name", "model.max_seq_length", "data.source", "data.path",
                                                     "data.languages", "data.labels", "peft.num_virtual_tokens",
                                                     "train.batch_size", "train.lr", "train.threads",
                                                     "federation.round_timeout"}}
