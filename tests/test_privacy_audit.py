"""`mfpt audit-privacy`: the canaries, their planting, the leakage measures (membership AUC/advantage, exposure),
what they are worth without any signal, and the epsilon they can show."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mfpt.config import ConfigError
from mfpt.experiments.canary_audit import Exposure, audit, planted_data, render
from mfpt.privacy.canaries import (
    canary_pairs,
    epsilon_lower_bound,
    exposures,
    largest_certifiable_epsilon,
    make_canaries,
    membership_scores,
    null_statistics,
    p_value,
)


def test_membership_scores_and_exposure_follow_their_definitions():
    fresh = np.array([1.0, 2.0, 3.0, 4.0])
    memorised = np.array([0.1, 0.2])  # below every fresh canary
    assert membership_scores(memorised, fresh) == (1.0, 1.0)
    assert np.allclose(exposures(memorised, fresh), math.log2(5))  # ranked first: the maximum
    unseen = np.array([1.5, 3.5])
    auc, advantage = membership_scores(unseen, fresh)
    assert auc == pytest.approx(0.5) and advantage == pytest.approx(0.25)
    assert np.allclose(exposures(unseen, fresh), [math.log2(5) - 1, math.log2(5) - math.log2(4)])


def test_canaries_are_random_labelled_strings_and_are_planted_in_one_clients_training_split(make_config, tmp_path):
    canaries = make_canaries(6, ("a", "b", "c"), seed=1)
    assert len(set(canaries["text"])) == 6 and set(canaries["label"]) <= {"a", "b", "c"}
    assert make_canaries(6, ("a", "b", "c"), seed=1).equals(canaries)
    cfg = make_config(**{"data.languages": ["en", "sw"]})
    labelled = make_canaries(3, ("health", "politics", "sport"), seed=2)
    planted_cfg = planted_data(cfg, "swh", labelled, 2, tmp_path / "planted.jsonl")
    frame = pd.read_json(tmp_path / "planted.jsonl", lines=True)
    rows = frame[frame["text"].isin(labelled["text"])]
    assert len(rows) == 6 and set(rows["lang"]) == {"swh"} and set(rows["split"]) == {"train"}
    assert planted_cfg.data.source == "files" and planted_cfg.data.path == str(tmp_path / "planted.jsonl")


def test_audit_refuses_a_config_without_privacy_settings(make_config, tmp_path):
    with pytest.raises(ConfigError, match="privacy.dp"):
        audit(make_config(**{"data.languages": ["en", "sw"]}), tmp_path / "audit")


def test_without_membership_signal_the_statistics_are_what_the_null_says():
    rng = np.random.default_rng(0)
    planted, fresh = rng.normal(size=20), rng.normal(size=20)
    null = null_statistics(planted, fresh, draws=1000)
    assert abs(null["auc"].mean() - 0.5) < 0.02
    # 20 + 20 canaries and no leakage at all: an advantage near 0.18 and about 1.3 bits of exposure on average.
    assert 0.12 < null["advantage"].mean() < 0.24 and 1.0 < null["mean_exposure"].mean() < 1.6
    assert np.percentile(null["advantage"], 95) > 0.3
    memorised = fresh.min() - 1 - rng.random(20)  # every planted loss below every fresh one
    assert p_value(membership_scores(memorised, fresh)[0], null["auc"]) == pytest.approx(1 / 1001)
    assert p_value(0.5, null["auc"]) > 0.3


def test_a_model_that_learned_only_the_label_prior_shows_no_leakage_with_label_matched_canaries():
    """Planted copies shift their client's label prior; a model that learned only that prior (a loss that depends on
    the label alone) must not look like it memorised the canaries. Unmatched planted and fresh sets do look so."""
    labels = ("a", "b", "c", "d")
    planted, fresh = canary_pairs(20, labels, seed=3)
    assert list(planted["label"]) == list(fresh["label"]) and not set(planted["text"]) & set(fresh["text"])
    prior = planted["label"].value_counts(normalize=True)
    loss_of = {label: -math.log(prior.get(label, 1e-3)) for label in labels}  # answers the planted label mix
    matched_p = np.array([loss_of[x] for x in planted["label"]])
    matched_f = np.array([loss_of[x] for x in fresh["label"]])
    assert membership_scores(matched_p, matched_f)[0] == pytest.approx(0.5)
    strata = np.concatenate([planted["label"], fresh["label"]])
    null = null_statistics(matched_p, matched_f, draws=200, strata=strata)
    assert np.allclose(null["auc"], 0.5)  # within-label permutations of label-only losses change nothing
    # The confound the matched design removes, with the label mixes the demo's audit drew before it (planted
    # 10/5/4/1, fresh 3/2/10/5 of four labels): a model answering the planted mix "leaks" with AUC 0.75.
    planted_mix = ["a"] * 10 + ["b"] * 5 + ["c"] * 4 + ["d"]
    fresh_mix = ["a"] * 3 + ["b"] * 2 + ["c"] * 10 + ["d"] * 5
    loss_of = {"a": -math.log(0.5), "b": -math.log(0.25), "c": -math.log(0.2), "d": -math.log(0.05)}
    auc = membership_scores(np.array([loss_of[x] for x in planted_mix]), np.array([loss_of[x] for x in fresh_mix]))[0]
    assert auc > 0.7


def test_the_epsilon_lower_bound_is_valid_and_limited_by_the_canary_count():
    rng = np.random.default_rng(1)
    shown = [epsilon_lower_bound(rng.normal(size=20), rng.normal(size=20), 1e-5) for _ in range(200)]
    assert np.mean(np.array(shown) > 0) <= 0.05  # no signal: a positive bound at most 5% of the time
    perfect = epsilon_lower_bound(np.zeros(20), np.ones(20), 1e-5)
    ceiling = largest_certifiable_epsilon(20, 20, 1e-5)
    assert 0 < perfect <= ceiling
    # One threshold, a perfect test: TPR >= a^(1/n) and FPR <= 1 - a^(1/n) at one-sided level a = 2.5% each.
    a = 0.025 ** (1 / 20)
    assert ceiling == pytest.approx(math.log((a - 1e-5) / (1 - a)))
    assert largest_certifiable_epsilon(1000, 1000, 1e-5) > ceiling + 3


def test_the_audit_table_prints_the_null_and_what_the_canaries_can_certify():
    found = [Exposure("no privacy", 0.9, 0.6, 2.5, 4.0, 0.5, 0.4, None, 0.65, 0.35, 1.9, 0.001, 0.8)]
    text = render(found, 20)
    assert "0.900 (0.650, 0.001)" in text and "0.600 (0.350)" in text and "(1.90)" in text
    assert f"can never show more than {largest_certifiable_epsilon(20, 20, 1e-5):.2f}" in text
