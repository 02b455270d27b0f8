#!/usr/bin/env python
"""A whole mfpt federation on one machine: a SuperLink, one SuperNode per language, one run via `flwr run`.

    python scripts/local_federation.py --data tests/fixtures/tiny_multilingual.jsonl \\
        --experiment my-experiment.toml --languages eng,swh,hau --workdir /tmp/mfpt-fed [--tls] [--auth]

    python scripts/local_federation.py --simulation --experiment configs/demo.toml

With `--simulation` the SuperLink runs Flower's Simulation Engine instead (`flower-superlink --simulation`, one
virtual SuperNode per client, data read as `mfpt run` reads it, paths relative to the current directory). Either
way the script exits 0 only when the run finished as completed: `flwr run` itself exits 0 whatever the run's
outcome, so the script asks the SuperLink for the run's status and exits 1 on any other.

It splits the universal-schema file by language (each SuperNode gets only its own language's file), starts
`flower-superlink` and the SuperNodes as separate processes on 127.0.0.1, submits the run with `flwr run`,
waits until it finishes, and stops every process it started, by PID (process group), also on Ctrl-C or error.
The same `LocalFederation` class is what tests/test_deployment.py uses.

Security: plain HTTP (`--insecure`) is refused for any address other than loopback unless `--force-insecure`;
`--tls` makes a throw-away CA and server certificate; `--auth` turns on SuperNode authentication and registers
each SuperNode's public key with `flwr supernode register` before the node starts. For real machines see
docs/deploy.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mfpt.core.network import is_loopback

CONNECTION = "mfpt-local"

# The Flower app that `flwr run` ships (the FAB): app/pyproject.toml, which holds no code. The code is the installed
# `mfpt` package, the same on every machine; a FAB of the repository would shadow it with a copy that lacks
# mfpt/resources/*.tsv (FABs carry only .py/.toml/.md/.json/.yaml files) and ship data/ to every node.
APP_PYPROJECT = (Path(__file__).resolve().parents[1] / "app" / "pyproject.toml").read_text(encoding="utf-8")


class FederationError(RuntimeError):
    """A process of the local federation failed; the message names it and where its log is."""


def check_insecure(host: str, insecure: bool, force: bool = False) -> None:
    """Refuse plain HTTP on a non-loopback address unless explicitly forced."""
    if insecure and not is_loopback(host) and not force:
        raise SystemExit(f"Refusing to run without TLS on {host!r}, which is not a loopback address: pass --tls, "
                         "or --force-insecure if this network is trusted (see docs/deploy.md).")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None, name: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FederationError(f"{name} exited with code {proc.returncode} before listening on {host}:{port}.")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise FederationError(f"{name or 'server'} did not listen on {host}:{port} within {timeout:.0f} s.")


def split_by_language(universal: str | Path, out_dir: str | Path, languages: list[str] | None = None) -> dict[str, Path]:
    """Write one JSONL file per language (rows in their original order); return {lang: path}."""
    from mfpt.core.languages import normalize_language
    from mfpt.data.sources import LANG, read_table

    frame = read_table(universal)
    wanted = [normalize_language(code) for code in languages] if languages else sorted(set(frame[LANG]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang in wanted:
        rows = frame[frame[LANG] == lang]
        if rows.empty:
            raise SystemExit(f"Language {lang!r} has no rows in {str(universal)!r}.")
        paths[lang] = out / f"{lang}.jsonl"
        rows.to_json(paths[lang], orient="records", lines=True, force_ascii=False)
    return paths


def make_tls(out_dir: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A throw-away CA and a server certificate for `hosts` (SANs); returns ca/cert/key paths (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mfpt test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.crt", "cert": out / "server.pem", "key": out / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


def make_node_key(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's P-384 key pair: private key (PEM, OpenSSH format) and public key (OpenSSH line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = out / f"{name}", out / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def descendants(pid: int) -> list[int]:
    """PIDs of every process below `pid` (Linux /proc), children first listed before their own children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


