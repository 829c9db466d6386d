"""Gradient descent in the convergence theorem: the readout's Hessian and iteration count,
and the profile excess along the inverse temperature (derived in :doc:`/book/convergence`).

Layer: after :mod:`mtgmm.bounds`, before :mod:`mtgmm.training`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy import optimize
from torch import Tensor

from ._checks import positive_int
from .attention import SymmetricBasis, attend
from .best import invariant_matrices, readout_profile
from .bounds import _level
from .mixture import MultiTokenGMM
from .objective import noisy_batch
from .oracle import oracle_eps


def gd_iterations(
    excess0: float,
    target: float,
    smoothness: float,
    strong_convexity: float,
    step: float,
    quadratic: bool = False,
) -> int:
    """Gradient steps that guarantee ``f(θ_k) − f* ≤ target`` from ``f(θ_0) − f* = excess0``
    for a μ-strongly convex, ℓ-smooth f with step η ≤ 1/ℓ:

        k = ⌈log(excess0/target) / (−log(1 − ημ))⌉;

    with ``quadratic=True`` (η < 2/ℓ), ``k = ⌈log(excess0/target) / (−2 log ρ)⌉``,
    ``ρ = max(|1 − ημ|, |1 − ηℓ|)`` (rigorous; :doc:`/book/convergence`).
    """
    if not (excess0 > 0 and target > 0):
        raise ValueError("excess0 and target must be > 0")
    if not 0 < strong_convexity <= smoothness:
        raise ValueError("need 0 < strong_convexity <= smoothness")
    limit = 2 / smoothness if quadratic else 1 / smoothness
    if not (0 < step < limit or (not quadratic and step == limit)):
        rule = "0 < step < 2/smoothness" if quadratic else "0 < step <= 1/smoothness"
        raise ValueError(f"step must satisfy {rule}, got {step}")
    if target >= excess0:
        return 0
    if quadratic:
        rho = max(abs(1 - step * strong_convexity), abs(1 - step * smoothness))
        log_rate = 2 * math.log(rho)
    else:
        log_rate = math.log1p(-step * strong_convexity)
    if log_rate == -math.inf:
        return 1
    return math.ceil(math.log(excess0 / target) / -log_rate)


class Profile:
    """Profile excess along the inverse temperature, on one fixed sample of sequences:

        ℓ(τ) = min over symmetric (W_V, W_S) of mean ‖f(X) − ε*(X)‖²,  W_KQ = (τ/s²)(P − J),

    the readout solved by least squares at every τ (as in :mod:`mtgmm.best`); ``n_sequences``
    defaults to ``max(64, 2^15 // L)`` (:doc:`/book/convergence`, *The landscape in the inverse
    temperature*).
    """

    def __init__(
        self,
        gmm: MultiTokenGMM,
        alpha_bar: float,
        n_tokens: int,
        n_sequences: int | None = None,
        generator: torch.Generator | None = None,
        mask_self: bool = False,
    ) -> None:
        self.n_tokens = positive_int(n_tokens, "n_tokens")
        n_sequences = positive_int(
            n_sequences or max(64, 2**15 // n_tokens), "n_sequences"
        )
        self.alpha_bar, self.gmm, self.s2 = _level(gmm, alpha_bar, "the profile")
        self.mask_self = bool(mask_self)
        self.x, _ = noisy_batch(
            self.gmm, self.alpha_bar, n_sequences, n_tokens, generator
        )
        self.target = oracle_eps(self.gmm, self.x, self.alpha_bar)
        basis, self._columns = invariant_matrices(self.gmm, include_j=True)
        self._evaluate = readout_profile(self.x, self.target, basis, self.mask_self)
        direction = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
        self._direction = direction[self._columns] / self.s2

    def _at(self, tau: float, grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.tensor(float(tau), dtype=torch.float64, requires_grad=grad)
        value, theta = self._evaluate(t * self._direction)
        return t, value, theta

    def value(self, tau: float) -> float:
        """ℓ(τ)."""
        with torch.no_grad():
            return self._at(tau, False)[1].item()

    def derivative(self, tau: float) -> tuple[float, float]:
        """(ℓ(τ), ℓ'(τ)), the derivative by automatic differentiation."""
        t, value, _ = self._at(tau, True)
        (grad,) = torch.autograd.grad(value, t)
        return value.item(), grad.item()

    def coefficients(self, tau: float) -> Tensor:
        """(3, 3) reduced coordinates of the profile's model at τ (rows W_KQ, W_V, W_S)."""
        with torch.no_grad():
            _, _, theta = self._at(tau, False)
        m = len(self._columns)
        coefficients = torch.zeros(3, 3, dtype=torch.float64)
        coefficients[0, self._columns] = float(tau) * self._direction
        coefficients[2, self._columns] = theta[:m]
        coefficients[1, self._columns] = theta[m:]
        return coefficients

    def per_sequence(self, tau: float) -> Tensor:
        """Per-sequence excess (n,) of the profile's model at τ; its mean is ℓ(τ)."""
        weights = SymmetricBasis(self.gmm).compose(self.coefficients(tau))
        with torch.no_grad():
            out = self.x @ weights[2] + attend(
                self.x, weights[0], weights[1], self.mask_self
            )
        return ((out - self.target) ** 2).sum(-1).mean(-1)

    def scan(self, temperatures: Sequence[float]) -> tuple[Tensor, Tensor]:
        """ℓ and ℓ' at each of ``temperatures`` (two tensors of their length)."""
        pairs = [self.derivative(t) for t in temperatures]
        return tuple(
            torch.tensor(v, dtype=torch.float64) for v in zip(*pairs, strict=True)
        )

    def minimum(self, temperatures: Sequence[float]) -> tuple[float, float]:
        """(τ*, ℓ(τ*)): the best point of the grid ``temperatures``, refined by a bounded Brent
        search between its neighbours.
        """
        grid = sorted(float(t) for t in temperatures)
        values = [self.value(t) for t in grid]
        i = min(range(len(grid)), key=values.__getitem__)
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        if lo == hi:
            return grid[i], values[i]
        result = optimize.minimize_scalar(
            self.value, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7}
        )
        if result.fun > values[i]:
            return grid[i], values[i]
        return float(result.x), float(result.fun)

    def descent_constants(
        self, tau0: float, tau_star: float, n_grid: int = 33
    ) -> tuple[float, float]:
        """(S, m) on the segment from τ0 to τ*, from ℓ' on ``n_grid`` points: ``S = max |ℓ''|``
        and ``m = min ℓ'(τ)/(τ − τ*)`` (grid estimates; the constants of
        :func:`temperature_iterations`).
        """
        n_grid = positive_int(n_grid, "n_grid")
        if n_grid < 3 or tau0 == tau_star:
            raise ValueError("need n_grid >= 3 and tau0 != tau_star")
        grid = torch.linspace(tau0, tau_star, n_grid, dtype=torch.float64).tolist()
        slopes = torch.tensor(
            [self.derivative(t)[1] for t in grid], dtype=torch.float64
        )
        taus = torch.tensor(grid, dtype=torch.float64)
        curvature = (slopes[1:] - slopes[:-1]) / (taus[1:] - taus[:-1])
        secants = torch.cat([slopes[:-1] / (taus[:-1] - tau_star), curvature[-1:]])
        return curvature.abs().max().item(), secants.min().item()


