"""Sample-quality metrics against independent computations: algebraic identities of the
1-D Wasserstein distance, Gaussian closed forms, Pearson's test, the Bayes classifier."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mtgmm import MultiTokenGMM
from mtgmm.metrics import (
    cluster_assignments,
    cluster_occupancy,
    cluster_statistics,
    random_directions,
    sliced_wasserstein,
    sliced_wasserstein_to_truth,
    summarize_samples,
)

from .conftest import rng

WEIGHTS = torch.tensor([0.5, 0.25, 0.15, 0.1])


def _separated(sigma0: float = 0.5, weights=WEIGHTS) -> MultiTokenGMM:
    """Orthogonal means of norm 4 in d = 8: misassigning a token needs a 5.7σ0 excursion."""
    means = MultiTokenGMM.orthogonal(4, 8, radius=4.0, seed=0).means
    return MultiTokenGMM(means, weights, sigma0)


def test_sliced_wasserstein_of_a_cloud_with_itself_is_zero_and_symmetric():
    x, y = (
        torch.randn(300, 5, generator=rng(0)),
        torch.randn(200, 5, generator=rng(1)) + 0.3,
    )
    assert sliced_wasserstein(x, x, 32, rng(2)) == (0.0, 0.0)
    theta = random_directions(32, 5, rng(3))
    xy = sliced_wasserstein(x, y, directions=theta)[0]
    assert xy > 0 and math.isclose(
        xy, sliced_wasserstein(y, x, directions=theta)[0], rel_tol=1e-12
    )


def test_translation_identity_holds_exactly_per_direction():
    # In 1-D, for equal-size clouds W2²(x + c, y) = W2²(x, y) + c² + 2c(x̄ − ȳ) (sorting is
    # unchanged by a shift), so SW2²(X + δ, Y) − SW2²(X, Y)
    # = mean_θ [(θ·δ)² + 2(θ·δ)(θ·(X̄ − Ȳ))]. Exact up to rounding (float64 here).
    x = torch.randn(400, 6, generator=rng(4), dtype=torch.float64)
    y = 2 * torch.randn(400, 6, generator=rng(5), dtype=torch.float64)
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.2], dtype=torch.float64)
    theta = random_directions(64, 6, rng(6))
    shifted = sliced_wasserstein(x + delta, y, directions=theta)[0]
    base = sliced_wasserstein(x, y, directions=theta)[0]
    proj_delta = theta @ delta
    proj_gap = theta @ (x.mean(0) - y.mean(0))
    expected = (proj_delta**2 + 2 * proj_delta * proj_gap).mean().item()
    assert math.isclose(shifted - base, expected, rel_tol=1e-10)


def test_translation_magnitude_matches_the_gaussian_closed_form():
    # SW2² between a cloud and its shift by δ is mean_θ (θ·δ)², whose expectation over
    # uniform θ is ‖δ‖²/d: the error bar (over directions) must cover it.
    d = 5
    x = torch.randn(500, d, generator=rng(7))
    delta = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    est, se = sliced_wasserstein(x, x + delta, 4000, rng(8))
    assert abs(est - (delta**2).sum().item() / d) < 4 * se


def test_two_samples_from_one_law_are_close_and_closer_for_more_samples():
    # For two empirical N(0, I) clouds of size N, E SW2² ≈ c/N (c ≈ 6 measured in d = 4).
    small = [
        sliced_wasserstein(*torch.randn(2, 250, 4, generator=rng(s)), 64, rng(s))[0]
        for s in range(8)
    ]
    large = [
        sliced_wasserstein(*torch.randn(2, 4000, 4, generator=rng(s)), 64, rng(s))[0]
        for s in range(8)
    ]
    assert np.mean(small) < 0.1 and np.mean(large) < np.mean(small) / 8


def test_unequal_sizes_match_the_replicated_equal_size_computation():
    # An empirical law is unchanged when each point is repeated the same number of times:
    # 30 and 45 points become 90 and 90, where W2² is the mean squared gap of sorted values.
    x, y = (
        torch.randn(30, 3, generator=rng(12)),
        torch.randn(45, 3, generator=rng(13)) * 1.5,
    )
    theta = random_directions(16, 3, rng(14))
    direct = sliced_wasserstein(x, y, directions=theta)[0]
    replicated = sliced_wasserstein(
        x.repeat_interleave(3, 0), y.repeat_interleave(2, 0), directions=theta
    )[0]
    assert math.isclose(direct, replicated, rel_tol=1e-10)


def test_occupancy_of_exact_samples_matches_the_weights():
    gmm = _separated()
    x, _ = gmm.sample(600, 8, generator=rng(15))
    occ = cluster_occupancy(x, gmm)
    assert torch.all((occ.fractions - WEIGHTS.double()).abs() < 4 * occ.stderr)
    assert occ.p_value > 1e-3 and occ.df == 3 and occ.counts.sum() == 4800
    # tokens are independent here: the jackknife error bar is the binomial one
    binomial = (WEIGHTS * (1 - WEIGHTS) / 4800).sqrt().double()
    torch.testing.assert_close(occ.stderr, binomial, rtol=0.1, atol=0)


def test_occupancy_test_agrees_with_pearson_for_lone_tokens_and_has_power():
    gmm = _separated()
    tokens = gmm.sample(20000, 1, generator=rng(16))[0][:, 0]
    occ = cluster_occupancy(tokens, gmm)
    counts = occ.counts.numpy()
    pearson = stats.chisquare(counts, WEIGHTS.double().numpy() * counts.sum()).statistic
    assert math.isclose(occ.chi2, pearson, rel_tol=0.1, abs_tol=0.3)
    wrong = _separated(weights=torch.tensor([0.45, 0.3, 0.15, 0.1]))
    assert (
        cluster_occupancy(wrong.sample(5000, 1, generator=rng(17))[0], gmm).p_value
        < 1e-6
    )


def test_occupancy_error_bars_allow_for_tokens_that_share_a_cluster():
    # Extreme dependence: all L = 8 tokens of a sequence share one label. The error bar must
    # be the per-sequence one √(π(1−π)/n), not √(π(1−π)/(nL)), and the test must keep its
    # size: rejections at 5 % over 200 null replicates within [1 %, 10 %] (3 binomial sd).
    gmm = _separated()
    n, length, rejections = 100, 8, 0
    for seed in range(200):
        gen = rng(100 + seed)
        labels = torch.multinomial(WEIGHTS, n, replacement=True, generator=gen)
        noise = torch.randn(n, length, 8, generator=gen)
        x = gmm.means[labels][:, None, :] + gmm.sigma0 * noise
        occ = cluster_occupancy(x, gmm)
        rejections += occ.p_value < 0.05
    assert 0.01 <= rejections / 200 <= 0.10
    per_sequence = (WEIGHTS * (1 - WEIGHTS) / n).sqrt().double()
    torch.testing.assert_close(occ.stderr, per_sequence, rtol=0.3, atol=0)


def test_assignments_are_the_bayes_classifier():
    # σ0 > 0: argmax_k log π_k + log N(x; μ_k, σ0² I), computed with scipy
    means = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5]], dtype=torch.float64)
    gmm = MultiTokenGMM(means, torch.tensor([0.6, 0.3, 0.1]), sigma0=0.8)
    x = torch.randn(500, 2, generator=rng(18), dtype=torch.float64) * 1.5
    log_joint = np.stack(
        [
            np.log(w) + stats.multivariate_normal(m, 0.64).logpdf(x.numpy())
            for m, w in zip(means.numpy(), [0.6, 0.3, 0.1], strict=True)
        ],
        axis=1,
    )
    np.testing.assert_array_equal(
        cluster_assignments(x, gmm).numpy(), log_joint.argmax(1)
    )
    # σ0 = 0: nearest mean, even against the weights
    atoms = MultiTokenGMM(means, torch.tensor([0.98, 0.01, 0.01]), sigma0=0.0)
    nearest = torch.cdist(x, means).argmin(1)
    assert torch.equal(cluster_assignments(x, atoms), nearest)


@pytest.mark.parametrize("sigma0", [0.5, 0.0])
def test_cluster_statistics_of_exact_samples(sigma0):
    gmm = _separated(sigma0)
    x, _ = gmm.sample(500, 8, generator=rng(19))
    st = cluster_statistics(x, gmm)
    if sigma0 == 0:
        assert st.mean_error.max() < 1e-6 and st.spread.max() < 1e-6
        return
    # ‖mean − μ_k‖ / floor is like √(χ²_8 / 8) < 2.5 w.p. 1 − 10⁻⁶; the per-coordinate
    # error bar is σ0/√N_k; the spread estimates σ0
    assert torch.all(st.mean_error < 2.5 * st.mean_error_floor)
    expected_se = sigma0 / st.counts.double().sqrt()
    torch.testing.assert_close(st.means_stderr.mean(1), expected_se, rtol=0.15, atol=0)
    assert torch.all((st.spread - sigma0).abs() < 4 * st.spread_stderr)
    # the spread's error bar against the Gaussian value σ0 / √(2 d N_k)
    gaussian_se = sigma0 / (2 * 8 * st.counts.double()).sqrt()
    torch.testing.assert_close(st.spread_stderr, gaussian_se, rtol=0.25, atol=0)


def test_cluster_statistics_detect_a_shifted_cluster():
    gmm = _separated()
    x, labels = gmm.sample(500, 8, generator=rng(20))
    shift = torch.zeros(8)
    shift[3] = 0.3
    st = cluster_statistics(x + shift * (labels == 1)[..., None], gmm)
    assert abs(st.mean_error[1].item() - 0.3) < 4 * st.mean_error_stderr[1].item()
    assert st.mean_error[1] > 5 * st.mean_error_floor[1]


def test_comparison_with_the_truth_and_its_noise_floor():
    gmm = _separated()
    x, _ = gmm.sample(125, 8, generator=rng(21))
    exact = sliced_wasserstein_to_truth(
        x, gmm, n_projections=256, n_repeats=4, generator=rng(22)
    )
    # perfect samples: E excess = 0; measured over 80 draws of S at this size, excess/floor
    # had sd 0.47 and max |·| 2.0, so 4 floors is a wide margin (floor ≈ 0.01 ≪ 1/8 below)
    assert abs(exact.excess) < 4 * exact.floor
    assert exact.n_tokens == 1000 and exact.n_repeats == 4
    # shifted samples: E excess = ‖δ‖²/d = 1/8 (translation identity), far above the floor.
    # Given S, the excess also carries mean_θ (θ·δ)² over 256 directions (sd
    # √((2d − 2)/(d²(d + 2))/256) = 0.009) and the cross term 2 mean_θ (θ·δ)(θ·(S̄ − Ā))
    # (sd ≈ 0.011 from tr Cov(token) ≈ 12); 0.05 is 3.5 of their combined sd.
    delta = torch.full((8,), 1.0 / math.sqrt(8))
    moved = sliced_wasserstein_to_truth(x + delta, gmm, 256, 4, generator=rng(22))
    assert abs(moved.excess - 1 / 8) < 0.05 and moved.excess > 10 * moved.floor_sd


def test_summary_collects_everything():
    gmm = _separated()
    x, _ = gmm.sample(200, 8, generator=rng(23))
    summary = summarize_samples(
        x, gmm, n_projections=32, n_repeats=3, generator=rng(24)
    )
    row = summary.headline()
    assert set(row) >= {"tv", "p_value", "max_mean_error", "spread", "sw2", "sw2_floor"}
    assert all(math.isfinite(v) for v in row.values())
    assert summary.reference.counts.sum() == 1600 and row["sigma0"] == 0.5


def test_invalid_arguments_raise():
    gmm = _separated()
    x, _ = gmm.sample(10, 4, generator=rng(25))
    with pytest.raises(ValueError, match="last dimension"):
        cluster_occupancy(x[..., :3], gmm)
    with pytest.raises(ValueError, match="shape"):
        cluster_statistics(x[0, 0], gmm)
    with pytest.raises(ValueError, match="at least 2 sequences"):
        cluster_occupancy(x[:1], gmm)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        cluster_statistics(bad, gmm)
    with pytest.raises(ValueError, match="same token dimension"):
        sliced_wasserstein(x, x[..., :3])
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="directions"):
        sliced_wasserstein(x, x, directions=torch.ones(4, 3))
    with pytest.raises(ValueError, match="n_repeats"):
        sliced_wasserstein_to_truth(x, gmm, n_repeats=1)
