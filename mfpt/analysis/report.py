"""Markdown reports: pure functions of saved results (results.json read as a RunResult, metrics.jsonl rows).

- `render_run_report`: report.md of one run (the recorder writes it); `render_run_summary`: what `mfpt run` prints.
- `render_report`: one report over many runs (sweeps): settings grouped, mean ± std over seeds, gains, curves,
  data efficiency and the language-distance analysis.
`write_report` is the one writer: it draws the figures (mfpt.analysis.figures) and runs the distance analyses
(mfpt.data.uriel), then hands their files and results to `render_report`. Nothing here trains or evaluates.

Tables follow XTREME: one column per language in the run's order, the unweighted mean last, values x100
with one decimal.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mfpt.analysis.distance import DistanceAnalysis, DistanceAnalysisError, distance_analysis
from mfpt.analysis.figures import Series, plot_axis, plot_distance_analysis, plot_round_curves
from mfpt.analysis.grouping import (
    DATA_AXIS,
    STRATEGY_KEYS,
    Context,
    Group,
    ReportError,
    RunData,
    config_value,
    context_label,
    contexts,
    group_runs,
    is_number,
    load_run,
    row_keys,
    run_setting,
    show_value,
    sort_value,
    varying_keys,
)
from mfpt.analysis.model_card import write_model_card
from mfpt.config import PeftMethod
from mfpt.config.specs import attack_in_words
from mfpt.core import files
from mfpt.core.stats import mean, mean_std
from mfpt.data.uriel import LanguageNotInURIELError, URIELDataError
from mfpt.privacy.accounting import in_words as privacy_in_words
from mfpt.results.schema import REPORT_FILE, Headline, RunResult
from mfpt.train.schedule import headline

# =============================================================================================================
# Formatting


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ('-' for None)."""
    return "-" if value is None else f"{100 * value:.1f}"


def human_bytes(n: float) -> str:
    """A byte count in decimal units, e.g. '12.0 KB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def pm(values: Sequence[float | None], scale: float = 100.0, signed: bool = False) -> str:
    """'mean ± std' over seeds (x100, one decimal); the mean alone for one seed; '-' for none."""
    present = [v for v in values if v is not None]
    stats = mean_std(present)
    if stats is None:
        return "-"
    mean_text = f"{scale * stats[0]:+.1f}" if signed else f"{scale * stats[0]:.1f}"
    return mean_text if len(present) == 1 else f"{mean_text} ± {scale * stats[1]:.1f}"


def _table_head(cells: Sequence[str]) -> list[str]:
    """A Markdown table's header line and rule."""
    return [_table_row(cells), "|" + "---|" * len(cells)]


def _table_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _label(result: RunResult) -> str:
    label = f"{result.paradigm} / {result.method}"
    if result.attack:  # attacked runs side by side with clean ones, never mistaken for them
        label += f" / {result.attack['kind']} by {'+'.join(result.attack['languages'])}"
    return label


# =============================================================================================================
# One run: report.md and the summary `mfpt run` prints


# The table after the headline's: macro-F1 for classification; for generation (headline chrF++), the exact matches.
SECOND_METRIC = {False: ("Macro-F1 (%):", "macro_f1"),
                 True: ("Exact match (%): generations equal to their reference, after stripping spaces.", "accuracy")}


def language_table(rows: Sequence[tuple[str, RunResult]], languages: Sequence[str], low_resource: Sequence[str],
                   metric: str | None = None) -> str:
    """Markdown table: one row per (label, result), one column per language, then the means over those columns
    (of `metric`, default: each run's headline, accuracy or chrF++)."""
    low = [lang for lang in low_resource if lang in languages]
    header = ["", *languages, "mean"] + (["low-res mean"] if low else [])
    lines = _table_head(header)
    for label, result in rows:
        scores = {lang: result.score(lang, metric) for lang in languages}
        cells = [pct(score) for score in scores.values()]
        cells.append(f"**{pct(mean(s for s in scores.values() if s is not None))}**")
        if low:
            cells.append(pct(mean(scores[lang] for lang in low if scores[lang] is not None)))
        lines.append(_table_row([label, *cells]))
    if metric is None and rows:
        result = rows[0][1]
        found = {lang: result.per_language.get(lang) or result.heldout.get(lang) for lang in languages}
        lines.append(_table_row(["*rows scored*", *[str(s.n_test) if s else "-" for s in found.values()], "",
                                 *([""] if low else [])]))
        majority = {lang: s.majority for lang, s in found.items() if s is not None and s.majority is not None}
        if majority:
            low_majority = [majority[lang] for lang in low if lang in majority]
            lines.append(_table_row(["*majority class*", *[pct(majority.get(lang)) for lang in languages],
                                     pct(mean(majority.values())), *([pct(mean(low_majority))] if low else [])]))
    return "\n".join(lines)


def _run_tables(result: RunResult, title: str | None = None) -> list[str]:
    """The head of a run's report.md: title, setting, accuracy, macro-F1 and held-out tables."""
    label = _label(result)
    named = f" (experiment `{result.name}`)" if title and title != result.name else ""
    parts = [
        f"# {title or result.name}: {label}",
        "",
        f"Model `{result.model}`, seed {result.seed}, {result.rounds} rounds{named}. "
        + (f"chrF++ (%) of the greedy generations on each language's {config_value(result, 'data.eval_split')} "
           "split after the last round; *rows scored* is the number of evaluation rows per language."
           if result.generation else
           f"Accuracy (%) on each language's {config_value(result, 'data.eval_split')} split after the last round; "
           "*rows scored* is the number of evaluation rows per language (one row is 100/n points), *majority class* "
           "the accuracy of always answering the language's most frequent label."),
        "",
        language_table([(label, result)], result.languages, result.low_resource),
        "",
        SECOND_METRIC[result.generation][0],
        "",
        language_table([(label, result)], result.languages, result.low_resource,
                       metric=SECOND_METRIC[result.generation][1]),
    ]
    if result.heldout_languages:
        parts += ["", "Held-out languages (never trained on; evaluated with the final model):", "",
                  language_table([(label, result)], result.heldout_languages, [])]
    if result.personalization is not None:
        personal = dataclasses.replace(result, per_language=result.personalization.per_language,
                                       heldout=result.personalization.heldout)
        rows = [("global state", result), (f"{result.personalization.method} (own state)", personal)]
        parts += ["", f"Personalisation ({result.personalization.method}): each language's own state beside the global "
                  "one (held-out languages: the URIEL distance-weighted combination of the trained languages' states):",
                  "", language_table(rows, result.languages, result.low_resource)]
        if result.heldout_languages:
            parts += ["", language_table(rows, result.heldout_languages, [])]
    return parts


