"""Server strategies: Flower's own (FedAvg, FedProx, FedAdam, FedYogi, FedAvgM, FedAdagrad; the robust FedMedian,
FedTrimmedAvg, Krum, MultiKrum, Bulyan; the fairness-aware QFedAvg) plus what mfpt adds on top.

`MfptStrategy` is a mixin placed before a Flower strategy in the MRO. It never re-implements `start()` or the
aggregation maths; it only
- samples clients deterministically by client (not by Flower's random node ids), so a seed fixes a run;
- refuses updates whose keys, shapes, dtypes or values are wrong, or whose distance from the global state
  exceeds federation.max_update_norm, logging the node and reason, and goes on; records each accepted update's
  distance (`update_norm`), so that a bound can be set from a clean run's honest updates;
- records every sampled client that did not reply (a dead or silent node) as "missing", and lets a node that
  (re)connects with a new node id join at the next round after a handshake (`rejoin`);
- weighs replies by examples or uniformly (server-side, whatever the client claims);
- sorts replies by client before aggregating, so float sums do not depend on arrival order;
- pools each language's evaluation counts into per-language accuracy / macro-F1;
- counts the bytes of every array sent in each direction.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)

from mfpt.config import AttackKind, DpMode, ExperimentConfig, Weighting
from mfpt.core.registry import Registry
from mfpt.core.seeds import derive_seed
from mfpt.core.stats import mean
from mfpt.data.clients import ClientSpec
from mfpt.federation import attacks
from mfpt.federation.protocol import (
    ARRAYS,
    BACKDOOR_PREFIX,
    CLIENT_KEY,
    CONFIG,
    EVAL_SPLIT_KEY,
    EXAMPLES_KEY,
    METRICS,
    ROUND_KEY,
    TRAIN_LOSS_KEY,
    TRAIN_METRICS,
    TRAIN_STEPS_KEY,
    WEIGHT_KEY,
    decode_counts,
)
from mfpt.federation.strategies.client_dp import private_base
from mfpt.model.state import UpdateError, check_update, state_distance
from mfpt.privacy.accounting import warnings as privacy_warnings
from mfpt.train.evaluation import EvalCounts
from mfpt.train.schedule import TEST, evaluates_in_round, is_better, round_split, selects_on_validation

log = logging.getLogger("mfpt")

StrategyFactory = Callable[[ExperimentConfig], tuple[type, dict[str, Any]]]
STRATEGIES: Registry[StrategyFactory] = Registry("strategy")


@STRATEGIES.register("fedavg")
def _fedavg(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    return FedAvg, {}


@STRATEGIES.register("fedprox")
def _fedprox(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    # FedProx only sends mu (protocol.PROXIMAL_MU_KEY); the client's training loop adds the proximal term.
    return FedProx, {"proximal_mu": cfg.federation.proximal_mu}


def _server_optimizer(flower_class: type) -> StrategyFactory:
    """FedAdam, FedYogi and FedAdagrad: the same server-optimiser settings (Reddi et al. 2021)."""
    def factory(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
        return flower_class, {"eta": cfg.federation.server_lr, "eta_l": cfg.train.lr, "tau": cfg.federation.tau}
    return factory


STRATEGIES.register("fedadam")(_server_optimizer(FedAdam))
STRATEGIES.register("fedyogi")(_server_optimizer(FedYogi))


@STRATEGIES.register("fedavgm")
def _fedavgm(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    return FedAvgM, {"server_learning_rate": cfg.federation.server_lr,
                     "server_momentum": cfg.federation.server_momentum}


STRATEGIES.register("fedadagrad")(_server_optimizer(FedAdagrad))


@STRATEGIES.register("fedmedian")
def _fedmedian(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    return FedMedian, {}


@STRATEGIES.register("fedtrimmedavg")
def _fedtrimmedavg(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    return FedTrimmedAvg, {"beta": cfg.federation.trim_fraction}


@STRATEGIES.register("krum")
def _krum(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    return Krum, {"num_malicious_nodes": cfg.federation.byzantine_clients}


@STRATEGIES.register("multikrum")
def _multikrum(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    return MultiKrum, {"num_malicious_nodes": cfg.federation.byzantine_clients,
                       "num_nodes_to_select": cfg.federation.krum_keep}


@STRATEGIES.register("bulyan")
def _bulyan(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    return Bulyan, {"num_malicious_nodes": cfg.federation.byzantine_clients}


@STRATEGIES.register("qfedavg")
def _qfedavg(cfg: ExperimentConfig) -> tuple[type, dict[str, Any]]:
    # q-FFL reads each client's training loss (the loss of the round's local training, as in Flower's example: the
    # paper's F_k(w^t) at the global state would cost every client an extra pass).
    return QFedAvg, {"q": cfg.federation.qffl_q, "client_learning_rate": cfg.federation.qffl_lr or cfg.train.lr,
                     "train_loss_key": TRAIN_LOSS_KEY}



def strategy_warnings(cfg: ExperimentConfig) -> list[str]:
    """Server-rule settings that run but are unlikely to do what one means (logged at start and by mfpt validate)."""
    fed, found = cfg.federation, []
    if fed.strategy.value == "qfedavg" and not fed.qffl_lr:
        # Measured on the demo (docs/experiments.md): at train.lr, q-FFL's step was a thousandth of FedAvg's or less.
        found.append(f"federation.strategy = 'qfedavg' with federation.qffl_lr = 0 takes train.lr ({cfg.train.lr:g}) "
                     "as q-FFL's client learning rate, which assumes SGD clients; mfpt's AdamW clients then get a "
                     "step a thousandth of FedAvg's or less (on the demo the model did not train). Search it on "
                     "validation: mfpt tune CONFIG --grid federation.qffl_lr=100,1000,10000.")
    return found


def run_warnings(cfg: ExperimentConfig) -> list[str]:
    """Every setting that runs but costs a lot, protects less or trains less than one may think: the server logs
    them as the run starts and `mfpt validate` prints them."""
    return [*privacy_warnings(cfg), *strategy_warnings(cfg)]

# Server-optimiser state that must survive a resume (FedOpt family: m_t, v_t; FedAvgM: momentum_vector;
# client-level DP with adaptive clipping: its current bound, mfpt.federation.strategies.client_dp).
_STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector", "dp_clip_state")
# Prefix of the best-validation round's number, mean accuracy and global state in server_state().
_SELECTION = "selection"


@dataclass(frozen=True)
class NodeInfo:
    """What the server knows of a connected node after the handshake."""

    node_id: int
    index: int
    client: ClientSpec
    num_train: int
    num_eval: int


class RoundListener:
    """Receives what happens in each round (the run recorder implements it)."""

    def on_train(self, round_: int, rows: list[dict[str, Any]], bytes_up: int, bytes_down: int) -> None: ...
    def on_refusal(self, round_: int, node: NodeInfo | None, node_id: int, reason: str) -> None: ...
    def on_missing(self, round_: int, node: NodeInfo, stage: str, reason: str) -> None: ...
    def on_evaluate(self, round_: int, counts: dict[str, EvalCounts], bytes_down: int) -> None: ...
    def on_personal_evaluate(self, round_: int, counts: dict[str, EvalCounts]) -> None: ...
    def on_backdoor_evaluate(self, round_: int, counts: dict[str, EvalCounts], untriggered: dict[str, float],
                             selected: bool = False) -> None: ...
    def on_selected(self, round_: int, counts: dict[str, EvalCounts], bytes_down: int = 0) -> None: ...
    def on_sampled(self, round_: int, stage: str, clients: list[str]) -> None: ...


class MfptStrategy:
    """Mixin for a Flower strategy; see the module docstring."""

    def __init__(self, *, cfg: ExperimentConfig, nodes: dict[int, NodeInfo], spec: dict, listener: RoundListener,
                 round_offset: int = 0, **strategy_kwargs: Any) -> None:
        # Flower samples every node (fraction 1); the fractions are applied per client below. Flower waits for
        # min_available_nodes connected nodes before each round: only min_clients of them, so a dead node
        # does not block the federation (min_clients = 0 keeps the old meaning: every client).
        required = min(cfg.federation.min_clients or len(nodes), len(nodes)) or 1
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=required,
                         min_evaluate_nodes=required, min_available_nodes=required,
                         weighted_by_key=WEIGHT_KEY, **strategy_kwargs)  # type: ignore[call-arg]
        self.cfg = cfg
        self.nodes = nodes
        self.spec = spec
        self.listener = listener
        self.round_offset = round_offset
        # Handshake for node ids first seen after the start (a SuperNode that restarted gets a new id);
        # set by the ServerApp. Ids whose handshake failed are not asked again.
        self.rejoin: Callable[[Grid, list[int]], dict[int, NodeInfo]] | None = None
        self._unusable: set[int] = set()
        self._sampled: dict[str, set[int]] = {}
        self._global: dict[str, torch.Tensor] | None = None
        # data.selection = best-validation: the round with the best mean validation accuracy so far, and its
        # global state (kept in server_state(), so every round's checkpoint holds it and a resume keeps it).
        self.best_round: int | None = None
        self.best_accuracy: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------ sampling
    def _sample(self, server_round: int, fraction: float, with_heldout: bool) -> set[int]:
        trainers = sorted((n for n in self.nodes.values() if not n.client.heldout), key=lambda n: n.index)
        count = max(1, int(round(len(trainers) * fraction)))
        # Under [privacy] the sample comes from OS entropy: a sample anyone can recompute from the published seed
        # amplifies nothing. Otherwise from the run's seed, so that a run and its resume sample alike.
        private = self.cfg.privacy.dp != DpMode.NONE
        rng = np.random.default_rng(secrets.randbits(128) if private else
                                    derive_seed(self.cfg.seed, self.round_offset + server_round, 7))
        chosen = {trainers[i].node_id for i in rng.choice(len(trainers), size=count, replace=False)}
        if with_heldout:
            chosen |= {n.node_id for n in self.nodes.values() if n.client.heldout}
        return chosen

    def _names(self, node_ids: Iterable[int]) -> list[str]:
        """The clients of `node_ids`, by name (eng, or eng#1 with several clients per language)."""
        shards = self.cfg.federation.clients_per_language
        return sorted(self.nodes[n].client.name(shards) for n in node_ids if n in self.nodes)

    def _keep(self, messages: Iterable[Message], chosen: set[int]) -> list[Message]:
        return [m for m in messages if m.metadata.dst_node_id in chosen]

    def refresh_nodes(self, grid: Grid) -> None:
        """Handshake with connected node ids the strategy does not know; a client's new node replaces its old one."""
        unknown = sorted(set(grid.get_node_ids()) - set(self.nodes) - self._unusable)
        if not unknown or self.rejoin is None:
            return
        joined = self.rejoin(grid, unknown)
        self._unusable.update(set(unknown) - set(joined))
        for node_id, info in joined.items():
            for old in [n for n in self.nodes.values() if n.index == info.index]:
                del self.nodes[old.node_id]
                log.warning("client %s rejoined as node %d (was node %d)",
                            info.client.name(self.cfg.federation.clients_per_language), node_id, old.node_id)
            self.nodes[node_id] = info

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Flower's configure_train, restricted to a seeded sample of training clients."""
        self.refresh_nodes(grid)
        config[ROUND_KEY] = self.round_offset + server_round
        chosen = self._sample(server_round, self.cfg.federation.fraction_train, with_heldout=False)
        self._sampled["train"] = chosen
        self.listener.on_sampled(self.round_offset + server_round, "train", self._names(chosen))
        self._global = arrays.to_torch_state_dict()  # what every update is measured from (update_norm, the bound)
        self._key_order = list(arrays.keys())
        messages = self._keep(super().configure_train(server_round, arrays, config, grid), chosen)  # type: ignore[misc]
        self._bytes_down = arrays.count_bytes() * len(messages)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Flower's configure_evaluate for a seeded sample of clients plus every held-out language."""
        self.refresh_nodes(grid)
        config[ROUND_KEY] = self.round_offset + server_round
        if not evaluates_in_round(self.round_offset + server_round, self.cfg.federation.rounds,
                                  self.cfg.federation.evaluate_every):
            self._sampled["evaluate"] = set()
            return []  # federation.evaluate_every: no evaluation this round
        config[EVAL_SPLIT_KEY] = round_split(self.cfg)
        self._evaluated_state = arrays
        chosen = self._sample(server_round, self.cfg.federation.fraction_evaluate, with_heldout=True)
        self._sampled["evaluate"] = chosen
        self.listener.on_sampled(self.round_offset + server_round, "evaluate", self._names(chosen))
        messages = self._keep(super().configure_evaluate(server_round, arrays, config, grid), chosen)  # type: ignore[misc]
        self._eval_bytes_down = arrays.count_bytes() * len(messages)
        return messages

    def _record_missing(self, round_: int, stage: str, replies: list[Message]) -> list[Message]:
        """Log sampled clients without a reply (or whose node is unreachable); return the other replies."""
        unreachable = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
        answered: set[int] = set()
        kept = []
        for msg in replies:
            if msg.has_error() and msg.error.code in unreachable:
                continue
            answered.add(msg.metadata.src_node_id)
            kept.append(msg)
        for node_id in sorted(self._sampled.get(stage, set()) - answered):
            node = self.nodes.get(node_id)
            if node is not None:
                self.listener.on_missing(round_, node, stage, f"no {stage} reply within federation.round_timeout "
                                                              f"= {self.cfg.federation.round_timeout:g} s")
        return kept

    # ------------------------------------------------------------------------------ training replies
    def _node(self, msg: Message) -> NodeInfo | None:
        return self.nodes.get(msg.metadata.src_node_id)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each update, weigh it, aggregate with the wrapped Flower strategy; then let go of the updates."""
        replies = list(replies)
        try:
            return self._aggregate_updates(server_round, replies)
        finally:
            release_arrays(replies)

    def _aggregate_updates(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_ = self.round_offset + server_round
        accepted: list[tuple[NodeInfo, Message]] = []
        norms: dict[int, float] = {}
        received = self._record_missing(round_, "train", replies)
        # Every update that reached the server counts, the refused ones too: they crossed the network all the same.
        bytes_up = sum(msg.content[ARRAYS].count_bytes() for msg in received
                       if not msg.has_error() and ARRAYS in msg.content.array_records)
        for msg in sorted(received, key=lambda m: getattr(self._node(m), "index", -1)):  # refusals in client order
            node = self._node(msg)
            if msg.has_error():
                self.listener.on_refusal(round_, node, msg.metadata.src_node_id, f"client error: {msg.error.reason}")
                continue
            reason, norm = self.check_reply(msg, node, self.reference(node) if node is not None else None)
            if reason:
                self.listener.on_refusal(round_, node, msg.metadata.src_node_id, reason)
                continue
            if norm is not None:
                norms[node.index] = norm  # type: ignore[union-attr]
            accepted.append((node, msg))  # type: ignore[arg-type]
        accepted.sort(key=lambda pair: pair[0].index)
        order = getattr(self, "_key_order", None)
        for node, msg in accepted:
            if order:  # Flower's Krum, Bulyan and QFedAvg pair tensors by position: every record in the order sent
                record = msg.content[ARRAYS]
                msg.content[ARRAYS] = ArrayRecord({key: record[key] for key in order})
            metrics = msg.content[METRICS]
            metrics[WEIGHT_KEY] = float(node.num_train) if self.cfg.federation.weighting == Weighting.EXAMPLES else 1.0
        rows = [{"client": node.client.name(self.cfg.federation.clients_per_language), "lang": node.client.lang,
                 "loss": float(msg.content[METRICS][TRAIN_LOSS_KEY]), "steps": int(msg.content[METRICS][TRAIN_STEPS_KEY]),
                 "n": node.num_train, **self._norm_entry(norms.get(node.index))}
                for node, msg in accepted]
        self.listener.on_train(round_, rows, bytes_up, getattr(self, "_bytes_down", 0))
        required = self.cfg.federation.min_clients or 1
        if len(accepted) < required:  # the recorder's round summary says so, with every client's reason
            return None, None
        self.personalize(round_, accepted)
        # The absolute round: FedAdam/FedYogi's bias correction depends on it, so a resumed run must not restart at 1.
        arrays, metrics = super().aggregate_train(round_, [msg for _, msg in accepted])  # type: ignore[misc]
        if arrays is not None:
            # FedAdam/FedYogi compute in float64 (numpy promotes float32 arrays by their float64 eta_norm);
            # the global state keeps the model's dtypes, or every client would refuse it.
            arrays = ArrayRecord({k: v.to(self.spec[k][1]) for k, v in arrays.to_torch_state_dict().items()})
        return arrays, metrics

    def personalize(self, round_: int, accepted: list[tuple[NodeInfo, Message]]) -> None:
        """Hook for per-language aggregates from the accepted updates (mfpt.federation.strategies.personalized); none by default."""

    def reference(self, node: NodeInfo) -> dict[str, torch.Tensor] | None:
        """The state this node trained from this round (None before configure_train): its update is measured from it."""
        return self._global

    def _norm_entry(self, norm: float | None) -> dict[str, float]:
        """A train row's update_norm. Not under client-level DP: each client's unclipped norm is what its noise
        hides, and results are shared."""
        return {} if norm is None or self.cfg.privacy.dp == DpMode.CLIENT else {"update_norm": norm}

    def check_reply(self, msg: Message, node: NodeInfo | None,
                    reference: dict[str, torch.Tensor] | None) -> tuple[str | None, float | None]:
        """Why a train reply is refused (None: accepted), and the L2 norm of its update from `reference`, the state
        its client trained from (None without a reference or when refused before it was measured). The update is
        converted once: under full fine-tuning it is the whole model."""
        if node is None:
            return "reply from a node that did not take part in the handshake", None
        content = msg.content
        if ARRAYS not in content.array_records or METRICS not in content.metric_records:
            return f"reply lacks its {ARRAYS!r} or {METRICS!r} record", None
        metrics = content[METRICS]
        for key in TRAIN_METRICS:
            if key not in metrics:
                return f"metric {key!r} missing", None
        if int(metrics[CLIENT_KEY]) != node.index:
            return f"client-index {metrics[CLIENT_KEY]} does not match the handshake ({node.index})", None
        update = content[ARRAYS].to_torch_state_dict()
        try:
            check_update(update, self.spec, origin="update")
        except UpdateError as err:
            return str(err), None
        if reference is None:
            return None, None
        norm = state_distance(update, reference)
        bound = self.cfg.federation.max_update_norm
        if 0 < bound < norm:
            return (f"update refused: L2 norm of (update - global) is {norm:.4g}, above federation.max_update_norm = "
                    f"{bound:g}"), norm
        return None, norm

    # ------------------------------------------------------------------------------ evaluation replies
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Pool confusion counts per language; return the unweighted mean over languages."""
        round_ = self.round_offset + server_round
        if not evaluates_in_round(round_, self.cfg.federation.rounds, self.cfg.federation.evaluate_every):
            return None
        replies = list(replies)
        per_language = self._pool_evaluations(round_, "evaluate", replies)
        self.listener.on_evaluate(round_, per_language, getattr(self, "_eval_bytes_down", 0))
        if self.cfg.attack.kind == AttackKind.BACKDOOR:
            backdoor = prefixed_counts(replies, self.nodes, len(self.cfg.data.labels), BACKDOOR_PREFIX)
            if backdoor:
                self.listener.on_backdoor_evaluate(round_, backdoor, attacks.untriggered_rates(self.cfg, per_language))
        trained = [c for lang, c in per_language.items() if lang in self.cfg.data.languages]
        if not trained:
            return None
        # The headline (accuracy, or chrF++ for generation) chooses the round.
        score = mean(c.score for c in trained)
        if selects_on_validation(self.cfg) and is_better(score, self.best_accuracy):
            self.best_round, self.best_accuracy = round_, score
            self.best_state = {k: v.clone() for k, v in self._evaluated_state.to_torch_state_dict().items()}
        if trained[0].generation:
            return MetricRecord({"chrf": score, "exact-match": mean(c.accuracy for c in trained)})
        return MetricRecord({"accuracy": score, "macro-f1": mean(c.macro_f1 for c in trained)})

    def score_selected(self, grid: Grid, config: ConfigRecord) -> dict[str, EvalCounts] | None:
        """best-validation: every client scores the test split once with the selected round's state (None if none)."""
        if self.best_state is None or self.best_round is None:
            return None
        self.refresh_nodes(grid)
        config = ConfigRecord({**dict(config), ROUND_KEY: self.best_round, EVAL_SPLIT_KEY: TEST})
        content = RecordDict({ARRAYS: ArrayRecord(self.best_state), CONFIG: config})
        self._sampled["test"] = set(self.nodes)
        messages = [Message(content, dst_node_id=node_id, message_type=MessageType.EVALUATE)
                    for node_id in sorted(self.nodes)]
        replies = list(grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout))
        counts = self._pool_evaluations(self.best_round, "test", replies)
        self.listener.on_selected(self.best_round, counts, content[ARRAYS].count_bytes() * len(messages))
        if self.cfg.attack.kind == AttackKind.BACKDOOR:  # the backdoor of the model reported, on the same split
            backdoor = prefixed_counts(replies, self.nodes, len(self.cfg.data.labels), BACKDOOR_PREFIX)
            if backdoor:
                self.listener.on_backdoor_evaluate(self.best_round, backdoor, attacks.untriggered_rates(self.cfg, counts),
                                                   selected=True)
        return counts

    def _pool_evaluations(self, round_: int, stage: str, replies: Iterable[Message]) -> dict[str, EvalCounts]:
        """Each language's evaluation counts, pooled over its clients' replies (errors and unknown nodes refused)."""
        num_labels = len(self.cfg.data.labels)
        per_language: dict[str, EvalCounts] = {}
        replies = self._record_missing(round_, stage, list(replies))
        for msg in sorted(replies, key=lambda m: getattr(self._node(m), "index", -1)):
            node = self._node(msg)
            if msg.has_error() or node is None:
                reason = f"client error: {msg.error.reason}" if msg.has_error() else "unknown node"
                self.listener.on_refusal(round_, node, msg.metadata.src_node_id, f"evaluation: {reason}")
                continue
            metrics = msg.content[METRICS]
            counts = decode_counts(metrics, num_labels)
            per_language[node.client.lang] = per_language.get(node.client.lang, EvalCounts(num_labels)) + counts
        return per_language

    # ------------------------------------------------------------------------------ resume
    def server_state(self) -> dict[str, np.ndarray]:
        """Server-optimiser state (moments, momentum) as named arrays, for checkpoints."""
        state: dict[str, np.ndarray] = {}
        for attr in _STATE_ATTRIBUTES:
            value = getattr(self, attr, None)
            if isinstance(value, dict):
                state.update({f"{attr}/{k}": np.asarray(v) for k, v in value.items()})
            elif isinstance(value, list):
                state.update({f"{attr}/{i}": np.asarray(v) for i, v in enumerate(value)})
        if self.best_state is not None:
            state[f"{_SELECTION}/round"] = np.asarray([self.best_round], dtype=np.int64)
            state[f"{_SELECTION}/accuracy"] = np.asarray([self.best_accuracy], dtype=np.float64)
            state.update({f"{_SELECTION}/state/{k}": v.detach().cpu().numpy() for k, v in self.best_state.items()})
        return state

    def load_server_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what server_state() saved."""
        if f"{_SELECTION}/round" in state:
            self.best_round = int(np.asarray(state[f"{_SELECTION}/round"]).reshape(-1)[0])
            self.best_accuracy = float(np.asarray(state[f"{_SELECTION}/accuracy"]).reshape(-1)[0])
            prefix = f"{_SELECTION}/state/"
            self.best_state = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in state.items()
                               if k.startswith(prefix)}
        for attr in _STATE_ATTRIBUTES:
            items = {k.split("/", 1)[1]: v for k, v in state.items() if k.startswith(attr + "/")}
            if not items:
                continue
            current = getattr(self, attr, None)
            if attr == "momentum_vector":
                setattr(self, attr, [items[str(i)] for i in range(len(items))])
            else:
                setattr(self, attr, items if current is None or isinstance(current, dict) else current)


def release_arrays(messages: Iterable[Message]) -> None:
    """Drop each message's arrays. Flower's Strategy.start() keeps a round's train replies until the next round's
    have all arrived, so a full fine-tuning run would hold two rounds of updates at once (measured: 18 GB of a
    16-client run of a 118M-parameter model, docs/speed.md)."""
    for msg in messages:
        if msg.has_content():
            for key in list(msg.content.array_records):
                del msg.content[key]


def train_loss_mean(records: list, weight_key: str) -> MetricRecord:
    """Example-weighted mean training loss (Flower's default would also average ids and counts)."""
    weights = [float(r[METRICS][weight_key]) for r in records]
    losses = [float(r[METRICS][TRAIN_LOSS_KEY]) for r in records]
    return MetricRecord({TRAIN_LOSS_KEY: float(np.average(losses, weights=weights)) if sum(weights) else 0.0})


def make_strategy(cfg: ExperimentConfig, nodes: dict[int, NodeInfo], spec: dict, listener: RoundListener,
                  round_offset: int = 0, mixins: tuple[type, ...] = ()) -> MfptStrategy:
    """The configured Flower strategy with the mfpt mixin (and any `mixins`, e.g. personalisation) in front of it."""
    base, kwargs = STRATEGIES.get(cfg.federation.strategy.value)(cfg)
    base = private_base(cfg, base)  # Flower's DP wrapper around it when privacy.dp = "client"
    cls = type(f"Mfpt{base.__name__}", (*mixins, MfptStrategy, base), {})
    return cls(cfg=cfg, nodes=nodes, spec=spec, listener=listener, round_offset=round_offset,
               train_metrics_aggr_fn=train_loss_mean, **kwargs)


def prefixed_counts(replies: Iterable[Message], nodes: dict[int, NodeInfo], num_labels: int,
                    prefix: str) -> dict[str, EvalCounts]:
    """Per-language pooled counts of a second evaluation in the replies, its metrics under `prefix` (a personal
    state's, prefix; a backdoor's triggered texts, BACKDOOR_PREFIX); replies without it are left out."""
    pooled: dict[str, EvalCounts] = {}
    for msg in replies:
        node = nodes.get(msg.metadata.src_node_id)
        if msg.has_error() or node is None or METRICS not in msg.content.metric_records:
            continue
        metrics = msg.content[METRICS]
        if prefix + EXAMPLES_KEY not in metrics:
            continue
        try:
            counts = decode_counts(metrics, num_labels, prefix)
        except KeyError as err:
            log.warning("%s evaluation from node %d lacks %s; left out", prefix, msg.metadata.src_node_id, err)
            continue
        pooled[node.client.lang] = pooled.get(node.client.lang, EvalCounts(num_labels)) + counts
    return pooled
