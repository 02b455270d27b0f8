"""Which rounds are evaluated, on which split, and which round's model a run reports (data.selection).

- `federation.evaluate_every = N` evaluates rounds N, 2N, ... and always the last round.
- `data.selection = "last"` reports the last round, evaluated on data.eval_split (the behaviour before this key).
- `data.selection = "best-validation"` evaluates every such round on the validation split, picks the round with
  the best mean validation accuracy over the training languages (the earliest on a tie), and scores the test
  split once, with that round's model. The test split never influences the choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from mfpt.config import ExperimentConfig, Selection
from mfpt.core.stats import mean

VALIDATION = "validation"
TEST = "test"


def evaluates_in_round(round_: int, rounds: int, every: int) -> bool:
    """Whether round `round_` (1-based) of `rounds` is evaluated under federation.evaluate_every = `every`."""
    return round_ % every == 0 or round_ == rounds


def evaluated_rounds(rounds: int, every: int) -> list[int]:
    """Every evaluated round of a run, in order (7 rounds, every 3: [3, 6, 7])."""
    return [r for r in range(1, rounds + 1) if evaluates_in_round(r, rounds, every)]


def selects_on_validation(cfg: ExperimentConfig) -> bool:
    """Whether the run picks its reported round on the validation split (data.selection = best-validation)."""
    return cfg.data.selection == Selection.BEST_VALIDATION


def round_split(cfg: ExperimentConfig) -> str:
    """The split evaluated after a round: validation under best-validation, else data.eval_split."""
    return VALIDATION if selects_on_validation(cfg) else cfg.data.eval_split


@dataclass(frozen=True)
class Choice:
    """The reported round and why it was chosen (results.json `selection`)."""

    rule: str
    round: int
    reason: str

    def to_json(self) -> dict[str, int | str]:
        return {"rule": self.rule, "round": self.round, "reason": self.reason}


def best_round(mean_accuracy_by_round: Mapping[int, float]) -> int:
    """The round with the highest mean validation accuracy; the earliest of equals (fewer rounds, same score)."""
    if not mean_accuracy_by_round:
        raise ValueError("best_round() needs at least one evaluated round")
    return min(mean_accuracy_by_round, key=lambda r: (-mean_accuracy_by_round[r], r))


def is_better(accuracy: float, best: float | None) -> bool:
    """Whether a round with mean validation `accuracy` replaces the best so far (strictly higher: earliest wins)."""
    return best is None or accuracy > best


def choice_for(cfg: ExperimentConfig, mean_accuracy_by_round: Mapping[int, float]) -> Choice:
    """The Choice a finished run reports, from the mean accuracy of each evaluated round on the round split."""
    if not selects_on_validation(cfg):
        last = max(mean_accuracy_by_round, default=cfg.federation.rounds)
        return Choice(Selection.LAST.value, last, f"data.selection = 'last': the last evaluated round ({last}) "
                                                  f"on the {cfg.data.eval_split} split")
    chosen = best_round(mean_accuracy_by_round)
    shown = ", ".join(f"{r}: {100 * a:.1f}" for r, a in sorted(mean_accuracy_by_round.items()))
    return Choice(Selection.BEST_VALIDATION.value, chosen,
                  f"data.selection = 'best-validation': round {chosen} had the best mean validation accuracy "
                  f"({100 * mean_accuracy_by_round[chosen]:.1f}%) of the evaluated rounds ({shown}); the test split "
                  f"was scored once, with that round's model")


def round_means(curves: Iterable[Mapping[str, Any]], split: str, languages: list[str]) -> dict[int, float]:
    """Mean headline score (accuracy, or chrF++ for generation) over `languages` of each round evaluated on `split` in
    metrics.jsonl rows (the test scoring of a selected round excluded; rounds without any of `languages` left out)."""
    by_round: dict[int, list[float]] = {}
    for row in curves:
        if row.get("split") == split and row.get("lang") in languages and not row.get("selected"):
            by_round.setdefault(int(row["round"]), []).append(headline(row))
    return {r: mean(accs) for r, accs in by_round.items()}


def headline(row: Mapping[str, Any]) -> float:
    """A metrics.jsonl row's (or a LanguageScore's fields') headline score: chrF++ where recorded, else accuracy."""
    chrf = row.get("chrf")
    return float(row["accuracy"] if chrf is None else chrf)
