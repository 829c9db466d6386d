"""mtgmm.descent against independent computations: the readout Hessian by autograd, the
iteration counts on gradient descent itself, and the inverse temperature profile's
derivative, minimum, descent constants and stationary points."""

import numpy as np
import pytest
import torch

from mtgmm.attention import AttentionDenoiser, SymmetricBasis
from mtgmm.best import readout_fit
from mtgmm.descent import (
    Profile,
    gd_iterations,
    sign_changes,
    temperature_iterations,
)
from mtgmm.objective import noisy_batch
from mtgmm.symmetry import orthonormal_symmetric_basis

from .conftest import rng

F64 = torch.float64
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


def test_gd_iterations_bounds_gradient_descent_on_the_readout_quadratic(gmm):
    """GD (gradients by autograd) on the empirical readout loss, in the orthonormal symmetric
    coordinates with W_KQ fixed, from θ = 0 with step 1/ℓ: it reaches the target within the
    quadratic bound, which lies within the general one; μ, ℓ from the Hessian by autograd."""
    g, ab = gmm.to(dtype=F64), 0.7
    basis = SymmetricBasis(g)
    e = orthonormal_symmetric_basis(basis)
    w_kq = 0.2 / g.noise_variance(ab).item() * (basis.P - basis.J)
    x_t, eps = noisy_batch(g, ab, 32, 16, rng(33))
    model = AttentionDenoiser.from_weights(
        w_kq, torch.eye(8), torch.zeros(8, 8)
    ).double()
    with torch.no_grad():
        attn_out = model(x_t)  # the attention output A (W_V = I, W_S = 0)
    feats = torch.stack(
        [torch.einsum("nld,mde->nlme", f, e) for f in (attn_out, x_t)], -3
    )
    feats = feats.flatten(-3, -2)  # (n, L, 2m, d)

    def loss(theta):
        return ((torch.einsum("nlad,a->nld", feats, theta) - eps) ** 2).sum(-1).mean()

    hess = torch.autograd.functional.hessian(loss, torch.zeros(2 * len(e), dtype=F64))
    mu, ell = torch.linalg.eigvalsh(hess)[[0, -1]].tolist()
    theta = torch.zeros(2 * len(e), dtype=F64, requires_grad=True)
    (grad0,) = torch.autograd.grad(loss(theta), theta)
    f_star = loss(torch.linalg.solve(hess, -grad0)).item()
    excess0, target = loss(theta).item() - f_star, 1e-6
    k = 0
    while loss(theta).item() - f_star > target:
        (grad,) = torch.autograd.grad(loss(theta), theta)
        theta = (theta - grad / ell).detach().requires_grad_(True)
        k += 1
    quad = gd_iterations(excess0, target, ell, mu, 1 / ell, quadratic=True)
    general = gd_iterations(excess0, target, ell, mu, 1 / ell)
    assert k <= quad <= general, (k, quad, general)


def test_gd_iterations_is_tight_on_the_slowest_direction():
    """GD on f(θ) = (μθ₁² + ℓθ₂²)/2 started on the flattest eigenvector θ_0 = (1, 0): the
    quadratic bound is exactly the iteration count."""
    mu, ell, step, target = 0.1, 2.0, 0.5, 1e-4
    theta, k = [1.0, 0.0], 0
    f = lambda t: 0.5 * (mu * t[0] ** 2 + ell * t[1] ** 2)  # noqa: E731
    excess0 = f(theta)
    while f(theta) > target:
        theta = [theta[0] - step * mu * theta[0], theta[1] - step * ell * theta[1]]
        k += 1
    assert gd_iterations(excess0, target, ell, mu, step, quadratic=True) == k
    assert gd_iterations(1.0, 2.0, ell, mu, step) == 0
    with pytest.raises(ValueError, match="step"):
        gd_iterations(1.0, 0.1, ell, mu, 0.6)  # > 1/ℓ for the general bound
    with pytest.raises(ValueError, match="step"):
        gd_iterations(1.0, 0.1, ell, mu, 1.0, quadratic=True)  # = 2/ℓ
    with pytest.raises(ValueError, match="strong_convexity"):
        gd_iterations(1.0, 0.1, ell, 3.0, 0.1)
    with pytest.raises(ValueError, match="excess0"):
        gd_iterations(0.0, 0.1, ell, mu, 0.1)
