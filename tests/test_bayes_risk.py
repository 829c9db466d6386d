"""The Bayes risk R*_t = E‖ε − ε*(x_t)‖² against independent Monte Carlo and closed forms."""

import pytest
import torch

from mtgmm import MultiTokenGMM, add_noise, bayes_risk, bayes_risk_estimates, oracle_eps

from .conftest import rng


def direct_monte_carlo(gmm, alpha_bar, n, seed):
    """Plain average of ‖ε − ε*‖² over tokens in all d coordinates, with a standard error."""
    g = gmm.to(dtype=torch.float64)
    x0, _ = g.sample(n, 1, generator=rng(seed))
    x_t, eps = add_noise(x0, alpha_bar, generator=rng(seed + 1))
    loss = ((eps - oracle_eps(g, x_t, alpha_bar)) ** 2).sum(-1).flatten()
    return loss.mean().item(), loss.std().item() / n**0.5


@pytest.mark.parametrize("alpha_bar", [0.99, 0.9, 0.5, 0.1, 0.01])
@pytest.mark.parametrize("sigma0", [0.0, 0.5])
def test_bayes_risk_agrees_with_direct_monte_carlo(gmm, alpha_bar, sigma0):
    g = MultiTokenGMM(gmm.means, sigma0=sigma0)
    estimate, stderr = bayes_risk(g, alpha_bar, n_samples=100_000, generator=rng(10))
    direct, direct_se = direct_monte_carlo(g, alpha_bar, 100_000, seed=20)
    assert abs(estimate - direct) <= 4 * (stderr**2 + direct_se**2) ** 0.5 + 1e-12


def test_the_three_estimators_agree_within_error_bars(skewed_gmm):
    est = bayes_risk_estimates(
        skewed_gmm, torch.tensor([0.95, 0.6, 0.2]), 50_000, generator=rng(0)
    )
    pairs = [
        (est.direct, est.direct_stderr, est.identity, est.identity_stderr),
        (est.direct, est.direct_stderr, est.conditional, est.conditional_stderr),
        (est.identity, est.identity_stderr, est.conditional, est.conditional_stderr),
    ]
    for m1, s1, m2, s2 in pairs:
        # the estimators share samples, so the variance of the difference is at most (s1 + s2)²
        assert bool(((m1 - m2).abs() <= 4 * (s1 + s2)).all())
    # the conditional (Rao–Blackwellised) estimator is never noisier than the direct one
    assert bool((est.conditional_stderr <= est.direct_stderr * 1.05).all())
    assert bool(
        (
            est.combined_stderr
            <= torch.minimum(est.identity_stderr, est.conditional_stderr) * 1.01
        ).all()
    )


def test_single_gaussian_has_a_closed_form_risk():
    """K = 1: the oracle is linear and R* = d · a²σ0² / s² exactly (also with a nonzero mean)."""
    for means in [torch.zeros(1, 5), torch.tensor([[3.0, 0.0, 1.0, 0.0, 0.0]])]:
        g = MultiTokenGMM(means, sigma0=0.8)
        for ab in [0.9, 0.3]:
            s2 = ab * 0.64 + 1 - ab
            estimate, stderr = bayes_risk(g, ab, n_samples=1000, generator=rng(0))
            assert estimate == pytest.approx(5 * ab * 0.64 / s2, rel=1e-9)
            assert stderr < 1e-9


def test_risk_at_the_ends_of_the_schedule(gmm):
    # ᾱ = 1: x_t carries no information about ε, so ε* = 0 and R* = d
    assert bayes_risk(gmm, 1.0, 1000, rng(0))[0] == pytest.approx(8.0)
    assert bayes_risk(MultiTokenGMM(gmm.means), 1.0, 1000, rng(0))[0] == pytest.approx(
        8.0
    )
    # ᾱ → 0: x_t ≈ ε, so R* → 0
    assert bayes_risk(gmm, 1e-6, 1000, rng(0))[0] < 1e-4


@pytest.mark.parametrize("alpha_bar", [0.999, 0.9, 0.7, 0.5, 0.3, 0.1, 0.01])
def test_200k_samples_give_a_standard_error_below_one_percent(gmm, alpha_bar):
    estimate, stderr = bayes_risk(gmm, alpha_bar, n_samples=200_000, generator=rng(1))
    assert stderr < 0.01 * estimate


def test_reference_values_from_the_brief(gmm):
    """Bayes risks recorded while planning (d=8, K=4, r=4, σ0=0.5): 5.54, 1.83, 1.01."""
    for ab, expected in [(0.9, 5.54), (0.5, 1.83), (0.1, 1.01)]:
        estimate, stderr = bayes_risk(gmm, ab, n_samples=100_000, generator=rng(2))
        assert abs(estimate - expected) < 0.01 + 4 * stderr


def test_vectorised_levels_match_single_calls(gmm):
    levels = torch.tensor([0.9, 0.4])
    curve = bayes_risk_estimates(gmm, levels, 20_000, generator=rng(3))
    for i, ab in enumerate(levels.tolist()):
        single, se = bayes_risk(gmm, ab, 20_000, generator=rng(4))
        assert abs(curve.estimate[i].item() - single) < 4 * (
            se + curve.combined_stderr[i].item()
        )


def test_invalid_arguments_are_rejected(gmm):
    with pytest.raises(ValueError, match="n_samples"):
        bayes_risk(gmm, 0.5, n_samples=0)
    with pytest.raises(ValueError, match="alpha_bar must lie"):
        bayes_risk(gmm, 0.0)
    with pytest.raises(ValueError, match="single value"):
        bayes_risk(gmm, torch.tensor([0.5, 0.6]))
