"""Benchmark loaders: release-format fixtures and a faked hub both land in the universal schema."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from conftest import BENCHMARK_FIXTURES, FakeHub, hub_cases

from mfpt.config import DataConfig, load_config
from mfpt.core.languages import normalize_languages
from mfpt.data.benchmarks import BENCHMARKS, SIB200_CODES
from mfpt.data.clients import load_source
from mfpt.data.sources import DATA_SOURCES, DataError

FIXTURES = BENCHMARK_FIXTURES
HUB_CASES = hub_cases()

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "paper"

# name -> (languages asked for, canonical codes expected, train_pool)
OFFLINE_CASES = {
    "xnli": (("sw", "zh", "en"), {"swh", "cmn", "eng"}, "train"),
    "xglue-nc": (("en", "de", "es", "fr", "ru"), {"eng", "deu", "spa", "fra", "rus"}, "validation"),
    "masakhanews": (("hau", "swa", "orm"), {"hau", "swh", "gaz"}, "train"),
    "sib200": (("eng_Latn", "swh_Latn", "zho_Hant"), {"eng", "swh", "cmn_Hant"}, "train"),
}


def load(name: str, **fields: Any) -> pd.DataFrame:
    return DATA_SOURCES.get(name)(DataConfig(source=name, **fields))


@pytest.mark.parametrize("name", list(OFFLINE_CASES))
def test_release_fixture_loads_into_universal_schema(name: str) -> None:
    asked, expected, pool = OFFLINE_CASES[name]
    frame = load(name, path=str(FIXTURES / name), languages=asked, train_pool=pool)
    info = BENCHMARKS[name]
    expected_columns = ["text", "text_pair", "label", "lang", "split"] if name == "xnli" else ["text", "label", "lang", "split"]
    assert list(frame.columns) == expected_columns
    assert set(frame["lang"]) == expected
    assert set(frame["label"]) <= set(info.labels)
    assert len(set(frame["label"])) >= 3
    want_splits = {"train", "validation", "test"} if pool == "train" else {"train", "test"}
    for lang in expected:
        assert set(frame.loc[frame["lang"] == lang, "split"]) == want_splits
    assert frame["text"].str.len().min() > 0


def test_xnli_rows_keep_premise_hypothesis_and_label_names() -> None:
    frame = load("xnli", path=str(FIXTURES / "xnli"), languages=("sw",))
    dev = frame[frame["split"] == "validation"]
    assert list(dev["text"]) == [f'sw premise dev {i} with a "quote' for i in range(3)]  # quotes are text, not CSV
    assert list(dev["text_pair"]) == [f"sw hypothesis dev {i}" for i in range(3)]
    assert list(dev["label"]) == ["entailment", "neutral", "contradiction"]
    train = frame[frame["split"] == "train"]
    assert list(train["label"]) == ["entailment", "neutral", "contradiction", "neutral"]  # 'contradictory' mapped


def test_masakhanews_text_is_headline_then_body() -> None:
    frame = load("masakhanews", path=str(FIXTURES / "masakhanews"), languages=("hau",))
    first = frame[frame["split"] == "validation"].iloc[0]
    assert first["text"] == 'hau headline dev 0 hau text dev 0 "quoted"'
    assert first["label"] == "sports"


def test_validation_pool_becomes_train_and_no_validation_remains() -> None:
    frame = load("xnli", path=str(FIXTURES / "xnli"), languages=("ur",), train_pool="validation")
    assert set(frame["split"]) == {"train", "test"}
    assert set(frame.loc[frame["split"] == "train", "text"]) == {f'ur premise dev {i} with a "quote' for i in range(3)}


def test_xglue_nc_refuses_non_english_training_from_the_train_pool() -> None:
    with pytest.raises(DataError, match=r"English-only training data.*data.train_pool = 'validation'") as err:
        load("xglue-nc", path=str(FIXTURES / "xglue-nc"), languages=("en", "de"))
    assert "deu" in str(err.value)


def test_xglue_nc_english_trains_on_the_english_train_file() -> None:
    frame = load("xglue-nc", path=str(FIXTURES / "xglue-nc"), languages=("en",))
    train = frame[frame["split"] == "train"]
    assert len(train) == 5 and train.iloc[0]["text"] == "en title train 0 en body train 0"
    assert {"autos", "video"} <= set(train["label"])


def test_empty_language_list_reads_every_language_present() -> None:
    frame = load("xnli", path=str(FIXTURES / "xnli"), train_pool="validation")
    assert set(frame["lang"]) == set(BENCHMARKS["xnli"].languages)


def test_heldout_languages_are_read_too() -> None:
    frame = load("sib200", path=str(FIXTURES / "sib200"), languages=("eng_Latn",), heldout_languages=("swh",))
    assert set(frame["lang"]) == {"eng", "swh"}


@pytest.mark.parametrize(
    ("name", "languages", "pool", "expected_file"),
    [
        ("xnli", ("ur",), "train", "XNLI-MT-1.0/multinli/multinli.train.ur.tsv"),
        ("xglue-nc", ("en",), "train", "NC/xglue.nc.en.train"),
        ("masakhanews", ("hau",), "train", "hau/test.tsv"),
        ("sib200", ("swh",), "train", "swh_Latn/dev.tsv"),
    ],
)
def test_missing_file_error_names_the_file(tmp_path: Path, name: str, languages: tuple[str, ...], pool: str,
                                           expected_file: str) -> None:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    (root / expected_file).unlink(missing_ok=True)  # the fixture has no Urdu XNLI-MT file in the first place
    with pytest.raises(DataError) as err:
        load(name, path=str(root), languages=languages, train_pool=pool)
    assert str(root / expected_file) in str(err.value)
    assert "Missing file" in str(err.value)


def test_missing_xnli_test_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "xnli"
    shutil.copytree(FIXTURES / "xnli", root)
    (root / "XNLI-1.0" / "xnli.test.tsv").unlink()
    with pytest.raises(DataError, match=r"xnli\.test\.tsv.*XNLI 1\.0 test set"):
        load("xnli", path=str(root), languages=("en",), train_pool="validation")


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_unknown_language_error_lists_the_benchmark_languages(name: str) -> None:
    with pytest.raises(DataError) as err:
        load(name, path=str(FIXTURES / name), languages=("nav",))  # Navajo: in ISO 639-3, in no benchmark
    message = str(err.value)
    assert "'nav'" in message and "It has:" in message
    for canonical in BENCHMARKS[name].languages[:5]:
        assert canonical in message


def test_unparseable_language_code_is_a_data_error() -> None:
    with pytest.raises(DataError, match="Unknown language code 'swz'"):
        load("sib200", path=str(FIXTURES / "sib200"), languages=("swz",))


def test_label_outside_the_benchmark_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "sib200"
    shutil.copytree(FIXTURES / "sib200", root)
    test = root / "eng_Latn" / "test.tsv"
    test.write_text(test.read_text(encoding="utf-8").replace("geography", "weather"), encoding="utf-8")
    with pytest.raises(DataError, match=r"'weather'"):
        load("sib200", path=str(root), languages=("eng",))


def test_registry_and_info_agree() -> None:
    for name, info in BENCHMARKS.items():
        assert name in DATA_SOURCES
        assert info.name == name
        assert len(set(info.labels)) == len(info.labels)
    assert list(BENCHMARKS["xnli"].labels) == ["entailment", "neutral", "contradiction"]
    assert len(SIB200_CODES) == 205


def test_load_source_reaches_the_benchmark_loaders() -> None:
    frame = load_source(DataConfig(source="masakhanews", path=str(FIXTURES / "masakhanews"), languages=("orm",)))
    assert set(frame["lang"]) == {"gaz"}


# --------------------------------------------------------------------------------------------- hub path





HUB_LANG = {"xnli": "swh", "xglue-nc": "deu", "masakhanews": "yor", "sib200": "cmn_Hant"}

# name -> the (config, split) pairs the loader must ask the hub for, with train_pool = "validation"
HUB_REQUESTS = {
    "xnli": [("sw", "validation"), ("sw", "test")],
    "xglue-nc": [("nc", "validation.de"), ("nc", "test.de")],
    "masakhanews": [("yor", "validation"), ("yor", "test")],
    "sib200": [("zho_Hant", "validation"), ("zho_Hant", "test")],
}


@pytest.mark.parametrize("name", list(HUB_CASES))
def test_hub_rows_map_to_universal_schema(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    features, rows, languages, expected = HUB_CASES[name]
    fake = FakeHub(features, rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    frame = load(name, languages=languages, train_pool="validation")
    assert [(a[0], a[1], k["split"]) for a, k in fake.calls] == [
        (BENCHMARKS[name].hub_id, config, split) for config, split in HUB_REQUESTS[name]
    ]
    train = frame[frame["split"] == "train"]
    assert dict(zip(train["text"], train["label"])) == expected
    assert set(frame["split"]) == {"train", "test"}
    assert set(frame["lang"]) == {HUB_LANG[name]}


def test_hub_train_split_is_read_when_the_pool_is_train(monkeypatch: pytest.MonkeyPatch) -> None:
    features, rows, _, _ = HUB_CASES["xnli"]
    fake = FakeHub(features, rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    frame = load("xnli", languages=("ur",))
    assert [k["split"] for _, k in fake.calls] == ["train", "validation", "test"]
    assert set(frame["split"]) == {"train", "validation", "test"} and set(frame["lang"]) == {"urd"}


def test_script_based_hub_repo_falls_back_to_the_parquet_export(monkeypatch: pytest.MonkeyPatch) -> None:
    features, rows, _, expected = HUB_CASES["masakhanews"]
    fake = FakeHub(features, rows, script_based=True)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    frame = load("masakhanews", languages=("swa",), train_pool="validation")
    parquet_calls = [(a, k) for a, k in fake.calls if a[0] == "parquet"]
    assert len(parquet_calls) == 2
    files = parquet_calls[0][1]["data_files"]["validation"]
    assert files == "hf://datasets/masakhane/masakhanews@refs%2Fconvert%2Fparquet/swa/validation/*.parquet"
    assert dict(zip(frame["text"], frame["label"])) == expected and set(frame["lang"]) == {"swh"}


def test_script_based_hub_repo_without_parquet_export_says_where_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    features, rows, _, _ = HUB_CASES["xglue-nc"]
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(features, rows, script_based=True, parquet_export=False))
    with pytest.raises(DataError) as err:
        load("xglue-nc", languages=("de",), train_pool="validation")
    message = str(err.value)
    assert "\n" not in message
    assert "microsoft/xglue is a loading script" in message
    assert "'XGLUE Data with Test'" in message and "https://microsoft.github.io/XGLUE/" in message
    assert "set data.path" in message and "NC/" in message


def test_hub_failure_is_one_line_naming_the_hub_id_and_the_local_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'Davlan/sib200' on the Hub (LocalEntryNotFoundError)\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load("sib200", languages=("swh",), train_pool="validation")
    message = str(err.value)
    assert "\n" not in message and "Davlan/sib200" in message and "Couldn't reach" in message
    assert "set data.path (mfpt prepare: --path) to a local copy" in message and "data/annotated/" in message


def test_hub_read_is_pinned_to_the_resolved_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    import mfpt.data.benchmarks as benchmarks

    features, rows, languages, _ = HUB_CASES["xnli"]
    fake = FakeHub(features, rows)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(benchmarks, "hub_revision", lambda hub_id, ref: asked.append((hub_id, ref)) or "abc123")
    _, provenance = benchmarks.load_benchmark_with_provenance(
        BENCHMARKS["xnli"], DataConfig(source="xnli", languages=languages, train_pool="validation"))
    assert asked == [("facebook/xnli", "main")]  # resolved once, then every split read at that commit
    assert [k["revision"] for _, k in fake.calls] == ["abc123", "abc123"]
    assert (provenance.location, provenance.revision, provenance.ref) == ("facebook/xnli", "abc123", "main")


def test_parquet_export_read_records_the_export_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    import mfpt.data.benchmarks as benchmarks

    features, rows, _, _ = HUB_CASES["masakhanews"]
    fake = FakeHub(features, rows, script_based=True)
    monkeypatch.setattr(datasets, "load_dataset", fake)
    commits = {"main": "m1", "refs/convert/parquet": "p2"}
    monkeypatch.setattr(benchmarks, "hub_revision", lambda hub_id, ref: commits[ref])
    _, provenance = benchmarks.load_benchmark_with_provenance(
        BENCHMARKS["masakhanews"], DataConfig(source="masakhanews", languages=("hau",), train_pool="validation"))
    parquet_files = [k["data_files"] for a, k in fake.calls if a[0] == "parquet"]
    assert parquet_files[0] == {"validation": "hf://datasets/masakhane/masakhanews@p2/hau/validation/*.parquet"}
    assert (provenance.revision, provenance.ref) == ("p2", "refs/convert/parquet")


# --------------------------------------------------------------------------------------------- local layouts

# fixture folder -> (benchmark, data.path under it, languages, train_pool, a text only that layout's copy holds)
LAYOUT_CASES = {
    "sib200 hub repository (Davlan/sib200: data/<code>/)": (
        "sib200", "sib200-hub", ("eng_Latn", "swh_Latn"), "train", "swh_Latn hub-repo sentence test 0"),
    "sib200 GitHub checkout (data/annotated/<code>/)": (
        "sib200", "sib200-github", ("eng_Latn", "swh_Latn"), "train", "swh_Latn github sentence test 0"),
    "sib200 annotated folder": ("sib200", "sib200", ("eng_Latn", "swh_Latn"), "train", "swh_Latn sentence test 0"),
    "masakhanews GitHub checkout (data/<lang>/)": (
        "masakhanews", "masakhanews-github", ("hau", "swa"), "train", "swa github headline test 0"),
    "masakhanews data folder": ("masakhanews", "masakhanews", ("hau", "swa"), "train", "swa headline test 0"),
    "xnli release (XNLI-1.0 + XNLI-MT-1.0)": ("xnli", "xnli", ("en", "sw"), "train", "sw premise test 0"),
    "xglue-nc release (xglue_full_dataset: NC/)": ("xglue-nc", "xglue-nc", ("en", "de"), "validation",
                                                   "de title test 0"),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_mfpt_data_reads_every_layout(capsys: pytest.CaptureFixture[str], case: str) -> None:
    from mfpt.cli import main

    name, folder, languages, pool, _ = LAYOUT_CASES[case]
    code = main(["data", "--set", f"data.source={name!r}".replace("'", '"'),
                 "--set", f'data.path="{FIXTURES / folder}"', "--set", f"data.languages={','.join(languages)}",
                 "--set", f"data.train_pool={pool}"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"source {name!r}: {len(languages)} training client(s)" in out
    for canonical in normalize_languages(languages):  # one client line per language, with training rows
        assert re.search(rf"^\s*{canonical}\s+train\s+[1-9]", out, re.MULTILINE), out


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_each_layout_reads_its_own_rows(case: str) -> None:
    name, folder, languages, pool, marker = LAYOUT_CASES[case]
    frame = load(name, path=str(FIXTURES / folder), languages=languages, train_pool=pool)
    assert any(text.startswith(marker) for text in frame.loc[frame["split"] == "test", "text"])
    assert set(frame["lang"]) == set(normalize_languages(languages))


def test_layout_matching_nothing_lists_every_path_tried(tmp_path: Path) -> None:
    (tmp_path / "data" / "swh_Latn").mkdir(parents=True)  # a hub clone whose language folder is empty
    with pytest.raises(DataError) as err:
        load("sib200", path=str(tmp_path), languages=("swh",))
    message = str(err.value)
    for tried in ("swh_Latn/train.tsv", "data/annotated/swh_Latn/train.tsv", "data/swh_Latn/train.tsv"):
        assert repr(str(tmp_path / tried)) in message
    assert "Missing file" in message and "SIB-200 train set for 'swh_Latn'" in message


def test_xnli_hub_repository_clone_reads_its_parquet_files(tmp_path: Path) -> None:
    features = HUB_CASES["xnli"][0]
    for split, labels in (("train", [0, 1]), ("validation", [2, 2]), ("test", [1, 0])):
        rows = {"premise": [f"{split} p{i}" for i in range(2)], "hypothesis": [f"{split} h{i}" for i in range(2)],
                "label": labels}
        (tmp_path / "sw").mkdir(exist_ok=True)
        clone_file = tmp_path / "sw" / f"{split}-00000-of-00001.parquet"  # facebook/xnli's file names
        datasets.Dataset.from_dict(rows, features=features).to_parquet(clone_file)
    frame = load("xnli", path=str(tmp_path), languages=("sw",))
    test = frame[frame["split"] == "test"]
    assert list(zip(test["text"], test["text_pair"], test["label"])) == [
        ("test p0", "test h0", "neutral"), ("test p1", "test h1", "entailment")]
    assert set(frame["split"]) == {"train", "validation", "test"} and set(frame["lang"]) == {"swh"}


def test_clone_without_git_lfs_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "sw").mkdir()
    for split in ("validation", "test"):  # what a clone without git-lfs holds: pointer text, not parquet
        (tmp_path / "sw" / f"{split}-00000-of-00001.parquet").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"could not be read as parquet.*git lfs pull"):
        load("xnli", path=str(tmp_path), languages=("sw",), train_pool="validation")


# --------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.stem)
def test_paper_presets_validate(path: Path) -> None:
    cfg = load_config(path)
    info = BENCHMARKS[cfg.data.source]
    assert path.stem == cfg.data.source
    from mfpt.core.languages import normalize_languages

    languages = normalize_languages(cfg.data.languages) or info.languages
    assert set(languages) <= set(info.languages)
    assert set(normalize_languages(cfg.data.low_resource)) <= set(languages)
    assert cfg.model.name == "xlm-roberta-base" and cfg.peft.method.value == "prefix"
    assert cfg.peft.num_virtual_tokens == 32


def test_every_benchmark_has_a_preset() -> None:
    assert {p.stem for p in CONFIGS.glob("*.toml")} == set(BENCHMARKS)


def test_paper_presets_have_exactly_the_deep_prefix_and_head_the_paper_counts():
    """xlm-roberta-base shape on the meta device: 32 deep prefix tokens at every layer (keys and values) plus the
    RoBERTa classification head (dense 768x768 and out_proj 768xC, with biases), counted by hand here. With XNLI's 3
    labels that is 1,182,723, the paper's "~1.2M of >278M"; with MasakhaNEWS's 7, 1,185,799."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from mfpt.config import load_config
    from mfpt.data.benchmarks import BENCHMARKS
    from mfpt.model.factory import apply_method, count_parameters

    hidden, layers = 768, 12

    def by_hand(tokens: int, labels: int) -> int:
        return tokens * layers * 2 * hidden + (hidden * hidden + hidden) + (hidden * labels + labels)

    assert (by_hand(32, 3), by_hand(32, 7)) == (1_182_723, 1_185_799)
    counts = {}
    for preset in sorted((Path(__file__).resolve().parent.parent / "configs" / "paper").glob("*.toml")):
        cfg = load_config(preset)
        assert cfg.model.name == "xlm-roberta-base", preset.name
        labels = len(BENCHMARKS[cfg.data.source].labels)
        config = XLMRobertaConfig(vocab_size=250002, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                                  type_vocab_size=1, num_labels=labels)
        with torch.device("meta"):
            model = XLMRobertaForSequenceClassification(config)
        trainable, total = count_parameters(apply_method(model, cfg.peft))
        assert trainable == by_hand(cfg.peft.num_virtual_tokens, labels), preset.name
        counts[cfg.data.source] = (trainable, total)
    assert counts["xnli"][0] == 1_182_723 and counts["masakhanews"][0] == 1_185_799
    # The model: XLM-R base without a pooler (277,453,056), the prompt and the head, counted once (peft's frozen copy
    # of the original head is no part of the model): 278.6M, the paper's ">278 million".
    assert counts["xnli"][1] == 277_453_056 + counts["xnli"][0] == 278_635_779
