"""mtgmm.interval: every result encloses the exact value (rationals for the four operations,
50-digit mpmath for the functions), Taylor models enclose their function, bad input raises."""

from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtgmm.interval import LIBRARY_ERROR, Interval, TaylorModel

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def box_and_point(draw, lo=-1e6, hi=1e6):
    """An interval [a, b] and a float x inside it."""
    a, b = sorted(draw(st.lists(st.floats(lo, hi), min_size=2, max_size=2)))
    x = draw(st.floats(a, b))
    return Interval(a, b), x


def encloses(box: Interval, exact) -> bool:
    """lo <= exact <= hi with exact a Fraction or an mpmath number, compared exactly."""
    lo, hi = float(box.lo), float(box.hi)
    if isinstance(
        exact, Fraction
    ):  # an infinite end (overflow) contains everything beyond
        return (lo == -np.inf or Fraction(lo) <= exact) and (
            hi == np.inf or exact <= Fraction(hi)
        )
    with mpmath.workdps(60):
        return mpmath.mpf(lo) <= exact <= mpmath.mpf(hi)


@settings(max_examples=300, deadline=None)
@given(box_and_point(), box_and_point())
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_the_four_operations_enclose_the_exact_rational_result(first, second):
    (p, x), (q, y) = first, second
    fx, fy = Fraction(x), Fraction(y)
    assert encloses(p + q, fx + fy)
    assert encloses(p - q, fx - fy)
    assert encloses(p * q, fx * fy)
    assert encloses(p.square(), fx * fx)
    if not (q.lo <= 0 <= q.hi):
        assert encloses(p / q, fx / fy)
    assert encloses(p + 3.0, fx + 3) and encloses(2.5 * p, fx * Fraction(2.5))


@settings(max_examples=300, deadline=None)
@given(box_and_point(-60.0, 60.0))
def test_exp_and_tanh_enclose_50_digit_values(pair):
    box, x = pair
    with mpmath.workdps(50):
        assert encloses(box.tanh(), mpmath.tanh(mpmath.mpf(x)))
        assert encloses(box.exp(), mpmath.exp(mpmath.mpf(x)))


@settings(max_examples=200, deadline=None)
@given(box_and_point(0.0, 1e6))
def test_sqrt_encloses_50_digit_values(pair):
    box, x = pair
    with mpmath.workdps(50):
        assert encloses(box.sqrt(), mpmath.sqrt(mpmath.mpf(x)))


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, min_size=1, max_size=400))
def test_sum_encloses_the_exact_sum(values):
    box = Interval(np.array(values)).sum()
    assert encloses(box, sum(Fraction(v) for v in values))


def test_sum_keeps_dims_and_reduces_the_last_axis():
    box = Interval(np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(2, 3) + 1)
    total = box.sum(-1, keepdims=True)
    assert total.shape == (2, 1)
    assert total.contains(np.array([[3.0], [12.0]])).all()
    assert total.contains(np.array([[6.0], [15.0]])).all()


def test_library_margin_is_far_above_numpy_errors():
    """The margin LIBRARY_ERROR covers numpy's tanh and exp with room to spare."""
    x = np.linspace(-40, 40, 20001)
    with mpmath.workdps(50):
        worst = max(
            abs(mpmath.mpf(v) - mpmath.tanh(mpmath.mpf(u)))
            for u, v in zip(x, np.tanh(x), strict=True)
        )
    assert float(worst) < LIBRARY_ERROR / 1000


def _tau_model(centre, radius):
    """τ = centre + u as a Taylor model."""
    return TaylorModel(Interval(centre), Interval(1.0), Interval(0.0), radius)


@pytest.mark.parametrize("centre,radius", [(0.3, 1e-2), (0.8, 5e-2), (0.05, 1e-3)])
def test_taylor_models_enclose_a_composite_function(centre, radius):
    """f(τ) = (τ² + 1/(1 + τ)) · (τ − 2) / (3 + τ), built from Taylor-model arithmetic,
    is enclosed by the model's range at points of the piece, and its linear coefficient
    contains f′(centre)."""
    tau = _tau_model(centre, radius)
    model = (tau * tau + 1 / (1 + tau)) * (tau - 2.0) / (3.0 + tau)

    def f(t):
        return (t * t + 1 / (1 + t)) * (t - 2) / (3 + t)

    box = model.range()
    with mpmath.workdps(50):
        for u in np.linspace(-radius, radius, 41):
            assert encloses(box, f(mpmath.mpf(centre) + mpmath.mpf(u)))
        slope = mpmath.diff(f, mpmath.mpf(centre))
    assert encloses(model.c1, slope)
    assert encloses(model.c0, f(mpmath.mpf(centre)))


def test_taylor_model_remainder_is_second_order():
    """Halving the radius shrinks the remainder about fourfold."""
    widths = []
    for radius in (1e-2, 5e-3):
        tau = _tau_model(0.4, radius)
        model = tau * tau * tau / (1.0 + tau * tau)
        widths.append(model.rem.width().item())
    assert 3.0 < widths[0] / widths[1] < 5.0


def test_bad_input_raises_value_errors():
    with pytest.raises(ValueError, match="lo must be <= hi"):
        Interval(1.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        Interval(float("nan"))
    with pytest.raises(ValueError, match="divisor interval must not contain 0"):
        Interval(1.0) / Interval(-1.0, 1.0)
    with pytest.raises(ValueError, match="sqrt needs lo >= 0"):
        Interval(-1.0, 1.0).sqrt()
    with pytest.raises(ValueError, match="radius must be >= 0"):
        TaylorModel(0.0, 1.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="divisor interval must not contain 0"):
        _tau_model(0.0, 0.1).reciprocal()


def test_numpy_arrays_defer_to_intervals():
    """ndarray ⊙ Interval and ndarray ⊙ TaylorModel are ours, not numpy's element loops."""
    values = np.array([1.0, 2.0])
    assert isinstance(values * Interval(1.0, 2.0), Interval)
    assert isinstance(values + _tau_model(0.5, 0.1), TaylorModel)
    assert isinstance(values - Interval(0.0, 1.0), Interval)
