"""Server-side orchestration of a federated run: handshake, rejoin, Flower's strategy loop, checkpoints, export.

`server_app.py` is only the Flower adapter around `run_federated`; the same function runs under Flower's
simulation (`mfpt run`), under `flwr run` on a SuperLink, and in the tests on an in-process grid.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from mfpt.config import ExperimentConfig, load_config
from mfpt.core.errors import UserError
from mfpt.data.clients import client_layout, resolve
from mfpt.data.sources import DataError
from mfpt.federation.protocol import CLIENT_KEY, CONFIG, METRICS, NUM_EVAL_KEY, NUM_TRAIN_KEY, config_entries
from mfpt.federation.secure_aggregation import run_secure_rounds
from mfpt.federation.strategies.base import NodeInfo, make_strategy, run_warnings
from mfpt.federation.strategies.personalized import PersonalizedStrategy, finetune_phase, strategy_mixins
from mfpt.model.export import export_atomically
from mfpt.model.factory import build_model
from mfpt.model.state import load_trainable_state, state_spec, trainable_state
from mfpt.privacy import accounting as privacy
from mfpt.results.recorder import RunRecorder
from mfpt.results.schema import ADAPTER_DIR, RunResult
from mfpt.train.schedule import selects_on_validation

log = logging.getLogger("mfpt")


class FederationError(UserError, RuntimeError):
    """The federation cannot run (a client failed its handshake, a client is missing, ...)."""


def config_from_run_config(run_config: Mapping[str, Any]) -> tuple[ExperimentConfig, bool]:
    """ExperimentConfig from Flower's run_config: `experiment` (TOML path) + flattened overrides; and `resume`."""
    values = dict(run_config)
    path = values.pop("experiment", None) or None
    resume = bool(values.pop("resume", False))
    return load_config(path, values), resume


def config_record(cfg: ExperimentConfig) -> ConfigRecord:
    """The experiment config as sent to clients in every message."""
    return ConfigRecord(config_entries(cfg))


