"""URIEL distances, their cache, the correlation code, the distance-vs-gain analysis and `mfpt distance`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mfpt.analysis.distance import DistanceAnalysisError, correlate, distance_analysis
from mfpt.analysis.figures import plot_distance_analysis
from mfpt.data import uriel as distance
from mfpt.data.uriel import KINDS, LanguageNotInURIELError, distance_matrix

LANGS = ["eng", "swh", "hau", "yor", "amh", "fra", "deu", "hin", "tha", "urd"]


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets an empty distance cache in its own XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mfpt" / "distances"


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    """The ten-language matrices of every kind, computed once (no cache: the module's tests share them)."""
    return {kind: distance_matrix(LANGS, kind, use_cache=False) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_is_a_distance_in_unit_interval(tables: dict[str, pd.DataFrame], kind: str) -> None:
    m = tables[kind]
    values = m.to_numpy()
    assert list(m.index) == list(m.columns) == LANGS
    assert not np.isnan(values).any()
    assert np.array_equal(values, values.T)
    assert np.all(np.diag(values) == 0.0)
    assert values.min() >= 0.0 and values.max() <= 1.0


# Every expected distance below is computed here, from URIEL's raw files or published coordinates, without mfpt's code.
TYPOLOGY_PREFIXES = {"syntactic": ("S_",), "phonological": ("P_",), "inventory": ("INV_",),
                     "featural": ("S_", "P_", "INV_")}
PAIRS = [("eng", "deu"), ("eng", "fra"), ("hin", "urd"), ("yor", "amh"), ("fra", "deu"), ("eng", "swh"),
         ("hau", "amh"), ("hau", "urd"), ("yor", "tha")]


def _raw(file: str) -> tuple[list[str], list[str], np.ndarray]:
    with np.load(distance.uriel_data_path(file)) as npz:
        data = npz["data"]
        return list(npz["langs"]), list(npz["feats"]), (data[:, :, 0] if data.ndim == 3 else data).astype(float)


@pytest.mark.parametrize("kind", list(TYPOLOGY_PREFIXES))
def test_typological_distances_are_the_cosine_distances_of_lang2vecs_knn_rows(tables: dict[str, pd.DataFrame],
                                                                            kind: str) -> None:
    """URIEL's definition, by hand: 1 - cosine of the language's *_knn feature rows (0/1), for every pair."""
    langs, feats, data = _raw("feature_predictions.npz")
    cols = [i for i, f in enumerate(feats) if f.startswith(TYPOLOGY_PREFIXES[kind])]
    assert len(cols) == {"syntactic": 103, "phonological": 28, "inventory": 158, "featural": 289}[kind]
    for a, b in PAIRS:
        u, v = (data[langs.index(code), cols] for code in (a, b))
        expected = 1 - float(u @ v) / math.sqrt(float(u @ u) * float(v @ v))
        assert tables[kind].loc[a, b] == pytest.approx(expected, abs=1e-12), (a, b)


def test_genetic_distance_is_one_minus_shared_glottolog_ancestors_over_the_deeper_tree() -> None:
    langs, _, fam = _raw("family_features.npz")
    for a, b in [("eng", "deu"), ("swh", "yor"), ("hin", "urd"), ("eng", "swh"), ("hau", "amh")]:
        u, v = fam[langs.index(a)] > 0, fam[langs.index(b)] > 0
        expected = 1 - (u & v).sum() / max(u.sum(), v.sum())
        assert distance_matrix([a, b], "genetic").loc[a, b] == pytest.approx(expected, abs=1e-12), (a, b)
    # Shared ancestry means a smaller distance: two Indo-Aryan languages, two West Germanic ones, then unrelated.
    m = distance_matrix(["hin", "urd", "eng", "deu", "swh"], "genetic")
    assert m.loc["hin", "urd"] < m.loc["eng", "deu"] < m.loc["eng", "swh"] == 1.0


# URIEL's (Glottolog's) coordinates of three languages, in degrees.
COORDINATES = {"eng": (53.0, -1.0), "swh": (-8.25, 37.75), "hin": (25.0, 77.0)}


@pytest.mark.parametrize(("a", "b"), [("eng", "swh"), ("eng", "hin"), ("swh", "hin")])
def test_geographic_distance_is_the_great_circle_between_the_languages_over_the_antipodal_distance(a, b) -> None:
    (lat1, lon1), (lat2, lon2) = (map(math.radians, COORDINATES[code]) for code in (a, b))
    haversine = 2 * math.asin(math.sqrt(math.sin((lat2 - lat1) / 2) ** 2
                                        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2))
    # The coordinates are recovered from URIEL's distances to fixed points, rounded there to whole degrees: good to
    # about 0.25 degrees each, that is 0.002 of the antipodal distance.
    assert distance_matrix([a, b], "geographic").loc[a, b] == pytest.approx(haversine / math.pi, abs=0.003)


def test_data_is_found_when_a_lang2vec_script_shadows_the_package(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """lang2vec's wheel puts bin/lang2vec.py first on sys.path of console scripts; it must not be imported."""
    (tmp_path / "lang2vec.py").write_text("raise ModuleNotFoundError(\"No module named 'pkg_resources'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lang2vec", raising=False)
    distance._feature_file.cache_clear()
    try:
        assert distance_matrix(["eng", "deu"], "syntactic", use_cache=False).loc["eng", "deu"] == pytest.approx(
            0.10, abs=0.005)
    finally:
        distance._feature_file.cache_clear()


@pytest.mark.parametrize(("code", "lat", "lon"), [("eng", 53.0, -1.0), ("swh", -8.25, 37.75), ("hin", 25.0, 77.0)])
def test_geographic_coordinates_are_recovered(code: str, lat: float, lon: float) -> None:
    geo = distance._feature_file("geocoord_features.npz")
    fit_lat, fit_lon, rms = distance.fit_coordinates(geo.data[geo.index[code]])
    assert abs(fit_lat - lat) < 0.25 and abs(fit_lon - lon) < 0.25 and rms < 0.003


@pytest.mark.parametrize("code", ["sw", "swa", "swh", "swh_Latn"])
def test_swahili_codes_all_reach_swahili(code: str) -> None:
    m = distance_matrix([code, "eng"], "syntactic")
    assert list(m.index) == ["swh", "eng"]
    assert m.loc["swh", "eng"] == pytest.approx(0.53, abs=0.005)


def test_same_language_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'sw' and 'swh'"):
        distance_matrix(["sw", "swh"], "syntactic")


def test_language_missing_from_uriel_is_named_with_nearest_codes() -> None:
    # Montenegrin: a valid ISO 639-3 code (2008) that URIEL, built from older tables, does not have.
    with pytest.raises(LanguageNotInURIELError, match=r"'cnr' \(Montenegrin\)\. Nearest codes URIEL has: 'hbs'.*'srp'"):
        distance_matrix(["eng", "cnr"], "genetic")


def test_language_without_data_borrows_its_macrolanguage_and_the_cache_remembers(cache_home: Path) -> None:
    # mfpt normalises 'no' to nob, but URIEL files Norwegian's Glottolog ancestry under the macrolanguage nor.
    for _ in range(2):  # computed, then read from the cache
        m = distance_matrix(["no", "dan", "fin"], "genetic")
        assert m.attrs["substitutes"] == {"nob": "nor"}
        assert m.loc["nob", "dan"] == pytest.approx(1 / 3) and m.loc["nob", "fin"] == 1.0
    assert distance_matrix(["dan", "fin"], "genetic").attrs["substitutes"] == {}


def test_isolate_has_no_genetic_distance_but_keeps_a_clean_diagonal() -> None:
    m = distance_matrix(["eus", "spa", "fra"], "genetic")  # Basque: no Glottolog ancestors in URIEL
    assert m.loc["eus"].isna().sum() == 2 and m.loc["eus", "eus"] == 0.0
    assert m.equals(m.T) and m.loc["spa", "fra"] < 1.0


def test_unknown_kind_is_refused_with_suggestion() -> None:
    with pytest.raises(ValueError, match="Did you mean 'syntactic'"):
        distance_matrix(["eng", "fra"], "syntax")


# ---------------------------------------------------------------------------------------------- cache


def test_cache_is_reused_for_the_same_language_set(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = distance_matrix(["eng", "fra", "swh"], "geographic")
    assert len(list(cache_home.glob("geographic-*.json"))) == 1

    def fail(*args: object) -> None:
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(distance, "_compute", fail)
    again = distance_matrix(["swh", "eng", "fra"], "geographic")  # same set, other order
    pd.testing.assert_frame_equal(again, first.loc[["swh", "eng", "fra"], ["swh", "eng", "fra"]])


@pytest.mark.parametrize("garbage", ["{not json", '{"kind": "syntactic"}', ""])
def test_corrupt_cache_is_ignored_and_rebuilt(cache_home: Path, garbage: str) -> None:
    expected = distance_matrix(["eng", "hau", "yor"], "syntactic")
    (path,) = cache_home.glob("syntactic-*.json")
    path.write_text(garbage)
    pd.testing.assert_frame_equal(distance_matrix(["eng", "hau", "yor"], "syntactic"), expected)
    assert json.loads(path.read_text())["languages"] == ["eng", "hau", "yor"]
    assert not list(cache_home.glob(".*.tmp"))  # atomic write left no temp file behind


def test_cache_respects_xdg_and_nothing_is_written_into_site_packages(cache_home: Path) -> None:
    package = distance.uriel_data_path("x").parent.parent
    assert (package / "data" / "features.npz").is_file()
    before = {p: p.stat().st_mtime_ns for p in package.rglob("*") if "__pycache__" not in p.parts}
    distance.distance_matrices(["eng", "swh"], KINDS)
    after = {p: p.stat().st_mtime_ns for p in package.rglob("*") if "__pycache__" not in p.parts}
    assert before == after
    assert sorted(p.name.split("-")[0] for p in cache_home.glob("*.json")) == sorted(KINDS)


# ---------------------------------------------------------------------------------------------- correlations


def test_correlation_reproduces_scipy() -> None:
    from scipy import stats

    x = [0.1, 0.4, 0.35, 0.8, 0.5, 0.5]  # a tie, to exercise Spearman's average ranks
    y = [1.0, 3.5, 2.0, 7.5, 4.0, 2.5]
    r, p_r, rho, p_rho, note = correlate(x, y)
    assert note == ""
    assert (r, p_r) == pytest.approx(tuple(stats.pearsonr(x, y)), rel=1e-12)
    assert (rho, p_rho) == pytest.approx(tuple(stats.spearmanr(x, y)), rel=1e-12)
    # Literal values printed by scipy 1.17.1, so a scipy upgrade that changed them would be noticed.
    assert (r, p_r, rho, p_rho) == pytest.approx((0.9229962572183332, 0.008666064815530896,
                                                  0.898645105261295, 0.01488862200558035), rel=1e-9)


def test_correlation_is_nan_with_reason_when_undefined() -> None:
    assert correlate([1.0] * 5, [1.0, 2.0, 3.0, 4.0, 5.0])[4] == "distance is the same for every language"
    result = correlate([0.1, 0.2, 0.3, 0.4, float("nan")], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert all(math.isnan(v) for v in result[:4]) and result[4] == "too few languages for a correlation: 4, needs 5"
    assert not math.isnan(correlate([0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 2.0, 3.0, 5.0, 4.0])[0])


# ---------------------------------------------------------------------------------------------- analysis

GAINS = {
    "federated - local": {"eng": 0.5, "fra": 1.0, "sw": 6.0, "hau": 4.0, "yor": 7.5, "amh": 5.0},
    "federated - transfer": {"eng": 0.2, "fra": 0.4, "sw": 3.0, "hau": 2.5, "yor": 2.0, "amh": 4.0},
}


def test_analysis_numbers_figures_and_markdown(tmp_path: Path) -> None:
    langs = ["eng", "fra", "swh", "hau", "yor", "amh"]
    kinds = ("syntactic", "genetic")  # two kinds keep the figures (most of the time) small; all six work alike
    result = distance_analysis(GAINS, langs, reference=["eng", "fra"], kinds=kinds)
    figures = plot_distance_analysis(result, tmp_path / "fig")
    syn = distance_matrix(langs, "syntactic")
    assert result.to_reference.loc["swh", "syntactic"] == pytest.approx((syn.loc["swh", "eng"] + syn.loc["swh", "fra"]) / 2)
    assert result.to_reference.loc["eng", "syntactic"] == pytest.approx(syn.loc["eng", "fra"])  # itself excluded
    assert result.to_federation.loc["hau", "syntactic"] == pytest.approx(syn.loc["hau"].drop("hau").mean())
    frame = result.correlations_frame()
    assert len(frame) == len(kinds) * 2 * 2
    row = frame.query("kind == 'syntactic' and measure == 'reference' and gain == 'federated - local'").iloc[0]
    from scipy import stats

    expected = stats.spearmanr(result.to_reference["syntactic"], result.gains["federated - local"])
    assert (row.spearman_rho, row.spearman_p) == pytest.approx(tuple(expected))
    assert set(figures) == {"reference", "federation", "heatmap"}
    for path in figures.values():
        assert path.parent == tmp_path / "fig" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = result.to_markdown(figures, "figures")
    assert "](figures/distance_vs_gain_reference.png)" in md and "](figures/distance_heatmaps.png)" in md
    assert "| swh (Swahili) |" in md and "Spearman ρ" in md


@pytest.mark.parametrize("n", [0, 2])
def test_analysis_refuses_fewer_than_three_languages(tmp_path: Path, n: int) -> None:
    langs = ["eng", "swh", "hau"]
    gains = {"federated - local": {lang: 1.0 + i for i, lang in enumerate(langs[:n])} | {"hau": float("nan")}}
    with pytest.raises(DistanceAnalysisError, match=f"at least 3 languages; {n} have them"):
        distance_analysis(gains, langs, reference=["eng"])
    assert not list(tmp_path.glob("*.png"))


def test_analysis_refuses_gains_for_languages_outside_the_run() -> None:
    with pytest.raises(DistanceAnalysisError, match="not in the run: deu"):
        distance_analysis({"federated - local": {"eng": 1, "swh": 2, "hau": 3, "deu": 4}}, ["eng", "swh", "hau"],
                          reference=["eng"])


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    from mfpt.cli import build_parser

    return build_parser()


def test_cli_prints_six_matrices_and_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "d.csv"
    args = _parser().parse_args(["distance", "eng", "fra", "swh", "hau", "yor", "amh", "--kind", "all", "--csv", str(csv)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for kind in KINDS:
        assert f"\n{kind} distance (" in out
    assert "do not reproduce URIEL's official" in out.replace("\n", " ")
    table = pd.read_csv(csv, index_col=[0, 1])
    assert table.shape == (36, 6) and table.loc[("genetic", "swh"), "yor"] == pytest.approx(0.75, abs=0.005)


def test_cli_names_the_bad_language(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["distance", "eng", "cnr"])
    assert args.func(args) == 2
    assert "'cnr'" in capsys.readouterr().err


def test_cli_help_lists_every_kind() -> None:
    text = _parser()._subparsers._group_actions[0].choices["distance"].format_help()  # type: ignore[union-attr]
    for kind in KINDS:
        assert kind in text
