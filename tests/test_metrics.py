"""Sample-quality metrics against independent computations: algebraic identities of the
1-D Wasserstein distance and Gaussian closed forms."""

import math

import numpy as np
import pytest
import torch

from mtgmm import MultiTokenGMM
from mtgmm.metrics import (
    random_directions,
    sliced_wasserstein,
    sliced_wasserstein_to_truth,
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


def test_invalid_arguments_raise():
    gmm = _separated()
    x, _ = gmm.sample(10, 4, generator=rng(25))
    with pytest.raises(ValueError, match="last dimension"):
        sliced_wasserstein_to_truth(x[..., :3], gmm)
    with pytest.raises(ValueError, match="shape"):
        sliced_wasserstein_to_truth(x[0, 0], gmm)
    with pytest.raises(ValueError, match="at least 2 sequences"):
        sliced_wasserstein_to_truth(x[:1], gmm)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        sliced_wasserstein_to_truth(bad, gmm)
    with pytest.raises(ValueError, match="same token dimension"):
        sliced_wasserstein(x, x[..., :3])
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="directions"):
        sliced_wasserstein(x, x, directions=torch.ones(4, 3))
    with pytest.raises(ValueError, match="n_repeats"):
        sliced_wasserstein_to_truth(x, gmm, n_repeats=1)
