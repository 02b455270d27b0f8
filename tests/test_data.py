"""Client data: schema checks, splits, caps, partitions; bad input gets a clear error."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_DATA

from mfpt.config import Partition, load_config
from mfpt.data.clients import prepare, shard_indices, split_missing, stratified_sample
from mfpt.data.sources import DataError, read_table


def _cfg(path, **overrides):
    return load_config(None, {"data.path": str(path), **overrides})


def _write(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_fixture_loads_into_clients_per_language():
    prepared = prepare(_cfg(TINY_DATA))
    assert prepared.languages == ("eng", "hau", "swh", "yor")
    assert prepared.labels == ("health", "politics", "sport")
    assert [c.lang for c in prepared.clients] == ["eng", "hau", "swh", "yor"]
    for lang in prepared.languages:
        # 27 training rows, of which data.validation_fraction = 0.1 (one of each label) became validation
        assert len(prepared.language_rows(lang, "train")) == 24 and len(prepared.language_rows(lang, "validation")) == 3
        assert len(prepared.language_rows(lang, "test")) == 9


def test_language_codes_are_normalised_and_selected(tmp_path):
    prepared = prepare(_cfg(TINY_DATA, **{"data.languages": ["sw", "en"]}))
    assert prepared.languages == ("swh", "eng")


def test_csv_and_parquet_read_like_jsonl(tmp_path):
    frame = pd.read_json(TINY_DATA, lines=True)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for path in (tmp_path / "d.csv", tmp_path / "d.parquet"):
        loaded = read_table(path)
        assert len(loaded) == len(frame) and set(loaded["lang"]) == {"eng", "swh", "hau", "yor"}


def test_integer_labels_sort_numerically(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 11, "lang": "en"} for i in range(66)]
    prepared = prepare(_cfg(_write(tmp_path, rows)))
    assert prepared.labels == tuple(str(i) for i in range(11))


def test_missing_split_is_seeded_and_stratified(tmp_path):
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "lang": "en"} for i in range(40)]
    frame = read_table(_write(tmp_path, rows))
    a, b = split_missing(frame, 0.25, seed=1), split_missing(frame, 0.25, seed=1)
    assert a["split"].tolist() == b["split"].tolist()
    assert a[a.split == "test"].label.value_counts().to_dict() == {"a": 5, "b": 5}
    assert split_missing(frame, 0.25, seed=2)["split"].tolist() != a["split"].tolist()


def test_cap_is_stratified_deterministic_and_never_takes_test_rows():
    cfg = _cfg(TINY_DATA, **{"data.train_per_language": 6})
    prepared = prepare(cfg)
    train = prepared.language_rows("swh", "train")
    assert len(train) == 6 and train.label.value_counts().to_dict() == {"sport": 2, "health": 2, "politics": 2}
    assert train.text.tolist() == prepare(cfg).language_rows("swh", "train").text.tolist()
    assert len(prepared.language_rows("swh", "test")) == 9
    original = pd.read_json(TINY_DATA, lines=True)
    test_texts = set(original[(original.lang == "swh") & (original.split == "test")].text)
    assert not set(train.text) & test_texts


def test_stratified_sample_keeps_label_proportions():
    frame = pd.DataFrame({"label": ["a"] * 30 + ["b"] * 10, "text": [str(i) for i in range(40)]})
    assert stratified_sample(frame, 8, seed=0).label.value_counts().to_dict() == {"a": 6, "b": 2}


@pytest.mark.parametrize("scheme", [Partition.IID, Partition.DIRICHLET])
def test_shards_are_disjoint_and_cover_every_row(scheme):
    labels = np.array([0, 1, 2] * 30)
    parts = shard_indices(labels, 4, scheme, 0.3, (0, "eng", "train"))
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and set(joined.tolist()) == set(range(len(labels)))
    assert [p.tolist() for p in parts] == [p.tolist() for p in shard_indices(labels, 4, scheme, 0.3, (0, "eng", "train"))]


def test_dirichlet_skews_labels_more_than_iid():
    labels = np.array([0, 1, 2, 3] * 100)

    def skew(parts):  # share of examples that belong to their shard's majority label
        return sum(np.bincount(labels[p], minlength=4).max() for p in parts if len(p)) / len(labels)

    assert skew(shard_indices(labels, 5, Partition.DIRICHLET, 0.1, (0, "x", "train"))) > skew(
        shard_indices(labels, 5, Partition.IID, 0.1, (0, "x", "train"))) + 0.2


def test_clients_per_language_split_train_and_test():
    prepared = prepare(_cfg(TINY_DATA, **{"federation.clients_per_language": 3}))
    eng = [c for c in prepared.clients if c.lang == "eng"]
    assert len(eng) == 3
    assert sum(len(prepared.client_rows(c, "train")) for c in eng) == 24
    assert sum(len(prepared.client_rows(c, "test")) for c in eng) == 9


def test_heldout_languages_are_evaluation_only_clients():
    prepared = prepare(_cfg(TINY_DATA, **{"data.languages": ["eng", "swh"], "data.heldout_languages": ["yor"]}))
    assert [(c.lang, c.heldout) for c in prepared.clients] == [("eng", False), ("swh", False), ("yor", True)]
    assert [c.lang for c in prepared.training_clients()] == ["eng", "swh"]


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl.*does not exist"):
        prepare(_cfg(tmp_path / "nope.jsonl"))


def test_missing_column_names_the_column(tmp_path):
    path = _write(tmp_path, [{"text": "a", "lang": "en"}])
    with pytest.raises(DataError, match="lacks column.*'label'"):
        prepare(_cfg(path))


def test_empty_cells_are_refused(tmp_path):
    path = _write(tmp_path, [{"text": "a", "label": "x", "lang": "en"}, {"text": " ", "label": "y", "lang": "en"}])
    with pytest.raises(DataError, match="column 'text' is empty in 1 row"):
        prepare(_cfg(path))


def test_language_absent_from_the_data_lists_the_available_ones():
    with pytest.raises(DataError, match=r"\['amh'\] are not in the data.*Available: eng, hau, swh, yor"):
        prepare(_cfg(TINY_DATA, **{"data.languages": ["eng", "am"]}))


def test_unknown_language_code_in_the_data(tmp_path):
    path = _write(tmp_path, [{"text": "a", "label": "x", "lang": "qqq-zz"}])
    with pytest.raises(DataError, match="qqq"):
        prepare(_cfg(path))


def test_empty_client_is_refused(tmp_path):
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "lang": "en", "split": "train"} for i in range(10)]
    rows += [{"text": "x", "label": "a", "lang": "sw", "split": "test"}, {"text": "y", "label": "a", "lang": "en", "split": "test"}]
    with pytest.raises(DataError, match="'swh' has no 'train' examples"):
        prepare(_cfg(_write(tmp_path, rows)))


def test_bad_split_value(tmp_path):
    path = _write(tmp_path, [{"text": "a", "label": "x", "lang": "en", "split": "holdout"}])
    with pytest.raises(DataError, match="'holdout'"):
        prepare(_cfg(path))


def test_labels_outside_the_declared_set(tmp_path):
    with pytest.raises(DataError, match=r"\['sport'\].*data.labels"):
        prepare(_cfg(TINY_DATA, **{"data.labels": ["health", "politics"]}))


def test_resolve_normalises_every_language_list_and_checks_low_resource():
    from mfpt.data.clients import resolve

    cfg = resolve(_cfg(TINY_DATA, **{"data.languages": ["en", "sw", "ha"], "data.heldout_languages": ["yo"],
                                     "data.low_resource": ["sw", "yo"]}))
    assert cfg.data.languages == ("eng", "swh", "hau") and cfg.data.heldout_languages == ("yor",)
    assert cfg.data.low_resource == ("swh", "yor") and cfg.data.labels == ("health", "politics", "sport")
    assert resolve(cfg) == cfg  # already resolved: unchanged
    with pytest.raises(DataError, match=r"data.low_resource lists \['amh'\]"):
        resolve(_cfg(TINY_DATA, **{"data.low_resource": ["am"]}))
