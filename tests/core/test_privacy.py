"""The privacy accountant: epsilon, calibration, budgets and refusals, against dp-accounting itself."""

import math

import pytest
from conftest import reference_dp_epsilon

from keras_adapters.core import privacy
from keras_adapters.core.privacy import DPConfig
from keras_adapters.core.privacy import PrivacyBudgetError


def reference_epsilon(sigma, q, steps, delta, accountant):
    return reference_dp_epsilon([(sigma, q, steps)], delta, accountant)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_reported_epsilon_is_dp_accountings(accountant):
    plan = DPConfig(noise_multiplier=1.1, delta=1e-5, accountant=accountant).plan(2000, 50, 2)
    assert plan.sampling_rate == 50 / 2000 and plan.planned_steps == 80 == plan.max_steps
    report = plan.report(37)
    assert report["steps"] == 37 and report["accountant"] == accountant
    assert report["epsilon"] == pytest.approx(reference_epsilon(1.1, 0.025, 37, 1e-5, accountant), rel=1e-9)
    assert {"epsilon", "delta", "noise_multiplier", "clip_norm", "sampling_rate", "steps", "accountant"} <= set(report)


@pytest.mark.parametrize(
    "accountant,epsilon", [("rdp", 1.0), ("rdp", 8.0), pytest.param("pld", 3.0, marks=pytest.mark.slow)]  # pld: 15 s
)
def test_calibrated_noise_spends_the_target_within_one_percent(accountant, epsilon):
    plan = DPConfig(epsilon=epsilon, delta=1e-5, accountant=accountant).plan(1780, 64, 2)
    spent = reference_epsilon(plan.noise_multiplier, plan.sampling_rate, plan.planned_steps, 1e-5, accountant)
    assert spent <= epsilon
    assert spent == pytest.approx(epsilon, rel=0.01)
    # and no less noise would do: 2% less noise overspends
    assert reference_epsilon(0.98 * plan.noise_multiplier, plan.sampling_rate, plan.planned_steps, 1e-5,
                             accountant) > epsilon


def test_given_noise_and_budget_stop_at_the_last_step_within_it():
    plan = DPConfig(epsilon=3.0, noise_multiplier=1.5, delta=1e-5).plan(1000, 100, 20)
    assert plan.max_steps < plan.planned_steps == 200
    assert 0 < plan.max_steps
    assert reference_epsilon(1.5, 0.1, plan.max_steps, 1e-5, "rdp") <= 3.0
    assert reference_epsilon(1.5, 0.1, plan.max_steps + 1, 1e-5, "rdp") > 3.0


