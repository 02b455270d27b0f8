"""Reports: pure functions of saved results (results.json, metrics.jsonl); nothing here trains or evaluates.

Tables follow XTREME: one column per language in the run's order, the unweighted mean last, values x100
with one decimal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mfpt.errors import UserError


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
    if federated is not None and federated["trainable_params"]:
        c = federated["communication"]
        sent = c["bytes_up_per_round"] + c["bytes_down_per_round"]
        # Full fine-tuning makes the same transfers (train down and up, evaluation down) with the whole model.
        full = sent * federated["total_params"] / federated["trainable_params"]
        if sent:
            parts += ["", f"Federated prompt tuning sends {human_bytes(sent)} per round for {c['clients_per_round']:g} "
                          "clients (the trainable tensors down and up for training, down again for evaluation); federated "
                          "full fine-tuning of the same model would make the same transfers with the whole model, about "
                          f"{human_bytes(full)} ({100 * (1 - sent / full):.2f}% less)."]
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


# =============================================================================================================
# Reports over many runs (sweeps): grouped by setting, mean ± std over seeds, gains, curves, data efficiency.
# Everything below reads results.json and metrics.jsonl only.

# Config keys that never define a setting: a run's name and folder, and the seed (what a group averages over).
IGNORED_KEYS = ("name", "output_dir", "seed")
# Keys that make a table row; every other varying key makes its own table (a "context").
ROW_KEYS = ("paradigm", "peft.method")
PARADIGM_ORDER = ("federated", "centralized", "local", "transfer", "zeroshot")
DATA_AXIS = "data.train_per_language"
# The distance kinds a report shows (mfpt distance has more): the three the paper's notes name (§6).
REPORT_DISTANCE_KINDS = ("syntactic", "genetic", "geographic")


class ReportError(UserError, ValueError):
    """Folders that hold no finished runs, or runs that cannot be reported together; the message says which."""


@dataclass(frozen=True)
class RunData:
    """One finished run as saved: its folder, results.json and metrics.jsonl rows."""

    folder: Path
    results: Mapping[str, Any]
    curves: tuple[Mapping[str, Any], ...]

    @property
    def seed(self) -> int:
        return int(self.results["seed"])

    def accuracy(self, lang: str, metric: str = "accuracy") -> float | None:
        """Final `metric` of a training or held-out language (None where the run did not evaluate it)."""
        per = dict(self.results.get("per_language", {})) | dict(self.results.get("heldout", {}))
        return float(per[lang][metric]) if lang in per else None

    def block(self, name: str, metric: str = "accuracy") -> float | None:
        """`average`, `low_resource_average` or `heldout_average` from results.json."""
        value = self.results.get(name)
        return float(value[metric]) if value else None


@dataclass
class Group:
    """The runs of one setting (paradigm, method and context), one per seed."""

    label: str
    paradigm: str
    method: str
    context: tuple[tuple[str, Any], ...]
    runs: list[RunData]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def by_seed(self) -> dict[int, RunData]:
        return {r.seed: r for r in self.runs}


def load_runs(paths: Sequence[str | Path]) -> list[RunData]:
    """Finished runs under `paths`: a run folder (results.json) or a sweep folder (run folders below it)."""
    from mfpt import io

    found: dict[Path, RunData] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if (path / "results.json").is_file():
            files = [path / "results.json"]
        elif path.is_dir():
            files = sorted(f for f in path.rglob("results.json") if "checkpoints" not in f.parts)
        else:
            raise ReportError(f"{str(path)!r} does not exist; pass run folders (with results.json) or sweep folders.")
        if not files:
            raise ReportError(f"{str(path)!r} holds no results.json: no finished run to report. "
                              "Finish or resume its runs first (`mfpt sweep` again resumes a sweep).")
        for file in files:
            folder = file.parent.resolve()
            found[folder] = RunData(folder, io.read_json(file), tuple(io.read_jsonl(folder / "metrics.jsonl")))
    return list(found.values())


def _flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list) else value
    return flat


def run_setting(results: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened config that defines a run's setting (seed, name and folder left out)."""
    flat = _flat_config(results.get("config", {}))
    for key in IGNORED_KEYS:
        flat.pop(key, None)
    if results.get("paradigm") == "zeroshot":
        flat.pop("federation.rounds", None)  # zeroshot records its one stage as round 1 whatever the sweep's rounds
    flat.setdefault("paradigm", results.get("paradigm"))
    flat.setdefault("peft.method", results.get("method"))
    return flat


