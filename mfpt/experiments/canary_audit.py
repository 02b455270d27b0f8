"""`mfpt audit-privacy CONFIG`: how much a run's final prompt and head reveal about one client's training data.

Canaries (random strings of letters, each with a random label) are planted in one client's training data, a
few copies each; as many fresh canaries of the same kind are never trained on. The federation runs twice on the
same data: without privacy (`privacy.dp = "none"`) and with the config's privacy settings. For each final model
the loss of every canary under its label scores membership: a planted canary the model memorised has a lower
loss than the fresh ones. The audit reports, beside the run's test accuracy,
- the membership-inference AUC (probability that a planted canary's loss is below a fresh one's; 0.5 = nothing
  leaks) and advantage (max over thresholds of true-positive rate minus false-positive rate; 0 = nothing), and
- the mean exposure (Carlini et al., 2019): log2(fresh + 1) - log2(rank of the planted canary's loss among the
  fresh canaries' losses); 0 = not distinguishable, log2(fresh + 1) = ranked first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mfpt.config import ConfigError, DpMode, ExperimentConfig
from mfpt.core import files
from mfpt.data.clients import prepare
from mfpt.data.sources import LABEL, LANG, SPLIT, TEXT, TEXT_PAIR
from mfpt.privacy.canaries import exposures, make_canaries, membership_scores

AUDIT_FILE = "privacy-audit.json"


@dataclass(frozen=True)
class Exposure:
    """What one final model reveals about the planted canaries, and what it is worth."""

    setting: str
    auc: float
    advantage: float
    mean_exposure: float
    max_exposure: float
    accuracy: float | None
    low_resource_accuracy: float | None
    epsilon: float | None








def canary_losses(run_dir: Path, cfg: ExperimentConfig, canaries: pd.DataFrame, lang: str) -> np.ndarray:
    """Cross-entropy of each canary under its label, by the run's exported final model."""
    import torch
    import torch.nn.functional as F

    from mfpt.model.export import load_exported
    from mfpt.model.factory import pick_device
    from mfpt.results.schema import ADAPTER_DIR
    from mfpt.train.encoding import batches, encode

    labels = list(cfg.data.labels)
    classifier = load_exported(cfg, len(labels), run_dir / ADAPTER_DIR, pick_device(cfg.train.device))
    frame = canaries.assign(**{LANG: lang})
    data = encode(frame, classifier.tokenizer, labels, classifier.max_length, cfg.model.text_prefix)
    losses = []
    with torch.inference_mode():
        for inputs, gold in batches(data, cfg.train.eval_batch_size, classifier.tokenizer):
            logits = classifier.model(**{k: v.to(classifier.device) for k, v in inputs.items()}).logits.float()
            losses.append(F.cross_entropy(logits, gold.to(classifier.device), reduction="none").cpu().numpy())
    return np.concatenate(losses)


def planted_data(cfg: ExperimentConfig, lang: str, canaries: pd.DataFrame, repeats: int, path: Path) -> ExperimentConfig:
    """Write the experiment's data with the canaries added `repeats` times to `lang`'s training split; its config."""
    prepared = prepare(cfg)
    planted = pd.concat([canaries] * repeats, ignore_index=True).assign(**{LANG: lang, SPLIT: "train"})
    columns = [c for c in (TEXT, TEXT_PAIR, LABEL, LANG, SPLIT) if c in prepared.frame.columns]
    frame = pd.concat([prepared.frame[columns], planted], ignore_index=True)
    files.atomic_write(path, lambda tmp: frame.to_json(tmp, orient="records", lines=True, force_ascii=False))
    return cfg.replace(**{"data.source": "files", "data.path": str(path), "data.labels": list(prepared.labels),
                          "data.train_per_language": 0, "data.test_per_language": 0})


def audit(cfg: ExperimentConfig, out_dir: Path, canaries: int = 20, repeats: int = 4, lang: str = "",
          quiet: bool = True) -> list[Exposure]:
    """Plant canaries, run the federation without and with the privacy settings, measure each model's leakage."""
    from mfpt.experiments.paradigms import run_experiment

    if cfg.privacy.dp == DpMode.NONE and not cfg.privacy.secure_aggregation:
        raise ConfigError("audit-privacy compares a run without privacy against the config's [privacy] settings, "
                          "but privacy.dp = 'none' and privacy.secure_aggregation = false: set privacy.dp.")
    target = lang or (cfg.data.low_resource[0] if cfg.data.low_resource else cfg.data.languages[0] if cfg.data.languages else "")
    if not target:
        raise ConfigError("audit-privacy needs data.languages (or --client LANG) to know whose data to plant canaries in.")
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = prepare(cfg).labels
    pool = make_canaries(2 * canaries, labels, seed=cfg.seed + 7919)
    planted, fresh = pool.iloc[:canaries].reset_index(drop=True), pool.iloc[canaries:].reset_index(drop=True)
    base = planted_data(cfg, target, planted, repeats, out_dir / "data-with-canaries.jsonl")
    settings = {"no privacy": base.replace(**{"privacy.dp": "none", "privacy.secure_aggregation": False,
                                              "privacy.target_epsilon": 0.0, "privacy.adaptive_clipping": False,
                                              "privacy.clip_at": "server"}),
                "with [privacy]": base}
    found = []
    for name, setting in settings.items():
        run_dir = out_dir / ("plain" if name == "no privacy" else "private")
        run_cfg = setting.replace(output_dir=str(run_dir), name=f"{cfg.name}-audit")
        result = run_experiment(run_cfg, quiet=quiet)
        losses_planted = canary_losses(run_dir, run_cfg, planted, target)
        losses_fresh = canary_losses(run_dir, run_cfg, fresh, target)
        auc, advantage = membership_scores(losses_planted, losses_fresh)
        exposure = exposures(losses_planted, losses_fresh)
        epsilon = (result.privacy or {}).get("epsilon")  # None: infinite (no DP)
        found.append(Exposure(name, auc, advantage, float(exposure.mean()), float(exposure.max()),
                              result.mean("average"), result.mean("low_resource_average"), epsilon))
    files.write_json(out_dir / AUDIT_FILE, {"client": target, "canaries": canaries, "repeats": repeats,
                                         "settings": [asdict(e) for e in found]})
    return found


def render(found: list[Exposure], canaries: int) -> str:
    """The audit as a small table."""
    top = math.log2(canaries + 1)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [f"{'setting':<16} {'epsilon':>8} {'MIA AUC':>8} {'advantage':>9} {'exposure':>14} {'test acc':>8} {'low-res':>8}"]
    for e in found:
        eps = "inf" if e.epsilon is None else f"{e.epsilon:.3g}"
        lines.append(f"{e.setting:<16} {eps:>8} {e.auc:>8.3f} {e.advantage:>9.3f} "
                     f"{e.mean_exposure:>5.2f} (max {top:.2f}) {pct(e.accuracy):>8} {pct(e.low_resource_accuracy):>8}")
    return "\n".join(lines)




