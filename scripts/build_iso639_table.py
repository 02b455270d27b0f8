"""Rebuild mfpt/core/resources/iso639-3.tsv, the ISO 639-3 table behind mfpt.core.languages, from the iso639-lang wheel.

Usage: pip install iso639-lang==2.6.3 && python scripts/build_iso639_table.py
iso639-lang (MIT) repackages SIL's ISO 639-3 code tables (2025-07-15), which SIL lets anyone use and redistribute.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "mfpt" / "core" / "resources" / "iso639-3.tsv"
COLUMNS = ("code", "part1", "part2b", "scope", "type", "macro", "replaced_by", "name")


def main() -> None:
    spec = importlib.util.find_spec("iso639")
    if spec is None or spec.origin is None:
        sys.exit("iso639-lang is not installed: pip install iso639-lang==2.6.3")
    data = Path(spec.origin).parent / "data"
    codes = json.loads((data / "iso-639.json").read_text(encoding="utf-8"))["pt3"]
    scope = json.loads((data / "iso-639_scope.json").read_text(encoding="utf-8"))
    kind = json.loads((data / "iso-639_type.json").read_text(encoding="utf-8"))
    macros = json.loads((data / "iso-639_macro.json").read_text(encoding="utf-8"))["macro"]
    retired = json.loads((data / "iso-639_deprecated.json").read_text(encoding="utf-8"))["id"]
    parent = {member: macro for macro, members in macros.items() for member in members}

    rows = []
    for code, info in sorted(codes.items()):
        pt2b = info["pt2b"] if info["pt2b"] != code else ""
        rows.append((code, info["pt1"], pt2b, scope[code], kind[code], parent.get(code, ""), "", info["name"]))
    # Retired codes still occur in older corpora (e.g. 'mol'); keep those with a single successor as aliases.
    for code, info in sorted(retired.items()):
        successor = info["change_to"]
        if code not in codes and len(code) == 3 and successor in codes:
            rows.append((code, "", "", "R", "", "", successor, info["name"]))

    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
