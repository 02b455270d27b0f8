"""Client-level differential privacy through Flower's own DP strategy wrappers and clipping mods.

`private_base` puts `flwr.serverapp.strategy.DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping`
around the Flower strategy mfpt wraps, so the MRO is MfptStrategy -> Flower's DP wrapper -> Flower's FedAvg/FedProx:
mfpt checks, weighs and records each reply first, then Flower clips each accepted update (new - global, over the
trainable tensors, the only ones exchanged), averages and adds Gaussian noise of std sigma * clip / sampled clients.
With `privacy.clip_at = "client"` the nodes clip before sending (Flower's fixed or adaptive clipping mod,
mfpt.federation.mods.dp_clipping). The noise is drawn from numpy's global generator, never from the run's seed: noise anyone could
regenerate from a published config would protect nothing.

Adaptive clipping corrects two things in Flower 1.42's adaptive wrappers (flwr/serverapp/strategy/
dp_adaptive_clipping.py): they move the bound before adding the round's noise, so the noise is sized to the next
round's bound rather than the one the updates were clipped to (too little noise whenever the bound shrinks); and
they shrink the bound when more than the target share of updates is clipped, the opposite of Andrew et al. (2021),
whose bound grows until that share is reached. Here the noise uses the bound the round clipped with, and the bound
then moves by C <- C exp(lr (clipped share - target clipped share)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from mfpt.config import ClipAt, DpMode, ExperimentConfig
from mfpt.config.specs import sampled_clients
from mfpt.privacy.accounting import client_account


def wrapper_class(cfg: ExperimentConfig) -> type:
    """The Flower DP wrapper the config asks for (clipping on the server or the client, fixed or adaptive)."""
    pv = cfg.privacy
    if pv.clip_at == ClipAt.CLIENT:
        return DifferentialPrivacyClientSideAdaptiveClipping if pv.adaptive_clipping else DifferentialPrivacyClientSideFixedClipping
    return DifferentialPrivacyServerSideAdaptiveClipping if pv.adaptive_clipping else DifferentialPrivacyServerSideFixedClipping


def private_base(cfg: ExperimentConfig, base: type) -> type:
    """`base` itself without client-level DP; else a class that builds `base(**kwargs)` inside Flower's DP wrapper."""
    if cfg.privacy.dp != DpMode.CLIENT or cfg.privacy.secure_aggregation:  # the secure path has its own (secure.py)
        return base
    wrapper = wrapper_class(cfg)
    noise = client_account(cfg).noise_multiplier
    sampled = sampled_clients(cfg)
    clip = cfg.privacy.clip_norm

    def __init__(self: Any, **strategy_kwargs: Any) -> None:
        inner = base(**strategy_kwargs)
        if cfg.privacy.adaptive_clipping:
            # Flower's default stddev of the noisy clipped count, sampled/20 (Andrew et al.), must exceed sigma/2;
            # with few clients it cannot, so it is raised to sigma: the bound then adapts more noisily, while the
            # total noise multiplier (what the account uses) stays sigma.
            count_std = max(sampled / 20, noise) if noise > 0 else None
            wrapper.__init__(self, inner, noise, sampled, initial_clipping_norm=clip, clipped_count_stddev=count_std)
        else:
            wrapper.__init__(self, inner, noise, clip, sampled)

    def _get_clip_state(self: Any) -> dict[str, np.ndarray]:
        return {"clipping_norm": np.asarray(self.clipping_norm, dtype=np.float64)} if cfg.privacy.adaptive_clipping else {}

    def _set_clip_state(self: Any, state: dict[str, np.ndarray]) -> None:
        if "clipping_norm" in state:
            self.clipping_norm = float(np.asarray(state["clipping_norm"]))

    def aggregate_train(self: Any, server_round: int, replies: Any) -> Any:
        """Flower's aggregation with the noise sized to the updates actually averaged (mfpt passes only the accepted
        ones): std sigma x clip / their count, not / the sampled count, which would under-noise an average of fewer.
        With adaptive clipping, the noise is sized to the bound this round clipped with, and the bound moves after."""
        replies = list(replies)
        sampled, self.num_sampled_clients = self.num_sampled_clients, max(1, len(replies))
        self.next_clipping_norm = None
        try:
            result = super(private, self).aggregate_train(server_round, replies)
        finally:
            self.num_sampled_clients = sampled
        if self.next_clipping_norm is not None:
            self.clipping_norm = self.next_clipping_norm
        return result

    methods: dict[str, Any] = {"__init__": __init__, "dp_clip_state": property(_get_clip_state, _set_clip_state),
                               "aggregate_train": aggregate_train}
    if cfg.privacy.adaptive_clipping:
        methods.update(_geometric_update=_hold_next_bound)
    # dp_clip_state: the adaptive clipping bound, saved in checkpoints so a resumed run goes on with it.
    private = type(f"{wrapper.__name__}Of{base.__name__}", (wrapper,), methods)
    return private


def _hold_next_bound(self: Any, clipped_fraction: float) -> None:
    """Andrew et al.'s update, held until the round's noise is added: the bound grows while more than the target
    share of updates is clipped and shrinks while fewer are."""
    self.next_clipping_norm = self.clipping_norm * math.exp(
        self.clip_norm_lr * (clipped_fraction - self.target_clipped_quantile))

