"""The experiments of chapter *Alignment with the MMSE estimator*, at tiny sizes, checked
against independent computations."""

import pytest
import torch

from mtgmm import (
    AttentionBank,
    MultiTokenGMM,
    NoiseSchedule,
    attention_weights,
    bayes_risk,
    mean_denoising_weights,
    posterior_weights,
    theory,
)
from mtgmm.experiments import alignment as exp
from mtgmm.training import bank_excess_risk

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
    weights = torch.tensor([0.5, 0.3, 0.2])
    return MultiTokenGMM(means, weights=weights.double(), sigma0=0.3)


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule.cosine(4)


def test_linear_weights_match_the_closed_form_and_least_squares(g64, skewed_gmm):
    ab = 0.7
    a2, s2 = ab, g64.noise_variance(ab).item()
    p = g64.span_projector()
    expected = (1 - ab) ** 0.5 * (
        p / (a2 * 16 / 4 + s2) + (torch.eye(8, dtype=p.dtype) - p) / s2
    )
    torch.testing.assert_close(exp.linear_weights(g64, ab), expected)
    # general means: regress the noise on the noisy token
    gen = skewed_gmm.to(dtype=torch.float64)
    x0, _ = gen.sample(200_000, 1, generator=rng(1))
    eps = torch.randn(x0.shape, generator=rng(2), dtype=torch.float64)[:, 0]
    x = ab**0.5 * x0[:, 0] + (1 - ab) ** 0.5 * eps
    fitted = torch.linalg.lstsq(x, eps).solution
    torch.testing.assert_close(exp.linear_weights(gen, ab), fitted, atol=0.01, rtol=0)


def test_tempered_weights_at_one_are_the_construction(g64):
    for got, want in zip(
        exp.tempered_weights(g64, 0.6, 1.0),
        mean_denoising_weights(g64, 0.6),
        strict=True,
    ):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.7])
def test_tempered_layer_limit_is_the_tempered_posterior_estimate(tilted, tau):
    ab = 0.5
    x = 2 * torch.randn(500, 3, generator=rng(3), dtype=torch.float64)
    limit = theory.layer_limit(exp.tempered_weights(tilted, ab, tau), tilted, ab, x)
    omega = exp.tempered_posterior(tilted, x, ab, tau)
    s2 = tilted.noise_variance(ab).item()
    expected = ((1 - ab) ** 0.5 / s2) * (x - ab**0.5 * omega @ tilted.means)
    torch.testing.assert_close(limit, expected)
    # the same weights through the attention share of each cluster
    q = x @ exp.tempered_weights(tilted, ab, tau)[0]
    torch.testing.assert_close(exp.cluster_attention_limit(tilted, ab, q), omega)


def test_tempered_posterior_at_one_is_the_posterior(tilted):
    x = torch.randn(50, 3, generator=rng(4), dtype=torch.float64)
    w = posterior_weights(tilted, x, 0.4)
    torch.testing.assert_close(exp.tempered_posterior(tilted, x, 0.4, 1.0), w)
    uniform = exp.tempered_posterior(tilted, x, 0.4, 0.0)
    torch.testing.assert_close(uniform, tilted.weights.expand_as(uniform))


def test_cluster_share_of_finite_attention_approaches_the_limit(g64):
    ab, n_keys = 0.7, 40_000
    x0, labels = g64.sample(1, n_keys, generator=rng(5))
    keys = ab**0.5 * x0[0] + (1 - ab) ** 0.5 * torch.randn(
        x0[0].shape, generator=rng(6), dtype=torch.float64
    )
    q = (
        0.1 * keys[:3] @ g64.span_projector()
    )  # low temperature: the average converges fast
    weights = torch.softmax(q @ keys.T, -1)  # (3, n_keys)
    share = torch.stack([weights[:, labels[0] == k].sum(-1) for k in range(4)], -1)
    torch.testing.assert_close(
        share, exp.cluster_attention_limit(g64, ab, q), atol=0.01, rtol=0
    )


def test_tempered_limit_excess_matches_the_attention_limit(g64):
    ab = 0.8
    zero, _ = exp.tempered_limit_excess(g64, ab, 1.0, 20_000, rng(7))
    assert zero < 1e-20
    formula, se = exp.tempered_limit_excess(g64, ab, 0.3, 20_000, rng(8))
    through_attention, _ = theory.limit_excess(
        exp.tempered_weights(g64, ab, 0.3), g64, ab, 20_000, rng(8)
    )
    assert formula > 10 * se > 0
    assert abs(formula - through_attention) < 1e-9 * formula  # same tokens, two routes


def test_best_readout_cannot_repair_a_wrong_temperature(g64):
    ab = 0.7
    s2, p = g64.noise_variance(ab).item(), g64.span_projector()
    exact, _ = exp.limit_readout_excess(g64, ab, p / s2, 5_000, rng(9))
    assert exact < 1e-12
    cool, cool_se = exp.limit_readout_excess(g64, ab, 0.2 * p / s2, 5_000, rng(9))
    construction, _ = exp.tempered_limit_excess(g64, ab, 0.2, 5_000, rng(10))
    assert cool > 10 * cool_se and cool < construction


def test_posterior_averaging_map_averages_soft_cluster_means(g64):
    x0, _ = g64.sample(1, 64, generator=rng(11))
    x_t = 0.8**0.5 * x0[0] + 0.2**0.5 * torch.randn(
        x0[0].shape, generator=rng(12), dtype=torch.float64
    )
    a_star = exp.posterior_averaging_map(g64, x_t, 0.8)
    torch.testing.assert_close(a_star.sum(-1), torch.ones(64, dtype=torch.float64))
    w = posterior_weights(g64, x_t, 0.8)
    soft_means = torch.stack(
        [(w[:, k : k + 1] * x_t).sum(0) / w[:, k].sum() for k in range(4)]
    )
    torch.testing.assert_close(a_star @ x_t, w @ soft_means)


