"""`mfpt audit-privacy`: the canaries, their planting, and the leakage measures (membership AUC/advantage, exposure)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mfpt.config import ConfigError
from mfpt.experiments.canary_audit import audit, planted_data
from mfpt.privacy.canaries import exposures, make_canaries, membership_scores


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
