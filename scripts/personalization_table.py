"""The personalisation experiment (README, "Personalisation"): run the grid, then print its table.

    python scripts/personalization_table.py --run     # mfpt sweep of the grid below (resumable), then the table
    python scripts/personalization_table.py           # the table from the finished runs only
    python scripts/personalization_table.py runs/personalization runs/personalization-seed2   # runs from several sweeps

The grid is configs/demo.toml (16 udhr-topics languages) plus 4 held-out languages, personalization.method in
{finetune, distance-weighted, update-similarity}, seeds 0-2. `none` needs no run of its own: a `finetune` run's
global state IS the FedAvg run (fine-tuning starts only after the last round, from the final global state, and
changes no round), so its `per_language` is the `none` row and its `personalization` block the `finetune` row.

Rows: mean, low-resource mean and held-out mean accuracy (%), mean ± sample std over seeds. Gain = a method's
per-language accuracy minus `none`'s in the same seed (points), averaged over seeds; its Pearson/Spearman
correlation (scipy, two-sided p) with each language's mean URIEL syntactic distance to the other trained languages.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mfpt.analysis.distance import correlate
from mfpt.core.stats import mean_std
from mfpt.data.uriel import distance_array
from mfpt.federation.strategies.language_kernels import distance_to_federation
from mfpt.results.schema import read_result

OUT = ROOT / "runs" / "personalization"
HELDOUT = ["por", "nld", "lin", "jpn"]
METHODS = ["finetune", "distance-weighted", "update-similarity"]
SEEDS = [0, 1, 2]


def sweep_command(out: Path) -> list[str]:
    """The `mfpt sweep` of the experiment (the same command the README gives)."""
    heldout = "[" + ",".join(f'"{lang}"' for lang in HELDOUT) + "]"
    return [sys.executable, "-m", "mfpt.cli", "sweep", str(ROOT / "configs" / "demo.toml"),
            "--set", f"data.heldout_languages={heldout}", "--set", "personalization.finetune_steps=20",
            # fp32: the table must not depend on whether a CPU has bf16 (configs/demo.toml says "auto").
            "--set", 'train.precision="fp32"',
            "--grid", "personalization.method=" + ",".join(METHODS), "--seeds", ",".join(map(str, SEEDS)),
            "--out", str(out), "--title", "Personalisation on udhr-topics"]


def cell(values: list[float]) -> str:
    stats = mean_std([v for v in values if v is not None])
    if stats is None:
        return "-"
    return f"{100 * stats[0]:.1f}" + (f" ± {100 * stats[1]:.1f}" if len(values) > 1 else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="store_true", help="run (or resume) the sweep first")
    parser.add_argument("--out", type=Path, default=OUT, help="the sweep folder --run writes (default: %(default)s)")
    parser.add_argument("folders", type=Path, nargs="*",
                        help="sweep folders to read (default: --out); a run found in several is read from the first")
    args = parser.parse_args()
    if args.run:
        subprocess.run(sweep_command(args.out), check=False)
    folders = args.folders or [args.out]
    # method -> seed -> (per-language accuracy incl. held-out, {"mean", "low", "held"})
    rows: dict[str, dict[int, tuple[dict[str, float], dict[str, float | None]]]] = {}
    languages: list[str] = []
    low: list[str] = []
    for method in METHODS:
        for seed in SEEDS:
            found = [f / f"personalization.method={method}__seed={seed}" for f in folders]
            found = [f for f in found if (f / "results.json").is_file()]
            if not found:
                continue
            folder = found[0]
            result = read_result(folder)
            if result.refused_updates:  # e.g. clients killed by Ray for lack of memory: the run is not the experiment
                print(f"warning: {folder.name} refused {result.refused_updates} update(s)/evaluation(s); "
                      "delete the folder and run again", file=sys.stderr)
            languages, low = result.languages, result.low_resource
            p = result.personalization
            assert p is not None, folder
            if method == "finetune":
                rows.setdefault("none", {})[seed] = _scores(result.per_language, result.heldout, result)
            else:
                rows.setdefault(f"{method}: global state", {})[seed] = _scores(result.per_language, result.heldout, result)
            rows.setdefault(method, {})[seed] = _scores(p.per_language, p.heldout, p)
    if not rows:
        print(f"no finished runs under {', '.join(map(str, folders))}; run with --run first")
        return 1
    print("| method | seeds | mean | low-res mean | held-out mean |")
    print("|---|---|---:|---:|---:|")
    order = ["none", "finetune", "distance-weighted", "update-similarity", "distance-weighted: global state",
             "update-similarity: global state"]
    for name in [n for n in order if n in rows]:
        by_seed = rows[name]
        print(f"| {name} | {','.join(map(str, sorted(by_seed)))} | " + " | ".join(
            cell([means[k] for _, means in by_seed.values()]) for k in ("mean", "low", "held")) + " |")
    trained_plus = languages + HELDOUT
    distance = distance_array(trained_plus, "syntactic")
    to_fed = distance_to_federation(distance, trained_plus, trained_plus, languages)
    print("\nGain over `none` (points, paired by seed, mean over seeds) against the mean syntactic distance to the "
          "trained languages:\n")
    print("| method | languages | n | Pearson r | p | Spearman rho | p | mean gain, 5 nearest | mean gain, 5 farthest |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base = rows.get("none", {})
    for name in [n for n in ("finetune", "distance-weighted", "update-similarity") if n in rows]:
        gains: dict[str, list[float]] = {}
        for seed, (scores, _) in rows[name].items():
            if seed in base:
                for lang, acc in scores.items():
                    if lang in base[seed][0]:
                        gains.setdefault(lang, []).append(100 * (acc - base[seed][0][lang]))
        for label, langs in (("trained", languages), ("held-out", HELDOUT), ("all", trained_plus)):
            have = [lang for lang in langs if lang in gains]
            if not have:
                continue
            x = [to_fed[lang] for lang in have]
            y = [float(np.mean(gains[lang])) for lang in have]
            r, pr, rho, ps, note = correlate(x, y)
            ranked = [g for _, g in sorted(zip(x, y))]
            k = min(5, len(ranked))
            print(f"| {name} | {label} | {len(have)} | {r:.2f} | {pr:.3f} | {rho:.2f} | {ps:.3f} | "
                  f"{np.mean(ranked[:k]):+.1f} | {np.mean(ranked[-k:]):+.1f} |" + (f" {note}" if note else ""))
    print("\nPer-language gain over `none` (points, mean over seeds) and syntactic distance to the trained languages:\n")
    names = [n for n in ("finetune", "distance-weighted", "update-similarity") if n in rows]
    print("| language | distance | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for lang in sorted(trained_plus, key=lambda code: to_fed[code]):
        cells = []
        for name in names:
            vals = [100 * (rows[name][s][0][lang] - base[s][0][lang]) for s in rows[name]
                    if s in base and lang in rows[name][s][0] and lang in base[s][0]]
            cells.append(f"{np.mean(vals):+.1f}" if vals else "-")
        tag = " (held out)" if lang in HELDOUT else "†" if lang in low else ""
        print(f"| {lang}{tag} | {to_fed[lang]:.3f} | " + " | ".join(cells) + " |")
    return 0


def _scores(per_language, heldout, block) -> tuple[dict[str, float], dict[str, float | None]]:
    scores = {lang: s.accuracy for lang, s in {**per_language, **heldout}.items()}
    means = {"mean": block.average.accuracy if block.average else None,
             "low": block.low_resource_average.accuracy if block.low_resource_average else None,
             "held": block.heldout_average.accuracy if block.heldout_average else None}
    return scores, means


if __name__ == "__main__":
    raise SystemExit(main())