def render_run_summary(result: RunResult) -> str:
    """What `mfpt run` prints at the end: the mean accuracy line, then the tables of the run's report.md."""
    low = (f", low-resource mean {pct(result.mean('low_resource_average'))}"
           if result.low_resource_average is not None else "")
    return f"\n{_label(result)}: mean {_metric_name([result])} {pct(result.mean('average'))}{low}\n" + "\n".join(_run_tables(result)) + "\n"


def render_run_report(result: RunResult, curves: Sequence[Mapping[str, Any]], title: str | None = None) -> str:
    """report.md of one run (titled `title`, its folder's name, when given): per-language tables, parameters,
    communication, per-round mean accuracy."""
    trainable, total = result.trainable_params, result.total_params
    parts = [*_run_tables(result, title)]
    if result.unscored:
        parts += ["", f"**Not scored in the reported round:** {', '.join(result.unscored)} (their evaluation was "
                      "missing or refused; metrics.jsonl says why). Every mean above leaves them out."]
    parts += [
        "",
        "## Cost",
        "",
        f"- Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f}%).",
        *_bytes_lines(result),
        *_update_norm_lines(result, curves),
        f"- Wall time: {result.wall_seconds:.0f} s, from the model loaded to the results written (start-up, such as "
        "Ray and loading the model, comes on top).",
    ]
    if result.privacy:
        parts += ["", "## Privacy", "", f"- {privacy_in_words(result.privacy)}"]
    if result.attack:
        parts += ["", "## Attack", "", f"- {attack_in_words(result.attack)}"]
    if result.selection:  # data.selection: which round's model the tables score, and why
        parts += ["", "## Selected round", "", f"Round {result.selection['round']}: {result.selection['reason']}."]
    on_validation = result.selection.get("rule") == "best-validation"
    split = "validation" if on_validation else config_value(result, "data.eval_split")
    mean_by_round = _round_means(curves, result.languages, split)
    if mean_by_round:
        name = _metric_name([result])
        parts += ["", f"## Mean {name} by round" + (f" ({split})" if on_validation else ""), "",
                  *_table_head(["round", *map(str, mean_by_round)]),
                  _table_row([f"mean {'acc' if name == 'accuracy' else name}", *map(pct, mean_by_round.values())])]
        parts += _sampled_evaluation_note([result])
    return "\n".join(parts) + "\n"


def _update_norm_lines(result: RunResult, curves: Sequence[Mapping[str, Any]]) -> list[str]:
    """The size of the updates the server accepted, what `federation.max_update_norm` is set from (none recorded
    under client-level DP or SecAgg+)."""
    norms = [float(r["update_norm"]) for r in curves if r.get("split") == "train" and r.get("update_norm") is not None]
    if not norms:
        return []
    bound = config_value(result, "federation.max_update_norm", 0) or 0
    return [f"- Update norms (L2 of what a client sent minus the state it trained from, {len(norms)} accepted "
            f"updates): median {float(np.median(norms)):.4g}, 95th percentile {float(np.percentile(norms, 95)):.4g}, "
            f"max {max(norms):.4g}; federation.max_update_norm = {f'{bound:g}' if bound else 'off'}."]


def _bytes_lines(result: RunResult) -> list[str]:
    """What the byte counts are: per round and direction over all clients, the total, and full fine-tuning's."""
    comm = result.communication
    if not comm.total_bytes:
        return ["- Nothing was sent: this paradigm trains where the data is and communicates nothing."]
    per_client = comm.bytes_up_per_round / comm.clients_per_round if comm.clients_per_round else 0
    lines = [f"- Sent per round: {human_bytes(comm.bytes_up_per_round)} up (each of {comm.clients_per_round:g} "
             f"clients sends its {human_bytes(per_client)} of trainable tensors as float32) and "
             f"{human_bytes(comm.bytes_down_per_round)} down (the global state to every client trained, then to every "
             "client evaluated); arrays only, metrics are a few bytes.",
             f"- Total over {comm.rounds_recorded} round(s): {human_bytes(comm.total_bytes)}"
             + (f", of which {human_bytes(comm.after_rounds_bytes)} after the last round (scoring the selected round "
                "on test, personalisation's fine-tuning)." if comm.after_rounds_bytes else ".")]
    lines.append(f"- Full fine-tuning would send {human_bytes(comm.full_model_bytes)} per client and direction each round "
                 f"({comm.full_model_bytes / max(per_client, 1):,.0f} times as much).")
    return lines


def _sampled_evaluation_note(results: Sequence[RunResult]) -> list[str]:
    """A warning when rounds were evaluated on a sample of the clients: their means cover different languages."""
    fractions = sorted({f for r in results if (f := config_value(r, "federation.fraction_evaluate", 1.0)) < 1})
    if not fractions:
        return []
    return ["", f"**Each round's mean covers only the languages evaluated in it** (federation.fraction_evaluate = "
                f"{', '.join(f'{f:g}' for f in fractions)}): means of different rounds are over different languages, "
                "so compare them with care."]


def write_run_report(run_dir: str | os.PathLike) -> Path:
    """Write RUN_DIR/report.md from its results.json and metrics.jsonl (what every finished run gets), and the model
    card of its exported model."""
    run = load_run(run_dir)
    write_model_card(run.results, run.folder)
    return files.write_text(run.folder / REPORT_FILE, render_run_report(run.results, run.curves, title=run.folder.name))


