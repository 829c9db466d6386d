"""The inverse temperature profile of mtgmm.bounds (chapter *The convergence theorem*): its
derivative, minimum and descent constants against independent computations, the grid's
stationary points, and the iteration count of the temperature lemma."""

import numpy as np
import pytest
import torch

from mtgmm.attention import SymmetricBasis
from mtgmm.best import readout_fit
from mtgmm.bounds import Profile, sign_changes, temperature_iterations

from .conftest import rng

GRID = np.round(np.linspace(-0.2, 0.6, 17), 3).tolist()


def start_tau(gmm, alpha_bar):
    """τ0 = 2 s² / E‖x‖² of the default start of mtgmm.train (as in the chapter)."""
    s2 = gmm.noise_variance(alpha_bar).item()
    r2 = (gmm.means**2).sum(-1).mean().item()
    return 2 * s2 / (alpha_bar * r2 + gmm.dim * s2)


def test_start_temperature_matches_a_sample(gmm):
    x0, _ = gmm.sample(4096, 1, generator=rng(0))
    x = 0.9**0.5 * x0[:, 0] + 0.1**0.5 * torch.randn(4096, 8, generator=rng(1))
    measured = 2 * gmm.noise_variance(0.9).item() / (x**2).sum(-1).mean().item()
    assert start_tau(gmm, 0.9) == pytest.approx(measured, rel=0.03)


def test_profile_matches_readout_fit_and_finite_differences(gmm):
    profile = Profile(gmm, 0.9, 16, 64, rng(2))
    value, slope = profile.derivative(0.1)
    h = 1e-4
    numeric = (profile.value(0.1 + h) - profile.value(0.1 - h)) / (2 * h)
    assert slope == pytest.approx(numeric, rel=1e-4, abs=1e-6)
    assert profile.per_sequence(0.1).mean().item() == pytest.approx(value, rel=1e-6)
    coeffs = profile.coefficients(0.1)
    assert coeffs[0, 0].item() * profile.s2 == pytest.approx(0.1)
    assert coeffs[0, 2].item() == pytest.approx(-coeffs[0, 0].item())
    model, _, _ = readout_fit(
        gmm, 0.9, 16, coeffs[0], n_sequences=4096, generator=rng(3)
    )
    fitted = SymmetricBasis(gmm.to(dtype=torch.float64)).coordinates(
        model.W_V.detach().double()
    )
    torch.testing.assert_close(fitted, coeffs[1], atol=0.1, rtol=0.1)


def test_profile_minimum_is_below_the_grid(gmm):
    profile = Profile(gmm, 0.9, 32, 64, rng(4))
    grid = np.linspace(-0.2, 0.6, 9).tolist()
    tau, value = profile.minimum(grid)
    assert value <= min(profile.value(t) for t in grid) + 1e-12
    assert 0.05 < tau < 0.3
    assert abs(profile.derivative(tau)[1]) < 1e-3


def test_sign_changes():
    assert sign_changes([0, 1, 2, 3], [-1.0, -1.0, 1.0, 1.0]) == [1.5]
    assert sign_changes([0, 1, 2], [1.0, -1.0, 1.0]) == [0.5, 1.5]
    with pytest.raises(ValueError, match="sorted"):
        sign_changes([1, 0], [1.0, 1.0])


def test_short_context_barrier_lies_between_start_and_optimum(gmm):
    """At ᾱ = 0.9 the grid resolves a local maximum above τ0 at L = 8, none at L = 32."""
    tau0 = start_tau(gmm, 0.9)
    for n_tokens, n_sequences, barrier in ((8, 512, True), (32, 128, False)):
        profile = Profile(gmm, 0.9, n_tokens, n_sequences, rng(0))
        _, slopes = profile.scan(GRID)
        tau_star, _ = profile.minimum(GRID)
        points = sign_changes(GRID, slopes.tolist())
        between = [p for p in points if tau0 < p < tau_star - 0.025]
        assert bool(between) == barrier and 0.08 < tau_star < 0.25


def test_temperature_iterations_on_a_quadratic():
    """On ℓ = (S/2)(τ − τ*)² the secant constant is S, and with step 1/S one step is exact;
    with step 1/(2S) the gap contracts by 1/4 per step, the bound's rate."""
    assert temperature_iterations(1.0, 1e-6, 2.0, 2.0, 0.5) == 1
    k = temperature_iterations(1.0, 1e-6, 2.0, 2.0, 0.25)
    gaps = [(0.5**j) ** 2 for j in range(k + 1)]  # (S/2)(τ_j − τ*)², τ_j − τ* = 2^-j
    assert gaps[k] <= 1e-6 < gaps[k - 1]
    assert temperature_iterations(0.001, 1e-3, 2.0, 1.0, 0.5) == 0
    for bad in (dict(step=1.0), dict(secant=3.0), dict(target=0.0)):
        args = (
            dict(distance0=1.0, target=1e-3, smoothness=2.0, secant=1.0, step=0.5) | bad
        )
        with pytest.raises(ValueError):
            temperature_iterations(**args)


def test_descent_on_the_profile_respects_the_count(gmm):
    """Gradient descent with step 1/S from τ0 stays below the guarantee, moves monotonically
    and reaches each target within temperature_iterations steps."""
    profile = Profile(gmm, 0.9, 32, 64, rng(0))
    tau0 = start_tau(gmm, 0.9)
    tau_star, value_star = profile.minimum(GRID)
    smoothness, secant = profile.descent_constants(tau0, tau_star, 9)
    taus, gaps = [tau0], []
    for _ in range(200):
        value, slope = profile.derivative(taus[-1])
        gaps.append(value - value_star)
        if gaps[-1] <= 1e-3:
            break
        taus.append(taus[-1] - slope / smoothness)
    gaps = np.array(gaps)
    k = np.arange(len(gaps))
    envelope = (
        smoothness / 2 * (1 - secant / smoothness) ** (2 * k) * (tau0 - tau_star) ** 2
    )
    assert bool((gaps <= envelope + 1e-9).all()) and bool(np.all(np.diff(taus) >= 0))
    for target in (1e-2, 1e-3):
        predicted = temperature_iterations(
            abs(tau0 - tau_star), target, smoothness, secant, 1 / smoothness
        )
        assert int(np.argmax(gaps <= target)) <= predicted and (gaps <= target).any()
