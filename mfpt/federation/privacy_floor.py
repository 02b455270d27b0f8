"""A node's own privacy floor: the weakest privacy a site accepts, set in its node config, checked on every train
message before its data is touched.

The server sets every privacy parameter in the message it sends (`[privacy]` of the experiment). A site that must
not depend on the server's configuration (a hospital, a newsroom) starts its SuperNode with, for example,
`--node-config "lang='swh' data-path='...' require-dp='client' min-noise-multiplier=1.0 max-epsilon=8"`, and
refuses in one line of its log any train message weaker than that. The floor checks what the message declares:
with `privacy.clip_at = "server"` the server still clips and adds the noise, so a server that lies about it is
not stopped here; with `clip_at = "client"` the node clips its own update to the declared bound, and
example-level DP (DP-SGD) runs entirely on the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from mfpt.config import ConfigError, DpMode, ExperimentConfig
from mfpt.config.specs import sampled_clients
from mfpt.privacy.accounting import client_account, example_account


class PrivacyFloorError(ConfigError):
    """A train message weaker than the node's privacy floor; the node answers with this error and trains nothing."""


REQUIRE_DP_CHOICES = ("client", "example", "any")


@dataclass(frozen=True)
class PrivacyFloor:
    """The node-config keys of a site's privacy floor (each unset by default: no requirement)."""

    require_dp: str = ""  # "client", "example" or "any" (either)
    min_noise_multiplier: float = 0.0
    max_clip_norm: float = math.inf
    max_epsilon: float = math.inf
    require_secure_aggregation: bool = False
    min_clients: int = 0

    @staticmethod
    def key(name: str) -> str:
        """The node-config key of a field: require_dp -> require-dp."""
        return name.replace("_", "-")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> "PrivacyFloor":
        """Read the floor from a node config; a bad value is refused naming its key."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = cls.key(field.name)
            if key not in node_config:
                continue
            raw = node_config[key]
            try:
                if field.name == "require_dp":
                    value: Any = str(raw)
                    if value not in REQUIRE_DP_CHOICES:
                        raise ValueError
                elif field.name == "require_secure_aggregation":
                    if str(raw).lower() not in ("true", "false"):
                        raise ValueError
                    value = str(raw).lower() == "true"
                elif field.name == "min_clients":
                    value = int(raw)
                else:
                    value = float(raw)
                    if not value >= 0:
                        raise ValueError
            except (TypeError, ValueError):
                expected = {"require_dp": "one of " + ", ".join(REQUIRE_DP_CHOICES),
                            "require_secure_aggregation": "true or false", "min_clients": "an integer"}
                raise ConfigError(f"node config {key}={raw!r} is not valid: expected "
                                  f"{expected.get(field.name, 'a number >= 0')}.") from None
            values[field.name] = value
        return cls(**values)

    @property
    def is_set(self) -> bool:
        return self != PrivacyFloor()

    def check(self, cfg: ExperimentConfig, num_train: int) -> None:
        """Refuse (PrivacyFloorError, one line naming the node-config key) an experiment weaker than the floor."""
        if not self.is_set:
            return
        pv, problems = cfg.privacy, []
        dp = pv.dp
        if self.require_dp and (dp == DpMode.NONE or self.require_dp not in ("any", dp.value)):
            problems.append(f"require-dp={self.require_dp!r} but privacy.dp = {dp.value!r}")
        if dp != DpMode.NONE:
            account = client_account(cfg) if dp == DpMode.CLIENT else example_account(cfg, num_train)
            if account.noise_multiplier < self.min_noise_multiplier:
                problems.append(f"min-noise-multiplier={self.min_noise_multiplier:g} but the noise multiplier is "
                                f"{account.noise_multiplier:.4g}")
            epsilon = account.epsilon(cfg.federation.rounds)
            if epsilon > self.max_epsilon:
                problems.append(f"max-epsilon={self.max_epsilon:g} but epsilon after {cfg.federation.rounds} "
                                f"round(s) is {epsilon:.4g}")
            if pv.clip_norm > self.max_clip_norm:
                problems.append(f"max-clip-norm={self.max_clip_norm:g} but privacy.clip_norm = {pv.clip_norm:g}")
            if pv.adaptive_clipping and math.isfinite(self.max_clip_norm):
                problems.append(f"max-clip-norm={self.max_clip_norm:g} but privacy.adaptive_clipping = true "
                                "moves the bound")
        elif self.min_noise_multiplier > 0 or math.isfinite(self.max_epsilon):
            problems.append("a noise or epsilon floor is set but privacy.dp = 'none'")
        if self.require_secure_aggregation and not pv.secure_aggregation:
            problems.append("require-secure-aggregation=true but privacy.secure_aggregation = false")
        if sampled_clients(cfg) < self.min_clients:
            problems.append(f"min-clients={self.min_clients} but the server samples {sampled_clients(cfg)} "
                            "client(s) per round")
        if problems:
            raise PrivacyFloorError("this node's privacy floor refuses the experiment: " + "; ".join(problems)
                                    + ". Change the experiment's [privacy], or the node's --node-config.")