def query_nodes(grid: Grid, cfg: ExperimentConfig, node_ids: list[int]) -> tuple[dict[int, NodeInfo], list[str]]:
    """Ask each node which client it is; return the nodes that answered and why the others did not."""
    layout = client_layout(cfg.data.languages, cfg.data.heldout_languages, cfg.federation.clients_per_language)
    record = RecordDict({CONFIG: config_record(cfg)})
    messages = [Message(record, dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
    nodes: dict[int, NodeInfo] = {}
    failures: list[str] = []
    replied: set[int] = set()
    for reply in grid.send_and_receive(messages, timeout=cfg.federation.round_timeout):
        node_id = reply.metadata.src_node_id
        replied.add(node_id)
        if reply.has_error():
            failures.append(f"node {node_id} failed to start: {reply.error.reason}")
            continue
        try:
            metrics = reply.content[METRICS]
            index = int(metrics[CLIENT_KEY])
            nodes[node_id] = NodeInfo(node_id, index, layout[index], int(metrics[NUM_TRAIN_KEY]), int(metrics[NUM_EVAL_KEY]))
        except (KeyError, IndexError, ValueError, TypeError) as err:
            failures.append(f"node {node_id} sent an unusable handshake ({err!r})")
    failures += [f"node {n} did not answer the handshake within federation.round_timeout" for n in node_ids
                 if n not in replied]
    return nodes, failures


def handshake(grid: Grid, cfg: ExperimentConfig) -> dict[int, NodeInfo]:
    """Wait for the client nodes, ask each which client it is, and refuse duplicates.

    Every client is waited for up to federation.round_timeout; the federation then starts if at least
    federation.min_clients (0 = all) of them answered, and the others may join later (MfptStrategy.rejoin).
    """
    layout = client_layout(cfg.data.languages, cfg.data.heldout_languages, cfg.federation.clients_per_language)
    names = [c.name(cfg.federation.clients_per_language) for c in layout]
    required = min(cfg.federation.min_clients or len(layout), len(layout))
    deadline = time.monotonic() + cfg.federation.round_timeout
    while len(node_ids := sorted(grid.get_node_ids())) < len(layout):
        if time.monotonic() > deadline:
            if len(node_ids) >= required:
                break
            raise FederationError(f"Only {len(node_ids)} of {len(layout)} client nodes connected within "
                                  f"federation.round_timeout = {cfg.federation.round_timeout:.0f} s "
                                  f"(federation.min_clients = {cfg.federation.min_clients}).")
        time.sleep(1)
    nodes, failures = query_nodes(grid, cfg, node_ids)
    indices = [n.index for n in nodes.values()]
    duplicated = sorted({names[i] for i in indices if indices.count(i) > 1})
    if duplicated:
        raise FederationError(f"Clients claimed by several nodes: {duplicated}; give each SuperNode its own "
                              "--node-config lang (and shard).")
    missing = [names[i] for i in range(len(layout)) if i not in indices]
    if len(nodes) < required:
        raise FederationError(f"Clients missing: {missing}; {len(nodes)} of {len(layout)} answered, "
                              f"federation.min_clients = {cfg.federation.min_clients} (0 = all) needed. "
                              + " ".join(failures))
    if missing:
        log.warning("starting without client(s) %s (%s); they join when their node connects", missing,
                    "; ".join(failures) or "no node connected")
    return nodes


def rejoin_fn(cfg: ExperimentConfig):
    """The strategy's `rejoin`: handshake with newly seen node ids, keeping only well-formed answers."""

    def rejoin(grid: Grid, node_ids: list[int]) -> dict[int, NodeInfo]:
        nodes, failures = query_nodes(grid, cfg, node_ids)
        for failure in failures:
            log.warning("rejoin: %s", failure)
        return nodes

    return rejoin


def run_federated(grid: Grid, cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """Run (or resume) a federated experiment on `grid` and write all its outputs."""
    cfg = resolve(cfg)
    out_dir = Path(cfg.output_dir).expanduser().resolve()
    server = build_model(cfg, len(cfg.data.labels))
    recorder = RunRecorder(cfg, out_dir, server.trainable_params, server.total_params, quiet=quiet)
    checkpoint = recorder.begin(resume)
    state = trainable_state(server.model)
    spec = state_spec(state)
    if not quiet:
        print(f"{cfg.name}: {cfg.peft.method.value} on {cfg.model.name}: {server.trainable_params:,} trainable of "
              f"{server.total_params:,} parameters ({100 * server.trainable_params / server.total_params:.3f}%)",
              *(f"\n  note: {n}" for n in server.notes), flush=True)
    offset = 0
    if checkpoint is not None:
        load_trainable_state(server.model, checkpoint.state, origin=f"checkpoint of round {checkpoint.round}")
        state, offset = checkpoint.state, checkpoint.round
        if not quiet:
            print(f"resuming after round {offset} from {out_dir}", flush=True)
    nodes = handshake(grid, cfg)
    account = privacy.plan(cfg, {n.client.name(cfg.federation.clients_per_language): n.num_train
                                 for n in nodes.values() if not n.client.heldout})
    for warning in run_warnings(cfg):
        log.warning(warning)
    strategy = make_strategy(cfg, nodes, spec, recorder, round_offset=offset, mixins=strategy_mixins(cfg))
    strategy.rejoin = rejoin_fn(cfg)
    personalized = isinstance(strategy, PersonalizedStrategy)
    if checkpoint is not None:
        strategy.load_server_state(checkpoint.server_state)
        if personalized:
            strategy.load_personal_states(checkpoint.personal)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        if server_round > 0:  # round 0 is Flower's initial evaluation call
            if account is not None and account.accounts:
                recorder.on_privacy(offset + server_round, account.summary(offset + server_round))
            recorder.end_round(offset + server_round, arrays.to_torch_state_dict(), strategy.server_state(),
                               strategy.personal_states() if personalized else None)

    remaining = cfg.federation.rounds - offset
    final_state = state
    if remaining > 0 and cfg.privacy.secure_aggregation:  # Flower's SecAgg+ workflow (mfpt/federation/secure_aggregation.py)
        final_state = run_secure_rounds(grid, cfg, strategy, state, spec, remaining, end_of_round, config_record(cfg))
    elif remaining > 0:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(state), num_rounds=remaining,
                                timeout=cfg.federation.round_timeout, train_config=config_record(cfg),
                                evaluate_config=config_record(cfg), evaluate_fn=end_of_round)
        if len(result.arrays):
            final_state = result.arrays.to_torch_state_dict()
    if selects_on_validation(cfg) and strategy.score_selected(grid, config_record(cfg)) is not None:
        final_state = strategy.best_state  # the exported model is the one the run reports
    if cfg.personalization.method.value == "finetune":
        recorder.personalization_bytes = finetune_phase(grid, strategy, final_state, config_record(cfg))
        recorder.after_rounds_bytes += recorder.personalization_bytes
    load_trainable_state(server.model, final_state, origin="final global state")
    export_atomically(server.model, server.tokenizer, out_dir / ADAPTER_DIR)
    if account is not None:
        recorder.privacy = account.summary(cfg.federation.rounds)
    return recorder.finish()


def serve(grid: Grid, cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> RunResult:
    """`run_federated` as a ServerApp runs it: a data problem found on the server side ends the federation."""
    try:
        return run_federated(grid, cfg, resume=resume, quiet=quiet)
    except DataError as err:
        raise FederationError(str(err)) from None
