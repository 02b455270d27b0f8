"""`mfpt watch` (the live page and GET /api/state) and the experiment trackers of [tracking].

Real runs of the tiny fixture: the federated ones on the in-process grid (the real ServerApp logic and ClientApp), and
the browser test on a real `mfpt run` in the background with Debian's headless Chromium driven by selenium.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import LABELS, LANGS, TINY_DATA, Crash, InProcessGrid, flower_run_identity, tiny_config

from mfpt.analysis.live import run_state
from mfpt.analysis.report import write_run_report
from mfpt.analysis.watch import STATIC, open_server
from mfpt.config import ConfigError, load_config
from mfpt.core.errors import UserError
from mfpt.federation.server import run_federated
from mfpt.results.tracking import TRACKING_FILE, Trackers, publish_run

ROUNDS = 3


def tiny_federated(model: Path, out_dir: Path, **overrides):
    return tiny_config(model, out_dir, **{"name": "watch-test", "data.languages": ",".join(LANGS),
                                          "data.low_resource": "hau", "data.labels": ",".join(LABELS),
                                          "federation.rounds": ROUNDS, "federation.round_timeout": 5.0, **overrides})


def finish_like_the_server_app(cfg) -> None:
    """What the ServerApp does: the run, then report.md, then the trackers' artefacts."""
    with flower_run_identity():
        run_federated(InProcessGrid(len(LANGS)), cfg, quiet=True)
    write_run_report(cfg.output_dir)
    publish_run(cfg, cfg.output_dir)