def varying_keys(runs: Sequence[RunData]) -> list[str]:
    """Config keys with more than one value among the runs (a key a run lacks does not count as a value)."""
    settings = [run_setting(r.results) for r in runs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if len({repr(s[k]) for s in settings if k in s}) > 1]


def _sort_value(value: Any, key: str = "") -> tuple:
    if key == DATA_AXIS and value == 0:  # 0 = no cap: the largest size, shown as "all"
        return (0, float("inf"), "")
    if value is None:
        return (2, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, str(value))


def group_runs(runs: Sequence[RunData]) -> list[Group]:
    """Runs grouped by setting; groups ordered by context, then paradigm, then method; runs by seed."""
    varying = varying_keys(runs)
    context_keys = [k for k in varying if k not in ROW_KEYS]
    groups: dict[tuple, Group] = {}
    for run in runs:
        setting = run_setting(run.results)
        paradigm, method = str(run.results["paradigm"]), str(run.results["method"])
        context = tuple((k, setting.get(k)) for k in context_keys)
        key = (context, paradigm, method, tuple(repr(setting.get(k)) for k in varying if k in ROW_KEYS))
        group = groups.setdefault(key, Group(f"{paradigm} / {method}", paradigm, method, context, []))
        if run.seed in group.seeds:
            other = group.by_seed()[run.seed].folder
            raise ReportError(f"Runs {str(other)!r} and {str(run.folder)!r} have the same setting and seed "
                              f"{run.seed}; report one of them.")
        group.runs.append(run)
    for group in groups.values():
        group.runs.sort(key=lambda r: r.seed)

    def order(g: Group) -> tuple:
        rank = PARADIGM_ORDER.index(g.paradigm) if g.paradigm in PARADIGM_ORDER else len(PARADIGM_ORDER)
        return (tuple(_sort_value(v, k) for k, v in g.context), rank, g.method)

    return sorted(groups.values(), key=order)


def mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), or None for no values."""
    import numpy as np

    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def pm(values: Sequence[float | None], scale: float = 100.0, signed: bool = False) -> str:
    """'mean ± std' over seeds (x100, one decimal); the mean alone for one seed; '-' for none."""
    present = [v for v in values if v is not None]
    stats = mean_std(present)
    if stats is None:
        return "-"
    mean = f"{scale * stats[0]:+.1f}" if signed else f"{scale * stats[0]:.1f}"
    return mean if len(present) == 1 else f"{mean} ± {scale * stats[1]:.1f}"


def _context_label(context: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k} = {_show(v, k)}" for k, v in context)


def _show(value: Any, key: str = "") -> str:
    if key == DATA_AXIS and value == 0:
        return "all"
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(none)"
    return str(value)


def _slug(context: tuple[tuple[str, Any], ...]) -> str:
    import re

    if not context:
        return "all"
    text = "_".join(f"{k.split('.')[-1]}-{_show(v, k)}" for k, v in context)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:120]


def _union(groups: Sequence[Group], key: str) -> list[str]:
    return list(dict.fromkeys(lang for g in groups for r in g.runs for lang in r.results.get(key, [])))


def _steps_text(group: Group) -> str:
    """Local optimisation steps per learner over the whole run, e.g. '12 each' or 'eng 12, swh 14'."""
    steps = dict(group.runs[0].results.get("local_steps", {}))
    stage1 = steps.pop("source", None)
    if list(steps) == ["all"]:
        return f"{steps['all']} (one pooled model)"
    if not steps and stage1 is None:
        return "-"
    values = set(steps.values())
    text = f"{values.pop()} each" if len(values) == 1 and len(steps) > 1 else ", ".join(f"{k} {v}" for k, v in steps.items())
    return text + (f" (+ stage 1: {stage1})" if stage1 is not None else "") if text else f"stage 1: {stage1}"


def _accuracy_table(groups: Sequence[Group], languages: Sequence[str], low: Sequence[str], heldout: Sequence[str],
                    metric: str = "accuracy") -> list[str]:
    """Rows: paradigm / method; columns: languages, means (and for accuracy: parameters, bytes, steps, seeds)."""
    marked = [f"{lang}†" if lang in low else lang for lang in languages]
    costs = metric == "accuracy"
    header = ["paradigm / method", *marked, "mean", "low-res mean", "held-out mean"]
    header += ["trainable params", "total sent", "local steps", "seeds"] if costs else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        first = g.runs[0].results
        cells = [pm([r.accuracy(lang, metric) for r in g.runs]) for lang in languages]
        cells += [f"**{pm([r.block('average', metric) for r in g.runs])}**",
                  pm([r.block("low_resource_average", metric) for r in g.runs]),
                  pm([r.block("heldout_average", metric) for r in g.runs])]
        if costs:
            cells += [f"{first['trainable_params']:,}", human_bytes(first["communication"]["total_bytes"]),
                      _steps_text(g), ",".join(map(str, g.seeds))]
        lines.append("| " + " | ".join([g.label, *cells]) + " |")
    return lines


def _heldout_table(groups: Sequence[Group], heldout: Sequence[str], metric: str = "accuracy") -> list[str]:
    header = ["paradigm / method", *heldout, "held-out mean", "evaluated with"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    how = {"federated": "final global model", "centralized": "final pooled model", "zeroshot": "source model",
           "transfer": "stage-1 (source) model", "local": "not evaluated (every language has its own model)"}
    for g in groups:
        cells = [pm([r.accuracy(lang, metric) for r in g.runs]) for lang in heldout]
        cells += [f"**{pm([r.block('heldout_average', metric) for r in g.runs])}**", how.get(g.paradigm, "-")]
        lines.append("| " + " | ".join([g.label, *cells]) + " |")
    return lines


def paired_gains(better: Group, other: Group, keys: Sequence[str]) -> tuple[dict[str, list[float]], bool]:
    """Per key (a language or 'mean'/'low'/'heldout'), `better` minus `other` for each seed both have.

    Without a common seed the gain is the difference of the means (returned as one value, paired=False)."""
    def value(run: RunData, key: str) -> float | None:
        blocks = {"mean": "average", "low": "low_resource_average", "heldout": "heldout_average"}
        return run.block(blocks[key]) if key in blocks else run.accuracy(key)

    mine, theirs = better.by_seed(), other.by_seed()
    common = sorted(set(mine) & set(theirs))
    gains: dict[str, list[float]] = {}
    for key in keys:
        if common:
            pairs = [(value(mine[s], key), value(theirs[s], key)) for s in common]
            gains[key] = [a - b for a, b in pairs if a is not None and b is not None]
        else:
            a = mean_std([v for r in better.runs if (v := value(r, key)) is not None])
            b = mean_std([v for r in other.runs if (v := value(r, key)) is not None])
            gains[key] = [a[0] - b[0]] if a and b else []
    return gains, bool(common)


def _gain_tables(groups: Sequence[Group], languages: Sequence[str], low: Sequence[str], heldout: Sequence[str]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Gains of every federated group over every other group of the context, and mean gains for the distance section."""
    lines: list[str] = []
    for_distance: dict[str, dict[str, float]] = {}
    keys = [*languages, "mean"] + (["low"] if low else []) + [*heldout] + (["heldout"] if heldout else [])
    names = {"mean": "mean", "low": "low-res mean", "heldout": "held-out mean"}
    for fed in (g for g in groups if g.paradigm == "federated"):
        others = [g for g in groups if g is not fed]
        if not others:
            continue
        header = ["federated minus", *[f"{k} (held out)" if k in heldout else f"{k}†" if k in low else names.get(k, k)
                                       for k in keys], "paired seeds"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for other in others:
            gains, paired = paired_gains(fed, other, keys)
            n = len(gains["mean"]) if paired else 0
            lines.append("| " + " | ".join([other.label, *[pm(gains[k], signed=True) for k in keys],
                                            str(n) if paired else "none (difference of means)"]) + " |")
            mean_gain = {lang: 100 * float(sum(v) / len(v)) for lang in languages if (v := gains[lang])}
            if other.paradigm in ("local", "transfer") and other.method == fed.method:
                for_distance[f"federated - {other.paradigm}"] = mean_gain
        lines.append("")
    return lines, for_distance


def _round_curves(group: Group) -> dict[int, list[float]]:
    """Per round, one value per seed: the mean accuracy over the run's training languages."""
    out: dict[int, list[float]] = {}
    for run in group.runs:
        split = run.results["config"]["data"]["eval_split"]
        for round_, mean in _round_means(run.curves, run.results["languages"], split).items():
            out.setdefault(round_, []).append(mean)
    return dict(sorted(out.items()))


def _color(label: str) -> str:
    """The same colour for a paradigm in every figure (tab10 order of PARADIGM_ORDER)."""
    paradigm = label.split(" / ")[0]
    return f"C{PARADIGM_ORDER.index(paradigm)}" if paradigm in PARADIGM_ORDER else "C7"


def plot_round_curves(groups: Sequence[Group], path: Path, title: str = "") -> Path:
    """Mean accuracy over training languages by round, one line per group, band = ± std over seeds."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    last_round = max((max(_round_curves(g), default=0) for g in groups), default=1)
    for g in groups:
        curve = _round_curves(g)
        if not curve:
            continue
        rounds = np.array(list(curve))
        means = np.array([100 * np.mean(v) for v in curve.values()])
        stds = np.array([100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in curve.values()])
        label = f"{g.label} (n={len(g.runs)})"
        color = _color(g.label)
        if len(rounds) == 1 and g.paradigm == "zeroshot":
            # Zero-shot has no rounds: its one model is drawn as a level across the plot.
            ax.axhline(means[0], linestyle="--", linewidth=1.2, color=color, label=label)
            ax.axhspan(max(means[0] - stds[0], 0), min(means[0] + stds[0], 100), color=color, alpha=0.12)
            continue
        ax.plot(rounds, means, marker="o", markersize=3, color=color, label=label)
        ax.fill_between(rounds, np.clip(means - stds, 0, 100), np.clip(means + stds, 0, 100), color=color, alpha=0.18)
    ax.set_xlabel("round")
    ax.set_ylabel("mean accuracy over languages (%)")
    ax.set_xlim(0.5 if last_round >= 1 else -0.5, max(last_round, 1) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def _round_table(groups: Sequence[Group], max_columns: int = 10) -> list[str]:
    curves = {g.label: _round_curves(g) for g in groups}
    rounds = sorted({r for c in curves.values() for r in c})
    if not rounds:
        return []
    if len(rounds) > max_columns:  # keep the first and last round and spread the rest evenly
        step = (len(rounds) - 1) / (max_columns - 1)
        rounds = sorted({rounds[round(i * step)] for i in range(max_columns)})
    lines = ["| paradigm / method | " + " | ".join(f"round {r}" for r in rounds) + " |",
             "|" + "---|" * (len(rounds) + 1)]
    for g in groups:
        lines.append("| " + " | ".join([g.label, *[pm(curves[g.label].get(r, [])) for r in rounds]]) + " |")
    return lines


def _examples_per_language(runs: Sequence[RunData]) -> int | None:
    """What data.train_per_language = 0 ('all') amounts to: the most training examples any language had."""
    sizes = [int(row["n"]) for r in runs for row in r.curves
             if row.get("split") == "train" and row.get("lang") in r.results.get("languages", []) and "n" in row]
    return max(sizes) if sizes else None


def _axis_series(groups: Sequence[Group], axis: str) -> dict[str, dict[Any, Group]]:
    """Line label -> {axis value: group}; a line is a paradigm / method (+ other context keys that vary)."""
    series: dict[str, dict[Any, Group]] = {}
    for g in groups:
        value = dict(g.context).get(axis)
        rest = _context_label(tuple((k, v) for k, v in g.context if k != axis))
        series.setdefault(g.label + (f" [{rest}]" if rest else ""), {})[value] = g
    return series


def plot_axis(groups: Sequence[Group], axis: str, path: Path) -> Path:
    """Accuracy against a numeric config key (e.g. examples per language), one line per paradigm / method.

    Panels: mean over languages, low-resource mean and held-out mean (those the runs have); bars = ± std."""
    plt = _pyplot()
    blocks = [("average", "mean over languages")]
    if any(g.runs[0].results.get("low_resource_average") for g in groups):
        blocks.append(("low_resource_average", "low-resource mean"))
    if any(g.runs[0].results.get("heldout_average") for g in groups):
        blocks.append(("heldout_average", "held-out mean"))
    series = _axis_series(groups, axis)
    all_runs = [r for g in groups for r in g.runs]
    values = sorted({v for s in series.values() for v in s if isinstance(v, (int, float))})
    nonzero = [v for v in values if v]
    everything = (_examples_per_language([r for r in all_runs if r.results["config"]["data"].get("train_per_language") == 0])
                  if axis == DATA_AXIS and 0 in values else None)
    def x_of(v: Any) -> float:
        if axis == DATA_AXIS and v == 0:  # 0 means "all": plot it at the size it had
            return float(everything or (2 * max(nonzero) if nonzero else 1))
        return float(v)

    fig, axes = plt.subplots(1, len(blocks), figsize=(4.6 * len(blocks), 3.8), squeeze=False)
    for ax, (block, title) in zip(axes[0], blocks):
        for label, points in series.items():
            xs, means, stds = [], [], []
            for v in sorted((v for v in points if isinstance(v, (int, float))), key=x_of):
                stats = mean_std([b for r in points[v].runs if (b := r.block(block)) is not None])
                if stats is not None:
                    xs.append(x_of(v))
                    means.append(100 * stats[0])
                    stds.append(100 * stats[1])
            if xs:
                ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, label=label,
                            color=_color(label))
        ticks = sorted({x_of(v) for v in values})
        if ticks and min(ticks) > 0 and max(ticks) / min(ticks) >= 8:
            ax.set_xscale("log")
        ax.set_xticks(ticks, [("all" if axis == DATA_AXIS and v == 0 else str(v)) +
                              (f"\n({everything})" if axis == DATA_AXIS and v == 0 and everything else "")
                              for v in sorted(values, key=x_of)])
        ax.minorticks_off()
        ax.set_xlabel("training examples per language" if axis == DATA_AXIS else axis)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    return _save(fig, path)


def _axis_table(groups: Sequence[Group], axis: str) -> list[str]:
    series = _axis_series(groups, axis)
    values = sorted({v for s in series.values() for v in s}, key=lambda v: _sort_value(v, axis))
    show = [_show(v, axis) for v in values]
    lines = [f"| paradigm / method | " + " | ".join(f"{axis.split('.')[-1]} = {s}" for s in show) + " |",
             "|" + "---|" * (len(values) + 1)]
    for label, points in series.items():
        cells = [pm([r.block("average") for r in points[v].runs]) if v in points else "-" for v in values]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def _distance_section(gains: dict[str, dict[str, float]], languages: Sequence[str], reference: Sequence[str],
                      out_dir: Path, rel: str, level: int) -> list[str]:
    """The language-distance analysis of the gains, or the reason it cannot run, as Markdown lines."""
    h = "#" * level
    title = f"{h} Language distance and federated gains"
    if not {"federated - local", "federated - transfer"} & set(gains):
        return []
    try:
        from mfpt.distance import DistanceAnalysisError, LanguageNotInURIELError, URIELDataError, distance_analysis
    except ImportError as err:
        return [title, "", f"Distance analysis unavailable: {err}.", ""]
    try:
        analysis = distance_analysis(gains, languages, reference, kinds=REPORT_DISTANCE_KINDS, out_dir=out_dir / rel)
    except (DistanceAnalysisError, LanguageNotInURIELError, URIELDataError) as err:
        return [title, "", f"Distance analysis not shown: {err}", ""]
    return [analysis.to_markdown(rel, level=level), ""]


def render_report(runs: Sequence[RunData], out_dir: Path, title: str = "Report") -> str:
    """One Markdown report over finished runs (figures written into out_dir); never re-runs anything."""
    if not runs:
        raise ReportError("No finished runs to report.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    varying = varying_keys(runs)
    seeds = sorted({r.seed for r in runs})
    contexts = list(dict.fromkeys(g.context for g in groups))
    distance_parts: list[str] = []  # one section per context, after the results and the data-efficiency plot
    parts = [f"# {title}", "",
             f"{len(runs)} finished run(s) in {len(groups)} setting(s); seeds {', '.join(map(str, seeds))}. "
             f"Varying: {', '.join(varying) or 'nothing'}.",
             "",
             "How to read: accuracy (%) on each language's evaluation split after the last round; a cell is the mean "
             "± sample standard deviation over the seeds in the row's `seeds` column (the mean alone for one seed). "
             "`mean` is the unweighted mean over the training languages (the XTREME convention), `low-res mean` over "
             "the languages marked † (`data.low_resource`), `held-out mean` over languages that never trained "
             "(`data.heldout_languages`). `total sent` counts every array sent between server and clients in both "
             "directions over the run (0 where nothing is communicated). `local steps` counts the optimisation "
             "steps of each learner over the whole run.",
             "", "## Protocols", ""]
    for label in dict.fromkeys(g.label for g in groups):
        protocol = next((g.runs[0].results.get("protocol") for g in groups if g.label == label), "") or "-"
        parts.append(f"- **{label}**: {protocol}")
    for context in contexts:
        here = [g for g in groups if g.context == context]
        languages, heldout = _union(here, "languages"), _union(here, "heldout_languages")
        low = [lang for lang in _union(here, "low_resource") if lang in languages]
        name = _context_label(context)
        slug = _slug(context)
        parts += ["", f"## Results{': ' + name if name else ''}", ""]
        parts += _accuracy_table(here, languages, low, heldout)
        if heldout:
            parts += ["", "Held-out languages (no training data; evaluated with the model named on the right):", ""]
            parts += _heldout_table(here, heldout)
        parts += ["", "Macro-F1 (%):", ""] + _accuracy_table(here, languages, low, heldout, metric="macro_f1")
        gain_lines, gains = _gain_tables(here, languages, low, heldout)
        if gain_lines:
            parts += ["", "Gain of federated over each baseline (accuracy points, mean ± std over paired seeds):", ""]
            parts += gain_lines[:-1]
        parts += _budget_lines(here)
        if any(_round_curves(g) for g in here):
            figure = plot_round_curves(here, out_dir / f"curves_{slug}.png", name)
            parts += ["", "Mean accuracy by round (band: ± std over seeds):", "", f"![mean accuracy by round]({figure.name})",
                      ""] + _round_table(here)
        fed = next((g for g in here if g.paradigm == "federated"), None)
        if gains and fed is not None:
            reference = list(fed.runs[0].results["config"].get("transfer", {}).get("sources", ["eng"]))
            distance_parts += [f"## Language distance{': ' + name if name else ''}", ""]
            distance_parts += _distance_section(gains, languages, reference, out_dir, f"distance_{slug}", level=3)
    numeric_axes = [k for k in varying if k not in ROW_KEYS
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            for g in groups for kk, v in g.context if kk == k and v is not None)]
    for axis in sorted(numeric_axes, key=lambda k: k != DATA_AXIS):
        heading = "Data efficiency" if axis == DATA_AXIS else f"Accuracy against {axis}"
        figure = plot_axis(groups, axis, out_dir / ("data_efficiency.png" if axis == DATA_AXIS else f"axis_{axis}.png"))
        parts += ["", f"## {heading}", "",
                  ("Mean accuracy over languages against training examples per language (`data.train_per_language`; "
                   "'all' = no cap, plotted at the largest language's size). " if axis == DATA_AXIS else
                   f"Mean accuracy over languages against `{axis}`. ") + "Error bars: ± std over seeds.", "",
                  f"![{heading}]({figure.name})", ""] + _axis_table(groups, axis)
    if distance_parts:
        parts += [""] + distance_parts
    parts += ["", "## Runs", "", "| folder | paradigm / method | setting | seed | mean acc |", "|---|---|---|---|---|"]
    for g in groups:
        for r in g.runs:
            parts.append(f"| {_rel(r.folder, out_dir)} | {g.label} | {_context_label(g.context) or '-'} | {r.seed} | "
                         f"{pct(r.block('average'))} |")
    return "\n".join(parts) + "\n"


def _budget_lines(groups: Sequence[Group]) -> list[str]:
    """Say whether `local` (and transfer's stage 2) took exactly the steps of a federated client, per language."""
    fed = next((g for g in groups if g.paradigm == "federated"), None)
    lines: list[str] = []
    if fed is None:
        return lines
    fed_steps = fed.runs[0].results.get("local_steps", {})
    for g in groups:
        if g.paradigm not in ("local", "transfer"):
            continue
        steps = {k: v for k, v in g.runs[0].results.get("local_steps", {}).items() if k != "source"}
        same = all(fed_steps.get(k) == v for k, v in steps.items()) and bool(steps)
        verdict = "the same as every federated client" if same else \
            "NOT the same as the federated clients' (" + ", ".join(f"{k} {fed_steps.get(k, '-')}" for k in steps) + ")"
        lines.append(f"- Step budget of {g.label}: " + ", ".join(f"{k} {v}" for k, v in steps.items()) + f" steps: {verdict}.")
    return ([""] + lines) if lines else lines


def _rel(folder: Path, out_dir: Path) -> str:
    import os

    try:
        return os.path.relpath(folder, out_dir.resolve())
    except ValueError:
        return str(folder)


def write_report(runs: Sequence[RunData], out_dir: Path, title: str = "Report", filename: str = "report.md") -> Path:
    """Render the report over `runs` and write it (and its figures) into out_dir."""
    from mfpt import io

    text = render_report(runs, out_dir, title)
    return io.write_text(Path(out_dir) / filename, text)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from mfpt import io

    fig.tight_layout()
    io.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    _pyplot().close(fig)
    return path
