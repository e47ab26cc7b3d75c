"""Differential privacy: the settings, the accountant and the plan of a run.

DP-SGD (Abadi et al., CCS 2016) trains on batches drawn by Poisson sampling
(each example independently with probability `q`), clips each example's
gradient to `clip_norm`, adds Gaussian noise of standard deviation
`noise_multiplier * clip_norm` to their sum and divides by the expected batch
size `q * N` (`keras_adapters.core.dp_sgd` does the step). This module does the
bookkeeping with Google's `dp-accounting`: the noise a target (epsilon, delta)
needs for a number of steps, the epsilon a run has spent, and the last step a
budget allows. Nothing here touches data.

An adapter trained privately more than once (a second `fit`, or `fit` after
`load_adapter`) states one guarantee for all its private fits: each fit's
steps are composed with the earlier ones' (`previous_fits` of its report), so
`DPConfig.epsilon` is the adapter's whole budget, not one fit's. Composition
holds whatever data each fit saw: an example in only one fit loses less.

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
    For an adapter that was trained privately before, `epsilon` is the total
    over all its private fits: this fit gets what the earlier ones left.

    Args:
        epsilon: the privacy budget (of the adapter, over all its private
            fits); `None` with `noise_multiplier` given.
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

    def plan(self, num_examples, batch_size, epochs, previous_fits=()):
        """The `PrivacyPlan` of training `epochs` on `num_examples` with an
        expected batch of `batch_size`, after the private fits
        `previous_fits` (`fits_of` an adapter's recorded guarantee)."""
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
        previous_fits = tuple(dict(f) for f in previous_fits)
        self._check_budget_left(previous_fits)
        rate = batch_size / num_examples
        steps = epochs * math.ceil(num_examples / batch_size)
        sigma = self.noise_multiplier or calibrate_noise(
            self.epsilon, self.delta, rate, steps, self.accountant, previous_fits
        )
        last = steps if self.epsilon is None else min(
            steps, max_steps(sigma, rate, self.epsilon, self.delta, self.accountant, steps, previous_fits)
        )
        if last < 1:
            earlier = _spent_before(previous_fits, self.delta, self.accountant)
            raise PrivacyBudgetError(
                f"noise_multiplier {sigma:g} spends more than epsilon {self.epsilon:g} in a single step at "
                f"sampling rate {rate:.3g}: raise noise_multiplier, lower the batch size, or leave "
                f"noise_multiplier out to have it calibrated.{earlier}"
            )
        return PrivacyPlan(self, sigma, rate, steps, last, num_examples, batch_size, previous_fits)

    def _check_budget_left(self, previous_fits):
        if self.epsilon is None or not previous_fits:
            return
        spent = _spent_by(previous_fits, self.delta, self.accountant)
        if spent >= self.epsilon:
            raise PrivacyBudgetError(
                f"This adapter's {len(previous_fits)} earlier private fit(s) already spent epsilon {spent:.3g} at "
                f"delta {self.delta:g}, which leaves nothing of epsilon {self.epsilon:g}: DPConfig.epsilon is the "
                "adapter's whole budget over all its private fits. Give a larger total epsilon, or train a new "
                "adapter (add_adapter)."
            )


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
    #: The adapter's earlier private fits (`fits_of`), composed with this one.
    previous_fits: tuple = ()

    @property
    def steps_per_epoch(self):
        return math.ceil(self.num_examples / self.batch_size)

    def epsilon_after(self, steps):
        """The adapter's epsilon after `steps` of this fit (and all of the earlier ones)."""
        return spent_epsilon(
            self.noise_multiplier, self.sampling_rate, steps, self.config.delta, self.config.accountant,
            self.previous_fits,
        )

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
            **({"previous_fits": [dict(f) for f in self.previous_fits]} if self.previous_fits else {}),
        }


#: What a recorded guarantee keeps of each private fit: enough to compose it with the next.
FIT_FIELDS = ("noise_multiplier", "sampling_rate", "steps", "clip_norm", "num_examples", "expected_batch_size")


def fits_of(report):
    """The private fits (oldest first) a recorded guarantee (`PrivacyPlan.report`) covers."""
    if not report:
        return ()
    missing = [k for k in FIT_FIELDS[:3] if k not in report]
    if missing:
        raise PrivacyBudgetError(
            f"The recorded privacy guarantee lacks {', '.join(missing)}, so a further private fit cannot "
            "compose with it (was adapter_config.json's \"privacy\" edited?). Train a new adapter instead."
        )
    latest = {k: report[k] for k in FIT_FIELDS if k in report}
    return tuple(f for f in (*report.get("previous_fits", ()), latest) if f.get("steps", 0) > 0)


