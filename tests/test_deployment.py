"""Real deployment on loopback: `flower-superlink` + one `flower-supernode` per language, each reading only its own
language's file, the unchanged ServerApp/ClientApp submitted with `flwr run`.

Every process is started by the test through scripts/local_federation.py and stopped by PID (process group),
also when a test fails. Ports are picked free at run time. These tests are slow by nature (Flower starts one
ClientApp process per message, ~5-8 s each on 2 cores), so each federation is kept to the minimum that proves
its point: two sites, which both fit on two cores, and the in-process run (the same ServerApp and ClientApp code on
tests/conftest.py's InProcessGrid) as the reference where no Flower simulation is needed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")
# Real SuperLink/SuperNode processes (minutes on 2 cores): neither `make test-fast` nor `make test-latest` runs them.
pytestmark = [pytest.mark.deployment, pytest.mark.slow]

from conftest import TINY_DATA  # noqa: E402

from mfpt.results.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
# Two sites: a second core each. SecAgg+ and personalisation need no more to show their messages cross the network.
LANGS = ["eng", "swh"]
LABELS = ["health", "politics", "sport"]
RUN_TIMEOUT = 300

_spec = importlib.util.spec_from_file_location("local_federation", ROOT / "scripts" / "local_federation.py")
lf = importlib.util.module_from_spec(_spec)
sys.modules["local_federation"] = lf
_spec.loader.exec_module(lf)


def write_experiment(path: Path, model: Path, out_dir: Path, languages: list[str], personalization: dict | None = None,
                     low_resource: tuple[str, ...] = (), attack: dict | None = None, **federation) -> Path:
    """An experiment TOML as an operator writes it: absolute paths, languages and labels spelled out, so the
    server never needs the data (it has none)."""
    fed = {"rounds": 2, "round_timeout": 60.0, **federation}
    lines = ['name = "deploy-test"', "seed = 0", f'output_dir = "{out_dir}"', "", "[model]", f'name = "{model}"',
             "max_seq_length = 32", "", "[peft]", "num_virtual_tokens = 4", "", "[data]", 'source = "files"',
             f'path = "{TINY_DATA}"', f"languages = {json.dumps(languages)}", f"labels = {json.dumps(LABELS)}",
             f"low_resource = {json.dumps(list(low_resource))}", "",
             "[federation]", *[f"{k} = {json.dumps(v)}" for k, v in fed.items()], "", "[train]", "batch_size = 8",
             "lr = 0.01", "threads = 1", 'device = "cpu"', ""]
    if personalization:
        lines += ["[personalization]", *[f"{k} = {json.dumps(v)}" for k, v in personalization.items()], ""]
    if attack:
        lines += ["[attack]", *[f"{k} = {json.dumps(v)}" for k, v in attack.items()], ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def start_nodes(fed, files: dict[str, Path]) -> None:
    for lang, path in files.items():
        fed.start_supernode(lang, {"lang": lang, "data-path": str(path)})


def final_state(out_dir: Path, rounds: int = 2) -> dict[str, torch.Tensor]:
    return load_checkpoint(out_dir / "checkpoints" / f"round-{rounds:04d}.safetensors").state


def wait_for(path: Path, timeout: float, fed) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout:.0f} s; logs in {fed.logs}")
        if fed.procs["superlink"].poll() is not None:
            raise AssertionError(f"the SuperLink exited; logs in {fed.logs}")
        time.sleep(0.3)


def in_process_run(experiment: Path, out_dir: Path):
    """The same experiment on the in-process grid (the real ServerApp logic and ClientApp, no processes)."""
    from conftest import InProcessGrid, flower_run_identity

    from mfpt.config import load_config
    from mfpt.federation.server import run_federated

    cfg = load_config(experiment, {"output_dir": str(out_dir)})
    with flower_run_identity():
        return run_federated(InProcessGrid(len(cfg.data.languages)), cfg, quiet=True)


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def node_files(tmp_path_factory) -> dict[str, Path]:
    return lf.split_by_language(TINY_DATA, tmp_path_factory.mktemp("node-data"), LANGS)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, tiny_xlmr, node_files):
    """A 2-round run on SuperLink + 2 SuperNodes (eng, swh) whose SuperLink is killed after round 1; a new SuperLink,
    the sites reconnecting, and the operator's resume finish it. The tests below compare its end with a simulation
    that was never interrupted, and check what the crash left behind."""
    work = tmp_path_factory.mktemp("deployed")
    out = work / "out"
    # low_resource as the README's minimal experiment has it: every node narrows it to its own language.
    experiment = write_experiment(work / "experiment.toml", tiny_xlmr, out, LANGS, low_resource=("swh",))
    with lf.LocalFederation(work / "fed") as fed:
        fed.start_superlink()
        start_nodes(fed, node_files)
        fed.submit({"experiment": str(experiment)})
        wait_for(out / "checkpoints" / "round-0001.safetensors", RUN_TIMEOUT, fed)
        fed.kill_process("superlink")  # SuperLink and its ServerApp process die at once (SIGKILL)
        for lang in LANGS:
            fed.stop_process(f"supernode-{lang}")
        before = {lang: (fed.logs / f"supernode-{lang}.log").read_text(errors="replace") for lang in LANGS}
    after_crash = {"results": (out / "results.json").exists(),
                   "progress": json.loads((out / "progress.json").read_text())}
    # A new SuperLink (state in memory was lost), the sites reconnect, the operator resumes the run.
    with lf.LocalFederation(work / "fed2") as fed:
        fed.start_superlink()
        start_nodes(fed, node_files)
        run_id = fed.submit({"experiment": str(experiment), "resume": True})
        status = fed.wait(run_id, RUN_TIMEOUT, done_file=out / "results.json")
        after = {lang: (fed.logs / f"supernode-{lang}.log").read_text(errors="replace") for lang in LANGS}
    return {"status": status, "out": out, "experiment": experiment, "logs_before": before, "logs_after": after,
            "after_crash": after_crash}


def _audit(log: str) -> list[str]:
    return [line for line in log.splitlines() if "mfpt-audit:" in line]


def test_a_deployment_resumed_after_a_server_crash_ends_exactly_where_the_simulation_does(deployed, tmp_path):
    from mfpt.config import load_config
    from mfpt.experiments.paradigms import run_federated_simulation

    assert deployed["status"] == "finished:completed"
    results = json.loads((deployed["out"] / "results.json").read_text())
    assert set(results["per_language"]) == set(LANGS) and results["low_resource"] == ["swh"]
    assert results["low_resource_average"] is not None
    # The same experiment in simulation; the wait for its clients is no part of the result, and a loaded machine
    # once needed more than the deployment's 60 s to start Ray and both clients.
    cfg = load_config(deployed["experiment"], {"output_dir": str(tmp_path / "sim"), "federation.round_timeout": 300.0})
    run_federated_simulation(cfg, quiet=True)
    simulated, real = final_state(tmp_path / "sim"), final_state(deployed["out"])
    assert simulated.keys() == real.keys()
    for key in simulated:
        torch.testing.assert_close(real[key], simulated[key], rtol=0, atol=0)
    # The crash left round 1 complete and no results; the resumed run trained round 2 only, once.
    assert not deployed["after_crash"]["results"] and deployed["after_crash"]["progress"]["completed_round"] == 1
    assert sorted({r["round"] for r in metrics(deployed["out"]) if r["split"] == "train"}) == [1, 2]
    assert [(r["round"], r["client"]) for r in metrics(deployed["out"]) if r["split"] == "train"] == \
        [(r, lang) for r in (1, 2) for lang in LANGS]


def test_nodes_send_only_tensors_and_scalars_and_log_every_reply(deployed):
    for lang in LANGS:
        before, after = _audit(deployed["logs_before"][lang]), _audit(deployed["logs_after"][lang])
        # Before the crash: the handshake, round 1's training and evaluation (and maybe round 2's training, cut off).
        assert [("query" in b, "train" in b, "evaluate" in b) for b in before[:3]] == [
            (True, False, False), (False, True, False), (False, False, True)], (lang, before)
        # The resumed run: a new handshake, round 2's training and evaluation: every reply in the node's own log.
        assert len(after) == 3 and "reply to train" in after[1] and "reply to evaluate" in after[2], (lang, after)
        for line in before + after:
            assert "REFUSED" not in line
            if "reply to train" in line:
                assert "arrays=ArrayRecord[" in line and "metrics=MetricRecord[" in line
            else:
                assert "ArrayRecord" not in line


def test_killed_supernode_is_logged_missing_and_the_run_completes(tmp_path, tiny_xlmr, node_files):
    out = tmp_path / "out"
    # Two sites; one dies after round 1. min_clients = 1 lets the survivor carry round 2; the dead node's
    # replies are awaited for round_timeout, then it is recorded as missing.
    # round_timeout: what the live site's reply needs on a loaded 2-core CI machine with room to spare (15 s was
    # once too little there for an evaluate reply, which then counted as missing); the dead site costs it twice.
    experiment = write_experiment(tmp_path / "experiment.toml", tiny_xlmr, out, ["eng", "swh"],
                                  min_clients=1, round_timeout=30.0)
    with lf.LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        start_nodes(fed, {lang: node_files[lang] for lang in ("eng", "swh")})
        run_id = fed.submit({"experiment": str(experiment)})
        wait_for(out / "checkpoints" / "round-0001.safetensors", RUN_TIMEOUT, fed)
        fed.kill_process("supernode-swh")
        status = fed.wait(run_id, RUN_TIMEOUT, done_file=out / "results.json")
    assert status == "finished:completed"
    rows = metrics(out)
    missing = [r for r in rows if r["split"] == "missing"]
    assert missing and {r["client"] for r in missing} == {"swh"} and {r["round"] for r in missing} == {2}
    assert {r["client"] for r in rows if r["split"] == "train" and r["round"] == 2} == {"eng"}
    assert (out / "checkpoints" / "round-0002.safetensors").exists()


def test_an_attack_on_the_loopback_deployment_is_carried_out_by_the_consenting_site(tmp_path, tiny_xlmr, node_files):
    """swh is named the attacker and its site consents (node config attack=true): the deployment ends exactly where
    the attacked simulation does, and results.json and report.md say it was attacked, how and by whom."""
    out = tmp_path / "out"
    attack = {"kind": "sign-flip", "languages": ["swh"], "factor": 5.0}
    experiment = write_experiment(tmp_path / "experiment.toml", tiny_xlmr, out, LANGS, attack=attack)
    with lf.LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        fed.start_supernode("eng", {"lang": "eng", "data-path": str(node_files["eng"])})
        fed.start_supernode("swh", {"lang": "swh", "data-path": str(node_files["swh"]), "attack": "true"})
        run_id = fed.submit({"experiment": str(experiment)})
        status = fed.wait(run_id, RUN_TIMEOUT, done_file=out / "results.json")
    assert status == "finished:completed", fed.run_log(run_id)[-3000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["attack"]["kind"] == "sign-flip" and results["attack"]["languages"] == ["swh"]
    assert "ATTACKED RUN" in (out / "report.md").read_text(encoding="utf-8")
    in_process_run(experiment, tmp_path / "simulated")
    deployed_state, simulated_state = final_state(out), final_state(tmp_path / "simulated")
    assert deployed_state.keys() == simulated_state.keys()
    assert all(torch.allclose(deployed_state[k], simulated_state[k], atol=1e-6) for k in deployed_state)
    # Without the attack the state differs: the site did send a flipped update.
    honest = write_experiment(tmp_path / "honest.toml", tiny_xlmr, tmp_path / "honest", LANGS)
    in_process_run(honest, tmp_path / "honest")
    honest_state = final_state(tmp_path / "honest")
    assert any(not torch.allclose(honest_state[k], deployed_state[k], atol=1e-4) for k in honest_state)


def test_tls_and_supernode_authentication(tmp_path, node_files):
    with lf.LocalFederation(tmp_path / "fed", tls=True, auth=True) as fed:
        fed.start_superlink()
        registered_key, registered_pub = lf.make_node_key(tmp_path / "keys", "eng")
        stranger_key, _ = lf.make_node_key(tmp_path / "keys", "stranger")
        node_id = fed.register(registered_pub)  # over TLS: the CLI verifies the server with the test CA
        fed.start_supernode("eng", {"lang": "eng", "data-path": str(node_files["eng"])}, private_key=registered_key)
        intruder = fed.start_supernode("stranger", {"lang": "swh", "data-path": str(node_files["swh"])},
                                       private_key=stranger_key, max_retries=0)
        deadline = time.monotonic() + 60
        online = []
        while time.monotonic() < deadline:
            online = [n["node-id"] for n in fed.nodes() if n["status"] == "online"]
            if node_id in online and intruder.poll() is not None:
                break
            time.sleep(1)
        assert node_id in online, fed.nodes()
        assert intruder.wait(timeout=30) != 0
        assert len(online) == 1
        log = (fed.logs / "supernode-stranger.log").read_text(errors="replace")
        assert "Failed to initialize the connection" in log


def test_insecure_off_loopback_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="not a loopback address"):
        lf.LocalFederation(tmp_path / "fed", host="10.1.2.3")
    lf.check_insecure("10.1.2.3", insecure=True, force=True)  # explicitly forced: allowed
    lf.check_insecure("127.0.0.1", insecure=True)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "local_federation.py"), "--data", str(TINY_DATA),
                           "--experiment", "x.toml", "--host", "192.168.1.5", "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "not a loopback address" in done.stderr


def test_secure_aggregation_completes_on_the_loopback_deployment(tmp_path, tiny_xlmr, node_files):
    out = tmp_path / "out"
    experiment = write_experiment(tmp_path / "experiment.toml", tiny_xlmr, out, LANGS, rounds=1)
    experiment.write_text(experiment.read_text(encoding="utf-8") + "[privacy]\nsecure_aggregation = true\n",
                          encoding="utf-8")
    with lf.LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        start_nodes(fed, node_files)
        run_id = fed.submit({"experiment": str(experiment)})
        # SecAgg+ takes four train messages per node and round
        status = fed.wait(run_id, 2 * RUN_TIMEOUT, done_file=out / "results.json")
        logs = {lang: (fed.logs / f"supernode-{lang}.log").read_text(errors="replace") for lang in LANGS}
        server_log = fed.run_log(run_id) if status != "finished:completed" else ""
    assert status == "finished:completed", server_log[-3000:]
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["privacy"]["secure_aggregation"] is True and set(result["per_language"]) == set(LANGS)
    for lang, log in logs.items():
        trains = [line for line in log.splitlines() if "mfpt-audit: reply to train" in line]
        assert len(trains) == 4, (lang, trains)  # SecAgg+'s four stages, each a train message
        assert not any("REFUSED" in line for line in log.splitlines())
        # The masked-input stage carries the masked vector in SecAgg+'s own record; its legacy update record is empty.
        masked = [line for line in trains if "fitres.parameters" in line]
        assert len(masked) == 1, (lang, trains)
        assert "secaggplus_configs=ConfigRecord" in masked[0] and "fitres.parameters=ArrayRecord[0 tensors]" in masked[0]


# distance-weighted and update-similarity send the same messages (they differ only in the server's maths, tested in
# process); finetune adds a fine-tuning phase after the last round.
@pytest.mark.parametrize("method", ["distance-weighted", "finetune"])
def test_personalised_methods_on_the_deployment_equal_the_in_process_run(method, tmp_path, tiny_xlmr, node_files):
    from mfpt.results.schema import read_result

    out = tmp_path / "out"
    # distance-weighted needs a second round, in which each site trains from its own language's state; finetune's own
    # messages come after the last round, so one round shows them.
    rounds = 1 if method == "finetune" else 2
    experiment = write_experiment(tmp_path / "experiment.toml", tiny_xlmr, out, LANGS, rounds=rounds,
                                  personalization={"method": method, "finetune_steps": 2})
    with lf.LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        start_nodes(fed, node_files)
        # Two states evaluated per node and round (or a fine-tuning phase): more ClientApp work than a plain run.
        run_id = fed.submit({"experiment": str(experiment)})
        status = fed.wait(run_id, 2 * RUN_TIMEOUT, done_file=out / "results.json")
        logs = [(fed.logs / f"supernode-{lang}.log").read_text(errors="replace") for lang in LANGS]
        server_log = fed.run_log(run_id) if status != "finished:completed" else ""
    assert status == "finished:completed", server_log[-3000:]
    assert not any("REFUSED" in line for log in logs for line in log.splitlines() if "mfpt-audit:" in line)
    in_process_run(experiment, tmp_path / "in-process")
    real, reference = read_result(out), read_result(tmp_path / "in-process")
    assert real.personalization is not None and set(real.personalization.per_language) == set(LANGS)
    assert real.personalization == reference.personalization
    a = load_checkpoint(out / "checkpoints" / f"round-{rounds:04d}.safetensors")
    b = load_checkpoint(tmp_path / "in-process" / "checkpoints" / f"round-{rounds:04d}.safetensors")
    assert set(a.personal) == set(b.personal) == (set(LANGS) if method != "finetune" else set())
    for key in a.state:
        torch.testing.assert_close(a.state[key], b.state[key], rtol=0, atol=0)
    for lang in a.personal:
        for key in a.personal[lang]:
            torch.testing.assert_close(a.personal[lang][key], b.personal[lang][key], rtol=0, atol=0)


def test_the_per_message_cost_benchmark_times_each_phase_of_a_fresh_clientapp_process(tmp_path, tiny_xlmr):
    """Each deployment message runs in a new ClientApp process (Flower 1.42); benchmarks/bench_clientapp_process.py
    measures what such a process spends before and on the message's own work (docs/speed.md). It runs here on the
    tiny model, so that the measurement documented there keeps working; the figures are not asserted."""
    experiment = write_experiment(tmp_path / "experiment.toml", tiny_xlmr, tmp_path / "out", LANGS)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_clientapp_process.py"), "--config",
                           str(experiment), "--lang", "swh", "--repeats", "1"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    for phase in ("import", "config", "data", "model", "tokenise", "train", "evaluate", "process"):
        assert any(line.split()[:1] == [phase] and line.rstrip().endswith(" s") for line in done.stdout.splitlines()), (
            phase, done.stdout)
    assert "x the work" in done.stdout
