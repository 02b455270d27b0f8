"""Reports: pure functions of saved results (results.json, metrics.jsonl); nothing here trains or evaluates.

Tables follow XTREME: one column per language in the run's order, the unweighted mean last, values x100
with one decimal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def language_table(rows: Sequence[tuple[str, Mapping[str, Any]]], languages: Sequence[str], low_resource: Sequence[str],
                   metric: str = "accuracy") -> str:
    """Markdown table: one row per (label, results), one column per language, then the means."""
    low = [lang for lang in low_resource if lang in languages]
    header = ["", *languages, "mean"] + (["low-res mean"] if low else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, results in rows:
        per = results.get("per_language", {}) | results.get("heldout", {})
        cells = [pct(per[lang][metric]) if lang in per else "-" for lang in languages]
        mean = _mean([per[lang][metric] for lang in results.get("languages", []) if lang in per])
        cells.append(f"**{pct(mean)}**")
        if low:
            cells.append(pct(_mean([per[lang][metric] for lang in low if lang in per])))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def render_run_report(results: Mapping[str, Any], curves: Sequence[Mapping[str, Any]]) -> str:
    """report.md of one run: per-language table, parameters, communication, per-round mean accuracy."""
    languages = list(results["languages"])
    heldout = list(results.get("heldout_languages", []))
    comm = results["communication"]
    label = f"{results['paradigm']} / {results['method']}"
    parts = [
        f"# {results['name']}: {label}",
        "",
        f"Model `{results['model']}`, seed {results['seed']}, {results['rounds']} rounds. "
        f"Accuracy (%) on each language's {results['config']['data']['eval_split']} split after the last round.",
        "",
        language_table([(label, results)], languages, results.get("low_resource", [])),
        "",
        "Macro-F1 (%):",
        "",
        language_table([(label, results)], languages, results.get("low_resource", []), metric="macro_f1"),
    ]
    if heldout:
        parts += ["", "Held-out languages (never trained on; evaluated with the final model):", "",
                  language_table([(label, {**results, "languages": heldout, "per_language": results.get("heldout", {})})],
                                 heldout, [])]
    trainable, total = results["trainable_params"], results["total_params"]
    parts += [
        "",
        "## Cost",
        "",
        f"- Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%).",
        f"- Sent per round: {human_bytes(comm['bytes_up_per_round'])} up, {human_bytes(comm['bytes_down_per_round'])} "
        f"down (all clients; arrays only). Total: {human_bytes(comm['total_bytes'])}.",
        f"- Full fine-tuning would send {human_bytes(comm['full_model_bytes'])} per client and direction each round.",
        f"- Wall time: {results['wall_seconds']:.0f} s.",
    ]
    mean_by_round = _round_means(curves, languages, results["config"]["data"]["eval_split"])
    if mean_by_round:
        parts += ["", "## Mean accuracy by round", "", "| round | " + " | ".join(map(str, mean_by_round)) + " |",
                  "|" + "---|" * (len(mean_by_round) + 1),
                  "| mean acc | " + " | ".join(pct(v) for v in mean_by_round.values()) + " |"]
    return "\n".join(parts) + "\n"


def _round_means(curves: Sequence[Mapping[str, Any]], languages: Sequence[str], split: str) -> dict[int, float]:
    by_round: dict[int, list[float]] = {}
    for row in curves:
        if row.get("split") == split and row.get("lang") in languages:
            by_round.setdefault(int(row["round"]), []).append(float(row["accuracy"]))
    return {r: sum(v) / len(v) for r, v in sorted(by_round.items())}


def render_comparison(runs: Sequence[Mapping[str, Any]], out_dir: Path, title: str = "Comparison") -> str:
    """One report over several runs: accuracy table, gains of federated over each baseline, costs, bar chart."""
    languages = list(runs[0]["languages"])
    low = list(runs[0].get("low_resource", []))
    labelled = [(f"{r['paradigm']} / {r['method']}", r) for r in runs]
    parts = [f"# {title}", "", "Accuracy (%) per language after the last round; mean = unweighted over languages.", "",
             language_table(labelled, languages, low)]
    federated = next((r for r in runs if r["paradigm"] == "federated"), None)
    if federated is not None:
        for other in (r for r in runs if r is not federated):
            gains = {lang: federated["per_language"][lang]["accuracy"] - other["per_language"][lang]["accuracy"]
                     for lang in languages if lang in federated["per_language"] and lang in other["per_language"]}
            parts += ["", f"Gain of federated over {other['paradigm']} / {other['method']} (accuracy points):", "",
                      "| " + " | ".join([*gains, "mean"] + (["low-res mean"] if low else [])) + " |",
                      "|" + "---|" * (len(gains) + 1 + bool(low)),
                      "| " + " | ".join([_signed(g) for g in gains.values()] + [_signed(_mean(list(gains.values())))]
                                        + ([_signed(_mean([gains[lang] for lang in low if lang in gains]))] if low else []))
                      + " |"]
    parts += ["", "| run | trainable params | total params | sent per round (up + down) | total sent | local steps per client |",
              "|---|---|---|---|---|---|"]
    for label, r in labelled:
        c = r["communication"]
        steps = sorted(set(r.get("local_steps", {}).values()))
        parts.append(f"| {label} | {r['trainable_params']:,} | {r['total_params']:,} | "
                     f"{human_bytes(c['bytes_up_per_round'] + c['bytes_down_per_round'])} | {human_bytes(c['total_bytes'])} | "
                     f"{', '.join(map(str, steps)) or '-'} |")
    if federated is not None:
        c = federated["communication"]
        full = c["full_model_bytes"] * 2 * max(c["clients_per_round"], 1)
        sent = c["bytes_up_per_round"] + c["bytes_down_per_round"]
        if full:
            parts += ["", f"Federated prompt tuning sends {human_bytes(sent)} per round; federated full fine-tuning of the "
                          f"same model would send about {human_bytes(full)} ({100 * (1 - sent / full):.2f}% less)."]
    chart = plot_language_bars(labelled, languages, out_dir / "accuracy_by_language.png")
    parts += ["", f"![accuracy by language]({chart.name})"]
    return "\n".join(parts) + "\n"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def plot_language_bars(labelled: Sequence[tuple[str, Mapping[str, Any]]], languages: Sequence[str], path: Path) -> Path:
    """Grouped bar chart of per-language accuracy, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mfpt import io

    x = np.arange(len(languages))
    width = 0.8 / max(len(labelled), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(languages) + 2), 3.8))
    for i, (label, results) in enumerate(labelled):
        values = [100 * results["per_language"].get(lang, {}).get("accuracy", float("nan")) for lang in languages]
        ax.bar(x + (i - (len(labelled) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, languages, rotation=45, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return path
