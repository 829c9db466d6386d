"""Tempered mean denoising at L = ∞ (chapter *Alignment with the MMSE estimator*), checked
through the package's limit of attention: :func:`mtgmm.theory.layer_limit`,
:func:`~mtgmm.theory.attention_limit`, :func:`~mtgmm.theory.limit_excess` and
:func:`~mtgmm.symmetry.reduced_coordinates`."""

import pytest
import torch

from mtgmm import (
    AttentionBank,
    MultiTokenGMM,
    NoiseSchedule,
    SymmetricBasis,
    add_noise,
    mean_denoising_weights,
    oracle_eps,
    posterior_weights,
    symmetry,
    theory,
)
from mtgmm.attention import WEIGHT_NAMES

from .conftest import rng


@pytest.fixture(scope="module")
def g64() -> MultiTokenGMM:
    return MultiTokenGMM.orthogonal(
        4, 8, radius=4.0, sigma0=0.5, seed=0, dtype=torch.float64
    )


@pytest.fixture(scope="module")
def tilted() -> MultiTokenGMM:
    """Equal norms, not orthogonal, unequal weights (the case the limit theorem allows)."""
    directions = torch.tensor(
        [[1.0, 0.0, 0.0], [0.6, 1.0, 0.0], [0.0, 0.4, 1.0]], dtype=torch.float64
    )
    means = 3.0 * directions / directions.norm(dim=1, keepdim=True)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return MultiTokenGMM(means, weights=weights, sigma0=0.3)


def tempered(gmm, alpha_bar, tau):
    """The chapter's tempered construction, built from the τ = 1 one."""
    w_kq, w_v, w_s = mean_denoising_weights(gmm, alpha_bar)
    return tau * w_kq, w_v, w_s + (1 - tau) * w_v


def marginal_tokens(gmm, alpha_bar, n, generator):
    x0, _ = gmm.sample(n, 1, generator=generator)
    return add_noise(x0[:, 0], alpha_bar, generator=generator)[0]


def test_tempered_construction_has_the_closed_form(g64):
    ab, tau = 0.6, 0.3
    s2, b = g64.noise_variance(ab).item(), (1 - ab) ** 0.5
    p, eye = g64.span_projector(), torch.eye(8, dtype=torch.float64)
    expected = (tau * p / s2, -(b / s2) * p, (b / s2) * (eye + tau * p))
    for got, want in zip(tempered(g64, ab, tau), expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.7])
def test_tempered_layer_limit_uses_the_tempered_shares(tilted, tau):
    """L = ∞: ε_τ(x) = (b/s²)(x − a Σ_k ω_k μ_k), ω = softmax(log π + τ a⟨x, μ_k⟩/s²)."""
    ab = 0.5
    s2, a, b = tilted.noise_variance(ab).item(), ab**0.5, (1 - ab) ** 0.5
    x = 2 * torch.randn(500, 3, generator=rng(3), dtype=torch.float64)
    omega = torch.softmax(tilted.log_weights + tau * a * x @ tilted.means.T / s2, -1)
    limit = theory.layer_limit(tempered(tilted, ab, tau), tilted, ab, x)
    torch.testing.assert_close(limit, (b / s2) * (x - a * omega @ tilted.means))
    if tau == 0.0:  # uniform attention: the shares are the prior weights
        torch.testing.assert_close(omega, tilted.weights.expand_as(omega))


