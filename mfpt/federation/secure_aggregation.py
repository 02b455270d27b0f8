"""Secure aggregation (`privacy.secure_aggregation = true`): the server learns only the weighted sum of the updates.

Flower 1.41/1.42 ships SecAgg+ only for its legacy workflow API: `SecAggPlusWorkflow` is a fit workflow of
`DefaultWorkflow`, which needs a `LegacyContext` and a `flwr.server.strategy` (legacy) strategy, and the client
mod `secaggplus_mod` reads the reply in the legacy `fitres.*` record layout
(flwr/server/workflow/secure_aggregation/secaggplus_workflow.py: `context.strategy.configure_fit` /
`aggregate_fit`; flwr/client/mod/secure_aggregation/secaggplus_mod.py: `compat.recorddict_to_fitres`). The
Message-API strategies (`flwr.serverapp.strategy`) have no hook for it. So the secure path runs training
through Flower's own workflow API with its FedAvg (the paper's strategy), as follows:

- server: `DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...), evaluate_workflow=<mfpt's evaluation>)` with
  `SecureFedAvg`, a legacy FedAvg that samples clients as mfpt does, records each client's scalar training
  metrics and checks the aggregate (its `fitres.parameters` are already the unmasked weighted average). With
  client-level DP it is wrapped in Flower's legacy `DifferentialPrivacyClientSideFixedClipping` (clipping on the
  node, noise on the sum). Evaluation carries no update, so it stays mfpt's Message-API evaluation
  (MfptStrategy.configure_evaluate / aggregate_evaluate: per-language metrics), then the round's checkpoint.
- client: `secure_mod` hands SecAgg+ messages to Flower's `secaggplus_mod`; `legacy_train` answers the legacy
  train message with mfpt's one training loop. The cryptography (key agreement, Shamir shares, masks,
  quantisation) is all Flower's.
Limits: parameters are quantised in [-8, 8] (Flower's clipping_range; prompts and heads sit far inside it). With
client-level DP, a round in which a sampled client sent an error is not applied (Flower's legacy DP wrapper refuses
failures), and when a client goes silent the noise is sized to the updates SecAgg+ actually averaged
(SummedUpdatesDpClipping).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.client.mod import fixedclipping_mod as legacy_fixedclipping_mod
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping as LegacyDpClientSideFixedClipping
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from mfpt.config import ConfigError, DpMode, ExperimentConfig, Weighting
from mfpt.config.specs import sampled_clients
from mfpt.federation.node import ClientNode
from mfpt.federation.protocol import (
    CLIENT_KEY,
    NUM_TRAIN_KEY,
    ROUND_KEY,
    TRAIN_LOSS_KEY,
    TRAIN_STEPS_KEY,
    config_entries,
)
from mfpt.federation.strategies.base import MfptStrategy
from mfpt.model.state import UpdateError, check_update, trainable_state
from mfpt.privacy.accounting import client_account

FITINS_PARAMETERS = "fitins.parameters"  # Flower's legacy record names (flwr.compat.common.recorddict_compat)
FITINS_CONFIG = "fitins.config"
LEGACY_REPLY_RECORDS = ("fitres.metrics", "fitres.status", "fitres.num_examples", "fitres.parameters")
# Every client holds shares of every other sampled client's keys; 2/3 of them rebuild a dropped client's mask.
RECONSTRUCTION_FRACTION = 2 / 3


# ------------------------------------------------------------------------------------------------ client side


def is_secure_train(msg: Message) -> bool:
    """A train message of the SecAgg+ workflow (legacy layout) rather than mfpt's Message-API train message."""
    return msg.has_content() and (RECORD_KEY_CONFIGS in msg.content.config_records
                                  or FITINS_PARAMETERS in msg.content.array_records)


def secure_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: SecAgg+ messages go through Flower's `secaggplus_mod` (and legacy client-side clipping)."""
    if msg.metadata.message_type != "train" or not msg.has_content() or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda m, c: _legacy_clipping(m, c, call_next))