def _round_means(curves: Sequence[Mapping[str, Any]], languages: Sequence[str], split: str) -> dict[int, float | None]:
    """Per round, the mean accuracy over `languages` in the metrics.jsonl rows of `split`."""
    by_round: dict[int, list[float]] = {}
    for row in curves:
        if row.get("split") == split and row.get("lang") in languages:
            by_round.setdefault(int(row["round"]), []).append(headline(row))
    return {r: mean(v) for r, v in sorted(by_round.items())}


# =============================================================================================================
# Reports over many runs (sweeps): grouped by setting, mean ± std over seeds, gains, curves, data efficiency.

# Config keys that never define a setting: a run's name and folder, the seed (what a group averages over), and
# torch's CPU threads, which change speed only (the federated runner records its resolved value for 0, "automatic",
# so counting it would part federated runs from their baselines).
# The distance kinds a report shows (mfpt distance has more): the three the paper's notes name (§6).
REPORT_DISTANCE_KINDS = ("syntactic", "genetic", "geographic")


@dataclass(frozen=True)
class DistanceResult:
    """One context's language-distance analysis and its figures, or the reason it is not shown."""

    folder: str  # the folder of its figures, relative to the report
    analysis: DistanceAnalysis | None = None
    figures: Mapping[str, Path] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class ReportArtifacts:
    """What `write_report` drew and computed for `render_report`; without them a report has no figures and no
    distance analysis."""

    curves: Mapping[str, Path] = field(default_factory=dict)  # context slug -> accuracy-by-round PNG
    axes: Mapping[str, Path] = field(default_factory=dict)  # config key -> accuracy-against-key PNG
    distances: Mapping[str, DistanceResult] = field(default_factory=dict)  # context slug -> distance analysis


# ---------------------------------------------------------------------------------------------- numbers


def paired_gains(better: Group, other: Group, keys: Sequence[str]) -> tuple[dict[str, list[float]], bool]:
    """Per key (a language or 'mean'/'low'/'heldout'), `better` minus `other` for each seed both have.

    Without a common seed the gain is the difference of the means (returned as one value, paired=False)."""
    def value(run: RunData, key: str) -> float | None:
        blocks = {"mean": "average", "low": "low_resource_average", "heldout": "heldout_average"}
        return run.results.mean(blocks[key]) if key in blocks else run.results.score(key)

    mine, theirs = better.by_seed(), other.by_seed()
    common = sorted(set(mine) & set(theirs))
    gains: dict[str, list[float]] = {}
    for key in keys:
        if common:
            pairs = [(value(mine[s], key), value(theirs[s], key)) for s in common]
            gains[key] = [a - b for a, b in pairs if a is not None and b is not None]
        else:
            a = mean(v for r in better.runs if (v := value(r, key)) is not None)
            b = mean(v for r in other.runs if (v := value(r, key)) is not None)
            gains[key] = [a - b] if a is not None and b is not None else []
    return gains, bool(common)


def _federated_gains(groups: Sequence[Group], keys: Sequence[str]
                     ) -> list[tuple[Group, Group, dict[str, list[float]], bool, str]]:
    """(federated group, other group, gains per key, paired, the facet they differ in: "" for a baseline) for every
    federated group and each group it is compared with (`_change`)."""
    facets = [_facets(g) if g.paradigm == "federated" else None for g in groups]  # once per group, not per pair
    out = []
    for fed, mine in zip(groups, facets):
        if mine is None:
            continue
        for other, theirs in zip(groups, facets):
            if other is not fed and (change := _change(mine, theirs)) is not None:
                out.append((fed, other, *paired_gains(fed, other, keys), change))
    return out


def _facets(group: Group) -> dict[str, Any]:
    """What a federated row is, beside its paradigm: its method, personalisation, server rule (aggregator and update
    norm bound) and attack."""
    def setting(key: str, default: Any) -> Any:
        return config_value(group.runs[0].results, key, default)

    attack = setting("attack.kind", "none")
    return {"method": group.method, "personalization": setting("personalization.method", "none"),
            "defence": (setting("federation.strategy", "fedavg"), setting("federation.max_update_norm", 0) or 0,
                        tuple((k, v) for k, v in run_setting(group.runs[0].results).items() if k in STRATEGY_KEYS)),
            "attack": (attack, *[repr(setting(f"attack.{k}", None)) for k in ("languages", "factor", "from_round")])
            if attack != "none" else ("none",)}


_PLAIN_FEDAVG = ("fedavg", 0, ())  # the reference server rule: FedAvg with no update norm bound
_CLEAN = ("none",)


def _change(mine: dict[str, Any], theirs: dict[str, Any] | None) -> str | None:
    """Whether the gain tables show a federated row (facets `mine`) minus another (`theirs`, None for a baseline
    paradigm), and the facet the two differ in ("" for a baseline): every baseline, and of the other federated rows
    those that differ in one facet: another method or personalisation (both ways), and, one way, the plain FedAvg row
    of the same attack (what an aggregator or a norm bound costs or saves) and the clean row of the same server rule
    (what the attack costs). Comparing every federated row with every other would grow with the square of the rows
    (35 for 5 aggregators x 7 attacks) and mix two changes in one number."""
    if theirs is None:
        return ""
    differ = [k for k in mine if mine[k] != theirs[k]]
    if len(differ) != 1:
        return None
    facet = differ[0]
    if facet == "defence" and theirs["defence"] != _PLAIN_FEDAVG:
        return None
    if facet == "attack" and theirs["attack"] != _CLEAN:
        return None
    return facet


def _distance_gains(ctx: Context) -> dict[str, dict[str, float]]:
    """Mean gain per language (points) of federated over each paradigm whose languages train their own models, same
    method; and each aggregator's clean cost, its runs minus FedAvg's (same method, no attack): what the distance
    analysis correlates with language distance (a robust rule may drop a distant language's update as an outlier)."""
    gains: dict[str, dict[str, float]] = {}
    for fed, other, per_key, _, change in _federated_gains(ctx.groups, ctx.languages):
        if other.spec.language_models and other.method == fed.method:
            # Several federated rows of the method (aggregators, attacks) each get their own gain, named by row.
            several = sum(g.paradigm == "federated" and g.method == fed.method for g in ctx.groups) > 1
            gains[f"{fed.label if several else 'federated'} - {other.paradigm}"] = {
                lang: 100 * mean(v) for lang in ctx.languages if (v := per_key[lang])}
        elif change == "defence" and config_value(fed.runs[0].results, "attack.kind", "none") == "none":
            # another server rule than plain FedAvg, clean, the same in everything else: its clean cost
            gains[f"{fed.rule} - fedavg"] = {lang: 100 * mean(v) for lang in ctx.languages if (v := per_key[lang])}
    gains.update(personalization_gains(ctx))
    return gains