def sign_changes(temperatures: Sequence[float], slopes: Sequence[float]) -> list[float]:
    """Where ``slopes`` (ℓ' on sorted ``temperatures``) changes sign, by linear interpolation."""
    grid = [float(t) for t in temperatures]
    slopes = [float(g) for g in slopes]
    if len(grid) != len(slopes) or grid != sorted(grid):
        raise ValueError("temperatures must be sorted and match slopes in length")
    points = []
    for i in range(len(grid) - 1):
        (t0, t1), (g0, g1) = grid[i : i + 2], slopes[i : i + 2]
        if g0 == 0 or g0 * g1 < 0:
            points.append(t0 + (t1 - t0) * g0 / (g0 - g1))
    return points


def temperature_iterations(
    distance0: float, target: float, smoothness: float, secant: float, step: float
) -> int:
    """Gradient steps on ℓ that guarantee ``ℓ(τ_k) − ℓ(τ*) ≤ target`` from ``|τ0 − τ*| =
    distance0``, given ``|ℓ''| ≤ S``, ``ℓ'(τ)/(τ − τ*) ≥ m`` on the segment and step ≤ 1/S:

        k = ⌈ log(S · distance0² / (2 target)) / (−2 log(1 − step · m)) ⌉

    (rigorous given the constants; :doc:`/book/convergence`, lemma on the temperature
    landscape).
    """
    if not (distance0 >= 0 and target > 0):
        raise ValueError("distance0 must be >= 0 and target > 0")
    if not 0 < secant <= smoothness:
        raise ValueError(f"need 0 < secant <= smoothness, got {secant}, {smoothness}")
    if not 0 < step <= 1 / smoothness:
        raise ValueError(f"step must satisfy 0 < step <= 1/smoothness, got {step}")
    start = smoothness * distance0**2 / 2
    if start <= target:
        return 0
    if step * secant >= 1:
        return 1
    return math.ceil(math.log(start / target) / (-2 * math.log1p(-step * secant)))