@pytest.fixture(scope="module")
def finished_run(tiny_xlmr, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("watched") / "run"
    finish_like_the_server_app(tiny_federated(tiny_xlmr, out))
    return out


@pytest.fixture
def served(request):
    """An `mfpt watch` server over a folder, on a free port, in a thread; returns (server, GET, request)."""
    servers = []

    def serve(folder: Path):
        server = open_server(folder, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def get(server, path: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(server.url.rstrip("/") + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# ------------------------------------------------------------------------------------------------ /api/state


def test_api_state_agrees_with_results_json(finished_run, served):
    server = served(finished_run)
    status, body = get(server, "/api/state")
    assert status == 200
    state = json.loads(body)
    results = json.loads((finished_run / "results.json").read_text(encoding="utf-8"))
    assert state["status"] == "finished"
    assert state["rounds"]["done"] == state["rounds"]["total"] == ROUNDS
    assert state["final"]["per_language"] == {lang: s["accuracy"] for lang, s in results["per_language"].items()}
    assert state["final"]["average"] == results["average"]["accuracy"]
    assert state["final"]["low_resource_average"] == results["low_resource_average"]["accuracy"]
    assert state["communication"]["bytes_total"] == results["communication"]["total_bytes"]
    assert state["communication"]["trainable_params"] == results["trainable_params"]
    assert state["selection"] == results["selection"]
    assert state["rounds"]["seconds"] == pytest.approx(results["wall_seconds"], abs=0.1)
    # Each language's curve has every round, and its last point is the reported score.
    curves = state["curves"]["test"]["per_language"]
    for lang in LANGS:
        assert [p["round"] for p in curves[lang]] == list(range(1, ROUNDS + 1))
        assert curves[lang][-1]["accuracy"] == results["per_language"][lang]["accuracy"]
    assert [lang["lang"] for lang in state["languages"]] == LANGS
    assert [lang["low_resource"] for lang in state["languages"]] == [False, False, True]
    assert [p["round"] for p in state["curves"]["test"]["low_resource_mean"]] == list(range(1, ROUNDS + 1))
    # The last round's clients all replied, each with its loss, steps and the size of its update.
    assert state["nodes"]["round"] == ROUNDS
    assert {c["client"]: c["status"] for c in state["nodes"]["clients"]} == dict.fromkeys(LANGS, "replied")
    assert all(c["steps"] > 0 and c["update_norm"] > 0 for c in state["nodes"]["clients"])
    assert state["settings"]["paradigm"] == "federated" and state["settings"]["attack"] is None


def test_a_run_in_progress_shows_the_round_under_way_and_who_was_asked(tiny_xlmr, tmp_path):
    cfg = tiny_federated(tiny_xlmr, tmp_path / "run")
    sent = {"train": 0}

    def crash(msg):  # the server dies as it sends round 2's third training message
        if msg.metadata.message_type == "train":
            sent["train"] += 1
        return sent["train"] == len(LANGS) + 3

    with pytest.raises(Crash), flower_run_identity():
        run_federated(InProcessGrid(len(LANGS), crash=crash), cfg, quiet=True)
    state = run_state(tmp_path / "run")
    assert state["status"] == "running" and state["final"] is None
    assert state["rounds"]["done"] == 1 and state["rounds"]["in_progress"] == 2 and state["rounds"]["stage"] == "train"
    assert state["rounds"]["seconds_left"] is not None
    assert state["nodes"]["round"] == 2
    assert {c["client"]: c["status"] for c in state["nodes"]["clients"]} == dict.fromkeys(LANGS, "sampled")


def test_a_failed_run_shows_its_error(finished_run, tmp_path):
    folder = tmp_path / "failed"
    shutil.copytree(finished_run, folder)
    (folder / "results.json").unlink()
    (folder / "failure.json").write_text(json.dumps({"error": "every client refused"}), encoding="utf-8")
    state = run_state(folder)
    assert state["status"] == "failed" and state["error"] == "every client refused"


# ------------------------------------------------------------------------------------------------ the server


@pytest.mark.parametrize("path", ["/files/../outside.txt", "/files/%2e%2e/outside.txt", "/files//etc/passwd",
                                  "/files/run/../../outside.txt", "/api/state?run=..", "/api/state?run=/etc",
                                  "/api/state?run=..%2F..", "/files/escape/outside.txt"])
def test_paths_outside_the_watched_folder_are_refused(finished_run, served, tmp_path, path):
    root = tmp_path / "root"
    shutil.copytree(finished_run, root / "run")
    (tmp_path / "outside.txt").write_text("secret", encoding="utf-8")
    (root / "escape").symlink_to(tmp_path, target_is_directory=True)
    server = served(root)
    status, body = get(server, path)
    assert status in (403, 404), body
    assert b"secret" not in body
    if "%2e" in path or ".." in path or "escape" in path:
        assert status == 403


def test_files_of_the_folder_are_served_and_nothing_can_be_written(finished_run, served):
    server = served(finished_run)
    status, body = get(server, "/files/results.json")
    assert status == 200 and body == (finished_run / "results.json").read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, _ = get(server, "/files/results.json", method)
        assert status == 405
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before


def test_a_folder_of_runs_lists_them_and_serves_each(finished_run, served, tmp_path):
    for name in ("paradigm=federated__seed=0", "paradigm=federated__seed=1"):
        shutil.copytree(finished_run, tmp_path / "sweep" / name)
    server = served(tmp_path / "sweep")
    listing = json.loads(get(server, "/api/runs")[1])
    assert listing["runs"] == ["paradigm=federated__seed=0", "paradigm=federated__seed=1"]
    status, body = get(server, "/api/state?run=paradigm%3Dfederated__seed%3D1")
    assert status == 200 and json.loads(body)["status"] == "finished"
    assert get(server, "/api/state")[0] == 404  # the sweep folder itself is not a run


def test_only_loopback_unless_allowed(finished_run):
    with pytest.raises(UserError, match="--allow-remote"):
        open_server(finished_run, "0.0.0.0", 0)
    server = open_server(finished_run, "0.0.0.0", 0, allow_remote=True)
    server.server_close()
    with pytest.raises(UserError, match="not a folder"):
        open_server(finished_run / "results.json")


def test_the_page_fetches_nothing_from_outside():
    for name in ("watch.html", "watch.js", "watch.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name
        assert "//cdn" not in text and "@import" not in text
    html = (STATIC / "watch.html").read_text(encoding="utf-8")
    assert 'src="/static/watch.js"' in html and 'href="/static/watch.css"' in html


# ------------------------------------------------------------------------------------------------ trackers


def test_every_rounds_metrics_reach_tensorboard_and_mlflow(tiny_xlmr, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # nothing may land in the directory the run is started from
    out = tmp_path / "run"
    cfg = tiny_federated(tiny_xlmr, out, **{"tracking.backends": "tensorboard,mlflow"})
    finish_like_the_server_app(cfg)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = {(r["lang"], r["round"]): r["accuracy"] for r in metrics if r["split"] == "test"}
    assert len(expected) == len(LANGS) * ROUNDS

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for lang in LANGS:
        points = {e.step: e.value for e in events.Scalars(f"test/accuracy/{lang}")}
        assert points == pytest.approx({r: expected[(lang, r)] for r in range(1, ROUNDS + 1)})
    assert [e.step for e in events.Scalars("test/accuracy/low_resource_mean")] == list(range(1, ROUNDS + 1))
    assert [e.step for e in events.Scalars("bytes/total")] == list(range(1, ROUNDS + 1))

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    run_id = json.loads((out / TRACKING_FILE).read_text(encoding="utf-8"))["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.01" and run.data.params["paradigm"] == "federated"
    for lang in LANGS:
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"test/accuracy/{lang}")}
        assert history == pytest.approx({r: expected[(lang, r)] for r in range(1, ROUNDS + 1)})
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["report.md", "results.json"]
    assert sorted(p.name for p in (out / "mlflow-artifacts").rglob("*.*")) == ["report.md", "results.json"]
    assert not (tmp_path / "mlruns").exists()


def test_a_tracker_that_is_not_installed_is_refused_in_one_line(tiny_xlmr, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    cfg = tiny_federated(tiny_xlmr, tmp_path / "run", **{"tracking.backends": "mlflow"})
    with pytest.raises(ConfigError, match=r"MLflow is not installed: install the tracking extra") as err:
        Trackers.open(cfg, tmp_path / "run")
    assert "\n" not in str(err.value)
    from mfpt.experiments.preflight import preflight

    with pytest.raises(ConfigError, match="tracking extra"):
        preflight(cfg)


def test_an_unknown_tracker_is_refused():
    with pytest.raises(ConfigError, match=r"tracking.backends has \['wandb'\]"):
        load_config(None, {"tracking.backends": "wandb"})


# ------------------------------------------------------------------------------------------------ a real browser


def _chromium() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: `make browser` installs them "
                    "(`make test` does it first)")
    return browser, driver


@pytest.mark.ray
@pytest.mark.slow
def test_the_page_in_a_real_browser_advances_without_a_reload(tiny_xlmr, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    out = tmp_path / "run"
    out.mkdir()
    experiment = tmp_path / "experiment.toml"
    experiment.write_text("\n".join([
        'name = "browser-test"', f'output_dir = "{out}"', "[model]", f'name = "{tiny_xlmr}"', "max_seq_length = 32",
        "[peft]", "num_virtual_tokens = 4", "[data]", 'source = "files"', f'path = "{TINY_DATA}"',
        f"languages = {json.dumps(LANGS)}", 'low_resource = ["hau"]', "[federation]", "rounds = 6",
        "[train]", "batch_size = 8", "lr = 0.01", 'device = "cpu"', ""]), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    watch = subprocess.Popen([sys.executable, "-m", "mfpt.cli", "watch", str(out), "--port", "0"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = None
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    page = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        url = watch.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0]
        page.get(url)
        run = subprocess.Popen([sys.executable, "-m", "mfpt.cli", "run", str(experiment), "--quiet"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        counter = WebDriverWait(page, 240, poll_frequency=0.2).until(
            lambda d: d.find_element(By.ID, "round-counter") if d.find_element(By.ID, "run").is_displayed() else None)
        seen = {counter.text}
        # The page shows every language in its legend once the run has started.
        WebDriverWait(page, 240).until(lambda d: all(d.find_elements(By.CSS_SELECTOR, f'#legend [data-lang="{lang}"]')
                                                     for lang in LANGS))
        # Two different counts of the 6 rounds seen on the same page load: it advanced by itself.
        WebDriverWait(page, 300, poll_frequency=0.2).until(
            lambda d: seen.add(d.find_element(By.ID, "round-counter").text) or len({t for t in seen if t.endswith("/ 6")}) >= 2)
        assert page.execute_script("return performance.getEntriesByType('navigation').length") == 1  # no reload
        page.save_screenshot(str(tmp_path / "watch.png"))
        assert run.wait(timeout=300) == 0, run.stdout.read()
        WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "status").text == "finished")
        assert page.find_element(By.ID, "round-counter").text == "round 6 / 6"
        # Every language has its curve on the accuracy chart.
        drawn = {p.get_attribute("data-series") for p in page.find_elements(By.CSS_SELECTOR, "#accuracy-chart path")}
        assert {"eng", "swh", "hau (low-resource)", "mean", "low-resource mean"} <= drawn
        # The last round's clients, each with its loss, steps and update norm in its own column.
        # Read in one script: the page redraws the table every 2 s, which would leave element handles stale.
        rows = page.execute_script("return [...document.querySelectorAll('#nodes tr')]"
                                   ".map(tr => [...tr.cells].map(td => td.textContent))")
        assert sorted(r[0] for r in rows) == ["eng", "hau", "swh"]
        assert all(r[1] == "replied" and float(r[2]) > 0 and int(r[3]) > 0 and float(r[4]) > 0 for r in rows), rows
        assert (tmp_path / "watch.png").stat().st_size > 10_000
    finally:
        page.quit()
        for proc in (run, watch):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
