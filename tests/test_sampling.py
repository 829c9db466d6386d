"""The DDPM sampler against closed forms: pure noise pushed through the reverse chain, the
exact linear-Gaussian law for one Gaussian cluster, and the mixture's statistics."""

import math

import pytest
import torch

from mtgmm import AttentionBank, MultiTokenGMM, NoiseSchedule
from mtgmm.sampling import ddpm_sample, oracle_eps_fn, reverse_coefficients

from .conftest import rng

SKEWED_WEIGHTS = torch.tensor([0.5, 0.25, 0.15, 0.1])


def _separated_skewed(sigma0: float) -> MultiTokenGMM:
    """Orthogonal means of norm 4 in d = 8 (gaps 4√2 ≫ σ0, so assigning tokens to clusters
    is error-free in practice), with unequal weights."""
    means = MultiTokenGMM.orthogonal(4, 8, radius=4.0, seed=0).means
    return MultiTokenGMM(means, SKEWED_WEIGHTS, sigma0)


def _reverse_terms(schedule: NoiseSchedule, variance: str):
    """(ᾱ_t, α_t, β_t, σ_t²) from ᾱ alone, following Ho et al. (2020) eqs. 6-7."""
    ab = schedule.alpha_bar
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    alpha = ab / ab_prev
    beta = 1 - alpha
    sigma2 = beta.clone() if variance == "beta" else (1 - ab_prev) / (1 - ab) * beta
    sigma2[0] = 0.0
    return ab, alpha, beta, sigma2


def _gaussian_sampler_law(schedule, mu: float, sigma0: float, variance: str):
    """Exact law N(m, v) of the sampler's output for one Gaussian cluster N(μ, σ0²) in 1-D.

    Then ε*(x) = (b/s²)(x − a μ) is affine, so each step x ← A x + c + σ z is linear:
    A = (1 − β/s²)/√α, c = β a μ / (s² √α); start from N(0, 1)."""
    ab, alpha, beta, sigma2 = _reverse_terms(schedule, variance)
    m, v = 0.0, 1.0
    for t in reversed(range(schedule.n_steps)):
        s2 = ab[t] * sigma0**2 + 1 - ab[t]
        gain = (1 - beta[t] / s2) / alpha[t].sqrt()
        m = gain * m + beta[t] * ab[t].sqrt() * mu / (s2 * alpha[t].sqrt())
        v = gain**2 * v + sigma2[t]
    return float(m), float(v)


def _gap_to_nearest_mean(x, gmm) -> torch.Tensor:
    """Distance of each token to its nearest mean, in float64 (torch.cdist's fast path
    loses ~1e-3 here in float32 by cancellation)."""
    diff = x.reshape(-1, 1, gmm.dim).double() - gmm.means.double()
    return diff.norm(dim=-1).min(1).values


