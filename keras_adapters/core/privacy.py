"""Differential privacy: the settings, the accountant and the plan of a run.

DP-SGD (Abadi et al., CCS 2016) trains on batches drawn by Poisson sampling
(each example independently with probability `q`), clips each example's
gradient to `clip_norm`, adds Gaussian noise of standard deviation
`noise_multiplier * clip_norm` to their sum and divides by the expected batch
size `q * N` (`keras_adapters.core.dp_sgd` does the step). This module does the
bookkeeping with Google's `dp-accounting`: the noise a target (epsilon, delta)
needs for a number of steps, the epsilon a run has spent, and the last step a
budget allows. Nothing here touches data.

Example:
```python
privacy = DPConfig(epsilon=8.0, delta=1e-5)
plan = privacy.plan(num_examples=1780, batch_size=64, epochs=3)
plan.noise_multiplier, plan.epsilon_after(plan.steps)
```
"""

import contextlib
import dataclasses
import logging
import math

#: Accountants of `dp-accounting` by name: Renyi DP (fast, slightly loose) and
#: privacy loss distributions (tighter, seconds to a minute per calibration).
ACCOUNTANTS = ("rdp", "pld")
#: More noise than this per unit of clip norm drowns any gradient: a target
#: that needs it is refused (with the epsilon this much noise reaches).
MAX_NOISE_MULTIPLIER = 20.0
#: Calibration searches no lower: a budget that allows less noise gets this
#: much (and spends less than it allows); PLD's discretization of a smaller
#: noise runs out of memory.
MIN_NOISE_MULTIPLIER = 0.2


class PrivacyBudgetError(ValueError):
    """A privacy target that cannot be met or makes no sense; the message says why and what to change."""