def flwr_config_line(values: dict[str, Any]) -> str:
    """`key=value ...` as `flwr run --run-config` and `--federation-config` read it (strings quoted, bools lower)."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in values.items())


def simulation_settings(experiment: str | Path) -> dict[str, Any]:
    """The Simulation Engine's settings for an experiment: one virtual SuperNode per client of its layout, and the
    cores and GPU share per client that `mfpt run` gives them (federation.client_cpus, client_gpus)."""
    from mfpt.config import load_config
    from mfpt.data.clients import client_layout

    cfg = load_config(experiment)
    if not cfg.data.languages:
        raise SystemExit(f"{str(experiment)!r} sets no data.languages; a simulation needs them to know its clients "
                         "(`mfpt data` lists the languages of a data file).")
    clients = client_layout(cfg.data.languages, cfg.data.heldout_languages, cfg.federation.clients_per_language)
    return {"num-supernodes": len(clients), "client-resources-num-cpus": max(1, int(cfg.federation.client_cpus)),
            "client-resources-num-gpus": float(cfg.federation.client_gpus)}


class LocalFederation:
    """Processes of one federation on this machine; `stop()` (or leaving the `with` block) ends them all."""

    def __init__(self, workdir: str | Path, *, host: str = "127.0.0.1", tls: bool = False, auth: bool = False,
                 force_insecure: bool = False, cwd: str | Path | None = None,
                 echo: Callable[[str], None] = lambda line: None) -> None:
        check_insecure(host, insecure=not tls, force=force_insecure)
        self.workdir = Path(workdir).resolve()
        # Where the SuperLink (and so the ServerApp and, in simulation, every ClientApp) runs: an experiment's
        # relative paths resolve from here. The workdir by default; the caller's directory for a simulation.
        self.cwd = Path(cwd).resolve() if cwd is not None else self.workdir
        self.host, self.tls, self.auth, self.echo = host, tls, auth, echo
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.app_dir = self.workdir / "app"
        self.app_dir.mkdir(exist_ok=True)
        (self.app_dir / "pyproject.toml").write_text(APP_PYPROJECT, encoding="utf-8")
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(exist_ok=True)
        self.certs = make_tls(self.workdir / "certs", (host, "localhost") if host != "localhost" else (host,)) if tls else None
        self.port = free_port(host)
        self.procs: dict[str, subprocess.Popen] = {}
        # The SuperLink starts `flower-superexec` (and that `flwr-serverapp`/`flwr-clientapp`) by name, so this
        # interpreter's bin folder must be on PATH even when the venv is not activated (e.g. under `make test`).
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        # SuperExec asks its SuperLink or SuperNode for new tasks every second by default; a tenth of that keeps a
        # small federation's messages from queueing behind the poll (a cheap request on loopback).
        self.env = dict(os.environ, FLWR_HOME=str(self.flwr_home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1", PYTHONUNBUFFERED="1", PATH=path)
        tls_line = f'root-certificates = "{self.certs["ca"]}"' if self.certs else "insecure = true"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{host}:{self.port}"\n{tls_line}\n', encoding="utf-8")

    # ------------------------------------------------------------------------------------ processes
    def _bin(self, name: str) -> str:
        here = Path(sys.executable).parent / name
        return str(here) if here.exists() else name

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise FederationError(f"{name} is already running (pid {self.procs[name].pid}).")
        log = open(self.logs / f"{name}.log", "ab")
        # Own session: the process and the ServerApp/ClientApp processes it launches share one process group,
        # which stop() ends by this PID.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        self.echo(f"started {name} (pid {proc.pid}), log {self.logs / (name + '.log')}")
        return proc

    def start_superlink(self, database: str | None = None, simulation: bool = False) -> subprocess.Popen:
        """The SuperLink; state in memory unless `database` is a file (flwr 1.41's SQLite `:memory:` state failed
        under concurrent SuperNodes with "cannot commit - no transaction is active", so it is not used).
        `simulation`: it runs the clients itself with Flower's Simulation Engine; no SuperNode is started."""
        argv = [self._bin("flower-superlink"), "--host", self.host, "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if simulation:
            argv.append("--simulation")
        if database:
            argv += ["--database", database]
        if self.certs:
            argv += ["--ssl-ca-certfile", str(self.certs["ca"]), "--ssl-certfile", str(self.certs["cert"]),
                     "--ssl-keyfile", str(self.certs["key"])]
        else:
            argv.append("--insecure")
        if self.auth:
            argv.append("--enable-supernode-auth")
        proc = self._spawn("superlink", argv)
        wait_for_port(self.host, self.port, 60, proc, "superlink")
        return proc

    def start_supernode(self, name: str, node_config: dict[str, Any], private_key: Path | None = None,
                        max_retries: int | None = None) -> subprocess.Popen:
        """A SuperNode named `name` (e.g. its language) with `--node-config`, e.g. {"lang": "swh", "data-path": ...}."""
        config = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in node_config.items())
        argv = [self._bin("flower-supernode"), "--superlink", f"{self.host}:{self.port}",
                "--port", str(free_port()), "--node-config", config]
        argv += ["--root-certificates", str(self.certs["ca"])] if self.certs else ["--insecure"]
        if private_key is not None:
            argv += ["--auth-supernode-private-key", str(private_key)]
        if max_retries is not None:
            argv += ["--max-retries", str(max_retries)]
        return self._spawn(f"supernode-{name}", argv)

    def stop_process(self, name: str, grace: float = 10.0) -> int | None:
        """End one process and everything it launched, by PID; return its exit code.

        flower-superexec starts its own session, so the SuperLink's/SuperNode's process group does not hold the
        ServerApp/ClientApp processes; their PIDs are collected from the process tree before anything is killed
        (a killed parent's children are re-parented and could no longer be found).
        """
        proc = self.procs.get(name)
        if proc is None:
            return None
        family = descendants(proc.pid)
        self._stop_group(proc, grace)
        for pid in family:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
        self.echo(f"stopped {name} (pid {proc.pid})")
        return proc.returncode

    def _stop_group(self, proc: subprocess.Popen, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children may outlive a parent killed first; the group id is still the parent's PID.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def kill_process(self, name: str) -> None:
        """SIGKILL one process and everything it launched at once (a crash, for fault tests)."""
        proc = self.procs[name]
        family = descendants(proc.pid)
        for pid in [proc.pid, *family]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        self.echo(f"killed {name} (pid {proc.pid})")

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop_process(name, grace=5.0)

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ flwr CLI
    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([self._bin("flwr"), *args], capture_output=True, text=True, env=self.env,
                              cwd=self.cwd, timeout=timeout)

    def register(self, public_key: Path) -> str:
        """`flwr supernode register` (SuperNode authentication): returns the node id the SuperLink assigned."""
        done = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        try:
            return str(json.loads(done.stdout)["node-id"])
        except (ValueError, KeyError):
            raise FederationError(f"flwr supernode register failed: {done.stdout}{done.stderr}") from None

    def nodes(self) -> list[dict[str, Any]]:
        done = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        return list(json.loads(done.stdout).get("nodes", []))

    def submit(self, run_config: dict[str, Any], simulation: dict[str, Any] | None = None) -> str:
        """`flwr run` of the mfpt app; returns the run id (the run goes on in the SuperLink). `simulation`: the
        Simulation Engine's settings (`--federation-config`), e.g. {"num-supernodes": 16}."""
        args = ["run", str(self.app_dir), CONNECTION, "--run-config", flwr_config_line(run_config), "--format", "json"]
        if simulation:
            args += ["--federation-config", flwr_config_line(simulation)]
        done = self.flwr(*args)
        try:
            run_id = json.loads(done.stdout)["run-id"]
        except (ValueError, KeyError, TypeError):
            run_id = None
        if not run_id:
            raise FederationError(f"flwr run failed: {done.stdout}{done.stderr}")
        self.echo(f"submitted run {run_id}")
        return str(run_id)

    def status(self, run_id: str) -> str:
        done = self.flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
        try:
            return str(json.loads(done.stdout)["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return "unknown"

    def wait(self, run_id: str, timeout: float, poll: float = 10.0, done_file: Path | None = None) -> str:
        """Wait until the run is finished; return its status (finished:completed / finished:failed / ...).

        Each status query is a `flwr` process, which competes with the federation for the CPU, so it is asked every
        `poll` seconds, and at once when `done_file` (e.g. the run's results.json) appears."""
        deadline = time.monotonic() + timeout
        asked = -math.inf
        while time.monotonic() < deadline:
            if time.monotonic() - asked >= poll or (done_file is not None and done_file.exists()):
                status, asked = self.status(run_id), time.monotonic()
                if status.startswith("finished"):
                    return status
            link = self.procs.get("superlink")
            if link is not None and link.poll() is not None:
                raise FederationError(f"the SuperLink exited (code {link.returncode}); see {self.logs / 'superlink.log'}")
            time.sleep(0.5)
        raise FederationError(f"run {run_id} did not finish within {timeout:.0f} s; see {self.logs}")

    def run_log(self, run_id: str) -> str:
        return self.flwr("log", run_id, CONNECTION, "--show").stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="universal-schema file (text,label,lang[,split]) to split by language "
                                       "(deployment; a simulation reads the experiment's own data)")
    parser.add_argument("--experiment", required=True, help="experiment TOML (deployment: absolute paths; "
                                                            "data.languages and data.labels set)")
    parser.add_argument("--simulation", action="store_true",
                        help="run the clients in Flower's Simulation Engine on the SuperLink instead of SuperNodes")
    parser.add_argument("--languages", default="", help="comma-separated languages, one SuperNode each (default: all)")
    parser.add_argument("--workdir", default="runs/local-federation", help="logs, per-language files, certs, FLWR_HOME")
    parser.add_argument("--host", default="127.0.0.1", help="address the SuperLink listens on")
    parser.add_argument("--tls", action="store_true", help="serve over TLS with a throw-away CA (required off loopback)")
    parser.add_argument("--force-insecure", action="store_true", help="allow plain HTTP on a non-loopback address")
    parser.add_argument("--auth", action="store_true", help="SuperNode authentication (registers each node's key)")
    parser.add_argument("--resume", action="store_true", help="resume the experiment's output_dir from its last round")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    check_insecure(args.host, insecure=not args.tls, force=args.force_insecure)
    if not args.simulation and not args.data:
        parser.error("--data is required for a deployment (one file per SuperNode); pass --simulation to run the "
                     "experiment's own data in Flower's Simulation Engine")
    if args.simulation and (args.data or args.auth or args.languages):
        parser.error("--simulation runs the experiment as written: leave out --data, --languages and --auth")

    workdir = Path(args.workdir).resolve()
    run_config = {"experiment": str(Path(args.experiment).resolve()), "resume": args.resume}
    with LocalFederation(workdir, host=args.host, tls=args.tls, auth=args.auth, force_insecure=args.force_insecure,
                         cwd=Path.cwd() if args.simulation else None, echo=lambda line: print(line, flush=True)) as fed:
        # Ctrl-C / SIGTERM unwind through the `with` block, which stops every process started here.
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        if args.simulation:
            settings = simulation_settings(args.experiment)
            fed.start_superlink(simulation=True)
            run_id = fed.submit(run_config, simulation=settings)
        else:
            languages = [code.strip() for code in args.languages.split(",") if code.strip()] or None
            files = split_by_language(args.data, workdir / "node-data", languages)
            fed.start_superlink()
            for lang, path in files.items():
                key = None
                if args.auth:
                    key, public = make_node_key(workdir / "keys", lang)
                    print(f"registered {lang} as node {fed.register(public)}")
                fed.start_supernode(lang, {"lang": lang, "data-path": str(path)}, private_key=key)
            run_id = fed.submit(run_config)
        status = fed.wait(run_id, args.timeout)
        print(fed.run_log(run_id)[-4000:])
        print(f"run {run_id}: {status}; logs in {fed.logs}")
        return 0 if status == "finished:completed" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
