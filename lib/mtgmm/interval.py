"""Outward-rounded interval arithmetic, and first-order Taylor models in one variable.

The convergence chapter (``book/convergence.md``, section "A rate with certified
constants") uses them to turn quadrature values into guaranteed bounds. An
:class:`Interval` holds arrays ``lo <= hi``; every operation returns an interval that
contains the exact result for every choice of points in its operands.

The floating-point model:

- ``+``, ``-``, ``*``, ``/`` and ``sqrt`` are correctly rounded (IEEE 754); each result is
  moved outward by one ulp with ``numpy.nextafter``.
- ``exp`` and ``tanh`` are not correctly rounded. They are assumed accurate to within
  ``LIBRARY_ERROR`` (relative for ``exp``, absolute for ``tanh``), about 10⁴ times the
  few-ulp errors that math libraries document; the chapter checks this against
  50-digit ``mpmath`` values.
- A sum of ``n`` terms, in any order of additions, is within ``γ_n Σ|x_i|`` of the exact
  sum, with ``γ_n = n u / (1 - n u)`` and ``u = 2⁻⁵³``: each term passes through at most
  ``n - 1`` roundings (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
  chapter 4).
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = 2.0**-53
LIBRARY_ERROR = 2.0**-40

_REALS = (int, float, np.floating, np.integer, np.ndarray)


def _down(x):
    return np.nextafter(x, -np.inf)


def _up(x):
    return np.nextafter(x, np.inf)


class Interval:
    """The box ``[lo, hi]`` (arrays broadcast together), closed under ``+ - * /``."""

    __array_ufunc__ = None  # numpy arrays defer to our operators

    def __init__(self, lo, hi=None):
        lo = np.asarray(lo, dtype=np.float64)
        hi = lo if hi is None else np.asarray(hi, dtype=np.float64)
        if np.isnan(lo).any() or np.isnan(hi).any():
            raise ValueError("lo and hi must not be NaN")
        if (lo > hi).any():
            raise ValueError("lo must be <= hi everywhere")
        self.lo, self.hi = lo, hi

    @staticmethod
    def _of(x):
        return x if isinstance(x, Interval) else Interval(x)

    @staticmethod
    def _hull(a, b, c, d):
        lo = np.minimum(np.minimum(a, b), np.minimum(c, d))
        return Interval(_down(lo), _up(np.maximum(np.maximum(a, b), np.maximum(c, d))))

    def __add__(self, other):
        if not isinstance(other, (Interval, *_REALS)):
            return NotImplemented
        other = Interval._of(other)
        return Interval(_down(self.lo + other.lo), _up(self.hi + other.hi))

    __radd__ = __add__

    def __neg__(self):
        return Interval(-self.hi, -self.lo)

    def __sub__(self, other):
        if not isinstance(other, (Interval, *_REALS)):
            return NotImplemented
        return self + (-Interval._of(other))

    def __rsub__(self, other):
        return Interval._of(other) - self

    def __mul__(self, other):
        if not isinstance(other, (Interval, *_REALS)):
            return NotImplemented
        other = Interval._of(other)
        return Interval._hull(
            self.lo * other.lo,
            self.lo * other.hi,
            self.hi * other.lo,
            self.hi * other.hi,
        )

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not isinstance(other, (Interval, *_REALS)):
            return NotImplemented
        other = Interval._of(other)
        if ((other.lo <= 0) & (other.hi >= 0)).any():
            raise ValueError("the divisor interval must not contain 0")
        return Interval._hull(
            self.lo / other.lo,
            self.lo / other.hi,
            self.hi / other.lo,
            self.hi / other.hi,
        )

    def __rtruediv__(self, other):
        return Interval._of(other) / self

    def square(self) -> Interval:
        """``{x² : x in self}``, tighter than ``self * self`` when 0 is inside."""
        a, b = self.lo**2, self.hi**2
        straddles = (self.lo <= 0) & (self.hi >= 0)
        lo = np.where(straddles, 0.0, _down(np.minimum(a, b)))
        return Interval(np.maximum(lo, 0.0), _up(np.maximum(a, b)))

    def sqrt(self) -> Interval:
        if (self.lo < 0).any():
            raise ValueError("sqrt needs lo >= 0")
        return Interval(np.maximum(_down(np.sqrt(self.lo)), 0.0), _up(np.sqrt(self.hi)))

    def exp(self) -> Interval:
        lo = np.exp(self.lo) * (1 - LIBRARY_ERROR)
        return Interval(_down(lo), _up(np.exp(self.hi) * (1 + LIBRARY_ERROR)))

    def tanh(self) -> Interval:
        lo = np.maximum(np.tanh(self.lo) - LIBRARY_ERROR, -1.0)
        return Interval(lo, np.minimum(np.tanh(self.hi) + LIBRARY_ERROR, 1.0))

    def sum(self, axis: int = -1, keepdims: bool = False) -> Interval:
        """The exact sum over ``axis`` of any points of the boxes, enclosed."""
        n = self.lo.shape[axis]
        gamma = n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)
        slack = gamma * self.mag().sum(axis, keepdims=keepdims)
        lo = self.lo.sum(axis, keepdims=keepdims) - slack
        hi = self.hi.sum(axis, keepdims=keepdims) + slack
        return Interval(_down(_down(lo)), _up(_up(hi)))

    def widen(self, radius) -> Interval:
        """``self + [-radius, radius]``."""
        return self + Interval(-np.asarray(radius), np.asarray(radius))

    def mag(self) -> np.ndarray:
        """``max |x|`` over the box."""
        return np.maximum(np.abs(self.lo), np.abs(self.hi))

    def mid(self) -> np.ndarray:
        return self.lo / 2 + self.hi / 2

    def width(self) -> np.ndarray:
        return self.hi - self.lo

    def contains(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (self.lo <= x) & (x <= self.hi)

    @property
    def shape(self):
        return np.broadcast_shapes(self.lo.shape, self.hi.shape)

    def __getitem__(self, key) -> Interval:
        lo, hi = np.broadcast_arrays(self.lo, self.hi)
        return Interval(lo[key], hi[key])

    def __repr__(self) -> str:
        return f"Interval(lo={self.lo!r}, hi={self.hi!r})"


class TaylorModel:
    """``c0 + c1 u + rem`` for ``|u| <= radius``: a function of one real variable ``u``,
    enclosed on ``[-radius, radius]`` by a linear part with interval coefficients and an
    interval remainder. Products and quotients keep the linear part exact, so a quantity
    that cancels to first order in ``u`` stays tight (a first-order Taylor model)."""

    __array_ufunc__ = None

    def __init__(self, c0, c1, rem, radius):
        self.c0, self.c1, self.rem = (Interval._of(v) for v in (c0, c1, rem))
        self.radius = np.asarray(radius, dtype=np.float64)
        if (self.radius < 0).any():
            raise ValueError("radius must be >= 0")

    def _u(self) -> Interval:
        return Interval(-self.radius, self.radius)

    def range(self) -> Interval:
        """An interval containing the function's values for every ``|u| <= radius``."""
        return self.c0 + self.c1 * self._u() + self.rem

    def mag(self) -> np.ndarray:
        return self.range().mag()

    def __add__(self, other):
        if isinstance(other, TaylorModel):
            return TaylorModel(
                self.c0 + other.c0,
                self.c1 + other.c1,
                self.rem + other.rem,
                self.radius,
            )
        return TaylorModel(self.c0 + other, self.c1, self.rem, self.radius)

    __radd__ = __add__

    def __neg__(self):
        return TaylorModel(-self.c0, -self.c1, -self.rem, self.radius)

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if not isinstance(other, TaylorModel):
            return TaylorModel(
                self.c0 * other, self.c1 * other, self.rem * other, self.radius
            )
        u = self._u()
        u2 = Interval(np.zeros_like(self.radius), self.radius**2)
        rem = self.c1 * other.c1 * u2 + self.rem * other.rem
        rem = (
            rem
            + (self.c0 + self.c1 * u) * other.rem
            + (other.c0 + other.c1 * u) * self.rem
        )
        return TaylorModel(
            self.c0 * other.c0,
            self.c0 * other.c1 + self.c1 * other.c0,
            rem,
            self.radius,
        )

    __rmul__ = __mul__

    def reciprocal(self) -> TaylorModel:
        """``1/x = 1/c0 - (x - c0)/c0² + (x - c0)²/(c0² x)``, the last term bounded over
        the model's range (which must not contain 0)."""
        whole = self.range()
        inv = 1 / self.c0
        inv2 = inv * inv
        shift = self.c1 * self._u() + self.rem
        rem = shift.square() * inv2 / whole - self.rem * inv2
        return TaylorModel(inv, -(self.c1 * inv2), rem, self.radius)

    def __truediv__(self, other):
        if isinstance(other, TaylorModel):
            return self * other.reciprocal()
        return self * (1 / Interval._of(other))

    def __rtruediv__(self, other):
        return self.reciprocal() * other