def personalization_gains(ctx: Context) -> dict[str, dict[str, float]]:
    """Per personalised group: mean over seeds of (personalised - global state) accuracy points per trained language."""
    gains: dict[str, dict[str, float]] = {}
    for g in ctx.groups:
        runs = [r.results for r in g.runs if r.results.personalization is not None]
        if not runs:
            continue
        per_run = [r.personalization.gain(r.per_language) for r in runs]  # type: ignore[union-attr]
        gains[f"{runs[0].personalization.method} - global"] = {  # type: ignore[union-attr]
            lang: 100 * mean(v) for lang in ctx.languages if (v := [d[lang] for d in per_run if lang in d])}
    return gains


def _round_curves(group: Group) -> dict[int, list[float]]:
    """Per round, one value per seed: the mean accuracy over the run's training languages."""
    out: dict[int, list[float]] = {}
    for run in group.runs:
        split = config_value(run.results, "data.eval_split")
        for round_, value in _round_means(run.curves, run.results.languages, split).items():
            out.setdefault(round_, []).append(value)
    return dict(sorted(out.items()))


def _examples_per_language(runs: Sequence[RunData]) -> int | None:
    """What data.train_per_language = 0 ('all') amounts to: the most training examples any language had."""
    sizes = [int(row["n"]) for r in runs for row in r.curves
             if row.get("split") == "train" and row.get("lang") in r.results.languages and "n" in row]
    return max(sizes) if sizes else None


def _axis_series(groups: Sequence[Group], axis: str) -> dict[str, dict[Any, Group]]:
    """Line label -> {axis value: group}; a line is a paradigm / method (+ other context keys that vary)."""
    series: dict[str, dict[Any, Group]] = {}
    for g in groups:
        value = dict(g.context).get(axis)
        rest = context_label(tuple((k, v) for k, v in g.context if k != axis))
        series.setdefault(g.label + (f" [{rest}]" if rest else ""), {})[value] = g
    return series


def _numeric_axes(runs: Sequence[RunData], groups: Sequence[Group]) -> list[str]:
    """Varying config keys (other than the row keys and each setting's tuned values) whose values are all numbers,
    the data axis first."""
    rows = row_keys(runs)  # a row's own keys (a tuned value too) are no axis
    axes = [k for k in varying_keys(runs) if k not in rows
            and all(is_number(v) for g in groups for kk, v in g.context if kk == k and v is not None)]
    return sorted(axes, key=lambda k: k != DATA_AXIS)


def _axis_heading(axis: str) -> str:
    return "Data efficiency" if axis == DATA_AXIS else f"Accuracy against {axis}"


# ---------------------------------------------------------------------------------------------- the writer


def failed_runs_section(failed: Mapping[str, str]) -> list[str]:
    """The runs that failed (name: error), listed so that a table without them is never read as complete."""
    if not failed:
        return []
    return ["## Runs that failed", "", f"{len(failed)} run(s) failed and are in no table below; run the same command "
            "again to retry them once the cause is fixed:", "", *(f"- `{name}`: {reason}" for name, reason in failed.items())]


def partial_runs_section(runs: Sequence[RunData], out_dir: Path) -> list[str]:
    """The finished runs some of whose clients failed (refused or missing replies, languages left unscored): their
    rows stand in the tables, but over fewer languages or of a model fewer clients trained."""
    lines = []
    for run in runs:
        result = run.results
        if result.lost_clients():
            unscored = result.unscored_training_languages()
            lines.append(f"- `{_rel(run.folder, out_dir)}`: {result.refused_updates} client repl(ies) refused or "
                         "failed" + (f"; not scored: {', '.join(unscored)}" if unscored else "")
                         + " (its metrics.jsonl says why)")
    if not lines:
        return []
    return ["## Runs whose clients failed", "", f"{len(lines)} finished run(s) lost client replies. Their rows are in "
            "the tables below, with means over the languages that were scored; compare them with care, or run them "
            "again once the cause is fixed:", "", *lines]


def write_report(runs: Sequence[RunData], out_dir: Path, title: str = "Report", filename: str = "report.md",
                 failed: Mapping[str, str] | None = None) -> Path:
    """Draw the figures and run the distance analyses of `runs` into out_dir, then write the report there (with the
    `failed` runs listed first; without any finished run, the list alone)."""
    out_dir = Path(out_dir)
    if not runs and failed:
        return files.write_text(out_dir / filename, "\n".join([f"# {title}", "", "No run finished.", "",
                                                               *failed_runs_section(failed)]) + "\n")
    groups = group_runs(runs)
    curves: dict[str, Path] = {}
    distances: dict[str, DistanceResult] = {}
    for ctx in contexts(groups):
        series = [Series(f"{g.label} ({len(g.runs)} seed{'s' if len(g.runs) > 1 else ''})", g.paradigm, list(curve.items()), level=not g.spec.uses_rounds)
                  for g in ctx.groups if (curve := _round_curves(g))]
        if series:
            curves[ctx.slug] = plot_round_curves(series, out_dir / f"curves_{ctx.slug}.png", ctx.name,
                                                 _headline_name(ctx.groups))
        gains = _distance_gains(ctx)
        if gains:
            distances[ctx.slug] = _analyse_distances(ctx, gains, out_dir, f"distance_{ctx.slug}")
    axes = {axis: plot_axis(*_axis_figure(groups, axis),
                            out_dir / ("data_efficiency.png" if axis == DATA_AXIS else f"axis_{axis}.png"))
            for axis in _numeric_axes(runs, groups)}
    text = render_report(runs, out_dir, title, ReportArtifacts(curves, axes, distances), failed or {})
    return files.write_text(out_dir / filename, text)