def _zero_bank(schedule, dim=8) -> AttentionBank:
    return AttentionBank(schedule.n_steps, dim).requires_grad_(False)


def test_alignment_profile_against_independent_estimates(g64, schedule):
    gmm = g64.to(dtype=torch.float32)
    banks = {"zero": _zero_bank(schedule), "linear": exp.linear_bank(gmm, schedule)}
    profile = exp.alignment_profile(gmm, schedule, banks, n_tokens=4, n_sequences=512)
    assert profile.names == (
        "zero",
        "linear",
    ) and profile.relative_error.mean.shape == (2, 4)
    # ε̂ = 0: relative error exactly 1, cosine 0
    torch.testing.assert_close(
        profile.relative_error.mean[0], torch.ones(4, dtype=torch.float64)
    )
    assert profile.cosine.mean[0].abs().max() < 1e-6
    # the linear bank's excess against bank_excess_risk on other samples
    other, other_se = bank_excess_risk(banks["linear"], gmm, schedule, 4, 512, rng(13))
    gap = (profile.excess.mean[1] - other).abs()
    assert (gap < 5 * (profile.excess.stderr[1] ** 2 + other_se**2).sqrt()).all()
    # relative error² = excess / E‖ε*‖², with E‖ε*‖² = d − R* (Bayes identity)
    t = 1
    risk, _ = bayes_risk(g64, schedule.alpha_bar[t].item(), 50_000, rng(14))
    ratio = profile.excess.mean[1, t] / (8 - risk)
    assert abs(profile.relative_error.mean[1, t] ** 2 - ratio) < 0.05 * ratio


def test_mean_denoising_profile_of_the_construction(g64, schedule):
    gmm = g64.to(dtype=torch.float32)
    profile = exp.mean_denoising_profile(
        gmm, schedule, exp.construction_bank(gmm, schedule), n_tokens=16, n_sequences=8
    )
    # at the oracle temperature the L = ∞ share of the own cluster is the posterior
    torch.testing.assert_close(
        profile.own_mass_limit.mean, profile.posterior_own.mean, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        profile.limit_to_oracle.mean, torch.zeros(4, dtype=torch.float64)
    )
    uniform = exp.mean_denoising_profile(gmm, schedule, _zero_bank(schedule), 16, 8)
    torch.testing.assert_close(
        uniform.own_mass_limit.mean, torch.full((4,), 0.25, dtype=torch.float64)
    )
    # uniform attention: the share of the own cluster is the fraction of same-label tokens
    assert (
        (uniform.own_mass.mean - 0.25).abs() < 6 * uniform.own_mass.stderr + 0.05
    ).all()


def test_attention_snapshot_orders_tokens_by_cluster(g64, schedule):
    gmm = g64.to(dtype=torch.float32)
    bank = exp.construction_bank(gmm, schedule)
    snap = exp.attention_snapshot(gmm, schedule, bank, (0, 3), n_tokens=12, seed=1)
    assert (snap.labels.diff() >= 0).all() and snap.attention.shape == (2, 12, 12)
    torch.testing.assert_close(snap.attention.sum(-1), torch.ones(2, 12))
    torch.testing.assert_close(snap.posterior_map.sum(-1), torch.ones(2, 12))


def test_bank_temperature_reads_the_construction(g64, schedule):
    gmm = g64.to(dtype=torch.float32)
    tau = exp.bank_temperature(exp.construction_bank(gmm, schedule, 0.3), gmm, schedule)
    torch.testing.assert_close(
        tau, torch.full((4,), 0.3, dtype=torch.float64), atol=1e-5, rtol=0
    )


def test_uniform_attention_bank_has_no_similarity(g64, schedule):
    gmm = g64.to(dtype=torch.float32)
    bank = exp.uniform_attention_bank(gmm, schedule, n_tokens=8, n_sequences=32)
    assert bank.W_KQ.abs().max() == 0 and bank.W_S.abs().max() > 0
    x = torch.randn(2, 8, 8, generator=rng(15))
    torch.testing.assert_close(
        attention_weights(x, bank.W_KQ[1]), torch.full((2, 8, 8), 1 / 8)
    )


def test_temperature_scan_splits_the_excess(g64):
    scan = exp.temperature_scan(g64, alpha_bars=(0.9,), token_counts=(16,), n_seeds=2)
    assert scan.temperature.mean.shape == (1, 1)
    assert 0 < scan.temperature.mean.item() < 1
    assert 0 < scan.limit.mean.item() < scan.excess.mean.item()
    assert torch.isfinite(scan.temperature.stderr).all()


def test_invalid_arguments_raise(g64, schedule):
    gmm = g64.to(dtype=torch.float32)
    with pytest.raises(ValueError, match="timesteps"):
        exp.alignment_profile(
            gmm, NoiseSchedule.cosine(5), {"b": _zero_bank(schedule)}, 4
        )
    with pytest.raises(ValueError, match="n_sequences"):
        exp.mean_denoising_profile(
            gmm, schedule, _zero_bank(schedule), 4, n_sequences=1
        )
    with pytest.raises(ValueError, match="n_seeds"):
        exp.temperature_scan(gmm, (0.9,), (8,), n_seeds=1)
    with pytest.raises(ValueError, match="at least one"):
        exp.alignment_profile(gmm, schedule, {}, 4)
    with pytest.raises(ValueError, match="alpha_bar"):
        exp.linear_weights(gmm, 1.5)
