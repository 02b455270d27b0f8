"""The (epsilon, delta) account of a private run, and the noise that reaches a target epsilon.

Client-level DP (`privacy.dp = "client"`): one Gaussian release per round of the average of the sampled clients'
clipped updates, one step per round, accounted at q = 1: no amplification by sampling, because with
federation.fraction_train < 1 the server samples a fixed-size client set (secretly, from OS entropy), which the
Poisson analysis does not cover. Example-level DP (`privacy.dp = "example"`, DP-SGD in mfpt.train.dpsgd): each
client's own steps on Poisson batches (each example in with probability q = train.batch_size / its training
examples, drawn from OS entropy), counted for every round (an upper bound when federation.fraction_train < 1).
Both use Opacus's RDP accountant (a maintained library, never our own maths); Google's dp-accounting (the
accountant Flower's RdpAccountant wraps) checks every epsilon independently.

delta defaults to min(1e-5, N^-1.1), N = training clients (client-level) or a client's training examples
(example-level): well below 1/N, because a mechanism that publishes one whole client (or example) at random with
probability 1/N already satisfies (0, 1/N)-DP. 1e-5 is the delta of Abadi et al. (2016) for DP-SGD; N^-1.1 keeps
delta below 1/N when N grows past 10^5. A delta >= 1/N is refused unless privacy.allow_weak_delta = true.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from mfpt.config import ConfigError, DpMode, ExperimentConfig, PeftMethod
from mfpt.config.specs import sampled_clients, training_clients

if TYPE_CHECKING:
    from mfpt.train.dpsgd import DpSgd

ACCOUNTANT = "opacus-rdp"
INDEPENDENT_ACCOUNTANT = "dp-accounting-rdp"
DELTA_CAP = 1e-5  # Abadi et al. (2016)
DELTA_EXPONENT = 1.1  # delta <= N^-1.1: below 1/N at any N


def default_delta(n: int) -> float:
    """The delta used when privacy.delta = 0: min(1e-5, N^-1.1), always below 1/N."""
    return min(DELTA_CAP, max(n, 1) ** -DELTA_EXPONENT)


def checked_delta(cfg: ExperimentConfig, n: int, protected: str) -> float:
    """The run's delta for N = `n` protected units (clients or examples); refuses delta >= 1/N unless allowed."""
    pv = cfg.privacy
    delta = pv.delta or default_delta(n)
    if delta >= 1.0 / max(n, 1) and not pv.allow_weak_delta:
        raise ConfigError(
            f"privacy.delta = {delta:g} is at least 1/N = 1/{n} ({n} {protected}): publishing one of them at random "
            f"with probability delta already satisfies that guarantee. Set privacy.delta below {1.0 / max(n, 1):.3g} "
            f"(0 = the default min(1e-5, N^-1.1) = {default_delta(n):.3g}), or privacy.allow_weak_delta = true if "
            "you mean it.")
    return delta


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` subsampled Gaussian releases (sigma, q) at `delta`, by Opacus's RDP accountant."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    with root_logging_untouched():
        from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(accountant.get_epsilon(delta=float(delta)))


def independent_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """The same account by Google's dp-accounting RDP accountant over its orders from 2 up: never below Opacus's
    epsilon (which also searches the orders from 1.1), equal where the best order is at least 2, larger with little
    noise, where the best order is lower."""
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    event = dp_event.GaussianDpEvent(float(noise_multiplier))
    if sample_rate < 1:
        event = dp_event.PoissonSampledDpEvent(float(sample_rate), event)
    # Its default orders minus those below 2, whose series dp-accounting 0.6 cannot always sum (it would drop them
    # and log a warning through absl, which reconfigures the process's logging as it does).
    orders = [order for order in rdp_privacy_accountant.DEFAULT_RDP_ORDERS if order >= 2]
    accountant = rdp_privacy_accountant.RdpAccountant(orders)
    accountant.compose(event, int(steps))
    return float(accountant.get_epsilon(float(delta)))


@contextlib.contextmanager
def root_logging_untouched() -> Iterator[None]:
    """Opacus (on import) and absl (before each message) call logging.basicConfig(), which leaves a handler on the
    root logger, bound to whatever sys.stderr is at the time, for good; a guard handler makes that call a no-op."""
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)
    try:
        yield
    finally:
        root.removeHandler(guard)


# Memoised: the search takes seconds, and every client asks again each round (example_dp).
@functools.lru_cache(maxsize=256)
def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                      tolerance: float = 0.005) -> float:
    """The noise multiplier whose epsilon after `steps` is at most `target_epsilon` and within `tolerance` (a fraction of
    the target) of it: Opacus's own search over its RDP accountant."""
    with root_logging_untouched():
        from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant="rdp", epsilon_tolerance=tolerance * target_epsilon))
    except ValueError:  # Opacus: "The privacy budget is too low."
        raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon} (q={sample_rate}, steps={steps}, "
                         f"delta={delta})") from None


@dataclass(frozen=True)
class Account:
    """One privacy account: who is protected, the mechanism's parameters and how many of its steps a round takes."""

    unit: str  # "client" or the client whose examples it covers
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float

    def epsilon(self, rounds: int) -> float:
        """Epsilon after `rounds` rounds."""
        return rdp_epsilon(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds, self.delta)

    def independent_epsilon(self, rounds: int) -> float:
        """Epsilon after `rounds` rounds by the independent accountant (dp-accounting)."""
        return independent_epsilon(self.noise_multiplier, self.sample_rate, self.steps_per_round * rounds, self.delta)


def _noise(cfg: ExperimentConfig, sample_rate: float, steps: int, delta: float) -> float:
    pv = cfg.privacy
    if pv.target_epsilon > 0:
        return noise_for_epsilon(pv.target_epsilon, sample_rate, steps, delta)
    return pv.noise_multiplier


def client_account(cfg: ExperimentConfig) -> Account:
    """Client-level DP: one release per round, no amplification by sampling (q = 1; the module docstring says why),
    delta min(1e-5, N^-1.1) by default."""
    n = training_clients(cfg)
    q = 1.0
    delta = checked_delta(cfg, n, "training clients")
    return Account("client", _noise(cfg, q, cfg.federation.rounds, delta), q, 1, delta)


def example_account(cfg: ExperimentConfig, num_train: int, unit: str = "example") -> Account:
    """Example-level DP of one client holding `num_train` examples: its own DP-SGD steps, delta
    min(1e-5, num_train^-1.1) by default."""
    from mfpt.train.loop import steps_per_round

    q = min(1.0, cfg.train.batch_size / max(num_train, 1))
    steps = steps_per_round(num_train, cfg.train)
    delta = checked_delta(cfg, num_train, f"training examples of client {unit}")
    return Account(unit, _noise(cfg, q, steps * cfg.federation.rounds, delta), q, steps, delta)


def example_dp(cfg: ExperimentConfig, num_train: int) -> DpSgd | None:
    """The DP-SGD settings a client holding `num_train` examples trains with (None unless privacy.dp = "example")."""
    if cfg.privacy.dp != DpMode.EXAMPLE:
        return None
    from mfpt.train.dpsgd import DpSgd

    return DpSgd(cfg.privacy.clip_norm, example_account(cfg, num_train).noise_multiplier,
                 expected_batch_size=min(cfg.train.batch_size, num_train))


@dataclass(frozen=True)
class PrivacyPlan:
    """The accounts of a run: one (client-level) or one per training client (example-level, the worst is reported)."""

    cfg: ExperimentConfig
    accounts: tuple[Account, ...]

    @property
    def worst(self) -> Account:
        return max(self.accounts, key=lambda a: (a.epsilon(self.cfg.federation.rounds), a.delta))

    def epsilon(self, rounds: int) -> float:
        """The largest epsilon of any account after `rounds` rounds."""
        return max(a.epsilon(rounds) for a in self.accounts)

    def summary(self, rounds: int) -> dict[str, Any]:
        """results.json's `privacy` block after `rounds` rounds."""
        pv = self.cfg.privacy
        if not self.accounts:  # secure aggregation without DP
            return {"dp": "none", "epsilon": None, "delta": None, "noise_multiplier": 0.0, "clip_norm": None,
                    "adaptive_clipping": False, "clip_at": None, "sample_rate": None, "steps": 0, "rounds": rounds,
                    "secure_aggregation": pv.secure_aggregation, "accountant": None}
        worst = self.worst
        eps = self.epsilon(rounds)
        return {"dp": pv.dp.value, "epsilon": None if math.isinf(eps) else eps, "delta": worst.delta,
                "noise_multiplier": worst.noise_multiplier, "clip_norm": pv.clip_norm,
                "adaptive_clipping": pv.adaptive_clipping, "clip_at": pv.clip_at.value,
                "sample_rate": worst.sample_rate, "steps": worst.steps_per_round * rounds, "rounds": rounds,
                "secure_aggregation": pv.secure_aggregation, "accountant": ACCOUNTANT}


def plan(cfg: ExperimentConfig, train_sizes: Mapping[str, int] | None = None) -> PrivacyPlan | None:
    """The run's accounts (None without DP); example-level needs each client's training-set size."""
    if cfg.privacy.dp == DpMode.CLIENT:
        return PrivacyPlan(cfg, (client_account(cfg),))
    if cfg.privacy.dp == DpMode.EXAMPLE:
        if not train_sizes:
            raise ValueError("example-level accounts need each client's number of training examples")
        return PrivacyPlan(cfg, tuple(example_account(cfg, n, unit) for unit, n in sorted(train_sizes.items())))
    if cfg.privacy.secure_aggregation:
        return PrivacyPlan(cfg, ())
    return None


def in_words(summary: Mapping[str, Any]) -> str:
    """'client-level (ε = 3.1, δ = 1e-05) after 50 rounds, ...' for reports."""
    if summary["dp"] == "none":
        return ("no differential privacy (ε = ∞)" + ("; secure aggregation (SecAgg+): the server saw only the sum "
                                                      "of the updates." if summary["secure_aggregation"] else "."))
    eps = summary.get("epsilon")
    eps_text = "∞" if eps is None else f"{eps:.3g}"
    level = {"client": "client-level", "example": "example-level"}.get(summary["dp"], "no")
    text = (f"{level} differential privacy (ε = {eps_text}, δ = {summary['delta']:.3g}) after {summary['rounds']} "
            f"round(s): noise multiplier {summary['noise_multiplier']:.4g}, clip norm {summary['clip_norm']:g}"
            f"{' (adaptive start)' if summary.get('adaptive_clipping') else ''}, sampling rate "
            f"{summary['sample_rate']:.3g}, accountant {summary['accountant']}")
    if summary["dp"] == "example":
        text += " (the worst client's account)"
    sa = "; secure aggregation (SecAgg+): the server saw only the sum of the updates" if summary[
        "secure_aggregation"] else "; no secure aggregation: the server saw each client's update"
    return text + sa + "."


def warnings(cfg: ExperimentConfig) -> list[str]:
    """Combinations that work but cost a lot or protect less than one may think."""
    pv, found = cfg.privacy, []
    if pv.dp != DpMode.NONE and cfg.peft.method == PeftMethod.FULL:
        found.append("privacy.dp with peft.method = 'full': the noise grows with every weight of the encoder "
                     "(utility suffers) and example-level DP keeps a per-example gradient of every weight (memory).")
    if pv.dp != DpMode.NONE and pv.noise_multiplier == 0 and pv.target_epsilon == 0:
        found.append("privacy.noise_multiplier = 0 clips but adds no noise: epsilon is infinite.")
    if pv.dp == DpMode.CLIENT and sampled_clients(cfg) < training_clients(cfg):
        found.append(f"privacy.dp = 'client' with federation.fraction_train = {cfg.federation.fraction_train:g}: "
                     "epsilon is accounted without amplification by sampling (q = 1), since the server samples a "
                     "fixed-size client set, not the Poisson sample the analysis assumes; the noise is sized "
                     "for every round as if every client took part.")
    if pv.dp == DpMode.CLIENT and 0 < training_clients(cfg) < 10:  # 0: data.languages not resolved yet
        found.append(f"privacy.dp = 'client' with {training_clients(cfg)} training clients: the noise std is "
                     "noise_multiplier x clip_norm / clients sampled, which few clients cannot dilute.")
    return found


def describe_plan(cfg: ExperimentConfig, train_sizes: Mapping[str, int] | None = None) -> str:
    """The text `mfpt privacy` prints: the mechanism, epsilon by round and the final account in words."""
    account_plan = plan(cfg, train_sizes)
    lines = [f"privacy.dp = {cfg.privacy.dp.value!r}, privacy.secure_aggregation = "
             f"{str(cfg.privacy.secure_aggregation).lower()}"]
    if account_plan is None:
        lines.append("no differential privacy: epsilon is infinite (nothing bounds what the model reveals about "
                     "a client or an example).")
        return "\n".join(lines)
    rounds = cfg.federation.rounds
    if not account_plan.accounts:
        lines.append(in_words(account_plan.summary(rounds)))
        return "\n".join(lines)
    if cfg.privacy.dp == DpMode.EXAMPLE:
        lines.append("per client (each protects its own examples):")
        lines += [f"  {a.unit}: sigma {a.noise_multiplier:.4g}, q {a.sample_rate:.3g}, {a.steps_per_round} step(s)"
                  f"/round, delta {a.delta:.3g}: epsilon {a.epsilon(rounds):.4g}" for a in account_plan.accounts]
    shown = sorted({1, *range(max(1, rounds // 5), rounds + 1, max(1, rounds // 5)), rounds})
    lines.append("epsilon after round: " + ", ".join(f"{r}: {account_plan.epsilon(r):.4g}" for r in shown))
    lines.append(in_words(account_plan.summary(rounds)))
    worst = account_plan.worst
    lines.append(f"independent check ({INDEPENDENT_ACCOUNTANT}, Google's accountant, which Flower's RdpAccountant "
                 f"wraps): epsilon {worst.independent_epsilon(rounds):.4g} for the account above "
                 f"({ACCOUNTANT}: {worst.epsilon(rounds):.4g}).")
    lines += [f"warning: {w}" for w in warnings(cfg)]
    return "\n".join(lines)


def train_sizes(cfg: ExperimentConfig) -> dict[str, int]:
    """Each training client's number of training examples (loads the data, no model)."""
    from mfpt.data.clients import prepare

    prepared = prepare(cfg)
    shards = cfg.federation.clients_per_language
    return {c.name(shards): len(prepared.client_rows(c, "train")) for c in prepared.training_clients()}




