"""What `mfpt validate` checks before anything runs: every refusal a run, a node or a client would otherwise meet
later, found from the config alone (no data read, no model loaded, in a second).

- the local paths `mfpt run` would refuse (data.path, a model.name folder; tuning.file is read as the config loads);
- the config each deployed node builds for its own language (mfpt.federation.node.node_data_config): a key that
  names languages the node does not hold (data.low_resource, ...) is refused there, after start-up, otherwise;
- the config each simulated client receives in a message (the config record round-trips exactly);
- client-level DP's delta against 1/N (example-level needs each client's size: `mfpt privacy CONFIG` reads the data);
- a site's privacy floor (its node config), where it does not depend on the site's data;
- the experiment trackers of [tracking]: their libraries are installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flwr.app import ConfigRecord

from mfpt.config import ConfigError, DpMode, ExperimentConfig
from mfpt.config.specs import training_clients
from mfpt.data.clients import client_layout
from mfpt.federation.node import node_data_config
from mfpt.federation.privacy_floor import PrivacyFloor
from mfpt.federation.protocol import config_entries, config_from_entries
from mfpt.federation.strategies.base import run_warnings
from mfpt.privacy.accounting import checked_delta
from mfpt.results.tracking import require_installed


def check_local_paths(cfg: ExperimentConfig) -> None:
    """Refuse the local paths `run` would refuse, found without reading them: data.path and a model.name folder."""
    data = cfg.data
    if data.source == "files" and not data.path:
        raise ConfigError("data.source = 'files' needs data.path: a JSONL, CSV or Parquet file in the universal schema.")
    if data.path and not Path(data.path).expanduser().exists():
        raise ConfigError(f"data.path = {data.path!r} does not exist; point it at the data file or folder.")
    model = Path(cfg.model.name).expanduser()
    if model.is_dir() and not (model / "config.json").is_file():
        raise ConfigError(f"model.name = {cfg.model.name!r} is a directory without config.json; "
                          "point it at a checkpoint folder.")
    if not model.exists() and (model.is_absolute() or cfg.model.name.startswith((".", "~"))):
        raise ConfigError(f"model.name = {cfg.model.name!r} looks like a local path but does not exist; "
                          "fix the path, or give a hub id such as xlm-roberta-base.")


def preflight(cfg: ExperimentConfig, node_config: Mapping[str, Any] | None = None) -> list[str]:
    """Run every check (the privacy floor of `node_config` too, when given); a ConfigError names the first that
    fails, else one line per check that passed."""
    check_local_paths(cfg)
    passed = ["config: every key known, typed and consistent", "local paths: data.path and model.name usable"]
    if config_from_entries(dict(ConfigRecord(config_entries(cfg)))) != cfg:
        raise ConfigError("the config does not survive the message a client receives (a key changes on the way); "
                          "this is a bug in mfpt: please report it with the config.")
    passed.append("client messages: the config a client receives is the config")
    layout = client_layout(cfg.data.languages, cfg.data.heldout_languages, cfg.federation.clients_per_language)
    for client in layout:
        try:
            node_data_config(cfg, client, cfg.data.path or "node-data.jsonl")
        except ConfigError as err:
            raise ConfigError(f"a deployed node for {client.name(cfg.federation.clients_per_language)} would refuse "
                              f"this experiment: {err}") from None
    if layout:
        passed.append(f"deployed nodes: the config of each of the {len(layout)} client nodes is valid")
    if cfg.privacy.dp == DpMode.CLIENT and cfg.data.languages:
        n = training_clients(cfg)
        passed.append(f"privacy: delta {checked_delta(cfg, n, 'training clients'):.3g} is below 1/N = 1/{n}")
    floor = PrivacyFloor.from_node_config(node_config or {})
    if floor.is_set:
        if cfg.privacy.dp == DpMode.EXAMPLE:  # the noise and epsilon depend on the node's own example count
            passed.append("node privacy floor: example-level DP is checked by each node against its own data")
        else:
            floor.check(cfg, 0)
            passed.append("node privacy floor: the experiment meets it")
    if cfg.tracking.backends:
        require_installed(cfg)
        passed.append(f"trackers: {', '.join(cfg.tracking.backends)} installed")
    if cfg.model.quantization.value != "none":  # checked where the run trains, which may not be this machine
        passed.append(f"model.quantization = {cfg.model.quantization.value!r}: needs a CUDA GPU and bitsandbytes on "
                      "the machines that train (each refuses otherwise, in one line)")
    return passed


def validate_warnings(cfg: ExperimentConfig) -> list[str]:
    """The run's warnings (`run_warnings`, which the server logs as the run starts), and the checks left to the run's
    start because data.languages is empty."""
    unchecked = [] if cfg.data.languages else [
        "data.languages is empty (every language of the data), so the checks that need the list of clients (each "
        "deployed node's config" + (", client-level DP's delta against 1/N" if cfg.privacy.dp == DpMode.CLIENT else "")
        + ") run when the run starts, not here; list data.languages to check them now."]
    return [*unchecked, *run_warnings(cfg)]
