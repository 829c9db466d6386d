import numpy as np
import pytest
import torch

from mtgmm._checks import single_level
from mtgmm.stats import fit_power_law, mean_stderr


def test_mean_stderr_matches_numpy():
    values = np.random.default_rng(1).normal(2.0, 3.0, size=(400, 3))
    mean, se = mean_stderr(values[:, 0])
    assert mean == pytest.approx(values[:, 0].mean())
    assert se == pytest.approx(values[:, 0].std(ddof=1) / 20)
    means, ses = mean_stderr(torch.tensor(values), dim=0)
    np.testing.assert_allclose(means.numpy(), values.mean(0))
    np.testing.assert_allclose(ses.numpy(), values.std(0, ddof=1) / 20)
    assert np.isnan(mean_stderr(torch.ones(1))[1])


def test_single_level_accepts_one_value_only():
    assert single_level(torch.tensor([0.5])) == 0.5
    with pytest.raises(ValueError, match="single value"):
        single_level(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="alpha_bar"):
        single_level(1.5)


def test_power_law_fit_recovers_slope_and_covers_it():
    rng = np.random.default_rng(0)
    x = 2.0 ** np.arange(3, 10)
    hits = 0
    for _ in range(200):
        se = 0.05 * 3.0 * x**-0.7
        y = 3.0 * x**-0.7 + rng.normal(0, se)
        fit = fit_power_law(x, y, se)
        lo, hi = fit.interval()
        hits += lo <= -0.7 <= hi
    assert fit.slope == pytest.approx(-0.7, abs=0.1)
    assert 0.88 <= hits / 200 <= 0.99  # nominal 95% coverage


def test_exact_power_law_and_prediction():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    fit = fit_power_law(x, 5 * x**0.5, 0.01 * x)
    assert fit.slope == pytest.approx(0.5) and fit.prefactor == pytest.approx(5)
    np.testing.assert_allclose(fit(16.0), 20.0)


@pytest.mark.parametrize(
    "x, y, se",
    [
        ([1, 2], [1, 2], [1, 1]),
        ([1, 2, 3], [1, -2, 3], [1, 1, 1]),
        ([1, 2, 3], [1, 2], [1, 1]),
    ],
)
def test_bad_input_is_rejected(x, y, se):
    with pytest.raises(ValueError):
        fit_power_law(x, y, se)


def test_misfit_inflates_the_slope_error():
    """Points that scatter more than their error bars: the slope's standard error is the
    weighted-least-squares one times √(χ²/dof), as the tokens chapter's tail fits rely on."""
    x = 2.0 ** np.arange(3, 10)
    se = 0.01 * x**-0.5
    wiggle = np.where(np.arange(len(x)) % 2 == 0, 1.1, 0.9)  # ±10%, ten error bars
    fit = fit_power_law(x, x**-0.5 * wiggle, se * wiggle)
    assert fit.chi2_per_dof > 10
    w = (1 / 0.01) ** 2 * np.ones_like(x)  # (y / se)² is the same at every point
    design = np.stack([np.ones_like(x), np.log(x)], 1)
    plain = np.sqrt(np.linalg.inv(design.T @ (w[:, None] * design))[1, 1])
    assert fit.slope_stderr == pytest.approx(plain * np.sqrt(fit.chi2_per_dof))
    assert fit.slope == pytest.approx(-0.5, abs=0.05)