def test_config_round_trips():
    config = DPConfig(epsilon=3.0, delta=1e-6, clip_norm=0.5, noise_multiplier=None, accountant="pld")
    assert DPConfig.from_config(config.get_config()) == config


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(epsilon=0.0), "epsilon must be a positive"),
        (dict(epsilon=-1.0), "epsilon must be a positive"),
        (dict(), "needs epsilon"),
        (dict(epsilon=1.0, delta=1.0), "delta must be in (0, 1)"),
        (dict(epsilon=1.0, clip_norm=0.0), "clip_norm"),
        (dict(noise_multiplier=0.0), "no privacy"),
        (dict(epsilon=1.0, accountant="gdp"), "accountant must be one of"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(kwargs, words):
    with pytest.raises(PrivacyBudgetError, match=words.replace("(", r"\(").replace(")", r"\)")):
        DPConfig(**kwargs)


def test_delta_not_below_one_over_n_is_refused():
    with pytest.raises(PrivacyBudgetError, match=r"not below 1/N = 0.001 for N = 1000"):
        DPConfig(epsilon=8.0, delta=1e-3).plan(1000, 10, 1)
    DPConfig(epsilon=8.0, delta=9e-4).plan(1000, 10, 1)  # just below: accepted


def test_an_unreachable_target_says_what_epsilon_is_reachable():
    with pytest.raises(PrivacyBudgetError) as error:
        DPConfig(epsilon=0.01, delta=1e-5).plan(10_000, 5000, 50)
    reachable = reference_epsilon(privacy.MAX_NOISE_MULTIPLIER, 0.5, 100, 1e-5, "rdp")
    assert f"spends epsilon {reachable:.3g}" in str(error.value)
    assert "noise multiplier above 20" in str(error.value)


def test_one_step_over_budget_is_refused():
    with pytest.raises(PrivacyBudgetError, match="more than epsilon 0.1 in a single step"):
        DPConfig(epsilon=0.1, noise_multiplier=0.5, delta=1e-4).plan(1000, 500, 1)


def analytic_gaussian_epsilon(noise_multiplier, steps, delta):
    """Exact epsilon of `steps` Gaussian steps on every example (q = 1): a
    Gaussian mechanism of mu = sqrt(steps) / sigma (Balle & Wang, ICML 2018,
    Theorem 8), solved here with scipy, no dp-accounting involved."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    mu = steps**0.5 / noise_multiplier

    def excess(epsilon):
        return norm.cdf(mu / 2 - epsilon / mu) - math.exp(epsilon) * norm.cdf(-mu / 2 - epsilon / mu) - delta

    return brentq(excess, 0.0, 100.0)


@pytest.mark.parametrize("sigma,steps", [(1.0, 1), (3.0, 10), (5.0, 40)])
def test_epsilon_against_the_exact_gaussian_mechanism(sigma, steps):
    exact = analytic_gaussian_epsilon(sigma, steps, 1e-5)
    pld_epsilon = privacy.spent_epsilon(sigma, 1.0, steps, 1e-5, "pld")
    rdp_epsilon = privacy.spent_epsilon(sigma, 1.0, steps, 1e-5, "rdp")
    assert exact <= pld_epsilon <= exact * 1.01  # PLD: tight, never below the truth
    assert exact <= rdp_epsilon <= exact * 1.5  # RDP: an upper bound, looser


# ------------------------------------------------- several private fits of one adapter
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_later_fit_is_composed_with_the_earlier_ones(accountant):
    first = DPConfig(noise_multiplier=1.1, delta=1e-5, accountant=accountant).plan(2000, 50, 1)
    earlier = privacy.fits_of(first.report(30))
    second = DPConfig(noise_multiplier=1.4, delta=1e-5, accountant=accountant).plan(1500, 100, 2, earlier)
    report = second.report(20)
    want = reference_dp_epsilon([(1.1, 0.025, 30), (1.4, 100 / 1500, 20)], 1e-5, accountant)
    assert report["epsilon"] == pytest.approx(want, rel=1e-9)
    assert report["epsilon"] > max(first.epsilon_after(30), second.epsilon_after(0) + 0.01)
    assert report["previous_fits"] == [dict(noise_multiplier=1.1, sampling_rate=0.025, steps=30, clip_norm=1.0,
                                            num_examples=2000, expected_batch_size=50)]
    # a third fit composes all three; a fit that took no step adds nothing
    third = DPConfig(noise_multiplier=2.0, delta=1e-5, accountant=accountant).plan(1500, 100, 1,
                                                                                   privacy.fits_of(report))
    assert len(third.report(0)["previous_fits"]) == 2
    assert privacy.fits_of(third.report(0)) == privacy.fits_of(report)
    assert third.report(0)["epsilon"] == pytest.approx(report["epsilon"], rel=1e-9)
    assert "over 3 private fits" in privacy.describe(third.report(5))


def test_composed_epsilon_against_the_exact_gaussian_mechanism():
    """Two fits on every example (q = 1) compose to one Gaussian mechanism of
    mu = sqrt(k1 / s1^2 + k2 / s2^2): the exact epsilon, no dp-accounting."""
    earlier = [dict(noise_multiplier=3.0, sampling_rate=1.0, steps=10)]
    spent = privacy.spent_epsilon(5.0, 1.0, 40, 1e-5, "pld", earlier)  # (plans keep q below 1)
    exact = analytic_gaussian_epsilon((10 / 9 + 40 / 25) ** -0.5, 1, 1e-5)
    assert spent == pytest.approx(exact, rel=0.01)


def test_a_guarantee_that_cannot_be_composed_is_refused():
    report = DPConfig(noise_multiplier=1.0, delta=1e-5).plan(100, 10, 1).report(10)
    del report["sampling_rate"]
    with pytest.raises(PrivacyBudgetError, match="lacks sampling_rate"):
        privacy.fits_of(report)


@pytest.mark.parametrize("accountant", ["rdp"])  # PLD composes as RDP does (above); its calibration takes ~45 s
def test_calibration_spends_what_the_earlier_fits_left(accountant):
    first = DPConfig(epsilon=3.0, delta=1e-5, accountant=accountant).plan(1780, 64, 1)
    earlier = privacy.fits_of(first.report(first.planned_steps))
    second = DPConfig(epsilon=5.0, delta=1e-5, accountant=accountant).plan(1780, 64, 2, earlier)
    fits = [(first.noise_multiplier, first.sampling_rate, first.planned_steps)]
    spent = reference_dp_epsilon([*fits, (second.noise_multiplier, second.sampling_rate, second.planned_steps)],
                               1e-5, accountant)
    assert spent <= 5.0 and spent == pytest.approx(5.0, rel=0.01)
    less = reference_dp_epsilon([*fits, (0.98 * second.noise_multiplier, second.sampling_rate, second.planned_steps)],
                              1e-5, accountant)
    assert less > 5.0
    # with both noise and a total budget, training stops where the total is reached
    capped = DPConfig(epsilon=5.0, noise_multiplier=1.0, delta=1e-5).plan(1780, 64, 40, earlier)
    assert 0 < capped.max_steps < capped.planned_steps
    assert reference_dp_epsilon([*fits, (1.0, capped.sampling_rate, capped.max_steps)], 1e-5, "rdp") <= 5.0
    assert reference_dp_epsilon([*fits, (1.0, capped.sampling_rate, capped.max_steps + 1)], 1e-5, "rdp") > 5.0


def test_a_budget_the_earlier_fits_spent_is_refused_with_what_they_spent():
    first = DPConfig(epsilon=3.0, delta=1e-5).plan(1780, 64, 1)
    earlier = privacy.fits_of(first.report(first.planned_steps))
    spent = first.epsilon_after(first.planned_steps)
    with pytest.raises(PrivacyBudgetError, match=f"already spent epsilon {spent:.3g}.*leaves nothing of epsilon 2"):
        DPConfig(epsilon=2.0, delta=1e-5).plan(1780, 64, 1, earlier)
    with pytest.raises(PrivacyBudgetError, match=f"earlier private fits already spent {spent:.3g} of it"):
        DPConfig(epsilon=3.0, delta=1e-5).plan(1780, 64, 10, earlier)  # what is left is too little for any noise
    DPConfig(noise_multiplier=2.0, delta=1e-5).plan(1780, 64, 1, earlier)  # no target: it reports, no refusal
