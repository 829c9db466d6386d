"""Experiments of chapter *Tokens per data point*: the best one-layer excess risk against L,
power-law fits on the range where they hold, the L needed for a target score-matching
error, and how that L depends on K and d.

All sweeps call :func:`mtgmm.best.best_in_class` with sample sizes fixed in *tokens*
(:func:`sample_sizes`), so that a long sequence costs about as much as a short one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from .._checks import alpha_bar_tensor, positive_int
from ..best import BestInClass, best_in_class
from ..mixture import MultiTokenGMM
from ..runtime import by_preset
from ..stats import PowerLaw, fit_power_law
from .gap import Fit, GapMap, best_grid, gap_map_of

REFERENCE_SHAPE = {"radius": 4.0, "sigma0": 0.5}
"""Cluster norm r and spread σ0 held fixed while K and d vary (the book's reference values)."""


def sample_sizes(n_tokens: int) -> tuple[int, int]:
    """``(n_sequences, n_eval_sequences)`` for :func:`best_in_class` at L = ``n_tokens``:
    a fitting sample of about 2^13 tokens (quick; 2^17 full), at least 16 sequences, and an
    evaluation sample of about 2^15 tokens (quick; 2^18 full), at least 32 sequences."""
    n_tokens = positive_int(n_tokens, "n_tokens")
    fit_tokens, eval_tokens = by_preset((2**13, 2**15), (2**17, 2**18))
    return max(16, fit_tokens // n_tokens), max(32, eval_tokens // n_tokens)


def best_at(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    seed: int,
    mask_self: bool = False,
) -> BestInClass:
    """:func:`mtgmm.best.best_in_class` with the chapter's sample sizes (:func:`sample_sizes`)
    and a generator seeded with ``seed``."""
    n_sequences, n_eval = sample_sizes(n_tokens)
    return best_in_class(
        gmm,
        alpha_bar,
        n_tokens,
        n_sequences=n_sequences,
        generator=torch.Generator().manual_seed(seed),
        mask_self=mask_self,
        n_eval_sequences=n_eval,
        bayes_samples=by_preset(20_000, 200_000),
    )


def _fit(mask_self: bool) -> Fit:
    """:func:`best_at` as a :data:`~mtgmm.experiments.gap.Fit`."""
    return lambda gmm, alpha_bar, n_tokens, seed: best_at(
        gmm, alpha_bar, n_tokens, seed, mask_self
    )


def token_curves(
    gmm: MultiTokenGMM,
    alpha_bars: tuple[float, ...] | None = None,
    token_counts: tuple[int, ...] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> GapMap:
    """The best symmetric one-layer excess on a grid of noise levels (rows) and token counts
    (columns), L = 8 … 512 (quick) or 8 … 2048 (full) in factors of two. Same fields as the
    gap chapter's :class:`~mtgmm.experiments.gap.GapMap`; the sample sizes are those of
    :func:`sample_sizes`."""
    alpha_bars = alpha_bars or (0.95, 0.9, 0.7, 0.5, 0.1)
    token_counts = token_counts or tuple(2**n for n in range(3, by_preset(10, 12)))
    return gap_map_of(
        gmm, alpha_bars, token_counts, _fit(False), seed, progress, "excess vs L"
    )


@dataclass(frozen=True)
class ShapeSweep:
    """Best excess for several mixture shapes (rows: ``n_clusters[i]`` = K, ``dims[i]`` = d,
    orthogonal means of norm r, spread σ0 of :data:`REFERENCE_SHAPE`) and token counts
    (columns) at one noise level. ``temperature`` is c s² as in :func:`token_curves`;
    ``coefficients`` the fitted (3, 3) coordinates (rows W_KQ, W_V, W_S; columns P, P⊥, J)."""

    n_clusters: Tensor
    dims: Tensor
    token_counts: Tensor
    alpha_bar: float
    mask_self: bool
    excess: Tensor
    stderr: Tensor
    temperature: Tensor
    coefficients: Tensor

    def row(self, n_clusters: int, dim: int) -> int:
        """The row of shape (K, d)."""
        hits = ((self.n_clusters == n_clusters) & (self.dims == dim)).nonzero()
        if len(hits) == 0:
            raise ValueError(
                f"(n_clusters, dim) = ({n_clusters}, {dim}) is not in the sweep"
            )
        return int(hits[0, 0])


def reference_mixture(
    n_clusters: int, dim: int, seed: int = 0, dtype: torch.dtype | None = None
) -> MultiTokenGMM:
    """K orthogonal means of norm r = 4 in R^d, σ0 = 0.5 (:data:`REFERENCE_SHAPE`), in
    ``dtype`` (default: torch's default dtype)."""
    return MultiTokenGMM.orthogonal(
        n_clusters, dim, seed=seed, dtype=dtype, **REFERENCE_SHAPE
    )


def shape_sweep(
    alpha_bar: float = 0.9,
    shapes: tuple[tuple[int, int], ...] = (
        (2, 8),
        (4, 8),
        (8, 8),
        (4, 4),
        (4, 16),
        (4, 32),
    ),
    token_counts: tuple[int, ...] | None = None,
    mask_self: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> ShapeSweep:
    """Best excess as the number of clusters K and the dimension d vary, at fixed r, σ0, ᾱ
    (``shapes`` lists the (K, d) pairs; K ≤ d). Token counts: 16, 64, 256 (quick) or
    16, 64, 256, 1024 (full)."""
    alpha_bar = float(alpha_bar_tensor(alpha_bar).reshape(()))
    token_counts = token_counts or by_preset((16, 64, 256), (16, 64, 256, 1024))
    cases = [(reference_mixture(k, d), alpha_bar) for k, d in shapes]
    excess, stderr, temperature, coefficients, _, _ = best_grid(
        cases, token_counts, _fit(mask_self), seed, progress, "excess vs K, d"
    )
    n_clusters, dims = (torch.tensor(v) for v in zip(*shapes, strict=True))
    return ShapeSweep(
        n_clusters,
        dims,
        torch.tensor(token_counts),
        alpha_bar,
        mask_self,
        excess,
        stderr,
        temperature,
        coefficients,
    )


# ------------------------------------------------------------------------ power-law fits


def _arrays(*values) -> tuple[np.ndarray, ...]:
    """float64 numpy copies of tensors, arrays or sequences."""
    return tuple(np.asarray(torch.as_tensor(v, dtype=torch.float64)) for v in values)


@dataclass(frozen=True)
class TailFit:
    """A power law fitted on the tail ``L ≥ first`` of a curve.

    ``fit``: the :class:`~mtgmm.stats.PowerLaw` (slope, its standard error, prefactor,
    χ²/dof); ``first``: the smallest L used; ``n_points``: how many L were used;
    ``p_value``: the χ² goodness-of-fit probability of the power law on that tail."""

    fit: PowerLaw
    first: int
    n_points: int
    p_value: float


def fit_tail(
    token_counts, excess, stderr, min_points: int = 3, p_min: float = 0.05
) -> TailFit:
    """The power law on the longest tail of the curve where a power law is a fair description.

    For each tail ``L ≥ L_k`` with at least ``min_points`` points, fit ``log excess`` on
    ``log L`` by weighted least squares (:func:`mtgmm.stats.fit_power_law`) and compute the
    goodness of fit ``p = P(χ²_{n−2} ≥ χ²)`` of the weighted residuals. Return the longest
    tail with ``p ≥ p_min``; if none passes, the shortest tail (``min_points`` points), whose
    small p-value then says that no power law fits. The 95% interval of the slope is
    ``fit.interval()``: ±1.96 standard errors, inflated by √(χ²/dof) when that exceeds 1.
    ``token_counts`` must increase.
    """
    x, y, se = _arrays(token_counts, excess, stderr)
    min_points = positive_int(min_points, "min_points")
    if min_points < 3 or len(x) < min_points:
        raise ValueError(
            f"min_points must be >= 3 and <= the number of points {len(x)}"
        )
    if not 0 < p_min < 1:
        raise ValueError(f"p_min must lie in (0, 1), got {p_min}")
    for start in range(len(x) - min_points + 1):
        fit = fit_power_law(x[start:], y[start:], se[start:])
        dof = len(x) - start - 2
        tail = TailFit(
            fit,
            int(x[start]),
            len(x) - start,
            float(stats.chi2.sf(fit.chi2_per_dof * dof, dof)),
        )
        if tail.p_value >= p_min:
            return tail
    return tail  # no tail passes: the shortest one


def local_slopes(token_counts, excess) -> np.ndarray:
    """Slopes ``Δ log excess / Δ log L`` between neighbouring token counts (last axis), the
    local exponent of the curve: constant for a power law, drifting where it bends."""
    x, y = _arrays(token_counts, excess)
    return np.diff(np.log(y), axis=-1) / np.diff(np.log(x))


# ------------------------------------------------------------------- tokens for a target


def tokens_for_target(
    token_counts, values, stderr, target: float
) -> tuple[float, float]:
    """The L at which a decreasing measured curve (``values`` ± ``stderr`` at
    ``token_counts``) first reaches ``target``, with a standard error; ``(nan, nan)`` if the
    curve does not cross it inside the measured range (already below the target at the
    first L, or still above it at the last).

    Between the bracketing points (L₁, y₁) and (L₂, y₂) the curve is interpolated linearly
    on log–log axes: ``log L* = log L₁ + f (log L₂ − log L₁)``,
    ``f = (log target − log y₁)/(log y₂ − log y₁)``. The error propagates the points'
    relative errors σᵢ = seᵢ/yᵢ (independent, delta method):
    ``sd(log L*) = |Δlog L / Δlog y| · √((1 − f)² σ₁² + f² σ₂²)``, and ``se(L*) = L* sd``.
    """
    x, y, se = _arrays(token_counts, values, stderr)
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    if x.ndim != 1 or x.shape != y.shape or y.shape != se.shape or (y <= 0).any():
        raise ValueError(
            "token_counts, values, stderr must be 1-D of one length, values > 0"
        )
    below = np.nonzero(y <= target)[0]
    if len(below) == 0 or below[0] == 0:
        return math.nan, math.nan
    pair = slice(below[0] - 1, below[0] + 1)
    lx, ly, rel = np.log(x[pair]), np.log(y[pair]), se[pair] / y[pair]
    f = (math.log(target) - ly[0]) / (ly[1] - ly[0])
    value = math.exp(lx[0] + f * (lx[1] - lx[0]))
    sd = abs((lx[1] - lx[0]) / (ly[1] - ly[0])) * math.hypot(
        (1 - f) * rel[0], f * rel[1]
    )
    return value, value * sd
