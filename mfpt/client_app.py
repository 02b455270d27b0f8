"""The Flower ClientApp: an adapter between Flower's messages and `mfpt.federation.node.ClientNode`.

Every reply carries exactly the trainable tensors (train) and scalar metrics; never text, token ids or
per-example outputs. The audit mod logs and checks each reply before it leaves the node (mfpt/federation/mods/reply_audit.py).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mfpt.federation.mods.client_errors import client_error_mod
from mfpt.federation.mods.dp_clipping import clipping_mod
from mfpt.federation.mods.reply_audit import audit_mod
from mfpt.federation.node import ClientNode
from mfpt.federation.protocol import ARRAYS, CONFIG, METRICS, PERSONAL_ARRAYS
from mfpt.federation.secure_aggregation import is_secure_train, legacy_train, secure_mod

# The audit mod checks the reply exactly as it leaves (after client-side DP clipping); outside it, any exception
# becomes an error reply naming its type (mfpt/federation/mods/client_errors.py), the same in every runtime.
app = ClientApp(mods=[client_error_mod, audit_mod, secure_mod, clipping_mod])


def _node(msg: Message, context: Context) -> ClientNode:
    return ClientNode.for_message(msg.content[CONFIG], context.node_config)


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Handshake: load data and model, and report which client this node is and how many examples it holds."""
    metrics = _node(msg, context).describe()
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    """Load the global state, train locally, send back the trainable tensors and the loss."""
    if is_secure_train(msg):  # privacy.secure_aggregation: Flower's SecAgg+ workflow (legacy message layout)
        return legacy_train(msg, context.node_config)
    state, metrics = _node(msg, context).train(msg.content[ARRAYS].to_torch_state_dict(), msg.content[CONFIG])
    return Message(RecordDict({ARRAYS: ArrayRecord(state), METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.evaluate()
def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the global state (and the language's personal state, if sent) on the split the server asks for;
    reply with counts only."""
    personal = msg.content.array_records.get(PERSONAL_ARRAYS)
    metrics = _node(msg, context).evaluate(msg.content[ARRAYS].to_torch_state_dict(),
                                           personal.to_torch_state_dict() if personal is not None else None,
                                           msg.content[CONFIG])
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)
