"""The state of a run folder, now: what `mfpt watch` shows and `GET /api/state` returns (docs/results.md).

Built from the files the run writes anyway (config.toml, progress.json, metrics.jsonl, results.json or
failure.json) and live.json, the recorder's note of the round and stage in progress and the clients sampled for it.
It reads a run in progress or finished, in simulation or on a deployment's server; it never writes anything. A
finished run's numbers are results.json's own, so the page and the report agree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mfpt.config import DpMode, ExperimentConfig
from mfpt.core import files
from mfpt.results.recorder import headline_name, saved_config
from mfpt.results.schema import CONFIG_FILE, FAILURE_FILE, LIVE_FILE, METRICS_FILE, PROGRESS_FILE, RESULTS_FILE
from mfpt.train.schedule import choice_for, headline, round_means, round_split, selects_on_validation

STATE_SCHEMA = "mfpt.watch/1"
EVAL_ROW_KEYS = ("accuracy", "macro_f1", "chrf", "loss")


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds a run (its config.toml is what every run writes first)."""
    return (folder / CONFIG_FILE).is_file()


def list_runs(root: Path, depth: int = 3) -> list[str]:
    """The run folders at or below `root` (a sweep's, a tuning's), as paths relative to it ('' for root itself)."""
    if is_run_folder(root):
        return [""]
    found: list[str] = []

    def walk(folder: Path, level: int) -> None:
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
            if is_run_folder(child):
                found.append(child.relative_to(root).as_posix())
            elif level < depth:
                walk(child, level + 1)

    if root.is_dir():
        walk(root, 1)
    return found


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return files.read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None  # written atomically, so only a file that is not the run's own can be unreadable


def settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """The run's settings in a few words: paradigm, method, strategy, privacy, attack."""
    privacy = "none" if cfg.privacy.dp == DpMode.NONE else (
        f"{cfg.privacy.dp.value}-level DP" + (f", target epsilon {cfg.privacy.target_epsilon:g}"
                                             if cfg.privacy.target_epsilon > 0 else
                                             f", noise multiplier {cfg.privacy.noise_multiplier:g}"))
    if cfg.privacy.secure_aggregation:
        privacy += ", SecAgg+"
    attack = None if cfg.attack.kind.value == "none" else (
        f"{cfg.attack.kind.value} by {', '.join(cfg.attack.languages)} from round {cfg.attack.from_round}")
    return {"name": cfg.name, "paradigm": cfg.paradigm.value, "method": cfg.peft.method.value,
            "strategy": cfg.federation.strategy.value, "model": cfg.model.name, "privacy": privacy, "attack": attack,
            "rounds": cfg.federation.rounds, "selection": cfg.data.selection.value, "eval_split": round_split(cfg),
            "seed": cfg.seed, "metric": headline_name(cfg)}


def _curves(rows: list[dict[str, Any]], split: str, cfg: ExperimentConfig) -> dict[str, Any]:
    """Per language, its evaluations by round on `split`; and the mean and low-resource mean of each round."""
    per_language: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("split") == split and "lang" in row and not row.get("selected"):
            per_language.setdefault(row["lang"], []).append(
                {"round": int(row["round"]), "score": headline(row), **{k: row[k] for k in EVAL_ROW_KEYS if k in row}})
    means = round_means(rows, split, list(cfg.data.languages))
    low = round_means(rows, split, list(cfg.data.low_resource)) if cfg.data.low_resource else {}
    return {"per_language": per_language,
            "mean": [{"round": r, "score": a} for r, a in sorted(means.items())],
            "low_resource_mean": [{"round": r, "score": a} for r, a in sorted(low.items())]}


def _nodes(rows: list[dict[str, Any]], live: dict[str, Any] | None) -> dict[str, Any]:
    """The latest round's clients and what each did: replied (with its loss, steps and update norm), refused (with the reason),
    missing, or sampled and not answered yet (the round in progress)."""
    rounds = [int(r["round"]) for r in rows if r.get("split") in ("train", "refused", "missing")]
    in_progress = int(live["round"]) if live and live.get("stage") in ("train", "evaluate") else 0
    current = max([*rounds, in_progress], default=0)
    clients: dict[str, dict[str, Any]] = {}
    if live and int(live.get("round", 0)) == current:
        for name in live.get("sampled", []):
            clients[name] = {"client": name, "status": "sampled", "stage": live.get("stage")}
    for row in rows:
        if int(row.get("round", -1)) != current:
            continue
        split = row.get("split")
        if split == "train":
            clients[row["client"]] = {"client": row["client"], "status": "replied", "stage": "train",
                                      "loss": row.get("loss"), "steps": row.get("steps"),
                                      "update_norm": row.get("update_norm")}
        elif split in ("refused", "missing"):
            clients[row["client"]] = {"client": row["client"], "status": split, "stage": row.get("stage", "train"),
                                      "reason": row.get("reason")}
    return {"round": current, "stage": live.get("stage") if live and in_progress == current else None,
            "clients": sorted(clients.values(), key=lambda c: c["client"])}


