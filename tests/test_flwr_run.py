"""`flwr run`, Flower's own way to start an app: the repository is refused at once, the code-free app in app/ runs
a simulation offline with nothing installed, and scripts/local_federation.py exits non-zero when the run fails
(`flwr run` itself exits 0 whatever the run's outcome)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from conftest import TINY_DATA  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "local_federation.py"
FLWR = Path(sys.executable).parent / "flwr"


@pytest.mark.deployment
def test_flwr_run_on_the_repository_is_refused_before_anything_starts(tmp_path):
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"))
    done = subprocess.run([str(FLWR), "run", "."], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "[tool.flwr.app]" in done.stdout + done.stderr
    # Refused before a local SuperLink was started (it would have kept running after the refusal).
    assert not (tmp_path / "flwr-home" / "local-superlink").exists()


def test_the_app_folder_ships_no_code_and_names_the_installed_package():
    app = tomllib.loads((ROOT / "app" / "pyproject.toml").read_text(encoding="utf-8"))
    assert sorted(p.name for p in (ROOT / "app").iterdir()) == ["pyproject.toml"]
    assert app["project"]["dependencies"] == []
    assert app["tool"]["flwr"]["app"]["components"] == {"serverapp": "mfpt.server_app:app",
                                                         "clientapp": "mfpt.client_app:app"}
    assert "flwr" not in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8")).get("tool", {})
    # docs/deploy.md shows the same app an operator copies to the SuperLink machine.
    deploy = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    block = deploy.split("```toml\n[build-system]", 1)[1].split("```", 1)[0]
    assert tomllib.loads("[build-system]" + block) == app


def write_relative_experiment(folder: Path, model: Path, output_dir: str) -> Path:
    """An experiment as a user writes it for `mfpt run`: paths relative to the directory it is run from."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "tiny.jsonl").write_bytes(TINY_DATA.read_bytes())
    (folder / "experiment.toml").write_text("\n".join([
        'name = "flwr-run"', "seed = 0", f'output_dir = "{output_dir}"', "", "[model]", f'name = "{model}"',
        "max_seq_length = 32", "", "[peft]", "num_virtual_tokens = 4", "", "[data]", 'source = "files"',
        'path = "data/tiny.jsonl"', 'languages = ["eng", "swh"]', 'low_resource = ["swh"]', "",
        "[federation]", "rounds = 2", "round_timeout = 120.0", "", "[train]", "batch_size = 8", "lr = 0.01",
        'device = "cpu"', ""]), encoding="utf-8")
    return folder / "experiment.toml"


def run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.mark.deployment
@pytest.mark.slow
def test_flwr_run_simulation_finishes_from_the_users_directory_and_exits_0(tmp_path, tiny_xlmr):
    write_relative_experiment(tmp_path, tiny_xlmr, "runs/sim")
    done = run_script(tmp_path, "--simulation", "--experiment", "experiment.toml", "--workdir", str(tmp_path / "fed"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:completed" in done.stdout
    results = json.loads((tmp_path / "runs" / "sim" / "results.json").read_text(encoding="utf-8"))
    assert sorted(results["per_language"]) == ["eng", "swh"]
    assert results["rounds"] == 2 and results["low_resource"] == ["swh"]
    # Nothing was installed for the run: the SuperLink never ran `uv sync`.
    assert "uv sync" not in (tmp_path / "fed" / "logs" / "superlink.log").read_text(encoding="utf-8", errors="replace")


@pytest.mark.deployment
@pytest.mark.slow
def test_a_failed_flwr_run_exits_1_not_0(tmp_path):
    write_relative_experiment(tmp_path, tmp_path / "no-such-model", "runs/sim")
    done = run_script(tmp_path, "--simulation", "--experiment", "experiment.toml", "--workdir", str(tmp_path / "fed"),
                      "--timeout", "300")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "finished:failed" in done.stdout
    assert not (tmp_path / "runs" / "sim" / "results.json").exists()
