"""ClientApp mod for client-level DP clipped on the node (`privacy.clip_at = "client"`): Flower's own clipping mods."""

from __future__ import annotations

from typing import Callable

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from mfpt.federation.protocol import CONFIG, config_from_entries


def clipping_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """ClientApp mod: Flower's fixed or adaptive clipping mod on train messages of `clip_at = "client"` runs."""
    config = msg.content.config_records.get(CONFIG) if msg.has_content() else None
    if msg.metadata.message_type != "train" or config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)  # no client-side clipping (or the SecAgg+ path, clipped in mfpt.federation.secure_aggregation)
    cfg = config_from_entries(config)
    mod = adaptiveclipping_mod if cfg.privacy.adaptive_clipping else fixedclipping_mod
    return mod(msg, context, call_next)