def run_state(run_dir: str | Path) -> dict[str, Any]:
    """Everything the page shows about the run in `run_dir`, as JSON-ready values."""
    folder = Path(run_dir)
    cfg = saved_config(folder)
    progress = _read_json(folder / PROGRESS_FILE) or {}
    live = _read_json(folder / LIVE_FILE)
    results = _read_json(folder / RESULTS_FILE)
    failure = _read_json(folder / FAILURE_FILE)
    # An append may be under way: its cut last line is left out, as a resume leaves it out.
    rows = files.read_jsonl(folder / METRICS_FILE, drop_cut_last_line=True)
    split = round_split(cfg)
    done = int(progress.get("completed_round", 0))
    total = cfg.federation.rounds
    status = "finished" if results else "failed" if failure else "running"
    if results:
        wall = float(results["wall_seconds"])
    elif status == "running" and live and live.get("started"):
        wall = time.time() - float(live["started"])  # still going: the time since it started (or resumed)
    else:
        wall = float(progress.get("wall_seconds", 0.0))
    per_round = float(progress.get("wall_seconds", wall)) / done if done else None
    updated = max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=None)

    comm = progress.get("comm", [])
    sent = sum(int(c["bytes_up"]) + int(c["bytes_down"]) for c in comm)
    trainable = int((results or {}).get("trainable_params") or (live or {}).get("trainable_params") or 0)
    total_params = int((results or {}).get("total_params") or (live or {}).get("total_params") or 0)
    communication = {"bytes_up": sum(int(c["bytes_up"]) for c in comm),
                     "bytes_down": sum(int(c["bytes_down"]) for c in comm), "bytes_total": sent,
                     "trainable_params": trainable, "total_params": total_params,
                     # The same messages carrying every parameter instead of the trainable ones.
                     "full_finetuning_bytes": int(sent * total_params / trainable) if trainable else None}
    if results:
        communication["bytes_total"] = int(results["communication"]["total_bytes"])

    epsilon_rows = [r for r in rows if r.get("split") == "privacy"]
    privacy = {"mode": cfg.privacy.dp.value,
               "epsilon": epsilon_rows[-1]["epsilon"] if epsilon_rows else None,
               "delta": epsilon_rows[-1]["delta"] if epsilon_rows else None,
               "target_epsilon": cfg.privacy.target_epsilon or None}
    means = round_means(rows, split, list(cfg.data.languages))
    selection = (results or {}).get("selection") or (choice_for(cfg, means).to_json() if means else None)

    final = None
    if results:  # results.json's own numbers: the page and report.md agree
        def block(key: str) -> float | None:
            return headline(results[key]) if results.get(key) else None

        final = {"per_language": {lang: headline(s) for lang, s in results["per_language"].items()},
                 "heldout": {lang: headline(s) for lang, s in results["heldout"].items()},
                 "average": block("average"), "low_resource_average": block("low_resource_average"),
                 "heldout_average": block("heldout_average")}
    return {
        "schema": STATE_SCHEMA,
        "status": status,
        "error": (failure or {}).get("error"),
        "settings": settings(cfg),
        "languages": [{"lang": lang, "low_resource": lang in cfg.data.low_resource, "heldout": False}
                      for lang in cfg.data.languages]
                     + [{"lang": lang, "low_resource": lang in cfg.data.low_resource, "heldout": True}
                        for lang in cfg.data.heldout_languages],
        "rounds": {"done": done, "total": total, "seconds": round(wall, 1),
                   "seconds_per_round": round(per_round, 1) if per_round else None,
                   "seconds_left": (round(max(per_round * (total - done) - (wall - float(progress.get("wall_seconds", 0))), 0), 1)
                                    if per_round and status == "running" else None),
                   "stage": (live or {}).get("stage"), "in_progress": (live or {}).get("round")},
        "curves": {split: _curves(rows, split, cfg)},
        "nodes": _nodes(rows, live),
        "communication": communication,
        "privacy": privacy,
        "selection": selection,
        "selects_on_validation": selects_on_validation(cfg),
        "final": final,
        "updated": updated,
        "seconds_since_update": round(time.time() - updated, 1) if updated else None,
        "files": sorted(p.name for p in folder.iterdir()
                        if p.is_file() and p.suffix in (".md", ".json", ".jsonl", ".toml", ".png", ".csv")),
    }