def _analyse_distances(ctx: Context, gains: dict[str, dict[str, float]], out_dir: Path, folder: str) -> DistanceResult:
    """The distance analysis of a context's gains with its figures in out_dir/folder, or why it cannot run."""
    fed = next(g for g in ctx.groups if g.paradigm == "federated")
    reference = list(config_value(fed.runs[0].results, "transfer.sources", ("eng",)))
    try:
        analysis = distance_analysis(gains, ctx.languages, reference, kinds=REPORT_DISTANCE_KINDS)
    except (DistanceAnalysisError, LanguageNotInURIELError, URIELDataError) as err:
        return DistanceResult(folder, error=str(err))
    return DistanceResult(folder, analysis, plot_distance_analysis(analysis, out_dir / folder))


def _axis_figure(groups: Sequence[Group], axis: str) -> tuple[list[tuple[str, list[Series]]], list[tuple[float, str]], str]:
    """plot_axis's input: panels (mean, low-resource and held-out means, those the runs have), ticks, x label."""
    blocks = [("average", "mean over languages")]
    if any(g.runs[0].results.low_resource_average is not None for g in groups):
        blocks.append(("low_resource_average", "low-resource mean"))
    if any(g.runs[0].results.heldout_average is not None for g in groups):
        blocks.append(("heldout_average", "held-out mean"))
    series = _axis_series(groups, axis)
    values = sorted({v for s in series.values() for v in s if is_number(v)})
    everything = None
    if axis == DATA_AXIS and 0 in values:  # 0 means "all": plot it at the size it had
        everything = _examples_per_language([r for g in groups for r in g.runs
                                             if config_value(r.results, DATA_AXIS) == 0])
    nonzero = [v for v in values if v]
    x_of = {v: float(everything or (2 * max(nonzero) if nonzero else 1)) if axis == DATA_AXIS and v == 0 else float(v)
            for v in values}
    panels = [(title, [Series(label, next(iter(points.values())).paradigm,
                              [(x_of[v], [b for r in g.runs if (b := r.results.mean(block)) is not None])
                               for v, g in points.items() if v in x_of])
                       for label, points in series.items()])
              for block, title in blocks]
    on_data_axis = axis == DATA_AXIS
    ticks = [(x_of[v], ("all" + (f"\n({everything})" if everything else "")) if on_data_axis and v == 0 else str(v))
             for v in sorted(values, key=x_of.__getitem__)]
    return panels, ticks, "training examples per language" if on_data_axis else axis


# ---------------------------------------------------------------------------------------------- rendering


def render_report(runs: Sequence[RunData], out_dir: Path, title: str = "Report",
                  artifacts: ReportArtifacts = ReportArtifacts(), failed: Mapping[str, str] | None = None) -> str:
    """One Markdown report over finished runs, linking the figures and distance analyses of `artifacts`.

    Pure: `out_dir` is only where the report will live (run folders are shown relative to it)."""
    if not runs:
        raise ReportError("No finished runs to report.")
    out_dir = Path(out_dir)
    groups = group_runs(runs)
    varying = varying_keys(runs)
    seeds = sorted({r.seed for r in runs})
    distance_parts: list[str] = []  # one section per context, after the results and the data-efficiency plot
    parts = [f"# {title}", "",
             f"{len(runs)} finished run(s) in {len(groups)} setting(s); seeds {', '.join(map(str, seeds))}. "
             f"Varying: {', '.join(varying) or 'nothing'}.",
             "",
             f"How to read: {_headline_name(groups)} (%) on each language's evaluation split after the last round; a "
             "cell is the mean "
             "± sample standard deviation over the seeds in the row's `seeds` column (the mean alone for one seed). "
             "`mean` is the unweighted mean over the training languages (the XTREME convention), `low-res mean` over "
             "the languages marked † (`data.low_resource`), `held-out mean` over languages that never trained "
             "(`data.heldout_languages`). `total sent` counts every array sent between server and clients in both "
             "directions over the run (0 where nothing is communicated). The budgets table gives each paradigm's "
             "optimisation steps, passes over its data and learning rates, and flags a comparison whose budgets or "
             "way of choosing the learning rate differ.",
             ""]
    if failed:
        parts += [*failed_runs_section(failed), ""]
    if partial := partial_runs_section(runs, out_dir):
        parts += [*partial, ""]
    parts += ["## Protocols", ""]
    for label in dict.fromkeys(g.label for g in groups):
        protocol = next((g.runs[0].results.protocol for g in groups if g.label == label), "") or "-"
        parts.append(f"- **{label}**: {protocol}")
    for ctx in contexts(groups):
        parts += ["", *_results_section(ctx)]
        if any(_round_curves(g) for g in ctx.groups):
            name = _headline_name(ctx.groups)
            parts += ["", f"Mean {name} by round (band: ± std over seeds):", ""]
            if ctx.slug in artifacts.curves:
                parts += [f"![mean {name} by round]({artifacts.curves[ctx.slug].name})", ""]
            parts += _round_table(ctx.groups)
            parts += _sampled_evaluation_note([r.results for g in ctx.groups for r in g.runs])
        if ctx.slug in artifacts.distances:
            distance_parts += [f"## Language distance{': ' + ctx.name if ctx.name else ''}", ""]
            distance_parts += _distance_lines(artifacts.distances[ctx.slug], level=3)
    for axis in _numeric_axes(runs, groups):
        heading = _axis_heading(axis)
        parts += ["", f"## {heading}", "",
                  ("Mean accuracy over languages against training examples per language (`data.train_per_language`; "
                   "'all' = no cap, plotted at the largest language's size). " if axis == DATA_AXIS else
                   f"Mean accuracy over languages against `{axis}`. ") + "Error bars: ± std over seeds.", ""]
        if axis in artifacts.axes:
            parts += [f"![{heading}]({artifacts.axes[axis].name})", ""]
        parts += _axis_table(groups, axis)
    if distance_parts:
        parts += [""] + distance_parts
    parts += ["", "## Runs", "", "| folder | paradigm / method | setting | seed | mean acc |", "|---|---|---|---|---|"]
    for g in groups:
        for r in g.runs:
            parts.append(f"| {_rel(r.folder, out_dir)} | {g.label} | {context_label(g.context) or '-'} | {r.seed} | "
                         f"{pct(r.results.mean('average'))} |")
    return "\n".join(parts) + "\n"


