"""What leaves a SuperNode: one audit line per reply, and a refusal of anything that is not allowed out.

`audit_mod` is a Flower ClientApp mod (`ClientApp(mods=[audit_mod])`): it sees every reply the ClientApp
produces before Flower sends it. A reply may carry only
- ArrayRecords whose tensors are exactly the ones the server sent in this message (same names, shapes, dtypes:
  the trainable tensors; a query or evaluate reply carries none), and
- MetricRecords of scalar int/float values.
Anything else (a ConfigRecord, a string, a list of numbers that could hold per-example outputs, an extra
tensor) is replaced by an error reply, so it never reaches the SuperLink. Each reply is logged on the node as

    mfpt-audit: reply to train (run 123): arrays=ArrayRecord[4 tensors], metrics=MetricRecord[5 keys]; 7187 bytes

so an operator can check what crossed the border from the SuperNode's own log.
"""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

AUDIT_PREFIX = "mfpt-audit:"


def outgoing_problems(reply: Message, request: Message) -> list[str]:
    """Why `reply` may not leave the node (empty: it may)."""
    problems: list[str] = []
    sent = request.content.array_records if request.has_content() else {}
    allowed = {}
    for record in sent.values():
        allowed.update({k: (tuple(a.shape), a.dtype) for k, a in record.items()})
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            if request.metadata.message_type != "train":
                problems.append(f"{name!r}: arrays in a {request.metadata.message_type} reply")
                continue
            for key, array in record.items():
                if key not in allowed:
                    problems.append(f"{name!r}: tensor {key!r} was not sent by the server (not a trainable tensor)")
                elif (tuple(array.shape), array.dtype) != allowed[key]:
                    problems.append(f"{name!r}: tensor {key!r} has shape/dtype {tuple(array.shape)}/{array.dtype}, "
                                    f"the server sent {allowed[key][0]}/{allowed[key][1]}")
        elif isinstance(record, MetricRecord):
            for key, value in record.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    problems.append(f"{name!r}: metric {key!r} is a {type(value).__name__}, not a scalar")
        elif secure_aggregation_record(name, record, request):
            continue
        else:
            problems.append(f"{name!r}: a {type(record).__name__} may not leave the node")
    return problems


# SecAgg+ (privacy.secure_aggregation) replies in Flower's legacy layout: the protocol's own record (public keys,
# encrypted key shares, the masked vector) and the legacy FedAvg reply's scalar metrics and status.
SECAGG_PROTOCOL_RECORD = "secaggplus_configs"  # flwr.common.secure_aggregation.secaggplus_constants


def secure_aggregation_record(name: str, record: object, request: Message) -> bool:
    """A ConfigRecord a SecAgg+ train reply may carry: Flower's protocol record, or scalar metrics and status."""
    if request.metadata.message_type != "train" or SECAGG_PROTOCOL_RECORD not in request.content.config_records:
        return False
    if name == SECAGG_PROTOCOL_RECORD:
        return True
    values = dict(record.items())  # type: ignore[attr-defined]
    if name == "fitres.status":
        return set(values) <= {"code", "message"} and all(isinstance(v, (int, str)) for v in values.values())
    if name == "fitres.metrics":
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
    return False


def describe(reply: Message) -> str:
    """`key=Type[n]` for each record, and the total byte size of the reply's records."""
    parts, total = [], 0
    for name, record in reply.content.items():
        count = f"{len(record)} tensors" if isinstance(record, ArrayRecord) else f"{len(record)} keys"
        parts.append(f"{name}={type(record).__name__}[{count}]")
        total += record.count_bytes()
    return f"{', '.join(parts) or 'no records'}; {total} bytes"


def audit_mod(msg: Message, context: Context, call_next) -> Message:
    """Log every reply's record keys and size; replace a reply carrying anything not allowed by an error."""
    reply = call_next(msg, context)
    kind = msg.metadata.message_type
    if reply.has_error():
        log(INFO, "%s reply to %s (run %s): error %s", AUDIT_PREFIX, kind, msg.metadata.run_id, reply.error.reason)
        return reply
    problems = outgoing_problems(reply, msg)
    if problems:
        log(WARNING, "%s REFUSED reply to %s (run %s): %s", AUDIT_PREFIX, kind, msg.metadata.run_id, "; ".join(problems))
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION,
                             reason="mfpt audit refused the reply: " + "; ".join(problems)), reply_to=msg)
    log(INFO, "%s reply to %s (run %s): %s", AUDIT_PREFIX, kind, msg.metadata.run_id, describe(reply))
    return reply
