"""The Flower ClientApp: one language (or one shard of it) that keeps its data and trains only the prompt.

Every reply carries exactly the trainable tensors (train) and scalar metrics; never text, token ids or
per-example outputs. The experiment config arrives from the server in each message, so every client trains
under the same settings; the node only says which client it is (its node_config).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mfpt.audit import audit_mod
from mfpt.config import ExperimentConfig, from_flat
from mfpt.data import ClientSpec, DataError, client_layout
from mfpt.languages import normalize_language
from mfpt.model import load_trainable_state, trainable_state
from mfpt.runtime import Runtime, get_runtime
from mfpt.strategy import CLIENT_KEY, EXAMPLES_KEY, ROUND_KEY, confusion_key
from mfpt.train import derive_seed, evaluate, steps_per_round, train

# Every reply is logged (keys, bytes) and checked by the audit mod before it leaves the node (mfpt/audit.py).
app = ClientApp(mods=[audit_mod])

CONFIG_PREFIX = "cfg."


def experiment_config(msg: Message) -> ExperimentConfig:
    """The experiment config the server sent (flattened under `cfg.`)."""
    record = msg.content["config"]
    return from_flat({k[len(CONFIG_PREFIX):]: v for k, v in record.items() if k.startswith(CONFIG_PREFIX)})


def which_client(cfg: ExperimentConfig, node_config: dict[str, Any]) -> tuple[int, ClientSpec]:
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


def client_runtime(msg: Message, context: Context) -> tuple[ExperimentConfig, Runtime, int, ClientSpec]:
    """The experiment config, this process's runtime for it, and which client this node is."""
    cfg = experiment_config(msg)
    index, client = which_client(cfg, context.node_config)
    data_cfg = cfg
    if "data-path" in context.node_config:
        # Deployment: the node reads only its own file, which holds only its own language.
        data_cfg = cfg.replace(**{"data.source": "files", "data.path": str(context.node_config["data-path"]),
                                  "data.languages": [client.lang], "data.heldout_languages": []})
    return cfg, get_runtime(data_cfg), index, client


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Handshake: load data and model, and report which client this node is and how many examples it holds."""
    cfg, runtime, index, client = client_runtime(msg, context)
    n_train = 0 if client.heldout else len(runtime.encoded(client, "train"))
    n_eval = len(runtime.encoded(client, cfg.data.eval_split))
    return Message(RecordDict({"metrics": MetricRecord({CLIENT_KEY: index, "num-train": n_train, "num-eval": n_eval})}),
                   reply_to=msg)


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    """Load the global state, train locally, send back the trainable tensors and the loss."""
    cfg, runtime, index, client = client_runtime(msg, context)
    if client.heldout:
        raise DataError(f"client {client.lang!r} is held out and must not train; the server sampled it by mistake.")
    model = runtime.classifier.model
    global_state = msg.content["arrays"].to_torch_state_dict()
    load_trainable_state(model, global_state, origin="global state from the server")
    data = runtime.encoded(client, "train")
    round_ = int(msg.content["config"][ROUND_KEY])
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    stats = train(model, data, runtime.classifier.tokenizer, cfg.train, steps_per_round(len(data), cfg.train),
                  seed=derive_seed(cfg.seed, round_, index), device=runtime.classifier.device,
                  anchor=global_state if mu > 0 else None, proximal_mu=mu)
    metrics = MetricRecord({CLIENT_KEY: index, EXAMPLES_KEY: len(data), "train-loss": stats.mean_loss,
                            "train-steps": stats.steps})
    return Message(RecordDict({"arrays": ArrayRecord(trainable_state(model)), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the global state on this client's evaluation split; reply with counts only."""
    cfg, runtime, index, client = client_runtime(msg, context)
    model = runtime.classifier.model
    load_trainable_state(model, msg.content["arrays"].to_torch_state_dict(), origin="global state from the server")
    counts = evaluate(model, runtime.encoded(client, cfg.data.eval_split), runtime.classifier.tokenizer,
                      cfg.train.eval_batch_size, runtime.classifier.device, len(runtime.data.labels))
    metrics: dict[str, int | float] = {CLIENT_KEY: index, EXAMPLES_KEY: counts.n, "eval-loss-sum": counts.loss_sum}
    for gold in range(counts.num_labels):
        for predicted in range(counts.num_labels):
            metrics[confusion_key(gold, predicted)] = int(counts.confusion[gold, predicted])
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
