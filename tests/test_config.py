"""The experiment config: typed, validated, overridable, and the same through TOML, CLI and run_config."""

from __future__ import annotations

import dataclasses

import pytest

from mfpt.config import ConfigError, ExperimentConfig, PeftMethod, from_flat, load_config, to_flat, to_toml


def test_defaults_match_the_paper_setting():
    cfg = load_config()
    assert cfg.model.name == "xlm-roberta-base"
    assert cfg.peft.method is PeftMethod.PREFIX and cfg.peft.num_virtual_tokens == 32
    assert cfg.federation.strategy == "fedavg"


def test_toml_file_and_set_overrides(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('name = "x"\nseed = 3\n[train]\nlr = 0.5\n[data]\nlanguages = ["sw", "en"]\n', encoding="utf-8")
    cfg = load_config(path, ["train.lr=0.25", "federation.rounds=7", "data.languages=yo,ha", "peft.method=lora"])
    assert (cfg.name, cfg.seed, cfg.train.lr, cfg.federation.rounds) == ("x", 3, 0.25, 7)
    assert cfg.data.languages == ("yor", "hau")  # made canonical when the config is parsed
    assert cfg.peft.method is PeftMethod.LORA


@pytest.mark.parametrize(
    "overrides, must_say",
    [
        ({"train.lrr": 0.1}, ["train.lrr", "Did you mean", "lr"]),
        ({"trian.lr": 0.1}, ["trian", "train"]),
        ({"federation.rounds": -1}, ["federation.rounds", ">= 1"]),
        ({"federation.rounds": "many"}, ["federation.rounds", "integer"]),
        ({"train.lr": -0.1}, ["train.lr", ">= 0 (0 = the method's default)"]),
        ({"data.validation_fraction": 1.0}, ["data.validation_fraction", "[0, 1)"]),
        ({"federation.fraction_train": 1.5}, ["federation.fraction_train", "(0, 1]"]),
        ({"federation.fraction_train": 0.0}, ["federation.fraction_train", "(0, 1]"]),
        ({"peft.method": "adapterz"}, ["peft.method", "'prefix'", "'lora'", "'full'"]),
        ({"federation.strategy": "fedavgg"}, ["fedavgg", "Did you mean", "fedavg"]),
        ({"paradigm": "pooled"}, ["paradigm", "'centralized'"]),
        ({"peft.prefix_projection": "maybe"}, ["peft.prefix_projection", "true or false"]),
        ({"data.labels": ["a", "a"]}, ["data.labels", "repeats"]),
    ],
)
def test_bad_values_are_refused_naming_key_and_allowed_values(overrides, must_say):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for text in must_say:
        assert text in str(err.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_set_needs_key_value_form():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.lr"])


def test_flat_run_config_round_trip_and_unknown_keys():
    cfg = load_config(None, {"data.languages": ["eng", "swh"], "train.lr": 0.02, "peft.method": "ptuning"})
    flat = to_flat(cfg)
    assert flat["data.languages"] == "eng,swh" and flat["peft.method"] == "ptuning"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert from_flat(flat) == cfg
    with pytest.raises(ConfigError, match="Unknown config key 'model.nme'"):
        from_flat({**flat, "model.nme": "x"})


def test_resolved_toml_reloads_to_the_same_config(tmp_path):
    # A prefix with quotes, a backslash, a newline and a tab: TOML must escape every one of them.
    cfg = load_config(None, {"data.low_resource": ["swh"], "federation.weighting": "uniform",
                             "model.text_prefix": 'q: "x" \\ line\nnext\t'})
    assert "\n" in cfg.model.text_prefix
    path = tmp_path / "resolved.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config(path) == cfg


def test_config_is_frozen_and_replace_validates():
    cfg = ExperimentConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 5  # type: ignore[misc]
    assert cfg.replace(**{"train.lr": 0.3}).train.lr == 0.3
    with pytest.raises(ConfigError):
        cfg.replace(**{"train.lr": -1})


@pytest.mark.parametrize("overrides, must_say", [
    ({"data.languages": ["en", "eng"]}, ["data.languages", "'en' and 'eng'"]),
    ({"data.languages": ["eng", "xx1"]}, ["data.languages", "'xx1'"]),
    ({"data.languages": ["eng"], "data.heldout_languages": ["en"]}, ["data.heldout_languages", "never train"]),
    ({"paradigm": "transfer", "data.languages": ["swh"], "transfer.sources": ["eng"]}, ["transfer.sources", "['eng']"]),
    ({"paradigm": "zeroshot", "transfer.sources": []}, ["transfer.sources", "empty"]),
    ({"data.languages": ["swh"], "data.low_resource": ["hau"]}, ["data.low_resource", "['hau']"]),
    ({"data.labels": ["only"]}, ["data.labels", "at least 2"]),
])
def test_language_roles_and_labels_are_refused_at_parse(overrides, must_say):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for text in must_say:
        assert text in str(err.value)


def test_language_roles_are_checked_only_where_the_config_tells():
    # Without data.languages the languages come from the data: only the run can check sources and low_resource.
    cfg = load_config(None, {"paradigm": "transfer", "transfer.sources": ["fr"], "data.low_resource": ["yo"]})
    assert (cfg.transfer.sources, cfg.data.low_resource, cfg.data.languages) == (("fra",), ("yor",), ())
    # Sources matter only to the paradigms that train on them first.
    assert load_config(None, {"data.languages": ["swh"]}).transfer.sources == ("eng",)
    assert load_config(None, {"data.languages": ["swh"], "data.heldout_languages": ["hau"],
                              "data.low_resource": ["hau"]}).data.low_resource == ("hau",)
