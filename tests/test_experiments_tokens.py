"""The experiments behind chapter *Tokens per data point*, at tiny sizes, and the fitting and
interpolation helpers against independent computations."""

import math

import numpy as np
import pytest
import torch

from mtgmm.experiments.tokens import (
    fit_tail,
    local_slopes,
    reference_mixture,
    sample_sizes,
    shape_sweep,
    token_curves,
    tokens_for_target,
)
from mtgmm.runtime import set_preset

X = 2.0 ** np.arange(3, 10)


@pytest.fixture
def quick():
    set_preset("quick")
    yield
    set_preset(None)


def test_sample_sizes_are_token_budgets(quick):
    assert sample_sizes(8) == (2**10, 2**12)
    assert sample_sizes(2**12) == (16, 32)  # the floors
    set_preset("full")
    assert sample_sizes(8) == (2**14, 2**15)
    with pytest.raises(ValueError, match="n_tokens"):
        sample_sizes(0)


def test_reference_mixture_shape():
    gmm = reference_mixture(3, 5, dtype=torch.float64)
    assert (gmm.n_clusters, gmm.dim, gmm.sigma0) == (3, 5, 0.5)
    gram = gmm.means @ gmm.means.T
    torch.testing.assert_close(
        gram, 16 * torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_local_slopes_of_a_power_law_are_constant():
    np.testing.assert_allclose(local_slopes(X, 3 * X**-0.6), -0.6)
    two_rows = np.stack([X**-0.5, X**-1.0])
    np.testing.assert_allclose(local_slopes(X, two_rows)[:, 0], [-0.5, -1.0])


def test_fit_tail_uses_the_whole_curve_when_a_power_law_holds():
    rng = np.random.default_rng(1)
    se = 0.02 * 2 * X**-0.7
    y = 2 * X**-0.7 + rng.normal(0, se)
    tail = fit_tail(X, y, se)
    assert tail.first == 8 and tail.n_points == len(X) and tail.p_value >= 0.05
    lo, hi = tail.fit.interval()
    assert lo < -0.7 < hi


def test_fit_tail_drops_a_bend_at_small_L():
    # slope −0.3 up to L = 32, then −0.9: only the tail from 32 on is one power law
    y = np.where(X <= 32, X**-0.3, 32**0.6 * X**-0.9)
    tail = fit_tail(X, y, 0.01 * y)
    assert tail.first == 32 and tail.fit.slope == pytest.approx(-0.9)
    bent = fit_tail(
        X, X**-0.3 * np.exp(0.3 * np.log(X) ** 2), 0.001 * X
    )  # curved everywhere
    assert bent.n_points == 3 and bent.p_value < 0.05


def test_fit_tail_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_points"):
        fit_tail(X[:2], X[:2], X[:2])
    with pytest.raises(ValueError, match="p_min"):
        fit_tail(X, X**-1, X**-1, p_min=1.5)


def test_tokens_for_target_inverts_an_exact_power_law():
    y = 5 * X**-0.8
    for target in (0.5, 0.2, 0.05):
        value, se = tokens_for_target(X, y, 0.01 * y, target)
        assert value == pytest.approx((target / 5) ** (1 / -0.8))
        assert se > 0
    assert all(
        math.isnan(v) for v in tokens_for_target(X, y, 0.01 * y, 10.0)
    )  # above at L = 8
    assert all(
        math.isnan(v) for v in tokens_for_target(X, y, 0.01 * y, 1e-4)
    )  # never reached


def test_tokens_for_target_error_matches_simulation():
    """The delta-method standard error against the spread of the interpolated L over
    curves redrawn within their error bars."""
    rng = np.random.default_rng(0)
    y, rel = 5 * X**-0.8, 0.03
    _, se = tokens_for_target(X, y, rel * y, 0.2)
    draws = [
        tokens_for_target(X, y * np.exp(rng.normal(0, rel, len(X))), rel * y, 0.2)[0]
        for _ in range(3000)
    ]
    assert np.nanstd(draws) == pytest.approx(se, rel=0.1)


def test_tokens_for_target_rejects_bad_arguments():
    with pytest.raises(ValueError, match="target"):
        tokens_for_target(X, X**-1, X**-1, 0.0)
    with pytest.raises(ValueError, match="values"):
        tokens_for_target(X, -(X**-1), X**-1, 0.1)


def test_token_curves_tiny(quick, gmm):
    curves = token_curves(gmm, alpha_bars=(0.9, 0.5), token_counts=(4, 8))
    assert (
        curves.excess.shape == curves.stderr.shape == curves.temperature.shape == (2, 2)
    )
    assert curves.coefficients.shape == (2, 2, 3, 3)
    assert (curves.excess > 0).all() and (curves.stderr > 0).all()
    assert (curves.bayes > 0).all() and (curves.bayes < gmm.dim).all()
    s2 = gmm.noise_variance(curves.alpha_bars)[:, None]
    torch.testing.assert_close(curves.temperature, curves.coefficients[..., 0, 0] * s2)


def test_shape_sweep_tiny(quick):
    sweep = shape_sweep(0.9, shapes=((2, 2), (2, 4)), token_counts=(4,), mask_self=True)
    assert sweep.excess.shape == (2, 1) and sweep.mask_self
    assert sweep.row(2, 4) == 1
    # with d = K there is no off-span part: its P⊥ coefficients stay zero
    assert (sweep.coefficients[sweep.row(2, 2), 0, :, 1] == 0).all()
    with pytest.raises(ValueError, match="not in the sweep"):
        sweep.row(3, 4)
