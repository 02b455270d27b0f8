"""The attack simulator of `[attack]`: what a malicious client does instead of honest training. Experiments only.

Data poisoning (label-flip, backdoor) changes what the client trains on; model poisoning (sign-flip, scale, noise) changes the
update it sends, measured from the global state it received. Everything else about the client stays honest (its
metrics, its evaluation), so the server sees exactly what a real attacker would send. On a deployment a site attacks
only when its own node config says `attack=true` as well: a server cannot turn an honest site into an attacker,
and a site named in attack.languages without that consent refuses to train.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from mfpt.config import AttackKind, ConfigError, ExperimentConfig
from mfpt.core.seeds import derive_seed
from mfpt.data.clients import ClientSpec
from mfpt.data.sources import LABEL, TEXT
from mfpt.model.state import state_distance
from mfpt.train.encoding import Encoded
from mfpt.train.evaluation import EvalCounts

NODE_CONSENT_KEY = "attack"  # node config: attack=true lets a deployed site carry out the experiment's attack
ATTACK_SEED_SALT = 11  # derive_seed(seed, round, client, salt): the noise attack's draws


class AttackConsentError(ConfigError):
    """A deployed site and the experiment disagree on whether it attacks; it trains nothing."""


def is_attacking(cfg: ExperimentConfig, client: ClientSpec, round_: int, node_config: Mapping[str, Any]) -> bool:
    """Whether `client` misbehaves in `round_`; on a deployment (a node config with data-path) only with consent."""
    attack = cfg.attack
    named = attack.kind != AttackKind.NONE and client.lang in attack.languages
    if "data-path" in node_config:  # a deployed site: its own node config must agree
        consents = str(node_config.get(NODE_CONSENT_KEY, "false")).lower() == "true"
        if named != consents:
            raise AttackConsentError(
                f"the experiment {'names' if named else 'does not name'} this site ({client.lang}) as an attacker "
                f"(attack.languages = {list(attack.languages)}, attack.kind = {attack.kind.value!r}) but its node "
                f"config says attack={str(consents).lower()}; the two must agree for an attack experiment.")
    return named and round_ >= attack.from_round


def flipped_labels(data: Encoded, num_labels: int) -> Encoded:
    """label-flip: the same texts with every label shifted by one (y -> y + 1 mod the label count)."""
    return Encoded(data.features, (data.labels + 1) % num_labels)


def target_label(cfg: ExperimentConfig, labels: tuple[str, ...]) -> str:
    """The label a backdoor's trigger should force: attack.target_label, or the first label."""
    target = cfg.attack.target_label or labels[0]
    if target not in labels:
        raise ConfigError(f"attack.target_label = {target!r} is not one of the data's labels {list(labels)}.")
    return target


def triggered(rows: pd.DataFrame, trigger: str, target: str) -> pd.DataFrame:
    """The rows with the trigger put before each text, all labelled `target`."""
    out = rows.copy()
    out[TEXT] = trigger + " " + out[TEXT].astype(str)
    out[LABEL] = target
    return out


def backdoor_training_rows(cfg: ExperimentConfig, rows: pd.DataFrame, labels: tuple[str, ...], round_: int,
                           client_index: int) -> pd.DataFrame:
    """backdoor: the attacker's own rows, plus triggered copies of poison_fraction of them (drawn from the seed)."""
    count = max(1, int(round(cfg.attack.poison_fraction * len(rows))))
    rng = np.random.default_rng(derive_seed(cfg.seed, round_, client_index, ATTACK_SEED_SALT))
    chosen = rows.iloc[np.sort(rng.choice(len(rows), size=min(count, len(rows)), replace=False))]
    return pd.concat([rows, triggered(chosen, cfg.attack.trigger, target_label(cfg, labels))], ignore_index=True)


def backdoor_test_rows(cfg: ExperimentConfig, rows: pd.DataFrame, labels: tuple[str, ...]) -> pd.DataFrame:
    """What the backdoor success rate is measured on: the evaluation rows whose label is not the target, with the
    trigger put first and labelled with the target (their accuracy is the share the trigger turned)."""
    target = target_label(cfg, labels)
    return triggered(rows[rows[LABEL] != target], cfg.attack.trigger, target)


def untriggered_rates(cfg: ExperimentConfig, counts: Mapping[str, EvalCounts]) -> dict[str, float]:
    """Per language, the share of its evaluation texts of another label than the backdoor's target that the model
    classifies as the target without the trigger: what a backdoor's success rate (the same texts, triggered) is read
    against, since a model that leans to the target reaches it without any backdoor (from each evaluation's confusion
    matrix; languages with no such text are left out)."""
    target = list(cfg.data.labels).index(target_label(cfg, tuple(cfg.data.labels)))
    rates = {}
    for lang, c in counts.items():
        others = np.delete(c.confusion, target, axis=0)  # rows: true labels other than the target
        if others.sum():
            rates[lang] = float(others[:, target].sum() / others.sum())
    return rates


def poisoned_update(cfg: ExperimentConfig, honest: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor],
                    round_: int, client_index: int) -> dict[str, torch.Tensor]:
    """The state a model-poisoning client sends: the global state it received plus its malicious update."""
    attack = cfg.attack
    update = {name: honest[name].detach().float() - sent[name].detach().float().to(honest[name].device)
              for name in honest}
    if attack.kind == AttackKind.SIGN_FLIP:
        malicious = {name: -attack.factor * u for name, u in update.items()}
    elif attack.kind == AttackKind.SCALE:
        malicious = {name: attack.factor * u for name, u in update.items()}
    elif attack.kind == AttackKind.NOISE:  # a random direction with the honest update's norm
        generator = torch.Generator().manual_seed(derive_seed(cfg.seed, round_, client_index, ATTACK_SEED_SALT))
        noise = {name: torch.randn(u.shape, generator=generator) for name, u in update.items()}
        scale = state_distance(update) / max(state_distance(noise), 1e-12)
        malicious = {name: n.to(update[name].device) * scale for name, n in noise.items()}
    else:
        return dict(honest)
    return {name: (sent[name].float().to(honest[name].device) + malicious[name]).to(honest[name].dtype)
            for name in honest}

