"""URIEL language distances: pairwise matrices of the typological distance kinds, cached on disk.

mfpt.analysis.distance correlates them with accuracy gains; `mfpt distance` prints them; personalisation
weighs languages by them (mfpt.federation.strategies.personalized).

Source choice: the URIEL feature files shipped in the `lang2vec==1.1.2` wheel, located through
importlib.metadata and read with numpy; no lang2vec code is ever imported. Why not the alternatives:
- lang2vec's code does `import pkg_resources` (gone in setuptools >= 81) and its PyPI build has no
  `distance()` (GitHub master needs an LFS zip that no registry carries), so only its data is usable.
- `urielplus==1.3.2` (maintained) bundles the very same three .npz files (identical md5), but its
  constructor copies them into its own site-packages folder, `import urielplus.urielplus` calls
  `logging.basicConfig(level=INFO)`, and it measures distance on the raw, sparse features only: over 20
  African and high-resource languages 135 of 190 phonological pairs came out undefined (-1) and genetic
  took 20 s. lang2vec's data includes URIEL's k-NN-imputed typology (`*_knn`), so every pair is defined.
  lang2vec's last release is from 2019, but what we use is URIEL's data, the same files urielplus ships.
- The wheel also installs `bin/lang2vec.py`, which shadows the package inside console scripts; hence
  the files are located through the install record, never by importing `lang2vec`.
Recipe (URIEL's definitions, Littell et al. 2017), all in [0, 1]:
- syntactic / phonological / inventory: cosine distance of the `syntax_knn` / `phonology_knn` /
  `inventory_knn` vectors (0/1 features); featural: cosine of their concatenation;
- genetic: 1 - |shared Glottolog ancestor nodes| / max(depth of either language) from the `fam` vectors
  (NaN for the 676 URIEL languages without ancestors there, e.g. some isolates and sign languages);
- geographic: great-circle distance / antipodal distance (20,015 km). Each `geo` feature `GC_lat_lon` is
  the language's great-circle distance to that point over the antipodal one, so the coordinates are
  recovered by a least-squares grid search (coarse 2 deg, then 0.25 deg, then 0.01 deg). The point names
  are rounded to whole degrees, so the fit keeps an rms residual of ~0.0015 (eng lands at 52.98, -0.95
  for URIEL's 53, -1): distances are good to about +-0.002.
Caveat: these recomputed values do NOT reproduce URIEL's official precomputed tables (lang2vec's README
gives syntactic eng-fra 0.4569; this recipe gives 0.19). Compare rankings, not raw values, with papers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mfpt.config.choices import DistanceKind
from mfpt.core.errors import UserError
from mfpt.core.files import atomic_write, write_json
from mfpt.core.languages import base_language, language_name, macrolanguages, normalize_languages
from mfpt.core.registry import UnknownNameError, unknown_name_message

log = logging.getLogger(__name__)


# Every kind of the config's DistanceKind, in its order (one list of kinds for config, data and reports).
KINDS: tuple[str, ...] = tuple(kind.value for kind in DistanceKind)


URIEL_PACKAGE = "lang2vec"


URIEL_REQUIREMENT = "lang2vec==1.1.2"


# Bump when the recipe changes: it is part of every cache key, so old cached numbers are never reused.
RECIPE_VERSION = 1


# Feature-name prefixes of each typological kind in `feature_predictions.npz` (lang2vec's `*_knn` sets).
_TYPOLOGY_PREFIXES: dict[str, tuple[str, ...]] = {
    "syntactic": ("S_",),
    "phonological": ("P_",),
    "inventory": ("INV_",),
    "featural": ("S_", "P_", "INV_"),
}


KIND_DEFINITIONS: dict[str, str] = {
    "syntactic": "cosine distance of URIEL syntax_knn vectors",
    "genetic": "1 - shared Glottolog ancestors / max depth (URIEL fam)",
    "geographic": "great-circle distance / antipodal distance (URIEL geo)",
    "phonological": "cosine distance of URIEL phonology_knn vectors",
    "inventory": "cosine distance of URIEL inventory_knn vectors",
    "featural": "cosine distance of syntax_knn+phonology_knn+inventory_knn",
}


CAVEAT = (
    "Distances are recomputed from the URIEL features shipped in lang2vec (see mfpt.data.uriel); they do not "
    "reproduce URIEL's official precomputed tables (lang2vec's README: syntactic eng-fra 0.46; here 0.19). "
    "Compare rankings, not raw values, with published numbers."
)


_NOT_INSTALLED = (
    f"URIEL data not found: the {URIEL_PACKAGE!r} package is not installed. Install it with: pip install "
    f"'{URIEL_REQUIREMENT}'"
)


class LanguageNotInURIELError(UserError, ValueError):
    """A language that mfpt knows but URIEL has no entry for; the message suggests codes URIEL has."""


class URIELDataError(UserError, RuntimeError):
    """The URIEL data package is missing or unreadable; the message says what to install."""


@dataclass(frozen=True)
class _FeatureFile:
    index: dict[str, int]  # ISO 639-3 code -> row
    feats: np.ndarray  # (n_feats,) str
    data: np.ndarray  # (n_langs, n_feats) float32; -1 = missing


def uriel_data_path(name: str) -> Path:
    """Path of one of lang2vec's data files, found through its install record without importing lang2vec."""
    # Never `import lang2vec`: its wheel also installs a script `bin/lang2vec.py`, which shadows the package
    # in every console script of the venv (`mfpt`, `pytest`) and fails on `import pkg_resources`.
    try:
        dist = metadata.distribution(URIEL_PACKAGE)
    except metadata.PackageNotFoundError:
        raise URIELDataError(_NOT_INSTALLED) from None
    return Path(str(dist.locate_file(f"{URIEL_PACKAGE}/data/{name}")))


