"""What a client node does with each message: which client it is, and its handshake, training and evaluation.

`client_app.py` is only the Flower adapter around `ClientNode`. A node keeps its data: what it returns is the
trainable tensors (train) and scalar metrics (every message); `mfpt.federation.mods.reply_audit` checks that on every reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from mfpt.config import AttackKind, ExperimentConfig
from mfpt.config.rules import label_words_by_language
from mfpt.config.specs import with_simulated_client_threads
from mfpt.core.languages import normalize_language
from mfpt.core.seeds import derive_seed
from mfpt.data.clients import ClientSpec, client_layout
from mfpt.data.sources import DataError
from mfpt.federation import attacks
from mfpt.federation.privacy_floor import PrivacyFloor
from mfpt.federation.protocol import (
    BACKDOOR_PREFIX,
    CLIENT_KEY,
    EVAL_SPLIT_KEY,
    EXAMPLES_KEY,
    FINETUNE_STEPS_KEY,
    NUM_EVAL_KEY,
    NUM_TRAIN_KEY,
    PERSONAL_PREFIX,
    PROXIMAL_MU_KEY,
    ROUND_KEY,
    TRAIN_LOSS_KEY,
    TRAIN_STEPS_KEY,
    config_from_entries,
    encode_counts,
)
from mfpt.model.state import load_trainable_state, trainable_state
from mfpt.privacy.accounting import example_dp
from mfpt.train.evaluation import evaluate
from mfpt.train.loop import steps_per_round, train
from mfpt.train.runtime import Runtime, get_runtime

Metrics = dict[str, int | float]


def which_client(cfg: ExperimentConfig, node_config: Mapping[str, Any]) -> tuple[int, ClientSpec]:
    """This node's client: `partition-id` in simulation, or `lang` (and optional `shard`) in deployment."""
    shards = cfg.federation.clients_per_language
    clients = client_layout(cfg.data.languages, cfg.data.heldout_languages, shards)
    if "lang" in node_config:
        lang = normalize_language(str(node_config["lang"]))
        shard = int(node_config.get("shard", 0))
        for index, client in enumerate(clients):
            if client.lang == lang and (client.shard == shard or client.heldout):
                return index, client
        raise DataError(
            f"node_config lang={node_config['lang']!r} shard={shard} is not a client of this experiment; "
            f"clients: {', '.join(c.name(shards) for c in clients)}."
        )
    index = int(node_config["partition-id"])
    if not 0 <= index < len(clients):
        raise DataError(f"partition-id {index} is outside the experiment's {len(clients)} clients; "
                        f"start the simulation with num-supernodes = {len(clients)}.")
    return index, clients[index]


def node_data_config(cfg: ExperimentConfig, client: ClientSpec, data_path: str) -> ExperimentConfig:
    """The config a deployed node reads its data with: only its own file, which holds only its own language, so
    every language list narrows to that language (`mfpt validate` builds the same one for every client). The
    attack of an attack experiment is the node's to carry out (ClientNode.train), not its data's, and aggregation is
    the server's: a robust rule's client count (Krum's 2f + 3) is checked against the server's languages, not this
    node's one. Of model.label_words_by_language the node keeps its own language's words: no other language's text
    reaches it."""
    own_words = [entry for entry in cfg.model.label_words_by_language
                 if list(label_words_by_language([entry])) == [client.lang]]
    return cfg.replace(**{"data.source": "files", "data.path": data_path, "data.languages": [client.lang],
                          "data.heldout_languages": [],
                          "data.low_resource": [lang for lang in cfg.data.low_resource if lang == client.lang],
                          "model.label_words_by_language": own_words,
                          "attack.kind": "none", "attack.languages": [], "federation.strategy": "fedavg"})


