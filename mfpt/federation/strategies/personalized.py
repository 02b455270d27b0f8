"""Personalised federation on Flower: a per-language state next to the global one (personalization.method).

`PersonalizedStrategy` is a mixin placed before `MfptStrategy` (make_strategy's `mixins`). Flower's strategy still
runs the rounds and still computes the global aggregate; this mixin only
- sends each training node ITS language's state instead of the global one (distance-weighted, update-similarity);
  a node never receives another language's individual update, only its own language's aggregate;
- builds every language's aggregate from the accepted updates after each round (mfpt.federation.strategies.language_kernels);
- sends every evaluated node the global state plus its language's state (held-out languages: the URIEL-weighted
  combination of the trained languages' states), so each round reports both, under identical metric keys;
- hands the per-language states to the checkpoint and takes them back on resume.
`finetune_phase` is the `finetune` method: after the last round each training node fine-tunes the global state
with the one training loop (a train message carrying protocol.FINETUNE_STEPS_KEY) and evaluates it; held-out
nodes then evaluate the distance-weighted combination of the fine-tuned states.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from mfpt.config import ExperimentConfig, PersonalizationMethod, Weighting
from mfpt.data.uriel import distance_array
from mfpt.federation.protocol import ARRAYS, CONFIG, FINETUNE_STEPS_KEY, PERSONAL_ARRAYS, PERSONAL_PREFIX, ROUND_KEY
from mfpt.federation.strategies.base import MfptStrategy, NodeInfo, prefixed_counts
from mfpt.federation.strategies.language_kernels import (
    State,
    cosine_distances,
    heldout_states,
    language_updates,
    personalized_states,
)

log = logging.getLogger("mfpt")

# Methods whose clients train from their language's state every round (finetune personalises only at the end).
ROUND_METHODS = (PersonalizationMethod.DISTANCE_WEIGHTED, PersonalizationMethod.UPDATE_SIMILARITY)


def strategy_mixins(cfg: ExperimentConfig) -> tuple[type, ...]:
    """The mixins make_strategy puts before MfptStrategy for this config (none without personalisation)."""
    return (PersonalizedStrategy,) if cfg.personalization.method != PersonalizationMethod.NONE else ()


class PersonalizedStrategy:
    """Mixin before MfptStrategy; see the module docstring."""

    cfg: ExperimentConfig
    nodes: dict[int, NodeInfo]
    listener: Any
    round_offset: int

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        z = self.cfg.personalization
        self.trained = list(self.cfg.data.languages)
        self.heldout = list(self.cfg.data.heldout_languages)
        needs_uriel = z.method == PersonalizationMethod.DISTANCE_WEIGHTED or bool(self.heldout)
        # URIEL distances among every language of the run (trained first), computed once on the server.
        self.distance = distance_array(self.trained + self.heldout, z.distance_kind) if needs_uriel else None
        self.personal: dict[str, State] = {}  # trained language -> its state (after the last aggregated round)
        self._sent: dict[str, State] = {}  # language -> the state its clients trained from this round

    # ------------------------------------------------------------------------------ state
    def personal_states(self) -> dict[str, State]:
        """Every trained language's personalised state (for the checkpoint)."""
        return {lang: dict(state) for lang, state in self.personal.items()}

    def load_personal_states(self, states: dict[str, State]) -> None:
        """Restore what personal_states() saved (resume)."""
        self.personal = {lang: dict(state) for lang, state in states.items()}

    def heldout_personal(self, trained: dict[str, State] | None = None) -> dict[str, State]:
        """Each held-out language's state: the URIEL-weighted combination of the trained languages' states."""
        trained = self.personal if trained is None else trained
        order = [lang for lang in self.trained if lang in trained]
        if not self.heldout or not order or self.distance is None:
            return {}
        rows = [len(self.trained) + i for i in range(len(self.heldout))]
        cols = [self.trained.index(lang) for lang in order]
        return heldout_states(trained, self.distance[np.ix_(rows, cols)], self.heldout, order,
                              self.cfg.personalization.temperature)

    def _state_for(self, node: NodeInfo, fallback: State) -> State:
        return self.personal.get(node.client.lang) or self.heldout_personal().get(node.client.lang) or fallback

    # ------------------------------------------------------------------------------ rounds
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """MfptStrategy's sample; each node's message carries its language's state (distance-weighted, update-similarity)."""
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        if self.cfg.personalization.method not in ROUND_METHODS:
            return messages
        global_state = arrays.to_torch_state_dict()
        out, self._sent = [], {}
        for msg in messages:
            node = self.nodes[msg.metadata.dst_node_id]
            state = self.personal.get(node.client.lang, global_state)
            self._sent[node.client.lang] = state
            out.append(Message(RecordDict({ARRAYS: ArrayRecord(state), CONFIG: msg.content[CONFIG]}),
                               dst_node_id=msg.metadata.dst_node_id, message_type=MessageType.TRAIN))
        self._bytes_down = sum(m.content[ARRAYS].count_bytes() for m in out)
        return out

    def personalize(self, round_: int, accepted: list[tuple[NodeInfo, Message]]) -> None:
        """Every language's aggregate from this round's accepted updates (called by MfptStrategy.aggregate_train)."""
        z = self.cfg.personalization
        if z.method not in ROUND_METHODS or not accepted:
            return
        examples = self.cfg.federation.weighting == Weighting.EXAMPLES
        updates = language_updates([(node.client.lang, float(node.num_train) if examples else 1.0,
                                     msg.content[ARRAYS].to_torch_state_dict()) for node, msg in accepted])
        present = [lang for lang in self.trained if lang in updates]
        if z.method == PersonalizationMethod.DISTANCE_WEIGHTED:
            index = [self.trained.index(lang) for lang in present]
            distance = self.distance[np.ix_(index, index)]  # type: ignore[index]
        else:
            distance = cosine_distances([updates[lang] for lang in present], [self._sent[lang] for lang in present])
        # Languages without an accepted update this round (not sampled, refused) keep their previous state.
        self.personal.update(personalized_states(updates, distance, present, z.temperature, z.self_weight))

    def reference(self, node: NodeInfo) -> State | None:
        """The state this node trained from: its language's personal state under a per-round method."""
        sent = self._sent.get(node.client.lang)
        if sent is None or self.cfg.personalization.method not in ROUND_METHODS:
            return super().reference(node)  # type: ignore[misc]
        return sent

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """MfptStrategy's sample; each message carries the global state plus the node's language's state."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        if self.cfg.personalization.method not in ROUND_METHODS:
            return messages
        global_state = arrays.to_torch_state_dict()
        out = []
        for msg in messages:
            node = self.nodes[msg.metadata.dst_node_id]
            record = RecordDict({ARRAYS: arrays, PERSONAL_ARRAYS: ArrayRecord(self._state_for(node, global_state)),
                                 CONFIG: msg.content[CONFIG]})
            out.append(Message(record, dst_node_id=msg.metadata.dst_node_id, message_type=MessageType.EVALUATE))
        self._eval_bytes_down = sum(m.content[ARRAYS].count_bytes() + m.content[PERSONAL_ARRAYS].count_bytes() for m in out)
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """MfptStrategy's pooling of the global state's counts, plus the personal states' counts per language."""
        replies = list(replies)
        counts = prefixed_counts(replies, self.nodes, len(self.cfg.data.labels), PERSONAL_PREFIX)
        if counts:
            self.listener.on_personal_evaluate(self.round_offset + server_round, counts)
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]


