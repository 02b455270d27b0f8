"""Language-code normalisation: every benchmark language round-trips, macrolanguages meet, errors explain."""

from __future__ import annotations

import re

import pytest

from mfpt.core.languages import (
    DEFAULT_SCRIPT,
    MACRO_DOMINANT,
    UnknownLanguageError,
    _table,
    base_language,
    language_name,
    normalize_language,
    normalize_languages,
)
from mfpt.data.benchmarks import BENCHMARKS

ALL_BENCHMARK_CODES = [(name, code) for name, info in BENCHMARKS.items() for code in info.native_codes]


@pytest.mark.parametrize(("benchmark", "code"), ALL_BENCHMARK_CODES)
def test_every_benchmark_code_round_trips(benchmark: str, code: str) -> None:
    canonical = normalize_language(code)
    assert normalize_language(canonical) == canonical
    assert re.fullmatch(r"[a-z]{3}(_[A-Z][a-z]{3})?", canonical), canonical
    assert language_name(canonical) == language_name(code)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_languages_stay_distinct(name: str) -> None:
    info = BENCHMARKS[name]
    assert len(set(info.languages)) == len(info.native_codes)


def test_sib200_covers_205_flores_codes() -> None:
    assert len(BENCHMARKS["sib200"].languages) == 205


@pytest.mark.parametrize("code", ["sw", "swa", "swh", "swh_Latn", "SW", "sw-KE", "Swh_latn"])
def test_swahili_spellings_meet(code: str) -> None:
    assert normalize_language(code) == "swh"
    assert language_name(code) == "Swahili"


@pytest.mark.parametrize(
    ("code", "canonical"),
    [
        ("zh", "cmn"), ("zho_Hans", "cmn"), ("cmn_hans", "cmn"), ("zh-Hant", "cmn_Hant"), ("zho_Hant", "cmn_Hant"),
        ("ar", "arb"), ("arb_Arab", "arb"), ("arb_Latn", "arb_Latn"), ("fa", "pes"), ("ms", "zsm"), ("et", "ekk"),
        ("est_Latn", "ekk"), ("lv", "lvs"), ("om", "gaz"), ("orm", "gaz"), ("uz", "uzn"), ("ne", "npi"),
        ("pt-BR", "por"), ("en", "eng"), ("fre", "fra"), ("iw", "heb"), ("mol", "ron"), ("ace_Arab", "ace_Arab"),
        ("ace_Latn", "ace"), ("kas_Deva", "kas_Deva"), ("ajp_Arab", "ajp"), ("apc_Arab", "apc"), ("wol", "wol"),
        ("grn_Latn", "gug"), ("aka_Latn", "aka"), ("twi_Latn", "twi"),
    ],
)
def test_canonical_codes(code: str, canonical: str) -> None:
    assert normalize_language(code) == canonical


def test_base_language_drops_the_script() -> None:
    assert base_language("zho_Hant") == "cmn"
    assert base_language("ace_Arab") == "ace"


def test_macro_table_maps_macrolanguages_to_their_members() -> None:
    table = _table().by_code
    for macro, member in MACRO_DOMINANT.items():
        assert table[macro].scope == "M", macro
        assert table[member].scope == "I" and table[member].macro == macro, (macro, member)


def test_default_scripts_belong_to_canonical_codes() -> None:
    for code in DEFAULT_SCRIPT:
        assert normalize_language(code) == code


def test_table_is_the_full_iso_639_3_set() -> None:
    table = _table()
    assert len(table.by_code) > 7900
    assert len(table.part1) >= 180
    for part1 in table.part1:  # every 639-1 code normalises to something in the table
        assert base_language(part1) in table.by_code


def test_rare_udhr_style_codes_are_accepted() -> None:
    for code in ("kin", "zul", "tir", "quy", "nav", "hat"):
        assert normalize_language(code) == code


def test_unknown_code_suggests_close_known_codes() -> None:
    with pytest.raises(UnknownLanguageError) as err:
        normalize_language("swz")
    message = str(err.value)
    assert "'swz'" in message
    assert "'swh' (Swahili)" in message
    assert isinstance(err.value, ValueError)


def test_language_name_typed_as_code_suggests_its_code() -> None:
    with pytest.raises(UnknownLanguageError, match=r"'swh' \(Swahili\)"):
        normalize_language("Swahili")


@pytest.mark.parametrize("code", ["", "xx", "s w", "sw_@@", "abcdefghij"])
def test_malformed_or_unknown_codes_are_refused(code: str) -> None:
    with pytest.raises(UnknownLanguageError):
        normalize_language(code)


def test_normalize_languages_keeps_order() -> None:
    assert normalize_languages(["yo", "sw", "zh-Hans"]) == ("yor", "swh", "cmn")
    assert normalize_languages("yo, sw") == ("yor", "swh")


def test_normalize_languages_refuses_the_same_language_twice() -> None:
    with pytest.raises(ValueError, match=r"'sw' and 'swh_Latn' both mean 'swh' \(Swahili\)"):
        normalize_languages(["sw", "swh_Latn"])
