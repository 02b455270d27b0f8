"""Any exception a ClientApp raises becomes an error reply that says what it was, in one line.

Flower turns a ClientApp exception into an error reply too, but under simulation the exception's type is lost
("ClientAppException occurred. Message: 'NoneType' object is not callable"), and the reply reads differently on
a SuperNode. This mod, outermost in the ClientApp, catches the exception first: the node's log keeps the full
traceback, and the server gets "TypeError: 'NoneType' object is not callable", the same in both runtimes, which
the run recorder prints per round and a run that scored nothing reports as its error.
"""

from __future__ import annotations

from logging import ERROR, WARNING

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.logger import log

from mfpt.federation.privacy_floor import PrivacyFloorError


def client_error_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Call the rest of the ClientApp; turn an exception into an error reply naming its type and message."""
    try:
        return call_next(msg, context)
    except PrivacyFloorError as err:  # the node's own decision, not a fault: one line, no traceback
        log(WARNING, "mfpt: refused %s: %s", msg.metadata.message_type, err)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err).__name__}: {err}"),
                       reply_to=msg)
    except Exception as err:  # noqa: BLE001 - every failure must reach the server as a reply, never silence
        log(ERROR, "mfpt: %s failed on this node", msg.metadata.message_type, exc_info=err)
        text = " ".join(str(err).split()) or "(no message)"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(err).__name__}: {text}"),
                       reply_to=msg)