@functools.lru_cache(maxsize=None)
def _feature_file(name: str) -> _FeatureFile:
    """One of lang2vec's .npz files, loaded once per process (read-only: nothing is written to site-packages)."""
    try:
        with np.load(uriel_data_path(name), allow_pickle=False) as npz:
            langs = npz["langs"]
            data = npz["data"][:, :, 0]  # the knn/fam/geo files carry a single "source" column
            feats = npz["feats"]
    except (OSError, KeyError, ValueError) as exc:
        raise URIELDataError(
            f"Cannot read URIEL file {name!r} from {URIEL_PACKAGE}: {exc}. Reinstall it: pip install --force-reinstall "
            f"'{URIEL_REQUIREMENT}'"
        ) from exc
    return _FeatureFile({str(code): row for row, code in enumerate(langs)}, feats, data)


def _file_for(kind: str) -> str:
    if kind in _TYPOLOGY_PREFIXES:
        return "feature_predictions.npz"
    return {"genetic": "family_features.npz", "geographic": "geocoord_features.npz"}[kind]


def uriel_source() -> str:
    """'lang2vec 1.1.2': the installed URIEL distribution, recorded in caches and reports."""
    try:
        return f"{URIEL_PACKAGE} {metadata.version(URIEL_PACKAGE)}"
    except metadata.PackageNotFoundError:
        raise URIELDataError(_NOT_INSTALLED) from None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownNameError(unknown_name_message("distance kind", kind, list(KINDS)))


def _uriel_rows(codes: Sequence[str], kind: str) -> tuple[list[int], dict[str, str]]:
    """(row of each canonical code in the URIEL file for `kind`, {code: macrolanguage whose row stands in}).

    Names the languages URIEL lacks. A language URIEL lists with no data of this kind borrows its
    macrolanguage's row when that has data: URIEL files Glottolog ancestry under `nor`, `est`, `lav`, `aka`,
    not under the individual codes `nob`, `ekk`, `lvs`, `twi` that mfpt normalises to.
    """
    file = _feature_file(_file_for(kind))
    rows, missing, substitutes = [], [], {}
    for code in codes:
        row = file.index.get(base_language(code))
        if row is None:
            missing.append(code)
            continue
        macro = macrolanguages().get(base_language(code), "")
        if not _has_data(file.data[row], kind) and macro in file.index and _has_data(file.data[file.index[macro]], kind):
            row, substitutes[code] = file.index[macro], macro
        rows.append(row)
    if missing:
        raise LanguageNotInURIELError("; ".join(_not_in_uriel_message(code, file.index) for code in missing))
    return rows, substitutes


