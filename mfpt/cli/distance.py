"""`mfpt distance`: pairwise URIEL language distances, offline."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from mfpt.data.uriel import (
    CAVEAT,
    KIND_DEFINITIONS,
    KINDS,
    RECIPE_VERSION,
    URIELDataError,
    distance_matrices,
    format_matrix,
    language_label,
    matrices_to_csv,
    substitution_notes,
    uriel_source,
)

_CLI_DESCRIPTION = """\
Print the pairwise URIEL distance matrix of the given languages (0 = same, 1 = most distant).

Kinds:
""" + "".join(f"  {kind:<13} {KIND_DEFINITIONS[kind]}\n" for kind in KINDS) + """
Languages may be given in any form mfpt accepts (ISO 639-1/639-3, BCP-47, FLORES-200): sw, swa, swh and
swh_Latn all mean Swahili. Data: URIEL as shipped in lang2vec (offline). Results are cached in
$XDG_CACHE_HOME/mfpt/distances (default ~/.cache/mfpt/distances).
"""


_CLI_EPILOG = """\
examples:
  mfpt distance eng fra swh hau yor amh
  mfpt distance en sw ha --kind all --csv distances.csv
"""


def add_parser(subparsers: Any, config_args: argparse.ArgumentParser) -> None:
    """Add the `distance` subcommand to an argparse subparsers object (func=cmd_distance)."""
    parser = subparsers.add_parser(
        "distance",
        help="print pairwise URIEL language distances (syntactic, genetic, geographic, ...)",
        description=_CLI_DESCRIPTION,
        epilog=_CLI_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("languages", nargs="+", metavar="LANG", help="language codes, e.g. eng fra sw hau_Latn")
    parser.add_argument("--kind", choices=[*KINDS, "all"], default="syntactic",
                        help="which distance to print; 'all' prints every kind (default: %(default)s)")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="also write the matrices to FILE as CSV with columns kind, language, <codes...>")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute instead of reading/writing the distance cache")
    parser.set_defaults(func=cmd_distance)


def cmd_distance(args: argparse.Namespace) -> int:
    """Run `mfpt distance`; returns the exit status (2 on a bad language or kind)."""
    kind = getattr(args, "kind", "syntactic")
    kinds = KINDS if kind == "all" else (kind,)
    try:
        matrices = distance_matrices(args.languages, kinds, use_cache=not getattr(args, "no_cache", False))
    except (ValueError, URIELDataError) as exc:
        print(f"mfpt distance: error: {exc}", file=sys.stderr)
        return 2
    codes = list(next(iter(matrices.values())).index)
    out = ["languages: " + ", ".join(f"{c} ({language_label(c)})" for c in codes), ""]
    for k, frame in matrices.items():
        out += [format_matrix(frame, f"{k} distance ({KIND_DEFINITIONS[k]})"), ""]
    if any(frame.isna().to_numpy().any() for frame in matrices.values()):
        out.append("n/a: URIEL has no data of that kind for the language.")
    for note in substitution_notes(matrices):
        out.append(note)
    footer = f"Source: URIEL features from {uriel_source()}, mfpt recipe v{RECIPE_VERSION}. {CAVEAT}"
    out.append(textwrap.fill(footer, width=100))
    if getattr(args, "csv", None):
        path = matrices_to_csv(matrices, args.csv)
        out.append(f"Wrote {path}")
    print("\n".join(out))
    return 0
