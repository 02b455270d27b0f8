"""A machine that cannot reach the hub (no network, HF_HUB_OFFLINE unset): a dataset, a model or a tokenizer asked
for by hub id fails in seconds with one line naming what was asked for and the two ways out.

The hub is made unreachable on any machine by pointing the probe at a closed local port; the subprocess test does
the same through HF_ENDPOINT, as a user's environment would, and runs the command from the issue as typed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfpt.cli import main
from mfpt.core import hub
from mfpt.core.hub import HubUnreachableError, is_unreachable

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def unreachable_hub(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for variable in hub.PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub, "hub_endpoint", lambda: CLOSED)
    hub._probe.cache_clear()
    yield
    hub._probe.cache_clear()


def test_a_hub_model_and_its_tokenizer_fail_in_one_line(unreachable_hub):
    from mfpt.model.factory import _load_backbone

    started = time.monotonic()
    with pytest.raises(HubUnreachableError) as caught:
        _load_backbone("some-org/some-encoder", 3)
    message = str(caught.value)
    assert "\n" not in message and "model.name = 'some-org/some-encoder' (weights and tokenizer)" in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download some-org/some-encoder" in message and CLOSED in message
    assert time.monotonic() - started < 2 * hub.PROBE_TIMEOUT_S


def test_a_hub_dataset_fails_in_one_line_through_the_cli(unreachable_hub, capsys):
    assert main(["data", str(REPO / "configs" / "paper" / "sib200.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the sib200 dataset Davlan/sib200" in err and "mfpt prepare" in err


def test_nothing_is_probed_offline_or_behind_a_proxy(unreachable_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.ensure_hub_reachable("x", "y")  # offline: only local copies are read, nothing to probe
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    hub.ensure_hub_reachable("x", "y")  # behind a proxy a direct connection proves nothing
    monkeypatch.delenv("HTTPS_PROXY")
    with pytest.raises(HubUnreachableError, match="cannot reach the Hugging Face hub for x"):
        hub.ensure_hub_reachable("x", "y")


def test_connection_errors_are_recognised_through_their_causes():
    class ConnectError(Exception):  # httpx's name; not an OSError
        pass

    try:
        try:
            raise ConnectError("[Errno -2] Name or service not known")
        except ConnectError as inner:
            raise RuntimeError("dataset_info failed") from inner
    except RuntimeError as outer:
        assert is_unreachable(outer)
    assert not is_unreachable(FileNotFoundError("no such file"))


@pytest.mark.slow
def test_mfpt_data_on_a_machine_without_the_hub_prints_one_line_in_bounded_time(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and k not in hub.PROXY_VARIABLES}
    env.update(HF_ENDPOINT=CLOSED, HF_HOME=str(tmp_path / "hf"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mfpt.cli", "data", str(REPO / "configs" / "paper" / "sib200.toml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: cannot reach the Hugging Face hub")
    assert time.monotonic() - started < 30
