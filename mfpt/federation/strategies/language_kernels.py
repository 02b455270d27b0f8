"""Per-language aggregation maths: weight matrices from language distances or update similarity, and the
weighted states they give (pure functions, no Flower; mfpt.federation.strategies.personalized runs them inside the rounds).

A language's personalised state mixes the states its clients sent back with the other languages' states:

    state_i = self_weight * own_i + (1 - self_weight) * sum_{j != i} softmax_{j != i}(-d_ij / temperature) * own_j

where own_j is language j's update (the weighted mean of its clients' states) and d is a distance matrix: URIEL
distances (`distance-weighted`) or 1 - cosine similarity of this round's updates (`update-similarity`). The
kernel runs over the *other* languages so that self_weight alone says how much of a language's own update it
keeps: with the own language inside the softmax (distance 0) a small temperature would turn every method into
local training. temperature -> infinity with self_weight = 1/L is uniform FedAvg over languages; self_weight = 1
keeps the own update. A held-out language (no update, no data) gets softmax(-d_hj / temperature) over the trained
languages j, applied to their personalised states.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

State = dict[str, torch.Tensor]


def kernel_weights(distance: np.ndarray, temperature: float, self_weight: float) -> np.ndarray:
    """Row-stochastic L x L mixing matrix from an L x L distance matrix (see the module docstring)."""
    d = np.asarray(distance, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"kernel_weights needs a square distance matrix, got shape {d.shape}")
    size = d.shape[0]
    if size == 1:
        return np.ones((1, 1))
    logits = -d / temperature
    np.fill_diagonal(logits, -np.inf)
    others = _softmax_rows(logits)
    return self_weight * np.eye(size) + (1.0 - self_weight) * others


def heldout_weights(distance_to_trained: np.ndarray, temperature: float) -> np.ndarray:
    """H x L weights of the trained languages for each held-out language: softmax(-d / temperature) per row."""
    d = np.atleast_2d(np.asarray(distance_to_trained, dtype=np.float64))
    return _softmax_rows(-d / temperature)


def _softmax_rows(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)  # stable; -inf entries become exactly 0
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def cosine_distances(updates: Sequence[State], references: Sequence[State]) -> np.ndarray:
    """1 - cosine similarity of the updates (state returned - state sent), over all tensors flattened, in [0, 2]."""
    deltas = np.stack([_flat(u) - _flat(r) for u, r in zip(updates, references)])
    norms = np.linalg.norm(deltas, axis=1)
    norms[norms == 0] = 1.0  # an unchanged state is orthogonal to everything (cosine 0), not NaN
    unit = deltas / norms[:, None]
    return np.clip(1.0 - unit @ unit.T, 0.0, 2.0)


def _flat(state: State) -> np.ndarray:
    return np.concatenate([state[k].detach().double().reshape(-1).cpu().numpy() for k in sorted(state)])


def weighted_state(states: Sequence[State], weights: Sequence[float], like: State | None = None) -> State:
    """sum_j weights[j] * states[j], in float64, cast back to the dtypes of `like` (default states[0])."""
    like = states[0] if like is None else like
    total = float(sum(weights))
    if not states or total <= 0:
        raise ValueError("weighted_state needs at least one state with a positive weight")
    out: State = {}
    for key, ref in like.items():
        acc = sum(float(w) / total * s[key].detach().double() for w, s in zip(weights, states) if w)
        out[key] = acc.to(ref.dtype)
    return out


def language_updates(client_states: Sequence[tuple[str, float, State]]) -> dict[str, State]:
    """One update per language: the (server-side) weighted mean of its clients' states, in input order."""
    grouped: dict[str, list[tuple[float, State]]] = {}
    for lang, weight, state in client_states:
        grouped.setdefault(lang, []).append((weight, state))
    return {lang: weighted_state([s for _, s in pairs], [w if w > 0 else 1.0 for w, _ in pairs])
            for lang, pairs in grouped.items()}


def personalized_states(updates: Mapping[str, State], distance: np.ndarray, languages: Sequence[str],
                        temperature: float, self_weight: float) -> dict[str, State]:
    """Each language of `languages` (rows/cols of `distance`) that sent an update or has one to borrow: its aggregate.

    Only languages with an update take part in this round's mixing; a language without one (not sampled, refused)
    gets the kernel-weighted mean of the others, with the kernel renormalised over them.
    """
    present = [i for i, lang in enumerate(languages) if lang in updates]
    if not present:
        return {}
    sub = np.asarray(distance, dtype=np.float64)[np.ix_(present, present)]
    weights = kernel_weights(sub, temperature, self_weight)
    states = [updates[languages[i]] for i in present]
    out = {languages[i]: weighted_state(states, weights[row]) for row, i in enumerate(present)}
    absent = [i for i in range(len(languages)) if i not in present]
    if absent:
        borrowed = heldout_weights(np.asarray(distance, dtype=np.float64)[np.ix_(absent, present)], temperature)
        out.update({languages[i]: weighted_state(states, borrowed[row]) for row, i in enumerate(absent)})
    return out


def heldout_states(trained: Mapping[str, State], distance_to_trained: np.ndarray, heldout: Sequence[str],
                   trained_order: Sequence[str], temperature: float) -> dict[str, State]:
    """Each held-out language's state: the distance-weighted combination of the trained languages' states."""
    weights = heldout_weights(distance_to_trained, temperature)
    states = [trained[lang] for lang in trained_order]
    return {lang: weighted_state(states, weights[row]) for row, lang in enumerate(heldout)}


def distance_to_federation(distance: np.ndarray, languages: Sequence[str], targets: Sequence[str],
                           among: Sequence[str]) -> dict[str, float]:
    """Mean distance of each target language to the languages `among` (itself excluded), for the report."""
    index = {lang: i for i, lang in enumerate(languages)}
    out = {}
    for lang in targets:
        others = [index[o] for o in among if o != lang]
        out[lang] = float(np.mean([distance[index[lang], j] for j in others])) if others else float("nan")
    return out
