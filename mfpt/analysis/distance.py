"""The language-distance analysis of a report: each language's URIEL distance to a reference set and to the rest
of the federation, correlated with its accuracy gain (mfpt.analysis.figures draws it, `to_markdown` reports it).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mfpt.core.errors import UserError
from mfpt.core.languages import normalize_languages
from mfpt.core.stats import mean
from mfpt.data.uriel import (
    CAVEAT,
    KINDS,
    RECIPE_VERSION,
    _check_kind,
    distance_matrix,
    format_number,
    language_label,
    substitution_notes,
    uriel_source,
)


class DistanceAnalysisError(UserError, ValueError):
    """The distance analysis cannot run on these results (e.g. fewer than 3 languages have gains)."""


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation (two-sided p-values, as scipy.stats computes them) of one distance/gain pair."""

    kind: str
    measure: str  # "reference" or "federation"
    gain: str
    n: int
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float
    note: str = ""


# Fewer points than this give no correlation, p-value or fit line: with 4 languages Spearman's rho has 24 orderings
# and its smallest two-sided p is 0.083, and one language moves Pearson's r anywhere; a line through 3 points
# suggests a trend the data cannot show.
MIN_CORRELATION_POINTS = 5


def correlate(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float, str]:
    """(pearson r, p, spearman rho, p, note) over pairs where both are finite; NaN with a note if undefined."""
    from scipy import stats  # imported here: `mfpt distance` should not pay scipy's import time

    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    nan = float("nan")
    if len(xa) < MIN_CORRELATION_POINTS:
        return nan, nan, nan, nan, f"too few languages for a correlation: {len(xa)}, needs {MIN_CORRELATION_POINTS}"
    # scipy warns and returns NaN on constant input; say why instead (e.g. every genetic distance is 1.0).
    if np.ptp(xa) == 0:
        return nan, nan, nan, nan, "distance is the same for every language"
    if np.ptp(ya) == 0:
        return nan, nan, nan, nan, "gain is the same for every language"
    pearson = stats.pearsonr(xa, ya)
    spearman = stats.spearmanr(xa, ya)
    return float(pearson.statistic), float(pearson.pvalue), float(spearman.statistic), float(spearman.pvalue), ""


MEASURES: dict[str, str] = {
    "reference": "distance to the reference set",
    "federation": "distance to the rest of the federation",
}


