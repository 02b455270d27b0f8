"""`mfpt audit-privacy CONFIG`: how much a run's final prompt and head reveal about one client's training data.

Canaries (random strings of letters, each with a random label) are planted in one client's training data, a
few copies each; as many fresh canaries of the same kind, pair by pair with the same labels, are never trained on
(mfpt.privacy.canaries.canary_pairs says why the labels match). The federation runs twice on the
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

from mfpt.config import ConfigError, DpMode, ExperimentConfig, Task
from mfpt.core import files
from mfpt.data.clients import prepare
from mfpt.data.sources import LABEL, LANG, SPLIT, TEXT, TEXT_PAIR
from mfpt.privacy.canaries import (
    canary_pairs,
    epsilon_lower_bound,
    exposures,
    largest_certifiable_epsilon,
    membership_scores,
    null_statistics,
    p_value,
)

AUDIT_FILE = "privacy-audit.json"
AUDIT_DELTA = 1e-5  # the delta of the epsilon the canaries show (mfpt's default delta)


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
    # The same statistics without any membership signal (a permutation test): their 95th percentiles, and the
    # share of no-signal splits with an AUC at least this high.
    null_auc_p95: float = 0.0
    null_advantage_p95: float = 0.0
    null_exposure_p95: float = 0.0
    auc_p_value: float = 1.0
    # The epsilon these canaries show at 95% confidence (mfpt.privacy.canaries.epsilon_lower_bound); 0 = nothing.
    epsilon_lower_bound: float = 0.0








def canary_losses(run_dir: Path, cfg: ExperimentConfig, canaries: pd.DataFrame, lang: str) -> np.ndarray:
    """Cross-entropy of each canary under its label, by the run's exported final model."""
    import torch
    import torch.nn.functional as F

    from mfpt.model.export import load_exported
    from mfpt.model.factory import pick_device
    from mfpt.results.schema import ADAPTER_DIR
    from mfpt.train.encoding import batches, encode_for

    labels = list(cfg.data.labels)
    classifier = load_exported(cfg, len(labels), run_dir / ADAPTER_DIR, pick_device(cfg.train.device))
    frame = canaries.assign(**{LANG: lang})
    data = encode_for(cfg, frame, classifier.tokenizer, labels, classifier.max_length)
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

    if cfg.data.task == Task.GENERATION:
        raise ConfigError("audit-privacy plants labelled canaries and scores them by their label's loss; data.task = "
                          "'generation' has no labels: audit a classification run of the same federation instead.")
    if cfg.privacy.dp == DpMode.NONE and not cfg.privacy.secure_aggregation:
        raise ConfigError("audit-privacy compares a run without privacy against the config's [privacy] settings, "
                          "but privacy.dp = 'none' and privacy.secure_aggregation = false: set privacy.dp.")
    target = lang or (cfg.data.low_resource[0] if cfg.data.low_resource else cfg.data.languages[0] if cfg.data.languages else "")
    if not target:
        raise ConfigError("audit-privacy needs data.languages (or --client LANG) to know whose data to plant canaries in.")
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = prepare(cfg).labels
    planted, fresh = canary_pairs(canaries, labels, seed=cfg.seed + 7919)  # the same labels, pair by pair
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
        null = null_statistics(losses_planted, losses_fresh, seed=cfg.seed,
                               strata=np.concatenate([planted[LABEL].to_numpy(), fresh[LABEL].to_numpy()]))
        found.append(Exposure(name, auc, advantage, float(exposure.mean()), float(exposure.max()),
                              result.mean("average"), result.mean("low_resource_average"), epsilon,
                              *(float(np.percentile(null[k], 95)) for k in ("auc", "advantage", "mean_exposure")),
                              p_value(auc, null["auc"]),
                              epsilon_lower_bound(losses_planted, losses_fresh, AUDIT_DELTA)))
    files.write_json(out_dir / AUDIT_FILE, {"client": target, "canaries": canaries, "repeats": repeats,
                                         "settings": [asdict(e) for e in found]})
    return found


def render(found: list[Exposure], canaries: int) -> str:
    """The audit as a small table."""
    top = math.log2(canaries + 1)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [f"{'setting':<16} {'epsilon':>8} {'MIA AUC (null 95%, p)':>23} {'advantage (null 95%)':>21} "
             f"{'exposure (null 95%)':>20} {'eps shown':>9} {'test acc':>8} {'low-res':>8}"]
    for e in found:
        eps = "inf" if e.epsilon is None else f"{e.epsilon:.3g}"
        lines.append(f"{e.setting:<16} {eps:>8} {e.auc:>6.3f} ({e.null_auc_p95:.3f}, {e.auc_p_value:.3f}) "
                     f"{e.advantage:>9.3f} ({e.null_advantage_p95:.3f}) {e.mean_exposure:>11.2f} "
                     f"({e.null_exposure_p95:.2f}) {e.epsilon_lower_bound:>9.2f} {pct(e.accuracy):>8} "
                     f"{pct(e.low_resource_accuracy):>8}")
    lines += [
        f"null 95%: the 95th percentile of the same statistic with no membership signal (the losses split at "
        f"random); a figure at or below it is indistinguishable from no leakage. Exposure is at most {top:.2f} bits.",
        f"eps shown: the epsilon these canaries prove at 95% confidence (Jagielski et al. 2020); {canaries} planted "
        f"and {canaries} fresh canaries can never show more than "
        f"{largest_certifiable_epsilon(canaries, canaries, AUDIT_DELTA):.2f}, so the audit can refute a leak that "
        "large, never certify a small epsilon. A canary planted r times is protected by about r x epsilon "
        "(group privacy).",
    ]
    return "\n".join(lines)




