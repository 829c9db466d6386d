"""Experiments of the convergence chapter at tiny sizes, and the profile and iteration-count
helpers of mtgmm.bounds against independent computations."""

import math

import numpy as np
import pytest
import torch

from mtgmm.attention import SymmetricBasis
from mtgmm.best import readout_fit
from mtgmm.bounds import Profile, sign_changes, temperature_iterations
from mtgmm.experiments import convergence as cv
from mtgmm.theory import gd_iterations

from .conftest import rng


def _line(gmm, alpha_bar, tau):
    basis = SymmetricBasis(gmm.to(dtype=torch.float64))
    return tau / gmm.noise_variance(alpha_bar).item() * (basis.P - basis.J)


def test_start_temperature_matches_a_sample(gmm):
    x0, _ = gmm.sample(4096, 1, generator=rng(0))
    x = 0.9**0.5 * x0[:, 0] + 0.1**0.5 * torch.randn(4096, 8, generator=rng(1))
    s2 = gmm.noise_variance(0.9).item()
    measured = 2 * s2 / (x**2).sum(-1).mean().item()
    assert cv.start_temperature(gmm, 0.9) == pytest.approx(measured, rel=0.03)


def test_profile_matches_readout_fit_and_finite_differences(gmm):
    profile = Profile(gmm, 0.9, 16, 64, rng(2))
    value, slope = profile.derivative(0.1)
    h = 1e-4
    numeric = (profile.value(0.1 + h) - profile.value(0.1 - h)) / (2 * h)
    assert slope == pytest.approx(numeric, rel=1e-4, abs=1e-6)
    assert profile.per_sequence(0.1).mean().item() == pytest.approx(value, rel=1e-6)
    # same coefficients as mtgmm.best.readout_fit on the same sample (same seed stream)
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


def test_gradient_symmetry_at_symmetric_and_asymmetric_points(gmm):
    w = [_line(gmm, 0.9, 0.12), -0.5 * torch.eye(8, dtype=torch.float64), torch.eye(8)]
    sym = cv.gradient_symmetry(w, gmm, 0.9, 16, n_batches=24, batch_size=16)
    assert bool((sym.asymmetric < 3 * sym.asymmetric_noise).all())
    assert bool((sym.symmetric > 3 * sym.symmetric_noise).all())
    w[0] = w[0] + 0.05 * torch.randn(8, 8, generator=rng(5), dtype=torch.float64)
    broken = cv.gradient_symmetry(w, gmm, 0.9, 16, n_batches=24, batch_size=16)
    assert broken.asymmetric[0] > 3 * broken.asymmetric_noise[0]


def test_readout_descent_obeys_the_quadratic_bound(gmm):
    run = cv.readout_descent(
        gmm, 0.9, 16, _line(gmm, 0.9, 0.12), n_steps=150, n_sequences=32
    )
    assert run.gap[-1] < run.gap[0] and bool((run.gap >= -1e-9).all())
    for target in (1e-1, 1e-2):
        k = gd_iterations(
            run.gap[0],
            target,
            run.smoothness,
            run.strong_convexity,
            run.step,
            quadratic=True,
        )
        if k < len(run.gap):
            assert run.gap[k] <= target
    spectrum, stderr = cv.hessian_spectrum(gmm, 0.9, 16, _line(gmm, 0.9, 0.12), 4, 32)
    assert bool((spectrum > 5 * stderr).all()) and spectrum.shape == (6,)


def test_landscape_flags_the_short_context_barrier(gmm):
    grid = tuple(np.round(np.linspace(-0.2, 0.6, 17), 3).tolist())
    long = cv.landscape(gmm, 0.9, 32, grid, n_sequences=128)
    short = cv.landscape(gmm, 0.9, 8, grid, n_sequences=512)
    assert long.holds and 0.08 < long.tau_star < 0.2
    assert not short.holds  # a barrier between the start and the optimum
    assert any(short.tau0 < p < short.tau_star for p in short.stationary)


def test_temperature_descent_counts(gmm):
    run = cv.temperature_descent(gmm, 0.9, 32, (1e-2, 1e-3), n_sequences=64, n_grid=9)
    assert bool((run.measured >= 0).all()) and bool(
        (run.predicted >= run.measured).all()
    )
    assert bool((run.gaps <= run.envelope() + 1e-9).all())
    assert bool(np.all(np.diff(run.taus) >= 0))  # monotone, no overshoot (τ0 < τ*)


def test_token_gap_check_shrinks_like_one_over_l(gmm):
    w = [_line(gmm, 0.9, 0.12), -0.8 * torch.eye(8, dtype=torch.float64), torch.eye(8)]
    check = cv.token_gap_check(w, gmm, 0.9, (32, 128), n_sequences=64, n_samples=2**12)
    assert check.kappa < 0.5
    ratio = check.measured / check.predicted
    assert bool((np.abs(ratio - 1) < 0.5).all())
    assert check.measured[1] < check.measured[0] / 2.5


def test_measured_models_tiny(gmm, monkeypatch):
    monkeypatch.setattr(cv, "by_preset", lambda quick, full: quick)
    models = cv.measured_models(gmm, 0.9, (16,))
    assert models.best.shape == (1,) and math.isfinite(models.trained[0])
    assert models.best[0] < models.trained[0] + 4 * models.trained_stderr[0]


def test_theorem_run_meets_its_target(gmm, monkeypatch):
    monkeypatch.setattr(cv, "by_preset", lambda quick, full: quick)
    run = cv.theorem_run(gmm, 0.9, (0.3, 0.05, 0.05))
    assert 16 < run.n_tokens < 64
    assert 0 <= run.descent.measured[0] <= run.descent.predicted[0]
    assert run.readout.gap[-1] <= 0.05 and run.readout_steps == len(run.readout.gap) - 1
    assert run.excess < sum(run.targets) + 3 * run.excess_stderr


def test_contraction_rate_ignores_roundoff():
    """A long run reaches roundoff (zero or negative gaps); the rate uses the gaps above it."""
    rho2 = 0.95
    gap = 2.0 * rho2 ** np.arange(400.0)
    gap[300:] = np.where(np.arange(100) % 2 == 0, 0.0, -1e-16)  # roundoff at the end
    run = cv.ReadoutDescent(gap, 0.1, 1.0, 0.5, torch.zeros(3, 3))
    assert abs(run.contraction_rate() - rho2) < 1e-9
    with pytest.raises(ValueError, match="roundoff"):
        cv.ReadoutDescent(
            np.zeros(10), 0.1, 1.0, 0.5, torch.zeros(3, 3)
        ).contraction_rate()