def _legacy_clipping(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's legacy fixed-clipping mod when the server's legacy DP wrapper sent a clipping norm."""
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    config = msg.content.config_records.get(FITINS_CONFIG)
    if config is not None and KEY_CLIPPING_NORM in config:
        return legacy_fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def legacy_train(msg: Message, node_config: Mapping[str, Any]) -> Message:
    """Answer a SecAgg+ train message (legacy `fitins.*` layout) with mfpt's training; reply as `fitres.*`."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    node = ClientNode.for_message(fitins.config, node_config)
    names = list(trainable_state(node.runtime.classifier.model))
    arrays = parameters_to_ndarrays(fitins.parameters)
    state, metrics = node.train({n: torch.from_numpy(np.array(a)) for n, a in zip(names, arrays, strict=True)},
                                fitins.config)
    weight = metrics_weight(node.cfg, node.describe())
    parameters = ndarrays_to_parameters([t.detach().cpu().numpy() for t in state.values()])
    fitres = FitRes(Status(Code.OK, "Success"), parameters, weight, dict(metrics))
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def metrics_weight(cfg: ExperimentConfig, described: Mapping[str, Any]) -> int:
    """The FedAvg weight SecAgg+ multiplies into a client's masked vector: its examples, or 1 (uniform)."""
    return int(described[NUM_TRAIN_KEY]) if cfg.federation.weighting == Weighting.EXAMPLES else 1


# ------------------------------------------------------------------------------------------------ server side


class SecureFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg for the SecAgg+ workflow, sampling and recording like MfptStrategy."""

    def __init__(self, cfg: ExperimentConfig, strategy: MfptStrategy, initial: Mapping[str, torch.Tensor],
                 spec: dict) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_evaluate_clients=0,
                         min_available_clients=2, accept_failures=True)
        self.cfg, self.mfpt, self.spec = cfg, strategy, spec
        # Legacy parameters are a list without names: both sides use the model's own order of its trainable tensors
        # (spec's order; a checkpoint's tensors come back sorted by name).
        self.names = list(spec)
        self.initial = [initial[n].detach().cpu().numpy() for n in self.names]
        self._sampled: set[int] = set()
        self._bytes_down = 0

    def initialize_parameters(self, client_manager: Any) -> Parameters:
        """The global state to start from (fresh, or a resumed run's checkpoint)."""
        return ndarrays_to_parameters(self.initial)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        """mfpt's seeded sample of training clients, each sent the experiment config and the round."""
        proxies = {int(cid): proxy for cid, proxy in client_manager.all().items()}
        chosen = sorted(n for n in self.mfpt._sample(server_round, self.cfg.federation.fraction_train, False)
                        if n in proxies)
        self._sampled = set(chosen)
        self.mfpt.listener.on_sampled(self.mfpt.round_offset + server_round, "train", self.mfpt._names(chosen))
        config = {**config_entries(self.cfg), ROUND_KEY: self.mfpt.round_offset + server_round}
        self._bytes_down = sum(len(t) for t in parameters.tensors) * len(chosen)
        return [(proxies[n], FitIns(parameters, dict(config))) for n in chosen]

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        """None: evaluation runs as mfpt's Message-API evaluation (`evaluate_workflow`)."""
        return []

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        """Record each client's scalar metrics; check and return the unmasked average SecAgg+ computed."""
        round_ = self.mfpt.round_offset + server_round
        nodes, shards = self.mfpt.nodes, self.cfg.federation.clients_per_language
        rows, replied = [], set()
        for proxy, fitres in sorted(results, key=lambda r: nodes[r[0].node_id].index):
            node = nodes[proxy.node_id]
            replied.add(proxy.node_id)
            if int(fitres.metrics[CLIENT_KEY]) != node.index:
                self.mfpt.listener.on_refusal(round_, node, proxy.node_id, "client-index does not match the handshake")
            rows.append({"client": node.client.name(shards), "lang": node.client.lang,
                         "loss": float(fitres.metrics[TRAIN_LOSS_KEY]), "steps": int(fitres.metrics[TRAIN_STEPS_KEY]),
                         "n": node.num_train})
        for node_id in sorted(self._sampled - replied):
            self.mfpt.listener.on_missing(round_, nodes[node_id], "train", "dropped out of the SecAgg+ round")
        bytes_up = sum(len(t) for _, r in results[:1] for t in r.parameters.tensors) * len(results)
        self.mfpt.listener.on_train(round_, rows, bytes_up, self._bytes_down)
        if not results:
            return None, {}
        average = parameters_to_ndarrays(results[0][1].parameters)  # every result carries the unmasked average
        state = {n: torch.from_numpy(np.asarray(a)).to(self.spec[n][1]) for n, a in zip(self.names, average, strict=True)}
        try:
            check_update(state, self.spec, origin="securely aggregated state")
        except UpdateError as err:
            self.mfpt.listener.on_refusal(round_, None, 0, f"secure aggregate refused: {err}")
            return None, {}
        return ndarrays_to_parameters([t.numpy() for t in state.values()]), {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        """No central evaluation (the data stays on the nodes)."""
        return None


class SummedUpdatesDpClipping(LegacyDpClientSideFixedClipping):
    """Flower's legacy client-side-clipping DP wrapper, with the noise sized to the updates actually averaged.

    SecAgg+ drops a client that goes silent mid-protocol without reporting a failure (its workflow records only
    error replies), and averages the others' updates; Flower's wrapper would still size the noise to the sampled
    count, which is too little noise for an average of fewer clipped updates. Here the noise's std is
    noise_multiplier x clip_norm / (the number of updates averaged), as the account assumes. A round with an error
    reply is still not applied (Flower's rule)."""

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        self.num_sampled_clients = max(len(results), 1)
        return super().aggregate_fit(server_round, results, failures)


def legacy_strategy(cfg: ExperimentConfig, secure: SecureFedAvg) -> Any:
    """The legacy strategy for the workflow: SecureFedAvg, inside Flower's legacy client-side DP wrapper if asked."""
    if cfg.privacy.dp != DpMode.CLIENT:
        return secure
    return SummedUpdatesDpClipping(secure, client_account(cfg).noise_multiplier, cfg.privacy.clip_norm,
                                   sampled_clients(cfg))


def run_secure_rounds(grid: Grid, cfg: ExperimentConfig, strategy: MfptStrategy, state: Mapping[str, torch.Tensor],
                      spec: dict, rounds: int, end_of_round: Callable[[int, ArrayRecord], None],
                      evaluate_config: Any) -> dict[str, torch.Tensor]:
    """`rounds` rounds of SecAgg+ training with mfpt's evaluation after each; the final global state."""
    if sampled_clients(cfg) < 2:  # checked here, on the server: a node's own config lists only its language
        raise ConfigError(f"privacy.secure_aggregation = true needs at least 2 clients per round (a sum of one update "
                          f"is that update), but data.languages, federation.clients_per_language and "
                          f"federation.fraction_train = {cfg.federation.fraction_train:g} give {sampled_clients(cfg)}.")
    secure = SecureFedAvg(cfg, strategy, state, spec)
    max_weight = max([n.num_train for n in strategy.nodes.values()] + [1]) if cfg.federation.weighting == Weighting.EXAMPLES else 1.0
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=rounds, round_timeout=cfg.federation.round_timeout),
                            strategy=legacy_strategy(cfg, secure))

    def as_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
        arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))
        return {n: torch.from_numpy(np.array(a)).to(spec[n][1]) for n, a in zip(secure.names, arrays, strict=True)}

    def evaluate_workflow(grid: Grid, ctx: Context) -> None:
        server_round = int(ctx.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        arrays = ArrayRecord(as_state(ctx.state.array_records[MAIN_PARAMS_RECORD]))
        messages = list(strategy.configure_evaluate(server_round, arrays, evaluate_config, grid))
        replies = grid.send_and_receive(messages, timeout=cfg.federation.round_timeout) if messages else []
        strategy.aggregate_evaluate(server_round, replies)
        end_of_round(server_round, arrays)

    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=RECONSTRUCTION_FRACTION,
                                        max_weight=float(max_weight), timeout=cfg.federation.round_timeout),
        evaluate_workflow=evaluate_workflow)
    workflow(grid, context)
    return as_state(context.state.array_records[MAIN_PARAMS_RECORD])