def test_finite_attention_shares_approach_the_cluster_shares(g64):
    """Lemma: the attention mass on cluster k tends to softmax_k(log π_k + a⟨q, μ_k⟩),
    read here off theory.attention_limit (orthogonal means: ω_k = ⟨h − s² q, μ_k⟩/(a r²))."""
    ab, n_keys = 0.7, 40_000
    a, s2 = ab**0.5, g64.noise_variance(ab).item()
    x0, labels = g64.sample(1, n_keys, generator=rng(5))
    keys = add_noise(x0[0], ab, generator=rng(6))[0]
    q = 0.1 * keys[:3] @ g64.span_projector()  # low temperature: fast convergence
    weights = torch.softmax(q @ keys.T, -1)  # (3, n_keys)
    share = torch.stack([weights[:, labels[0] == k].sum(-1) for k in range(4)], -1)
    h = theory.attention_limit(g64, ab, q)
    omega = (h - s2 * q) @ g64.means.T / (a * 16.0)
    torch.testing.assert_close(omega.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(share, omega, atol=0.01, rtol=0)


def test_tempered_excess_formula_is_the_limit_excess(g64):
    """(a b r/s²)² E‖ω^τ − w‖² on the very tokens theory.limit_excess draws."""
    ab, n = 0.8, 20_000
    gain2 = ab * (1 - ab) * 16.0 / g64.noise_variance(ab).item() ** 2

    def formula(tau, seed):
        x = marginal_tokens(g64, ab, n, rng(seed))
        w = posterior_weights(g64, x, ab)
        omega = torch.softmax(tau * w.clamp_min(1e-300).log(), -1)
        values = gain2 * ((omega - w) ** 2).sum(-1)
        return values.mean().item(), values.std().item() / n**0.5

    assert formula(1.0, 7)[0] < 1e-20
    value, se = formula(0.3, 8)
    via_attention, _ = theory.limit_excess(tempered(g64, ab, 0.3), g64, ab, n, rng(8))
    assert value > 10 * se > 0
    assert abs(value - via_attention) < 1e-9 * value


def best_readout_excess(gmm, alpha_bar, w_kq, n, seed):
    """L = ∞ excess of the least-squares x W_S + h_∞ W_V for a fixed W_KQ (fit, then test)."""
    generator, span = rng(seed), gmm.span_basis()

    def features_and_target():
        x = marginal_tokens(gmm, alpha_bar, n, generator)
        h = theory.attention_limit(gmm, alpha_bar, x @ w_kq)
        return torch.cat([x, h @ span.T], -1), oracle_eps(gmm, x, alpha_bar)

    fit_x, fit_y = features_and_target()
    readout = torch.linalg.lstsq(fit_x, fit_y).solution
    test_x, test_y = features_and_target()
    values = ((test_x @ readout - test_y) ** 2).sum(-1)
    return values.mean().item(), values.std().item() / n**0.5


def test_no_readout_repairs_a_wrong_inverse_temperature(g64):
    ab = 0.7
    s2, p = g64.noise_variance(ab).item(), g64.span_projector()
    exact, _ = best_readout_excess(g64, ab, p / s2, 5_000, 9)
    assert exact < 1e-12
    cool, cool_se = best_readout_excess(g64, ab, 0.2 * p / s2, 5_000, 9)
    construction, _ = theory.limit_excess(
        tempered(g64, ab, 0.2), g64, ab, 5_000, rng(10)
    )
    assert cool > 10 * cool_se and cool < construction


def test_reduced_coordinates_read_the_inverse_temperature_of_a_bank(g64):
    gmm, schedule, tau = g64.to(dtype=torch.float32), NoiseSchedule.cosine(4), 0.3
    layers = [tempered(gmm, ab, tau) for ab in schedule.alpha_bar.tolist()]
    bank = AttentionBank(schedule.n_steps, 8)
    with torch.no_grad():
        for name, mats in zip(WEIGHT_NAMES, zip(*layers, strict=True), strict=True):
            getattr(bank, name).copy_(torch.stack(mats))
    alpha = symmetry.reduced_coordinates(bank, SymmetricBasis(gmm))[:, 0, 0]
    got = alpha * gmm.noise_variance(schedule.alpha_bar.double())
    torch.testing.assert_close(
        got, torch.full((4,), tau, dtype=got.dtype), atol=1e-5, rtol=0
    )