def render_results(runs: Sequence[RunData]) -> str:
    """The results sections of the report alone (per context: tables, gains, budgets), e.g. for a terminal."""
    return "\n\n".join("\n".join(_results_section(ctx)) for ctx in contexts(group_runs(runs))) + "\n"


def _results_section(ctx: Context) -> list[str]:
    """A context's heading; accuracy, held-out and macro-F1 tables; gains over each baseline; budget notes."""
    languages, heldout, low = ctx.languages, ctx.heldout, ctx.low
    lines = [f"## Results{': ' + ctx.name if ctx.name else ''}", ""]
    lines += _accuracy_table(ctx.groups, languages, low, heldout)
    if heldout:
        lines += ["", "Held-out languages (no training data; evaluated with the model named on the right):", ""]
        lines += _heldout_table(ctx.groups, heldout)
    lines += _spread_table(ctx.groups, languages)
    lines += _backdoor_table(ctx.groups, languages, low)
    name = _headline_name(ctx.groups)
    title, metric = SECOND_METRIC[name == "chrF++"]
    lines += ["", title, ""] + _accuracy_table(ctx.groups, languages, low, heldout, metric=metric)
    gain_lines = _gain_tables(ctx.groups, languages, low, heldout)
    if gain_lines:
        lines += ["", f"Gain of federated over each baseline ({name} points, mean ± std over paired seeds):", ""]
        lines += gain_lines
    lines += _personalization_lines(ctx.groups, languages, low, heldout)
    budgets = _budget_lines(ctx.groups)
    if budgets:
        lines += ["", *budgets]
    notes = _communication_lines(ctx.groups)
    if notes:
        lines += ["", *notes]
    return lines


def _personalization_lines(groups: Sequence[Group], languages: Sequence[str], low: Sequence[str],
                           heldout: Sequence[str]) -> list[str]:
    """Global vs personalised state per language (trained and held out) for every group that personalises."""
    personal = [g for g in groups if any(r.results.personalization is not None for r in g.runs)]
    if not personal:
        return []
    columns = [*(f"{lang}†" if lang in low else lang for lang in languages), *(f"{lang} (held out)" for lang in heldout)]
    lines = ["", "Personalisation (`personalization.method`): the accuracy (chrF++ for generation) of the global state and of each language's "
             "own state in the same runs (held-out languages: the URIEL distance-weighted combination of the trained "
             "languages' states), and the gain of the personalised state, in points (mean ± std over seeds):", ""]
    lines += _table_head(["run / state", *columns, "mean", "low-res mean", "held-out mean"])
    for g in personal:
        runs = [r.results for r in g.runs if r.results.personalization is not None]
        blocks = {"global": [(r.per_language, r.heldout, r) for r in runs],
                  "personalised": [(p.per_language, p.heldout, p) for r in runs if (p := r.personalization)]}
        for state, rows in blocks.items():
            cells = [pm([headline_of(a.get(lang) or b.get(lang)) for a, b, _ in rows]) for lang in [*languages, *heldout]]
            cells += [pm([headline_of(getattr(x, block)) for _, _, x in rows])
                      for block in ("average", "low_resource_average", "heldout_average")]
            lines.append(_table_row([f"{g.label}: {state}", *cells]))
        gains = [r.personalization.gain({**r.per_language, **r.heldout}) for r in runs]  # type: ignore[union-attr]
        cells = [pm([d.get(lang) for d in gains], signed=True) for lang in [*languages, *heldout]]
        means = [[headline_of(getattr(r.personalization, b)) - headline_of(getattr(r, b))  # type: ignore[union-attr,operator]
                  if getattr(r.personalization, b) and getattr(r, b) else None for r in runs]
                 for b in ("average", "low_resource_average", "heldout_average")]
        lines.append(_table_row([f"{g.label}: gain", *cells, *(pm(m, signed=True) for m in means)]))
    return lines


def _metric_name(results: Iterable[RunResult]) -> str:
    """What tables and curves of these runs measure: chrF++ when a run is a generation task, else accuracy."""
    return "chrF++" if any(r.generation for r in results) else "accuracy"


def _headline_name(groups: Sequence[Group]) -> str:
    """_metric_name of every run of the groups."""
    return _metric_name(r.results for g in groups for r in g.runs)


def headline_of(score: Headline | None) -> float | None:
    """A score's headline value (accuracy, or chrF++ for generation); None for no score."""
    return None if score is None else score.headline


def _accuracy_table(groups: Sequence[Group], languages: Sequence[str], low: Sequence[str], heldout: Sequence[str],
                    metric: str | None = None) -> list[str]:
    """Rows: paradigm / method; columns: languages, means (and for the headline: parameters, bytes, steps, seeds)."""
    marked = [f"{lang}†" if lang in low else lang for lang in languages]
    costs = metric is None
    header = ["paradigm / method", *marked, "mean", "low-res mean", "held-out mean"]
    header += ["trainable params", "total sent", "seeds"] if costs else []
    lines = _table_head(header)
    for g in groups:
        first = g.runs[0].results
        cells = [pm([r.results.score(lang, metric) for r in g.runs]) for lang in languages]
        cells += [f"**{pm([r.results.mean('average', metric) for r in g.runs])}**",
                  pm([r.results.mean("low_resource_average", metric) for r in g.runs]),
                  pm([r.results.mean("heldout_average", metric) for r in g.runs])]
        if costs:
            cells += [f"{first.trainable_params:,}", human_bytes(first.communication.total_bytes),
                      ",".join(map(str, g.seeds))]
        lines.append(_table_row([g.label, *cells]))
    return lines + (_reference_rows(groups, languages, low, len(header) - len(languages) - 1) if costs else [])