def finetune_phase(grid: Grid, strategy: MfptStrategy, global_state: State, config: ConfigRecord) -> int:
    """personalization = finetune: fine-tune the final global state on every training node, evaluate it there,
    then evaluate held-out languages on the distance-weighted combination of the fine-tuned states.

    Records the per-language counts through the strategy's listener; returns the bytes this phase sent both ways.
    """
    cfg = strategy.cfg
    round_ = cfg.federation.rounds
    phase_config = ConfigRecord(dict(config))
    phase_config[ROUND_KEY] = round_ + 1  # its own training seed, after every round's
    phase_config[FINETUNE_STEPS_KEY] = cfg.personalization.finetune_steps
    strategy.refresh_nodes(grid)
    trainers = sorted((n for n in strategy.nodes.values() if not n.client.heldout), key=lambda n: n.index)
    arrays = ArrayRecord(global_state)
    messages = [Message(RecordDict({ARRAYS: arrays, CONFIG: phase_config}), dst_node_id=n.node_id,
                        message_type=MessageType.TRAIN) for n in trainers]
    sent = arrays.count_bytes() * len(messages)
    replies = list(grid.send_and_receive(messages, timeout=cfg.federation.round_timeout))
    accepted: list[tuple[NodeInfo, Message]] = []
    for msg in replies:
        node = strategy.nodes.get(msg.metadata.src_node_id)
        # Measured from the global state every fine-tuner started from.
        reason = (f"client error: {msg.error.reason}" if msg.has_error()
                  else strategy.check_reply(msg, node, global_state)[0])
        if reason:
            strategy.listener.on_refusal(round_ + 1, node, msg.metadata.src_node_id, f"finetune: {reason}")
            continue
        accepted.append((node, msg))  # type: ignore[arg-type]
    accepted.sort(key=lambda pair: pair[0].index)
    sent += sum(msg.content[ARRAYS].count_bytes() for _, msg in accepted)
    num_labels = len(cfg.data.labels)
    counts = prefixed_counts([msg for _, msg in accepted], strategy.nodes, num_labels, PERSONAL_PREFIX)
    examples = cfg.federation.weighting == Weighting.EXAMPLES
    tuned = language_updates([(node.client.lang, float(node.num_train) if examples else 1.0,
                                msg.content[ARRAYS].to_torch_state_dict()) for node, msg in accepted])
    heldout_nodes = sorted((n for n in strategy.nodes.values() if n.client.heldout), key=lambda n: n.index)
    combined = strategy.heldout_personal(tuned) if heldout_nodes else {}  # type: ignore[attr-defined]
    eval_messages = []
    for node in heldout_nodes:
        if node.client.lang in combined:
            record = RecordDict({ARRAYS: arrays, PERSONAL_ARRAYS: ArrayRecord(combined[node.client.lang]),
                                 CONFIG: config})
            eval_messages.append(Message(record, dst_node_id=node.node_id, message_type=MessageType.EVALUATE))
    if eval_messages:
        sent += sum(m.content[ARRAYS].count_bytes() + m.content[PERSONAL_ARRAYS].count_bytes() for m in eval_messages)
        counts.update(prefixed_counts(grid.send_and_receive(eval_messages, timeout=cfg.federation.round_timeout),
                                      strategy.nodes, num_labels, PERSONAL_PREFIX))
    strategy.listener.on_personal_evaluate(round_, counts)
    return int(sent)
