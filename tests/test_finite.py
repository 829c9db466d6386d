"""The finite-token bounds against independent computations: key moments by brute-force
Monte Carlo over many keys, the per-query error bounds against simulated attention errors,
the excess bounds and the lower bound against measured excess risk."""

import math

import pytest
import torch

from mtgmm.attention import AttentionDenoiser, SymmetricBasis, mean_denoising_weights
from mtgmm.finite import (
    attention_error_bound,
    excess_bound,
    key_moments,
    max_normal_moment,
    oracle_gap,
)
from mtgmm.mixture import MultiTokenGMM
from mtgmm.objective import excess_risk
from mtgmm.theory import _marginal_tokens, attention_limit

ALPHA_BAR = 0.9


def rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def gmm64() -> MultiTokenGMM:
    return MultiTokenGMM.orthogonal(
        4, 8, radius=4.0, sigma0=0.5, seed=0, dtype=torch.float64
    )


def line_layer(gmm: MultiTokenGMM, tau: float) -> tuple[torch.Tensor, ...]:
    """W_KQ = (τ/s²)(P − J) with a fixed symmetric readout."""
    basis = SymmetricBasis(gmm)
    s2 = gmm.noise_variance(ALPHA_BAR).item()
    w_kq = (tau / s2) * (basis.P - basis.J)
    w_v = basis.compose(torch.tensor([-0.8, 0.1, 0.2], dtype=torch.float64))
    w_s = basis.compose(torch.tensor([1.0, 0.3, 0.1], dtype=torch.float64))
    return w_kq, w_v, w_s


def tokens(gmm: MultiTokenGMM, n: int, seed: int) -> torch.Tensor:
    return _marginal_tokens(gmm, ALPHA_BAR, n, rng(seed)).double()


def test_key_moments_match_monte_carlo(gmm64):
    w_kq, w_v, _ = line_layer(gmm64, 0.05)
    q = tokens(gmm64, 3, 1) @ w_kq
    mom = key_moments(gmm64, ALPHA_BAR, q, w_v)
    keys = tokens(gmm64, 1_000_000, 2)
    for i in range(3):
        w = (keys @ q[i]).exp()
        u2 = (((keys - mom.mean[i]) @ w_v) ** 2).sum(-1)
        z = w.mean()
        tilted_mean = (w[:, None] * keys).mean(0) / z
        torch.testing.assert_close(tilted_mean, mom.mean[i], rtol=0, atol=0.02)
        pairs = [
            (z.log(), mom.log_z[i]),
            ((w**2).mean() / z**2, mom.rho[i]),
            ((w**2 * u2).mean() / z**2, mom.sigma2[i]),
            (u2.mean(), mom.m2[i]),
            ((u2**2).mean(), mom.m4[i]),
        ]
        for estimate, exact in pairs:
            assert estimate.item() == pytest.approx(exact.item(), rel=0.02)


@pytest.mark.parametrize("mask_self", [False, True])
@pytest.mark.parametrize("n_tokens", [4, 32])
def test_error_bounds_hold_for_simulated_attention(gmm64, n_tokens, mask_self):
    weights = line_layer(gmm64, 0.2)
    w_kq, w_v, _ = weights
    x = tokens(gmm64, 3, 3)
    q = x @ w_kq
    mean = attention_limit(gmm64, ALPHA_BAR, q)
    repeats = 20_000
    keys = tokens(gmm64, repeats * (n_tokens - 1), 4).reshape(repeats, n_tokens - 1, 8)
    for h in (0.2, 0.5):
        bound = attention_error_bound(
            weights, gmm64, ALPHA_BAR, x, n_tokens, h, mask_self
        )
        for i in range(3):
            seen = (
                keys if mask_self else torch.cat([x[i].expand(repeats, 1, 8), keys], 1)
            )
            out = (torch.softmax(seen @ q[i], -1)[..., None] * seen).sum(1)
            delta = (out - mean[i]) @ w_v
            assert delta.mean(0).norm() <= bound.bias[i]
            assert (delta**2).sum(-1).mean() <= bound.second[i]


def test_excess_bound_brackets_measured_excess(gmm64):
    weights = line_layer(gmm64, 0.1)
    model = AttentionDenoiser.from_weights(*weights).double()
    n_tokens = 2048
    bound = excess_bound(weights, gmm64, ALPHA_BAR, n_tokens, 20_000, rng(5))
    measured, se = excess_risk(model, gmm64, ALPHA_BAR, n_tokens, 16, rng(6))
    slack = 3 * (se + bound.limit_stderr + bound.gap_upper_stderr)
    assert bound.lower - slack <= measured <= bound.upper + slack
    assert bound.gap_lower <= 0 <= bound.gap_upper


def test_lower_bound_at_oracle_temperature(gmm64):
    weights = mean_denoising_weights(gmm64, ALPHA_BAR)
    model = AttentionDenoiser.from_weights(*weights).double()
    s = math.sqrt(gmm64.noise_variance(ALPHA_BAR).item())
    gamma, alpha = oracle_gap(weights, gmm64, ALPHA_BAR, tokens(gmm64, 20_000, 7))
    assert alpha == pytest.approx(-math.sqrt(1 - ALPHA_BAR) / s**2)
    for n_tokens in (8, 64):
        lower = alpha**2 * max_normal_moment(gamma, s, n_tokens - 1).mean()
        simple = alpha**2 / 2 * (gamma - s * math.sqrt(2 * math.log(n_tokens - 1)))
        assert simple.clamp_min(0).pow(2).mean() <= lower
        measured, se = excess_risk(model, gmm64, ALPHA_BAR, n_tokens, 256, rng(8))
        assert lower <= measured + 3 * se
        assert lower > 1  # of order one at this SNR


def test_max_normal_moment_matches_monte_carlo():
    gamma = torch.tensor([-0.5, 0.3, 2.0, 5.0], dtype=torch.float64)
    xi = torch.randn(200_000, 50, generator=rng(9), dtype=torch.float64).amax(-1)
    for scale in (0.5, 1.3):
        exact = max_normal_moment(gamma, scale, 50)
        sampled = ((gamma[:, None] - scale * xi.clamp_min(0)).clamp_min(0) ** 2).mean(1)
        torch.testing.assert_close(exact, sampled, rtol=0.02, atol=1e-3)


def test_bad_arguments(gmm64):
    weights = line_layer(gmm64, 0.1)
    x = tokens(gmm64, 2, 0)
    with pytest.raises(ValueError, match="h must"):
        attention_error_bound(weights, gmm64, ALPHA_BAR, x, 8, h=1.0)
    with pytest.raises(ValueError, match="n_tokens"):
        attention_error_bound(weights, gmm64, ALPHA_BAR, x, 1)
    w_kq, _, w_s = weights
    with pytest.raises(ValueError, match="W_V"):
        oracle_gap((w_kq, torch.eye(8, dtype=torch.float64) + 0.1, w_s), gmm64, 0.9, x)