@dataclasses.dataclass
class DPConfig:
    """Differentially private training (DP-SGD with Poisson sampling).

    Give a target `epsilon` (the noise is calibrated so that the planned
    steps spend exactly it), a `noise_multiplier` (the run reports what it
    spends), or both (training stops at the last step within `epsilon`).

    Args:
        epsilon: the privacy budget; `None` with `noise_multiplier` given.
        delta: the probability the epsilon guarantee fails; below
            1 / number of training examples.
        clip_norm: each example's gradient (all trainable weights together)
            is scaled down to at most this L2 norm.
        noise_multiplier: noise standard deviation / `clip_norm`; `None`:
            calibrated for `epsilon`.
        accountant: `"rdp"` (Renyi DP, the default: calibrates in under a
            second) or `"pld"` (privacy loss distributions: a tighter epsilon,
            so less noise for the same target, but up to a minute to calibrate).

    Example:
    ```python
    model.compile(privacy=ka.DPConfig(epsilon=8.0, delta=1e-5))
    model.fit(texts, labels, batch_size=64, epochs=3)   # expected batch size 64
    model.privacy_report()["epsilon"]
    ```
    """

    epsilon: float = None
    delta: float = 1e-5
    clip_norm: float = 1.0
    noise_multiplier: float = None
    accountant: str = "rdp"

    def __post_init__(self):
        if self.epsilon is None and self.noise_multiplier is None:
            raise PrivacyBudgetError("DPConfig needs epsilon (a target budget) or noise_multiplier (or both).")
        if self.epsilon is not None and not (_number(self.epsilon) and self.epsilon > 0):
            raise PrivacyBudgetError(f"epsilon must be a positive number, got {self.epsilon!r}.")
        if not (_number(self.delta) and 0 < self.delta < 1):
            raise PrivacyBudgetError(f"delta must be in (0, 1), got {self.delta!r}; 1e-5 is usual.")
        if not (_number(self.clip_norm) and self.clip_norm > 0):
            raise PrivacyBudgetError(f"clip_norm must be a positive number, got {self.clip_norm!r}.")
        if self.noise_multiplier is not None and not (_number(self.noise_multiplier) and self.noise_multiplier > 0):
            raise PrivacyBudgetError(
                f"noise_multiplier must be a positive number, got {self.noise_multiplier!r} (0 adds no noise: "
                "no privacy)."
            )
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyBudgetError(f"accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}.")

    def get_config(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def plan(self, num_examples, batch_size, epochs):
        """The `PrivacyPlan` of training `epochs` on `num_examples` with an expected batch of `batch_size`."""
        if num_examples < 2:
            raise PrivacyBudgetError(f"Private training needs at least 2 examples, got {num_examples}.")
        if self.delta >= 1.0 / num_examples:
            raise PrivacyBudgetError(
                f"delta {self.delta:g} is not below 1/N = {1.0 / num_examples:.3g} for N = {num_examples} "
                f"examples: a mechanism that releases one example in full meets it. Use delta below "
                f"{0.1 / num_examples:.1g}."
            )
        if not 1 <= batch_size < num_examples:
            raise PrivacyBudgetError(
                f"The expected batch size {batch_size} must be at least 1 and below the {num_examples} examples."
            )
        rate = batch_size / num_examples
        steps = epochs * math.ceil(num_examples / batch_size)
        sigma = self.noise_multiplier or calibrate_noise(self.epsilon, self.delta, rate, steps, self.accountant)
        last = steps if self.epsilon is None else min(steps, max_steps(sigma, rate, self.epsilon, self.delta, self.accountant, steps))
        if last < 1:
            raise PrivacyBudgetError(
                f"noise_multiplier {sigma:g} spends more than epsilon {self.epsilon:g} in a single step at "
                f"sampling rate {rate:.3g}: raise noise_multiplier, lower the batch size, or leave "
                "noise_multiplier out to have it calibrated."
            )
        return PrivacyPlan(self, sigma, rate, steps, last, num_examples, batch_size)


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """DP-SGD's numbers for one run: what `dp_sgd` uses and what the accountant counts."""

    config: DPConfig
    noise_multiplier: float
    sampling_rate: float
    planned_steps: int
    #: The last step within the budget (`planned_steps` unless epsilon and noise were both given).
    max_steps: int
    num_examples: int
    batch_size: int

    @property
    def steps_per_epoch(self):
        return math.ceil(self.num_examples / self.batch_size)

    def epsilon_after(self, steps):
        return spent_epsilon(self.noise_multiplier, self.sampling_rate, steps, self.config.delta, self.config.accountant)

    def report(self, steps, unit="example"):
        """What a run records as its guarantee (`metrics.json`, the adapter folder) after `steps`."""
        return {
            "epsilon": self.epsilon_after(steps),
            "delta": self.config.delta,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.config.clip_norm,
            "sampling_rate": self.sampling_rate,
            "steps": int(steps),
            "accountant": self.config.accountant,
            "sampling": "poisson",
            "unit": unit,
            "target_epsilon": self.config.epsilon,
            "num_examples": self.num_examples,
            "expected_batch_size": self.batch_size,
        }


def describe(report):
    """One line stating a recorded guarantee (`PrivacyPlan.report`)."""
    return (
        f"privacy: ({report['epsilon']:.3g}, {report['delta']:.3g})-DP per {report.get('unit', 'example')} "
        f"(DP-SGD: noise multiplier {report['noise_multiplier']:.3g}, clip norm {report['clip_norm']:g}, "
        f"Poisson sampling rate {report['sampling_rate']:.3g}, {report['steps']} steps, "
        f"{report['accountant']} accountant)"
    )


def spent_epsilon(noise_multiplier, sampling_rate, steps, delta, accountant="rdp"):
    """Epsilon at `delta` after `steps` Poisson-sampled Gaussian steps."""
    if steps <= 0:
        return 0.0
    account = _accountant(accountant)
    with _quiet_absl():
        account.compose(_event(noise_multiplier, sampling_rate, steps))
        return float(account.get_epsilon(delta))


def calibrate_noise(epsilon, delta, sampling_rate, steps, accountant="rdp"):
    """The smallest noise multiplier whose `steps` spend at most `epsilon`."""
    import dp_accounting

    reachable = spent_epsilon(MAX_NOISE_MULTIPLIER, sampling_rate, steps, delta, accountant)
    if reachable > epsilon:
        raise PrivacyBudgetError(
            f"epsilon {epsilon:g} at delta {delta:g} needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g} "
            f"for {steps} steps at sampling rate {sampling_rate:.3g}: noise that large drowns the gradients. "
            f"At {MAX_NOISE_MULTIPLIER:g} this run spends epsilon {reachable:.3g}; train fewer epochs, use a "
            "larger expected batch, or accept a larger epsilon."
        )
    if spent_epsilon(MIN_NOISE_MULTIPLIER, sampling_rate, steps, delta, accountant) <= epsilon:
        return MIN_NOISE_MULTIPLIER
    with _quiet_absl():
        sigma = dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda s: _event(s, sampling_rate, steps),
            epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER),
            tol=1e-4,
        )
    return float(sigma)


def max_steps(noise_multiplier, sampling_rate, epsilon, delta, accountant="rdp", limit=None):
    """The most steps (at most `limit`) whose spent epsilon stays within `epsilon`."""
    low, high = 0, limit or 1
    while limit is None and spent_epsilon(noise_multiplier, sampling_rate, high, delta, accountant) <= epsilon:
        low, high = high, 2 * high
    if limit is not None and spent_epsilon(noise_multiplier, sampling_rate, limit, delta, accountant) <= epsilon:
        return limit
    while high - low > 1:  # epsilon grows with the steps: bisect
        middle = (low + high) // 2
        within = spent_epsilon(noise_multiplier, sampling_rate, middle, delta, accountant) <= epsilon
        low, high = (middle, high) if within else (low, middle)
    return low


def _event(noise_multiplier, sampling_rate, steps):
    import dp_accounting

    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, int(steps))


def _accountant(name):
    from dp_accounting import pld, rdp

    return rdp.RdpAccountant() if name == "rdp" else pld.PLDAccountant()


@contextlib.contextmanager
def _quiet_absl():
    """RDP logs a warning for every order whose series converges slowly (it
    drops that order, which only makes epsilon more conservative)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