def _has_data(row: np.ndarray, kind: str) -> bool:
    # fam rows are 0/1 ancestor flags (all 0 = no ancestry known); the other files mark missing values with -1.
    return bool((row > 0).any()) if kind == "genetic" else bool((row >= 0).any())


def _not_in_uriel_message(code: str, index: Mapping[str, int]) -> str:
    base = base_language(code)
    # Nearest first by meaning (same macrolanguage: cnr -> srp, hrv, bos), then by spelling (same first letters).
    related = [c for c in _macro_relatives(base) if c in index]
    spelled = sorted((c for c in index if c[:2] == base[:2]), key=lambda c: (-_common_prefix_len(base, c), c))
    close = list(dict.fromkeys([*related, *spelled]))[:5]
    hint = ", ".join(f"{c!r} ({language_label(c)})" for c in close)
    return (
        f"URIEL has no entry for language {code!r} ({language_label(code)}). Nearest codes URIEL has: {hint or 'none'}. "
        "Drop it from the distance analysis or use one of those codes."
    )


def _macro_relatives(code: str) -> list[str]:
    """The macrolanguage of `code` and its other members (empty if it has none)."""
    macro = macrolanguages().get(code, code)
    members = sorted(c for c, m in macrolanguages().items() if m == macro and c != code)
    return ([macro] if macro != code else []) + members