def _spread_table(groups: Sequence[Group], languages: Sequence[str]) -> list[str]:
    """Per group, how evenly its languages are served: the worst language (of the means over seeds), the worst and
    best score and the standard deviation across languages, each a mean ± std over seeds. Fairness-aware aggregation
    (q-FFL) is meant to raise the worst; a robust rule may lower it."""
    lines = ["", f"Spread across the training languages ({_headline_name(groups)} %; the worst language is the one "
                 "with the lowest mean over seeds; the other columns are per seed, then mean ± std over seeds):", ""]
    lines += _table_head(["paradigm / method", "worst language", "worst", "best", "std across languages", "seeds"])
    for g in groups:
        per_seed = [{lang: v for lang in languages if (v := r.results.score(lang)) is not None} for r in g.runs]
        per_seed = [scores for scores in per_seed if len(scores) > 1]
        if not per_seed:
            continue
        means = {lang: mean(v) for lang in languages if (v := [s[lang] for s in per_seed if lang in s])}
        worst = min(means, key=means.__getitem__)
        lines.append(_table_row([g.label, worst, pm([min(s.values()) for s in per_seed]),
                                 pm([max(s.values()) for s in per_seed]),
                                 pm([statistics.stdev(s.values()) for s in per_seed]),
                                 ",".join(map(str, g.seeds))]))
    return lines


def _backdoor_table(groups: Sequence[Group], languages: Sequence[str], low: Sequence[str]) -> list[str]:
    """Per backdoored group, the backdoor's success rate with the model each run reports (results.json's `attack`
    block), over the training languages, the honest ones and the honest low-resource ones; each beside the rate of
    the same texts without the trigger, which a model that leans to the target reaches with no backdoor at all."""
    rows = []
    for g in groups:
        attacks = [r.results.attack or {} for r in g.runs]
        if not any(a.get("backdoor_success") for a in attacks):
            continue

        def rate(attack: Mapping[str, Any], among: Sequence[str], name: str) -> float | None:
            honest = set(among) - set(attack.get("languages", ()))
            values = [v for lang, v in (attack.get(name) or {}).items() if lang in honest and v is not None]
            return mean(values) if values else None

        cells = [f"{pm([rate(a, among, 'backdoor_success') for a in attacks])} "
                 f"({pm([rate(a, among, 'backdoor_untriggered') for a in attacks])})" for among in (languages, low)]
        rows.append(_table_row([g.label, f"{pm([a.get('backdoor_success_mean') for a in attacks])} "
                                         f"({pm([a.get('backdoor_untriggered_mean') for a in attacks])})",
                                *cells, ",".join(map(str, g.seeds))]))
    if not rows:
        return []
    return ["", "Backdoor success rate (%: triggered texts of another label classified as the target, with the model "
                "each run reports; in brackets the same texts without the trigger, the rate a model reaches with no "
                "backdoor; mean ± std over seeds):", "",
            *_table_head(["paradigm / method", "training languages", "honest languages", "honest low-res", "seeds"]),
            *rows]


def _reference_rows(groups: Sequence[Group], languages: Sequence[str], low: Sequence[str], rest: int) -> list[str]:
    """Two rows that say what a score means: the rows each language was scored on (one row is 100/n points), and the
    accuracy of always answering its most frequent label (results of older mfpt lack it: '-')."""
    scores = {lang: next((s for g in groups for r in g.runs if (s := r.results.per_language.get(lang))), None)
              for lang in languages}
    majority = {lang: s.majority for lang, s in scores.items() if s is not None and s.majority is not None}
    low_majority = [majority[lang] for lang in low if lang in majority]
    rows = [_table_row(["*rows scored*", *[str(s.n_test) if s else "-" for s in scores.values()], *[""] * rest])]
    rows.append(_table_row(["*majority class*", *[pct(majority.get(lang)) for lang in languages],
                            pct(mean(list(majority.values()))) if majority else "-",
                            pct(mean(low_majority)) if low_majority else "-", *[""] * (rest - 2)]))
    return rows


def _heldout_table(groups: Sequence[Group], heldout: Sequence[str], metric: str | None = None) -> list[str]:
    header = ["paradigm / method", *heldout, "held-out mean", "evaluated with"]
    lines = _table_head(header)
    for g in groups:
        cells = [pm([r.results.score(lang, metric) for r in g.runs]) for lang in heldout]
        cells += [f"**{pm([r.results.mean('heldout_average', metric) for r in g.runs])}**", g.spec.heldout_model]
        lines.append(_table_row([g.label, *cells]))
    return lines


def _gain_tables(groups: Sequence[Group], languages: Sequence[str], low: Sequence[str], heldout: Sequence[str]) -> list[str]:
    """One table per federated group: its gain over each group it is compared with, per language and mean."""
    keys = [*languages, "mean"] + (["low"] if low else []) + [*heldout] + (["heldout"] if heldout else [])
    names = {"mean": "mean", "low": "low-res mean", "heldout": "held-out mean"}
    columns = [f"{k} (held out)" if k in heldout else f"{k}†" if k in low else names.get(k, k) for k in keys]
    lines: list[str] = []
    fed = None
    for this_fed, other, gains, paired, _ in _federated_gains(groups, keys):
        if this_fed is not fed:  # a new table, headed by the row every line of it is subtracted from
            lines += ([""] if lines else []) + _table_head([f"{this_fed.label} minus", *columns, "paired seeds"])
            fed = this_fed
        n = len(gains["mean"]) if paired else 0
        lines.append(_table_row([other.label, *[pm(gains[k], signed=True) for k in keys],
                                 str(n) if paired else "none (difference of means)"]))
    return lines


def _per_learner(values: Mapping[str, float], digits: int = 0) -> str:
    """'50 each' when every language's value is the same, else 'eng 50, swh 48'; stage 1 and a pool said apart."""
    values = dict(values)
    source, pooled = values.pop("source", None), values.pop("all", None)

    def show(v: float) -> str:
        return f"{v:.{digits}f}" if digits else f"{v:g}"

    parts = []
    if pooled is not None:
        parts.append(f"{show(pooled)} (one pooled model)")
    if values:
        same = {round(v, 6) for v in values.values()}
        parts.append(f"{show(next(iter(values.values())))} each" if len(same) == 1 and len(values) > 1
                     else ", ".join(f"{k} {show(v)}" for k, v in values.items()))
    if source is not None:
        parts.insert(0, f"stage 1: {show(source)}")
    return " + ".join(parts) or "-"