@dataclass
class ClientNode:
    """One client of one experiment on this node: its config, this process's runtime, its index and spec."""

    cfg: ExperimentConfig
    runtime: Runtime
    index: int
    client: ClientSpec
    floor: PrivacyFloor = field(default_factory=PrivacyFloor)  # the site's own minimum (node config)
    node_config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def for_message(cls, config_entries: Mapping[str, Any], node_config: Mapping[str, Any]) -> "ClientNode":
        """The node as the server's config (sent in the message) and the node's own config define it."""
        cfg = config_from_entries(config_entries)
        floor = PrivacyFloor.from_node_config(node_config)
        index, client = which_client(cfg, node_config)
        data_cfg = node_data_config(cfg, client, str(node_config["data-path"])) if "data-path" in node_config else cfg
        if "partition-id" in node_config:  # simulated (`flwr run` on a simulation SuperLink), as under `mfpt run`
            data_cfg = with_simulated_client_threads(data_cfg)
        return cls(cfg, get_runtime(data_cfg), index, client, floor, dict(node_config))

    def describe(self) -> Metrics:
        """Handshake: which client this node is and how many examples it holds (data and model now loaded)."""
        n_train = 0 if self.client.heldout else len(self.runtime.encoded(self.client, "train"))
        n_eval = len(self.runtime.encoded(self.client, self.cfg.data.eval_split))
        return {CLIENT_KEY: self.index, NUM_TRAIN_KEY: n_train, NUM_EVAL_KEY: n_eval}

    def train(self, global_state: dict[str, torch.Tensor], config: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], Metrics]:
        """Load the global state, train locally; return the trainable tensors and the training metrics."""
        if self.client.heldout:
            raise DataError(f"client {self.client.lang!r} is held out and must not train; the server sampled it by mistake.")
        model, runtime = self.runtime.classifier.model, self.runtime
        data = runtime.encoded(self.client, "train")
        self.floor.check(self.cfg, len(data))  # before the data is trained on
        load_trainable_state(model, global_state, origin="global state from the server")
        round_ = int(config[ROUND_KEY])
        attacking = attacks.is_attacking(self.cfg, self.client, round_, self.node_config)  # [attack] experiments
        if attacking and self.cfg.attack.kind == AttackKind.LABEL_FLIP:
            data = attacks.flipped_labels(data, len(runtime.data.labels))
        if attacking and self.cfg.attack.kind == AttackKind.BACKDOOR:
            rows = attacks.backdoor_training_rows(self.cfg, runtime.data.client_rows(self.client, "train"),
                                                  runtime.data.labels, round_, self.index)
            data = runtime.encode_rows(("backdoor-train", self.client, round_), rows)
        mu = float(config.get(PROXIMAL_MU_KEY, 0.0))
        # personalization = finetune: after the last round, the same loop for finetune_steps (0 = one round's steps).
        finetune = int(config[FINETUNE_STEPS_KEY]) if FINETUNE_STEPS_KEY in config else None
        steps = finetune or steps_per_round(len(data), self.cfg.train)
        stats = train(model, data, runtime.classifier.tokenizer, self.cfg.train, steps,
                      seed=derive_seed(self.cfg.seed, round_, self.index), device=runtime.classifier.device,
                      anchor=global_state if mu > 0 else None, proximal_mu=mu, dp=example_dp(self.cfg, len(data)))
        metrics: Metrics = {CLIENT_KEY: self.index, EXAMPLES_KEY: len(data), TRAIN_LOSS_KEY: stats.mean_loss,
                            TRAIN_STEPS_KEY: stats.steps}
        state = trainable_state(model)
        if attacking:
            state = attacks.poisoned_update(self.cfg, state, global_state, round_, self.index)
        if finetune is not None:  # the fine-tuned state is this language's personal state: evaluate it here
            metrics.update({PERSONAL_PREFIX + k: v for k, v in self._evaluate_loaded().items() if k != CLIENT_KEY})
        return state, metrics

    def evaluate(self, global_state: dict[str, torch.Tensor], personal_state: dict[str, torch.Tensor] | None = None,
                 config: Mapping[str, Any] | None = None) -> Metrics:
        """Evaluate the global state (and this language's personal state, keys under PERSONAL_PREFIX) on the split
        the server asks for (default data.eval_split); counts only."""
        split = str((config or {}).get(EVAL_SPLIT_KEY, self.cfg.data.eval_split))
        if split not in ("validation", "test"):
            raise DataError(f"the server asked for an evaluation on split {split!r}; only 'validation' and 'test' exist.")
        metrics: Metrics = {}
        if personal_state is not None:
            load_trainable_state(self.runtime.classifier.model, personal_state, origin="personal state from the server")
            metrics = {PERSONAL_PREFIX + k: v for k, v in self._evaluate_loaded(split).items() if k != CLIENT_KEY}
        load_trainable_state(self.runtime.classifier.model, global_state, origin="global state from the server")
        if self.cfg.attack.kind == AttackKind.BACKDOOR:  # every client measures the trigger on its own texts
            metrics.update({BACKDOOR_PREFIX + k: v for k, v in self._backdoor_counts(split).items()})
        return {**self._evaluate_loaded(split), **metrics}

    def _backdoor_counts(self, split: str) -> Metrics:
        """The state now loaded on this client's triggered `split` texts (labelled with the backdoor's target)."""
        runtime = self.runtime
        rows = attacks.backdoor_test_rows(self.cfg, runtime.data.client_rows(self.client, split), runtime.data.labels)
        if rows.empty:
            return {}
        counts = evaluate(runtime.classifier.model, runtime.encode_rows(("backdoor-eval", self.client, split), rows),
                          runtime.classifier.tokenizer, self.cfg.train.eval_batch_size, runtime.classifier.device,
                          len(runtime.data.labels), self.cfg.train.precision)
        return encode_counts(counts)

    def _evaluate_loaded(self, split: str | None = None) -> Metrics:
        """Evaluate the state now loaded in the model on `split` (default: this client's evaluation split)."""
        runtime = self.runtime
        counts = evaluate(runtime.classifier.model, runtime.encoded(self.client, split or self.cfg.data.eval_split),
                          runtime.classifier.tokenizer, self.cfg.train.eval_batch_size, runtime.classifier.device,
                          len(runtime.data.labels), self.cfg.train.precision, self.cfg.model.max_new_tokens)
        return {CLIENT_KEY: self.index, **encode_counts(counts)}