def _zeros(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_zero_predictor_gives_the_closed_form_gaussian(variance):
    # With ε̂ = 0 each step is x ← x/√α_t + σ_t z from x_T ~ N(0, I), so every coordinate ends
    # N(0, v) with v = 1/ᾱ_{T−1} + Σ_{t ≥ 1} σ_t² / ᾱ_{t−1}.
    schedule = NoiseSchedule.linear(100, beta_start=1e-3, beta_end=0.02)
    ab, _, _, sigma2 = _reverse_terms(schedule, variance)
    v = (1 / ab[-1] + (sigma2[1:] / ab[:-1]).sum()).item()
    x = ddpm_sample(
        _zeros,
        schedule,
        400,
        4,
        dim=8,
        variance=variance,
        generator=rng(1),
        progress=False,
    )
    flat = x.double().flatten()
    n = flat.numel()
    assert abs(flat.mean().item()) < 4 * math.sqrt(v / n)
    assert abs(flat.var().item() - v) < 4 * v * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_single_gaussian_with_the_exact_noise_follows_the_linear_gaussian_law(variance):
    mu, sigma0 = 2.0, 0.5
    gmm = MultiTokenGMM(torch.tensor([[mu]]), sigma0=sigma0)
    # The sampler's exact law tends to N(μ, σ0²) as the steps get finer: both variance
    # choices are within 1 % at T = 1000 (time-discretisation error only).
    m_fine, v_fine = _gaussian_sampler_law(
        NoiseSchedule.cosine(1000), mu, sigma0, variance
    )
    assert abs(m_fine - mu) < 1e-6 and abs(v_fine / sigma0**2 - 1) < 0.01
    # At T = 100 the sampler must match its exact law within Monte Carlo error (the law is
    # off N(μ, σ0²) by +1.6 % ("beta") or −7 % ("posterior") in variance at this T).
    schedule = NoiseSchedule.cosine(100)
    m, v = _gaussian_sampler_law(schedule, mu, sigma0, variance)
    x = ddpm_sample(
        oracle_eps_fn(gmm, schedule),
        schedule,
        1000,
        10,
        variance=variance,
        generator=rng(2),
        dtype=torch.float64,
        progress=False,
    ).flatten()
    n = x.numel()
    assert abs(x.mean().item() - m) < 4 * math.sqrt(v / n)
    assert abs(x.var().item() - v) < 4 * v * math.sqrt(2 / (n - 1))
    assert abs(m - mu) < 1e-4 and abs(v / sigma0**2 - 1) < 0.08


@pytest.mark.parametrize("sigma0", [0.5, 0.0])
def test_oracle_sampler_reproduces_the_mixture(sigma0):
    gmm = _separated_skewed(sigma0)
    schedule = NoiseSchedule.cosine(100)
    x = ddpm_sample(
        oracle_eps_fn(gmm, schedule), schedule, 400, 8, generator=rng(3), progress=False
    )
    # the oracle acts token by token: tokens are independent, with binomial and Gaussian
    # error bars; clusters are well separated, so the nearest mean is the Bayes classifier
    tokens, means = x.reshape(-1, gmm.dim).double(), gmm.means.double()
    labels = torch.cdist(tokens, means).argmin(1)
    p, w, n = torch.bincount(labels).double() / len(tokens), gmm.weights, len(tokens)
    # measured discretisation bias of the occupancy at T = 100: ≤ 0.003 (N = 2·10⁵ tokens),
    # far below 4 standard errors (≈ 0.03 for π = 0.5 with 3200 tokens)
    assert torch.all((p - w).abs() < 4 * (w * (1 - w) / n).sqrt())
    # well-separated clusters: each spread follows the one-Gaussian law of the sampler
    # (σ0 · 1.008 at T = 100, discretisation), within 4 standard errors σ/√(2dN_k)
    spread = math.sqrt(_gaussian_sampler_law(schedule, 0.0, sigma0, "beta")[1])
    for k in range(gmm.n_clusters):
        c = tokens[labels == k] - means[k]
        # ‖mean − μ_k‖ against √(tr Cov / N_k) is like √(χ²_8 / 8) < 2.5 w.p. 1 − 10⁻⁶;
        # at σ0 = 0 float32 rounding (~10⁻⁷ relative) is all that is left
        assert c.mean(0).norm() < 2.5 * (c.var(0).sum() / len(c)).sqrt() + 1e-5
        if sigma0 > 0:
            se = spread / math.sqrt(2 * gmm.dim * len(c))
            assert abs((c.var(0).mean().sqrt() - spread).item()) < 4 * se
    if sigma0 == 0:
        # σ0 = 0: the last step returns the posterior mean m(x_1) = Σ_k w_k μ_k, and the
        # posterior at ᾱ ≈ 0.9994 is all but certain: the tokens sit on the atoms
        assert _gap_to_nearest_mean(x, gmm).max().item() < 1e-4


def test_sampler_accepts_an_attention_bank():
    schedule = NoiseSchedule.cosine(20)
    bank = AttentionBank(20, 8)  # zero init: ε̂ = 0
    x = ddpm_sample(bank, schedule, 6, 5, generator=rng(4), progress=False)
    assert x.shape == (6, 5, 8)
    same = ddpm_sample(_zeros, schedule, 6, 5, dim=8, generator=rng(4), progress=False)
    torch.testing.assert_close(x, same, rtol=0, atol=0)
    with pytest.raises(ValueError, match="n_steps"):
        ddpm_sample(AttentionBank(19, 8), schedule, 6, 5)
    with pytest.raises(ValueError, match="disagrees"):
        ddpm_sample(bank, schedule, 6, 5, dim=7)
    with pytest.raises(ValueError, match="dtype and device"):
        ddpm_sample(bank, schedule, 6, 5, dtype=torch.float64)


@pytest.mark.parametrize(
    ("every", "steps"),
    [(3, [10, 7, 4, 1, 0]), (5, [10, 5, 0]), (1, list(range(10, -1, -1)))],
)
def test_trajectory_shapes_and_contents(every, steps):
    gmm = _separated_skewed(0.5)
    schedule = NoiseSchedule.cosine(10)
    x, states, saved = ddpm_sample(
        oracle_eps_fn(gmm, schedule),
        schedule,
        3,
        4,
        generator=rng(5),
        return_trajectory=True,
        trajectory_every=every,
        progress=False,
    )
    assert states.shape == (len(steps), 3, 4, 8)
    assert saved.tolist() == steps
    torch.testing.assert_close(states[-1], x, rtol=0, atol=0)
    torch.testing.assert_close(
        states[0], torch.randn(3, 4, 8, generator=rng(5)), rtol=0, atol=0
    )


def test_seeded_sampling_is_deterministic():
    gmm = _separated_skewed(0.5)
    schedule = NoiseSchedule.cosine(30)
    fn = oracle_eps_fn(gmm, schedule)
    a, b, c = (
        ddpm_sample(fn, schedule, 4, 3, generator=rng(s), progress=False)
        for s in (6, 6, 7)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(("sigma0", "variance"), [(0.0, "posterior"), (0.5, "beta")])
def test_float32_stays_finite_at_both_ends_of_the_schedule(sigma0, variance):
    # cosine, T = 1000: ᾱ from 1 − 4·10⁻⁵ down to 2·10⁻⁹ (β clipped at 0.999)
    gmm = _separated_skewed(sigma0)
    schedule = NoiseSchedule.cosine(1000)
    x = ddpm_sample(
        oracle_eps_fn(gmm, schedule),
        schedule,
        8,
        4,
        variance=variance,
        generator=rng(8),
        progress=False,
    )
    assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    gap = _gap_to_nearest_mean(x, gmm).max().item()
    # on an atom (σ0 = 0), or within a χ_8 tail of a cluster (‖σ0 ξ‖ ≤ σ0 (√8 + 4))
    assert gap < (1e-4 if sigma0 == 0 else sigma0 * (8**0.5 + 4))
    # a schedule starting at ᾱ = 1 (β_0 = 0, so 0/0 in β/√(1 − ᾱ)) is handled too
    edge = NoiseSchedule.from_alpha_bar([1.0, 0.5, 1e-3])
    for var in ("beta", "posterior"):
        assert all(
            bool(torch.isfinite(c).all()) for c in reverse_coefficients(edge, var)
        )
        y = ddpm_sample(
            oracle_eps_fn(gmm, edge),
            edge,
            8,
            4,
            variance=var,
            generator=rng(8),
            progress=False,
        )
        assert bool(torch.isfinite(y).all())


def test_invalid_arguments_raise():
    schedule = NoiseSchedule.cosine(5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ddpm_sample(_zeros, schedule, 0, 3, dim=2)
    with pytest.raises(ValueError, match="n_tokens must be a positive integer"):
        ddpm_sample(_zeros, schedule, 2, 0, dim=2)
    with pytest.raises(ValueError, match="trajectory_every"):
        ddpm_sample(_zeros, schedule, 2, 3, dim=2, trajectory_every=0)
    with pytest.raises(ValueError, match="dim"):
        ddpm_sample(_zeros, schedule, 2, 3)
    with pytest.raises(ValueError, match="variance must be one of"):
        ddpm_sample(_zeros, schedule, 2, 3, dim=2, variance="large")
    with pytest.raises(ValueError, match="shape of x_t"):
        ddpm_sample(lambda x, t: x[..., :1], schedule, 2, 3, dim=2)
    with pytest.raises(ValueError, match="callable"):
        ddpm_sample("oracle", schedule, 2, 3, dim=2)
    with pytest.raises(ValueError, match="NoiseSchedule"):
        ddpm_sample(_zeros, [0.9, 0.5], 2, 3, dim=2)
    with pytest.raises(ValueError, match="generator's device"):
        ddpm_sample(_zeros, schedule, 2, 3, dim=2, generator=rng(), device="meta")
    with pytest.raises(ValueError, match="floating"):
        ddpm_sample(_zeros, schedule, 2, 3, dim=2, dtype=torch.int64)