def _value(value: Any) -> str:
    """A number as '%g', anything else (a missing value in an old results.json) as '-'."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _hyperparameter_source(source: str) -> str:
    """The short form of a hyperparameter's source for a table cell ('tuned on validation', 'default', ...)."""
    return source.split(":")[0].split(" (")[0]


def _budget_lines(groups: Sequence[Group]) -> list[str]:
    """A table of what every paradigm trained (steps and epochs of each learner, the learning rates and where they
    came from), then a line for every comparison with federated whose budget or learning-rate choice differs."""
    if not any(g.runs[0].results.local_steps for g in groups):
        return []
    lines = ["Budgets: optimisation steps and passes over its own training data of each learner over the whole run, "
             "and the learning rates with where they came from (first seed's run):", ""]
    lines += _table_head(["paradigm / method", "steps", "epochs over its data", "train.lr", "lr from", "other"])
    for g in groups:
        first = g.runs[0].results
        params = first.hyperparameters
        lr = params.get("train.lr", {"value": config_value(first, "train.lr"), "source": "not recorded"})
        other = "; ".join(f"{k} = {v['value']:g} ({_hyperparameter_source(v['source'])})" for k, v in params.items()
                          if k != "train.lr" and isinstance(v["value"], (int, float)))
        lines.append(_table_row([g.label, _per_learner(first.local_steps), _per_learner(first.epochs, 2) if first.epochs
                                 else "-", _value(lr["value"]), _hyperparameter_source(lr["source"]), other or "-"]))
    notes = [f"- {g.label}: train.lr {_value(v['value'])} from {v['source']}." for g in groups
             for k, v in g.runs[0].results.hyperparameters.items() if k == "train.lr"]
    lines += ["", *notes] if notes else []
    return lines + _budget_flags(groups)


def _budget_flags(groups: Sequence[Group]) -> list[str]:
    """Comparisons with a federated group whose epochs over the data, or whose way of choosing the learning rate,
    differ: a gain over an under-trained or differently tuned baseline is not a fair one."""
    flags: list[str] = []
    for fed in (g for g in groups if g.paradigm == "federated"):
        fed_result = fed.runs[0].results
        fed_epochs = {k: v for k, v in fed_result.epochs.items()}
        fed_lr = _hyperparameter_source(fed_result.hyperparameters.get("train.lr", {}).get("source", "not recorded"))
        for other in (g for g in groups if g is not fed):
            result = other.runs[0].results
            epochs = {k: v for k, v in result.epochs.items() if k != "source"}
            if fed_epochs and epochs:
                mine = set(round(v, 4) for v in fed_epochs.values())
                theirs = set(round(v, 4) for v in epochs.values())
                if mine != theirs:
                    flags.append(f"- **Budgets differ:** {other.label} made {_per_learner(result.epochs, 2)} epoch(s) "
                                 f"over its data, each client of {fed.label} {_per_learner(fed_epochs, 2)}.")
            lr = _hyperparameter_source(result.hyperparameters.get("train.lr", {}).get("source", "not recorded"))
            if lr != fed_lr:
                flags.append(f"- **Learning rates chosen differently:** {fed.label} ({fed_lr}) against "
                             f"{other.label} ({lr}).")
    return [""] + flags if flags else []


def _communication_lines(groups: Sequence[Group]) -> list[str]:
    """What each communicating group sends per round, against federated full fine-tuning of the same model."""
    lines: list[str] = []
    for g in groups:
        first = g.runs[0].results
        comm = first.communication
        sent = comm.bytes_up_per_round + comm.bytes_down_per_round
        if not sent or not first.trainable_params:
            continue
        line = (f"- Communication of {g.label}: {human_bytes(sent)} per round for {comm.clients_per_round:g} "
                "clients (the trainable tensors down and up for training, down again for evaluation)")
        if g.method == PeftMethod.FULL:  # it is the reference itself
            lines.append(f"{line}: the whole model.")
            continue
        # Full fine-tuning makes the same transfers (train down and up, evaluation down) with the whole model.
        full = sent * first.total_params / first.trainable_params
        lines.append(f"{line}; federated full fine-tuning of the same model would make the same transfers with the "
                     f"whole model, about {human_bytes(full)} ({100 * (1 - sent / full):.2f}% less).")
    return lines


def _round_table(groups: Sequence[Group], max_columns: int = 10) -> list[str]:
    curves = {g.label: _round_curves(g) for g in groups}
    rounds = sorted({r for c in curves.values() for r in c})
    if not rounds:
        return []
    if len(rounds) > max_columns:  # keep the first and last round and spread the rest evenly
        step = (len(rounds) - 1) / (max_columns - 1)
        rounds = sorted({rounds[round(i * step)] for i in range(max_columns)})
    lines = _table_head(["paradigm / method", *(f"round {r}" for r in rounds)])
    for g in groups:
        lines.append(_table_row([g.label, *[pm(curves[g.label].get(r, [])) for r in rounds]]))
    return lines


def _axis_table(groups: Sequence[Group], axis: str) -> list[str]:
    series = _axis_series(groups, axis)
    values = sorted({v for s in series.values() for v in s}, key=lambda v: sort_value(v, axis))
    show = [show_value(v, axis) for v in values]
    lines = _table_head(["paradigm / method", *(f"{axis.split('.')[-1]} = {s}" for s in show)])
    for label, points in series.items():
        cells = [pm([r.results.mean("average") for r in points[v].runs]) if v in points else "-" for v in values]
        lines.append(_table_row([label, *cells]))
    return lines


def _distance_lines(result: DistanceResult, level: int) -> list[str]:
    """The language-distance analysis of a context, or the reason it is not shown, as Markdown lines."""
    if result.analysis is None:
        return [f"{'#' * level} Language distance and federated gains", "", f"Distance analysis not shown: {result.error}", ""]
    return [result.analysis.to_markdown(result.figures, result.folder, level=level), ""]


def _rel(folder: Path, out_dir: Path) -> str:
    try:
        return os.path.relpath(folder, out_dir.resolve())
    except ValueError:
        return str(folder)
