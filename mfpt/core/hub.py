"""Reaching the Hugging Face hub: found unreachable in seconds and said in one line, never a traceback or minutes of
retries.

huggingface_hub retries a failed request five times with back-off (about 30 s), and its connection errors
(httpx.ConnectError) are no OSError, so they used to surface as tracebacks. Before mfpt asks the hub for a model, a
tokenizer or a dataset, it opens one TCP connection to the hub's endpoint (HF_ENDPOINT, default huggingface.co)
with a short timeout; when that fails, the command stops with a HubUnreachableError naming what it tried to fetch
and the two ways out. Nothing is probed with HF_HUB_OFFLINE=1 (only local copies are read), nor behind a proxy
(HTTPS_PROXY, ...), where a direct connection says nothing about the proxied one.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from mfpt.core.errors import UserError

PROBE_TIMEOUT_S = 5.0
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class HubUnreachableError(UserError, ConnectionError):
    """The hub cannot be reached from this machine, and the command needs something from it."""


def hub_endpoint() -> str:
    """The hub URL huggingface_hub uses (HF_ENDPOINT, or https://huggingface.co)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str, timeout: float) -> str | None:
    """Why a TCP connection to `endpoint` fails (None when it opens); asked once per endpoint and process."""
    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"no connection within {timeout:g} s: {type(err).__name__}: {err.strerror or err}"
    return None


def ensure_hub_reachable(what: str, local_fix: str, elsewhere: str = "") -> None:
    """Raise HubUnreachableError (one line) when `what` would be fetched from a hub this machine cannot reach.

    `what` names the thing asked for (e.g. "model.name = 'xlm-roberta-base'"); `local_fix` says where its local
    copy goes (e.g. "model.name = a checkpoint folder"); `elsewhere` how to fetch it on a machine with the network
    (default: `mfpt prepare`, for datasets)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return
    endpoint = hub_endpoint()
    problem = _probe(endpoint, PROBE_TIMEOUT_S)
    if problem:
        raise HubUnreachableError(unreachable_message(what, local_fix, f"{endpoint}: {problem}", elsewhere))


def unreachable_message(what: str, local_fix: str, cause: str, elsewhere: str = "") -> str:
    """The one line every unreachable-hub error prints: what was asked for, why it failed, the two ways out."""
    elsewhere = elsewhere or "run `mfpt prepare` on a machine with the network and bring its folder here"
    return (f"cannot reach the Hugging Face hub for {what} ({cause}). Either set HF_HUB_OFFLINE=1 with {local_fix} "
            f"(or a copy in the hub cache), or {elsewhere}.")


def is_unreachable(err: BaseException) -> bool:
    """Whether `err` (or what caused it) is a failed connection to the hub rather than a missing or refused file."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current)
        if kind.__name__ in ("ConnectError", "ConnectTimeout", "ConnectionError", "OfflineModeIsEnabled",
                             "gaierror", "ConnectionRefusedError", "TimeoutException"):
            return True
        if "couldn't connect to" in str(current):  # transformers' wording for an unreachable hub
            return True
        current = current.__cause__ or current.__context__
    return False