@dataclass(frozen=True, eq=False)
class DistanceAnalysis:
    """Per-language distances and their correlations with the gains (mfpt.analysis.figures draws them, to_markdown reports them)."""

    languages: tuple[str, ...]  # the run's languages, canonical
    reference: tuple[str, ...]
    kinds: tuple[str, ...]
    gains: pd.DataFrame  # index: languages with results; columns: gain names (accuracy points)
    to_reference: pd.DataFrame  # index: languages with results; columns: kinds
    to_federation: pd.DataFrame
    matrices: dict[str, pd.DataFrame]  # kind -> pairwise matrix of the run's languages
    correlations: tuple[Correlation, ...]
    source: str

    def distances(self, measure: str) -> pd.DataFrame:
        """Per-language distances for a measure of MEASURES: to the reference set or to the rest of the federation."""
        return {"reference": self.to_reference, "federation": self.to_federation}[measure]

    def correlation(self, kind: str, measure: str, gain: str) -> Correlation:
        """The correlation of one distance kind and measure with one gain."""
        return next(c for c in self.correlations if (c.kind, c.measure, c.gain) == (kind, measure, gain))

    def correlations_frame(self) -> pd.DataFrame:
        """One row per (kind, measure, gain) with n, r, rho and p-values."""
        return pd.DataFrame([dataclasses.asdict(c) for c in self.correlations])

    def to_markdown(self, figures: Mapping[str, Path], rel_dir: str | os.PathLike = ".", level: int = 2) -> str:
        """A Markdown section for the report to embed: tables, and links (relative to `rel_dir`) to `figures`
        ("reference" / "federation" / "heatmap" -> PNG, as mfpt.analysis.figures.plot_distance_analysis names them)."""
        h = "#" * level
        ref = ", ".join(self.reference)
        lines = [
            f"{h} Language distance and federated gains",
            "",
            f"URIEL distances ({self.source}, mfpt recipe v{RECIPE_VERSION}) of each language to the reference set "
            f"({ref}; mean over reference languages other than itself) and to the rest of the federation (mean over the "
            "other languages of the run), against its gain in accuracy points. " + CAVEAT,
            "",
        ]
        notes = substitution_notes(self.matrices)
        if notes:
            lines += [*(f"- {note}" for note in notes), ""]
        for measure in MEASURES:
            lines += [f"{h}# {MEASURES[measure].capitalize()}", ""]
            lines += _markdown_table(self.distances(measure).join(self.gains), digits={**{k: 3 for k in self.kinds},
                                                                     **{g: 1 for g in self.gains.columns}})
            lines += ["", f"![{MEASURES[measure]} vs. gain]({_link(rel_dir, figures[measure])})", ""]
        lines += [f"{h}# Correlations", "",
                  "| distance kind | distance to | gain | n | Pearson r | p | Spearman ρ | p | note |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for c in self.correlations:
            lines.append(
                f"| {c.kind} | {c.measure} | {c.gain} | {c.n} | {format_number(c.pearson_r, 2)} | {format_p(c.pearson_p)} | "
                f"{format_number(c.spearman_rho, 2)} | {format_p(c.spearman_p)} | {c.note} |"
            )
        lines += ["", f"{h}# Pairwise distances of the run's languages", "",
                  f"![pairwise distance heatmaps]({_link(rel_dir, figures['heatmap'])})", ""]
        return "\n".join(lines)


def distance_analysis(
    gains: Mapping[str, Mapping[str, float]],
    languages: Sequence[str],
    reference: Sequence[str],
    kinds: Sequence[str] = KINDS,
) -> DistanceAnalysis:
    """Distances of each language to `reference` and to the federation, and their correlations with its gains."""
    if not kinds:
        raise DistanceAnalysisError(f"No distance kinds to analyse; pass some of: {', '.join(KINDS)}.")
    for kind in kinds:
        _check_kind(kind)
    langs = normalize_languages(languages)
    ref = normalize_languages(reference)
    if not ref:
        raise DistanceAnalysisError("The reference set is empty; give at least one language, e.g. reference=['eng'].")
    gain_frame = _gain_frame(gains, langs)
    have = list(gain_frame.index)
    if len(have) < 3:
        shown = ", ".join(have) or "none"
        raise DistanceAnalysisError(
            f"The distance analysis needs gains for at least 3 languages; {len(have)} have them ({shown}). "
            "Run more languages (or all paradigms it compares: federated, local, transfer) before reporting it."
        )
    union = list(dict.fromkeys([*langs, *ref]))
    full = {kind: distance_matrix(union, kind) for kind in kinds}
    to_ref = pd.DataFrame({k: [_mean_to(full[k], lang, [r for r in ref if r != lang]) for lang in have] for k in kinds},
                          index=have)
    to_fed = pd.DataFrame({k: [_mean_to(full[k], lang, [o for o in langs if o != lang]) for lang in have] for k in kinds},
                          index=have)
    correlations = tuple(
        Correlation(kind, measure, gain, int((np.isfinite(frame[kind]) & np.isfinite(gain_frame[gain])).sum()),
                    *correlate(frame[kind], gain_frame[gain]))
        for measure, frame in (("reference", to_ref), ("federation", to_fed))
        for gain in gain_frame.columns
        for kind in kinds
    )
    matrices = {kind: full[kind].loc[list(langs), list(langs)] for kind in kinds}
    return DistanceAnalysis(tuple(langs), tuple(ref), tuple(kinds), gain_frame, to_ref, to_fed, matrices,
                            correlations, uriel_source())


def _gain_frame(gains: Mapping[str, Mapping[str, float]], langs: Sequence[str]) -> pd.DataFrame:
    """Gains re-keyed by canonical code; rows = languages with at least one finite gain, in run order."""
    columns: dict[str, dict[str, float]] = {}
    for name, per_lang in gains.items():
        canon = dict(zip(normalize_languages(list(per_lang)), per_lang.values()))
        stray = [code for code in canon if code not in langs]
        if stray:
            raise DistanceAnalysisError(
                f"Gain {name!r} has languages that are not in the run: {', '.join(stray)}. "
                f"The run's languages are: {', '.join(langs)}."
            )
        columns[name] = {code: float(v) if v is not None else float("nan") for code, v in canon.items()}
    frame = pd.DataFrame(columns, index=list(langs), dtype=float)
    return frame[np.isfinite(frame).any(axis=1)] if len(frame.columns) else frame.iloc[:0]


def _mean_to(matrix: pd.DataFrame, lang: str, others: Sequence[str]) -> float:
    """Mean distance of `lang` to `others` over the pairs URIEL defines (NaN when none)."""
    values = matrix.loc[lang, list(others)].to_numpy(dtype=float) if others else np.array([])
    found = mean(values[np.isfinite(values)])
    return float("nan") if found is None else found


def format_p(p: float | None) -> str:
    """A p-value with three decimals ('<0.001' below that), or 'n/a' when it is undefined."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _link(rel_dir: str | os.PathLike, path: Path) -> str:
    rel = PurePosixPath(Path(rel_dir).as_posix())
    return str(rel / path.name) if str(rel) not in ("", ".") else path.name


def _markdown_table(frame: pd.DataFrame, digits: Mapping[str, int]) -> list[str]:
    header = ["language", *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(frame.columns)]
    for lang, row in frame.iterrows():
        cells = [f"{lang} ({language_label(str(lang))})"] + [format_number(row[c], digits.get(c, 3)) for c in frame.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