def describe(report):
    """One line stating a recorded guarantee (`PrivacyPlan.report`)."""
    earlier = len(report.get("previous_fits", ()))
    fits = f"; over {earlier + 1} private fits, the last:" if earlier else ":"
    return (
        f"privacy: ({report['epsilon']:.3g}, {report['delta']:.3g})-DP per {report.get('unit', 'example')} "
        f"(DP-SGD{fits} noise multiplier {report['noise_multiplier']:.3g}, clip norm {report['clip_norm']:g}, "
        f"Poisson sampling rate {report['sampling_rate']:.3g}, {report['steps']} steps, "
        f"{report['accountant']} accountant)"
    )


def spent_epsilon(noise_multiplier, sampling_rate, steps, delta, accountant="rdp", previous_fits=()):
    """Epsilon at `delta` after `steps` Poisson-sampled Gaussian steps,
    composed with the private fits `previous_fits` (`fits_of`)."""
    event = _events(noise_multiplier, sampling_rate, steps, previous_fits)
    if event is None:
        return 0.0
    account = _accountant(accountant)
    with _quiet_absl():
        account.compose(event)
        return float(account.get_epsilon(delta))


def calibrate_noise(epsilon, delta, sampling_rate, steps, accountant="rdp", previous_fits=()):
    """The smallest noise multiplier whose `steps` (after `previous_fits`) spend at most `epsilon`."""
    import dp_accounting

    reachable = spent_epsilon(MAX_NOISE_MULTIPLIER, sampling_rate, steps, delta, accountant, previous_fits)
    if reachable > epsilon:
        earlier = _spent_before(previous_fits, delta, accountant)
        raise PrivacyBudgetError(
            f"epsilon {epsilon:g} at delta {delta:g} needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g} "
            f"for {steps} steps at sampling rate {sampling_rate:.3g}: noise that large drowns the gradients. "
            f"At {MAX_NOISE_MULTIPLIER:g} this run spends epsilon {reachable:.3g}; train fewer epochs, "
            f"use a larger expected batch, or accept a larger epsilon.{earlier}"
        )
    if spent_epsilon(MIN_NOISE_MULTIPLIER, sampling_rate, steps, delta, accountant, previous_fits) <= epsilon:
        return MIN_NOISE_MULTIPLIER
    with _quiet_absl():
        sigma = dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda s: _events(s, sampling_rate, steps, previous_fits),
            epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER),
            tol=1e-4,
        )
    return float(sigma)


def max_steps(noise_multiplier, sampling_rate, epsilon, delta, accountant="rdp", limit=None, previous_fits=()):
    """The most steps (at most `limit`) whose spent epsilon (after `previous_fits`) stays within `epsilon`."""

    def within(steps):
        return spent_epsilon(noise_multiplier, sampling_rate, steps, delta, accountant, previous_fits) <= epsilon

    low, high = 0, limit or 1
    while limit is None and within(high):
        low, high = high, 2 * high
    if limit is not None and within(limit):
        return limit
    while high - low > 1:  # epsilon grows with the steps: bisect
        middle = (low + high) // 2
        low, high = (middle, high) if within(middle) else (low, middle)
    return low


def _spent_by(previous_fits, delta, accountant):
    """Epsilon at `delta` of the earlier private fits alone (this fit's noise and rate do not matter at 0 steps)."""
    return spent_epsilon(None, None, 0, delta, accountant, previous_fits)


def _spent_before(previous_fits, delta, accountant):
    """What a refusal adds when the adapter's earlier private fits spent part of the budget."""
    if not previous_fits:
        return ""
    return (f" The adapter's earlier private fits already spent {_spent_by(previous_fits, delta, accountant):.3g} "
            "of it (DPConfig.epsilon is the adapter's whole budget over all its private fits).")


def _event(noise_multiplier, sampling_rate, steps):
    import dp_accounting

    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, int(steps))


def _events(noise_multiplier, sampling_rate, steps, previous_fits=()):
    """The earlier fits' steps and then these, as one event (`None`: no step at all)."""
    import dp_accounting

    fits = [*previous_fits, {"noise_multiplier": noise_multiplier, "sampling_rate": sampling_rate, "steps": steps}]
    events = [_event(f["noise_multiplier"], f["sampling_rate"], f["steps"]) for f in fits if f["steps"] > 0]
    if len(events) < 2:
        return events[0] if events else None
    return dp_accounting.ComposedDpEvent(events)


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