def _common_prefix_len(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def language_label(code: str) -> str:
    """The language's English name, or 'unknown' for a code outside the ISO 639-3 table."""
    try:
        return language_name(code)
    except ValueError:
        return "unknown"


def _cosine_distances(vectors: np.ndarray) -> np.ndarray:
    """(n, n) cosine distances of non-negative rows; NaN where a row is all zero (no features)."""
    norms = np.linalg.norm(vectors, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = (vectors @ vectors.T) / np.outer(norms, norms)
    # Features are 0/1, so similarity is in [0, 1]; clip only float rounding.
    return np.clip(1.0 - sim, 0.0, 1.0)


def _genetic_distances(fam: np.ndarray) -> np.ndarray:
    """(n, n) 1 - shared ancestors / max depth; NaN where a language has no Glottolog ancestors in URIEL."""
    shared = fam @ fam.T
    depth = fam.sum(axis=1)
    deepest = np.maximum.outer(depth, depth)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = 1.0 - shared / deepest
    dist[(depth[:, None] == 0) | (depth[None, :] == 0)] = np.nan
    return np.clip(dist, 0.0, 1.0)


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


@functools.lru_cache(maxsize=1)
def _geo_points() -> np.ndarray:
    """(299, 3) unit vectors of URIEL's fixed `GC_<lat>_<lon>` points."""
    feats = _feature_file("geocoord_features.npz").feats
    lat_lon = np.array([[float(v) for v in str(name).split("_")[1:3]] for name in feats])
    return _unit(lat_lon[:, 0], lat_lon[:, 1])


@functools.lru_cache(maxsize=1)
def _coarse_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lats, lons, (16380, 299) great-circle distance / pi to URIEL's points) on a 2-degree grid, made once."""
    lats, lons = (a.ravel() for a in np.meshgrid(np.arange(-90.0, 90.1, 2.0), np.arange(-180.0, 180.0, 2.0),
                                                 indexing="ij"))
    return lats, lons, np.arccos(np.clip(_unit(lats, lons) @ _geo_points().T, -1.0, 1.0)) / np.pi


def fit_coordinates(geo: np.ndarray) -> tuple[float, float, float]:
    """(lat, lon, rms residual) whose great-circle distances / pi to URIEL's points best match `geo` (299,)."""
    points, known = _geo_points(), geo >= 0
    target = geo[known]

    def best(lats: np.ndarray, lons: np.ndarray) -> tuple[float, float, float]:
        grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
        cand = _unit(grid_lat.ravel(), grid_lon.ravel())
        pred = np.arccos(np.clip(cand @ points[known].T, -1.0, 1.0)) / np.pi
        err = ((pred - target) ** 2).mean(axis=1)
        i = int(err.argmin())
        return float(grid_lat.ravel()[i]), float(grid_lon.ravel()[i]), float(np.sqrt(err[i]))

    # Coarse-to-fine: the misfit is smooth with one minimum, and a full 0.01 deg grid would be 650M points.
    grid_lat, grid_lon, grid_pred = _coarse_grid()
    i = int(((grid_pred[:, known] - target) ** 2).mean(axis=1).argmin())
    lat, lon = float(grid_lat[i]), float(grid_lon[i])
    for step, half in ((0.25, 2.5), (0.01, 0.15)):
        offsets = np.arange(-half, half + step / 2, step)
        lat, lon, rms = best(np.clip(lat + offsets, -90.0, 90.0), lon + offsets)
    lon = (lon + 180.0) % 360.0 - 180.0
    return round(lat, 2), round(lon, 2), rms


def _geographic_distances(geo: np.ndarray) -> np.ndarray:
    # A row without any known value would have no coordinates: NaN distances rather than a made-up place.
    coords = np.array([fit_coordinates(row)[:2] if (row >= 0).any() else (np.nan, np.nan) for row in geo])
    units = _unit(coords[:, 0], coords[:, 1])
    return np.arccos(np.clip(units @ units.T, -1.0, 1.0)) / np.pi


def _compute(codes: Sequence[str], kind: str) -> tuple[np.ndarray, dict[str, str]]:
    """((n, n) distances of canonical `codes` for `kind`, substitutes) straight from the URIEL files."""
    file = _feature_file(_file_for(kind))
    rows, substitutes = _uriel_rows(codes, kind)
    vectors = file.data[rows].astype(np.float64)
    if kind in _TYPOLOGY_PREFIXES:
        mask = np.array([str(f).startswith(_TYPOLOGY_PREFIXES[kind]) for f in file.feats])
        dist = _cosine_distances(np.where(vectors[:, mask] > 0, vectors[:, mask], 0.0))
    elif kind == "genetic":
        dist = _genetic_distances((vectors > 0).astype(np.float64))
    else:
        dist = _geographic_distances(vectors)
    dist = (dist + dist.T) / 2.0  # exact symmetry despite float rounding in the products
    np.fill_diagonal(dist, 0.0)
    return dist, substitutes


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/mfpt/distances, or ~/.cache/mfpt/distances (XDG says ignore a relative XDG_CACHE_HOME)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "mfpt" / "distances"


def _cache_path(codes: Sequence[str], kind: str, source: str) -> Path:
    key = json.dumps({"languages": sorted(codes), "kind": kind, "source": source, "recipe": RECIPE_VERSION})
    return cache_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def _read_cache(path: Path, codes: Sequence[str], kind: str, source: str) -> pd.DataFrame | None:
    """The cached matrix for exactly this language set, or None if absent, stale or corrupt."""
    if not path.exists():
        return None
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        langs = entry["languages"]
        if (entry["kind"], entry["source"], entry["recipe"], sorted(langs)) != (kind, source, RECIPE_VERSION,
                                                                                sorted(codes)):
            raise ValueError("cache entry is for other languages, kind or data version")
        matrix = np.array([[np.nan if v is None else float(v) for v in row] for row in entry["matrix"]])
        if matrix.shape != (len(langs), len(langs)) or not np.all(np.isnan(matrix) | ((matrix >= 0) & (matrix <= 1))):
            raise ValueError(f"matrix of shape {matrix.shape} or values outside [0, 1]")
        substitutes = {str(k): str(v) for k, v in entry["substitutes"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("Ignoring unreadable distance cache %s (%s); rebuilding it.", path, exc)
        return None
    return _frame(matrix, langs, substitutes)


def _frame(matrix: np.ndarray, codes: Sequence[str], substitutes: Mapping[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(matrix, index=list(codes), columns=list(codes))
    frame.attrs["substitutes"] = dict(substitutes)
    return frame


def _write_cache(path: Path, frame: pd.DataFrame, kind: str, source: str) -> None:
    entry = {
        "kind": kind,
        "source": source,
        "recipe": RECIPE_VERSION,
        "languages": list(frame.index),
        "substitutes": frame.attrs.get("substitutes", {}),
        "matrix": [[None if math.isnan(v) else round(float(v), 12) for v in row] for row in frame.to_numpy()],
    }
    try:
        write_json(path, entry)
    except OSError as exc:  # a read-only home must not stop the command; the next run recomputes
        log.warning("Cannot write distance cache %s (%s); continuing without it.", path, exc)


def distance_matrix(languages: Sequence[str], kind: str, *, use_cache: bool = True) -> pd.DataFrame:
    """Pairwise URIEL `kind` distances in [0, 1] (NaN: no URIEL data); rows/cols = canonical codes, given order.

    `.attrs["substitutes"]` maps a code to the macrolanguage whose URIEL data stood in for it (e.g. nob -> nor)."""
    _check_kind(kind)
    if isinstance(languages, str):
        languages = [languages]
    codes = list(normalize_languages(languages))
    if not codes:
        raise ValueError("distance_matrix needs at least one language, e.g. ['eng', 'swh'].")
    source = uriel_source()
    path = _cache_path(codes, kind, source)
    frame = _read_cache(path, codes, kind, source) if use_cache else None
    if frame is None:
        matrix, substitutes = _compute(codes, kind)
        frame = _frame(matrix, codes, substitutes)
        if use_cache:
            _write_cache(path, frame, kind, source)
    result = frame.loc[codes, codes].copy()
    # attrs: {code: macrolanguage} whose URIEL data stands in for a language URIEL lists without any
    result.attrs["substitutes"] = {c: m for c, m in frame.attrs.get("substitutes", {}).items() if c in codes}
    return result


def distance_matrices(languages: Sequence[str], kinds: Sequence[str] = KINDS, *,
                      use_cache: bool = True) -> dict[str, pd.DataFrame]:
    """{kind: distance_matrix(languages, kind)} for several kinds."""
    return {kind: distance_matrix(languages, kind, use_cache=use_cache) for kind in kinds}


def distance_array(languages: Sequence[str], kind: str) -> np.ndarray:
    """The URIEL `kind` distance matrix of `languages` as an array; a pair URIEL cannot measure counts as 1 (the maximum)."""
    matrix = distance_matrix(list(languages), kind).to_numpy(dtype=np.float64)
    return np.where(np.isnan(matrix), 1.0, matrix)


def format_number(value: float | None, digits: int) -> str:
    """`value` with `digits` decimals, or 'n/a' when it is undefined (None or NaN)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def substitution_notes(matrices: Mapping[str, pd.DataFrame]) -> list[str]:
    """One line per language whose URIEL data came from its macrolanguage, naming the kinds affected."""
    kinds_by_pair: dict[tuple[str, str], list[str]] = {}
    for kind, frame in matrices.items():
        for code, macro in frame.attrs.get("substitutes", {}).items():
            kinds_by_pair.setdefault((code, macro), []).append(kind)
    return [
        f"{code}: URIEL lists {code} ({language_label(code)}) without {'/'.join(kinds)} data; used that of its "
        f"macrolanguage {macro}."
        for (code, macro), kinds in kinds_by_pair.items()
    ]


def format_matrix(frame: pd.DataFrame, title: str, digits: int = 2) -> str:
    """A fixed-width text table with a title line; NaN prints as n/a."""
    width = max(digits + 3, *(len(str(c)) for c in frame.columns)) + 1
    label = max(len(str(i)) for i in frame.index) + 1
    lines = [title, " " * label + "".join(f"{c:>{width}}" for c in frame.columns)]
    for lang, row in frame.iterrows():
        lines.append(f"{lang:<{label}}" + "".join(f"{format_number(v, digits):>{width}}" for v in row))
    return "\n".join(lines)


def matrices_to_csv(matrices: Mapping[str, pd.DataFrame], path: Path | str) -> Path:
    """Write stacked matrices as CSV with columns kind, language, <codes...> (read back: index_col=[0, 1])."""
    frames = [m.rename_axis("language").reset_index().assign(kind=kind) for kind, m in matrices.items()]
    table = pd.concat(frames, ignore_index=True)
    table = table[["kind", "language", *[c for c in table.columns if c not in ("kind", "language")]]]
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f", na_rep=""))
