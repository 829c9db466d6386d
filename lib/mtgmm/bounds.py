"""The first-order token bound of the convergence theorem (derived in
:doc:`/book/convergence`, *The token bound*; used in :doc:`/book/tokens`).

For ``W_KQ = c (P − J)`` and a readout θ over the orthonormal symmetric matrices E_m, the
first-order excess ``limit + (variance + bias)/n`` of :class:`mtgmm.theory.TokenExpansion`
is a quadratic in θ, with Monte Carlo moments G, h, S, C, u:

    limit = θᵀ G θ − 2 hᵀ θ + E‖ε*‖²,  variance = θ_Vᵀ S θ_V,  bias = 2 θᵀ C θ_V − 2 uᵀ θ_V.

The readout minimises ``limit + variance/n``; ``bound(L) = min_c`` of the full first-order
excess over a grid of temperatures ``c s²`` with ``(L − 1) · ESS ≥ min_keys``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import nonnegative_float, positive_int, single_level
from .attention import SymmetricBasis
from .mixture import MultiTokenGMM
from .oracle import oracle_eps
from .stats import mean_stderr
from .symmetry import orthonormal_symmetric_basis
from .theory import (
    _marginal_tokens,
    _tilted_terms,
    attention_bias,
)

DEFAULT_TEMPERATURES = tuple(round(0.04 * i, 2) for i in range(8))
"""Temperatures ``c s²`` 0 to 0.28, below 1 − 1/√2: every Monte Carlo term has finite variance."""

DEFAULT_SAMPLES = 2**14
"""Default marginal tokens in each of the two Monte Carlo samples (fit and evaluation)."""

MAX_TOKENS = 2**24
"""Largest L that :func:`tokens_needed` searches; beyond it the answer is ``inf``."""

MIN_KEYS = 4.0
"""Default ``min_keys``: effective keys a temperature needs before its expansion is used."""


def _level(
    gmm: MultiTokenGMM, alpha_bar: float, what: str
) -> tuple[float, MultiTokenGMM, float]:
    """Validate one level; return ``(ᾱ, the mixture in float64 on the CPU, s²)``."""
    ab = single_level(alpha_bar)
    gmm64 = gmm.to(device="cpu", dtype=torch.float64)
    s2 = gmm64.noise_variance(ab).item()
    if s2 == 0:
        raise ValueError(f"{what} needs s² = a²σ0² + b² > 0 (not σ0 = 0 with ᾱ = 1)")
    return ab, gmm64, s2


@dataclass(frozen=True)
class TokenBound:
    """The first-order token bound at M values of L, on a grid of C temperatures.

    Attributes:
        n_tokens, excess, stderr: (M,) L, the bound (``inf`` where no temperature is trusted)
            and its standard error.
        temperature, limit, slope: (M,) the minimising ``c s²``, and the bound's L = ∞ part
            and 1/(L − 1) coefficient.
        coefficients: (M, 3, 3) reduced coordinates of ``W(c*, L)`` (rows W_KQ, W_V, W_S).
        temperatures, ess: (C,) the grid and its mean ESS fractions.
        grid_excess: (C, M) the first-order excess of every ``W(c, L)``.
    """

    n_tokens: Tensor
    excess: Tensor
    stderr: Tensor
    temperature: Tensor
    limit: Tensor
    slope: Tensor
    coefficients: Tensor
    temperatures: Tensor
    grid_excess: Tensor
    ess: Tensor


@dataclass(frozen=True)
class _Moments:
    """Moments of one sample over C temperatures: G (C, 2m, 2m), h (C, 2m), E‖ε*‖², S
    (C, m, m), C (C, 2m, m), u (C, m), ESS fraction (C,).
    """

    gram: Tensor
    target: Tensor
    total: Tensor
    fluct: Tensor
    cross: Tensor
    bias_target: Tensor
    ess: Tensor


class _Problem:
    """The quadratic problems of one mixture, level and grid, on a fit and an evaluation sample."""

    def __init__(
        self,
        gmm: MultiTokenGMM,
        alpha_bar: float,
        temperatures: Sequence[float] | None,
        n_samples: int,
        generator: torch.Generator | None,
        mask_self: bool,
        min_keys: float,
    ) -> None:
        self.min_keys = nonnegative_float(min_keys, "min_keys")
        n_samples = positive_int(n_samples, "n_samples")
        self.alpha_bar, self.gmm, self.s2 = _level(gmm, alpha_bar, "the token bound")
        self.temperatures = _temperature_grid(temperatures)
        self.mask_self = bool(mask_self)
        self.sym = SymmetricBasis(self.gmm)
        self.basis = orthonormal_symmetric_basis(self.sym)  # (m, d, d)
        seeds = torch.randint(2**62, (2,), generator=generator).tolist()
        samples = [
            _marginal_tokens(
                self.gmm, self.alpha_bar, n_samples, torch.Generator().manual_seed(s)
            )
            for s in seeds
        ]
        self.eval_tokens = samples[1]
        self._eval_features: dict[float, tuple[Tensor, ...]] = {}
        self.fit, self.eval = (self._moments(x) for x in samples)

    def w_kq(self, temperature: float) -> Tensor:
        """``W_KQ = c (P − J)`` with ``c s² = temperature``."""
        return (temperature / self.s2) * (self.sym.P - self.sym.J)

    def _features(self, x: Tensor, temperature: float):
        """Per token: features F (N, 2m, d), ε* (N, d), fluctuation
        ``V_ab = Σ_k ρ_k [s² 1{a = b} + (δ_k E_a)·(δ_k E_b)]`` (N, m, m), β E_m (N, m, d), ESS (N,).
        """
        q = x @ self.w_kq(temperature)
        limit, rho, delta, _, s2 = _tilted_terms(self.gmm, self.alpha_bar, q)
        feats = torch.einsum("nd,mde->nme", torch.cat([x, limit]), self.basis)
        # (x B, m_q B) for each E_m: skip features first, value features second
        feats = torch.cat(feats.split(x.shape[0]), 1)
        moved = torch.einsum("nkd,mde->nkme", delta, self.basis)
        fluct = torch.einsum("nk,nkae,nkbe->nab", rho, moved, moved)
        fluct = fluct + (s2 * rho.sum(-1, keepdim=True))[..., None] * torch.eye(
            self.basis.shape[0], dtype=x.dtype
        )
        beta = attention_bias(
            self.gmm, self.alpha_bar, q, None if self.mask_self else x
        )
        beta = torch.einsum("nd,mde->nme", beta, self.basis)
        eps = oracle_eps(self.gmm, x, self.alpha_bar)
        return feats, eps, fluct, beta, 1 / rho.sum(-1)  # Σ_k ρ_k = 1 / ess_fraction

    def _moments(self, x: Tensor) -> _Moments:
        parts = []
        for temperature in self.temperatures.tolist():
            feats, eps, fluct, beta, ess = self._features(x, temperature)
            parts.append(
                (
                    torch.einsum("nad,nbd->ab", feats, feats),
                    torch.einsum("nad,nd->a", feats, eps),
                    fluct.sum(0),
                    torch.einsum("nad,nbd->ab", feats, beta),
                    torch.einsum("nd,nbd->b", eps, beta),
                    ess.sum(),
                )
            )
        stacked = [torch.stack(p) / x.shape[0] for p in zip(*parts, strict=True)]
        total = (oracle_eps(self.gmm, x, self.alpha_bar) ** 2).sum(-1).mean()
        return _Moments(stacked[0], stacked[1], total, *stacked[2:])

    def _quadratic(
        self, mom: _Moments, n_keys: Tensor, bias: bool
    ) -> tuple[Tensor, Tensor]:
        """M_n (C, M, 2m, 2m) and b_n (C, M, 2m) for n = ``n_keys``; ``bias=False``: G + Ŝ/n, h."""
        m = self.basis.shape[0]
        extra = torch.zeros_like(mom.gram)
        lin = torch.zeros_like(mom.target)
        if bias:
            extra[:, :, m:] += mom.cross
            extra = extra + extra.transpose(-1, -2)
            lin[:, m:] = mom.bias_target
        extra[:, m:, m:] += mom.fluct
        inv_n = (1 / n_keys)[None, :, None]
        mat = mom.gram[:, None] + inv_n[..., None] * extra[:, None]
        return mat, mom.target[:, None] + inv_n * lin[:, None]

    def evaluate(self, n_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """θ*(c, L) (C, M, 2m) fitted on the fit sample, and its limit and first-order excess
        (C, M) on the evaluation sample.
        """
        mat, vec = self._quadratic(self.fit, n_tokens - 1, bias=False)
        theta = torch.linalg.solve(mat, vec)
        mom = self.eval
        mat, vec = self._quadratic(mom, n_tokens - 1, bias=True)
        limit = (
            _quad(mom.gram[:, None].expand_as(mat), mom.target[:, None], theta)
            + mom.total
        )
        excess = _quad(mat, vec, theta) + mom.total
        trusted = (n_tokens - 1)[None, :] * self.fit.ess[:, None] >= self.min_keys
        return theta, limit, torch.where(trusted, excess, torch.inf)

    def stderr(self, temperature: float, theta: Tensor, n_tokens: int) -> float:
        """Standard error of the first-order excess of θ (2m,) over the evaluation tokens."""
        if temperature not in self._eval_features:
            self._eval_features[temperature] = self._features(
                self.eval_tokens, temperature
            )
        feats, eps, fluct, beta, _ = self._eval_features[temperature]
        m = self.basis.shape[0]
        gap = feats.transpose(1, 2) @ theta - eps  # (N, d)
        beta_w = torch.einsum("nmd,m->nd", beta, theta[m:])
        per_token = (gap**2).sum(-1) + (
            torch.einsum("a,nab,b->n", theta[m:], fluct, theta[m:])
            + 2 * (gap * beta_w).sum(-1)
        ) / (n_tokens - 1)
        return mean_stderr(per_token)[1]

    def coefficients(self, temperature: float, theta: Tensor) -> Tensor:
        """(3, 3) reduced coordinates of ``W(c, L)``: rows W_KQ, W_V, W_S."""
        m = self.basis.shape[0]
        w_s = torch.einsum("m,mij->ij", theta[:m], self.basis)
        w_v = torch.einsum("m,mij->ij", theta[m:], self.basis)
        return self.sym.coordinates(torch.stack([self.w_kq(temperature), w_v, w_s]))


def _quad(mat: Tensor, vec: Tensor, theta: Tensor) -> Tensor:
    """``θᵀ M θ − 2 bᵀ θ`` over leading dims."""
    return torch.einsum("...a,...ab,...b->...", theta, mat, theta) - 2 * (
        vec * theta
    ).sum(-1)


def _temperature_grid(temperatures: Sequence[float] | None) -> Tensor:
    grid = torch.as_tensor(
        DEFAULT_TEMPERATURES if temperatures is None else temperatures,
        dtype=torch.float64,
    ).reshape(-1)
    if grid.numel() == 0 or not bool(torch.isfinite(grid).all()):
        raise ValueError(
            "temperatures must be a non-empty sequence of finite values c s²"
        )
    if bool((2 * grid**2 >= 1).any()):
        raise ValueError(
            "temperatures must satisfy κ = 2 (c s²)² < 1, i.e. |c s²| < 1/√2 ≈ 0.707, where the "
            f"1/L constant exists; got {grid.tolist()}"
        )
    return grid


def _token_counts(token_counts) -> Tensor:
    counts = torch.as_tensor(token_counts).reshape(-1)
    if (
        counts.numel() == 0
        or counts.is_floating_point()
        and bool((counts != counts.round()).any())
    ):
        raise ValueError(
            f"token_counts must be a non-empty sequence of integers, got {counts}"
        )
    counts = counts.to(torch.float64)
    if bool((counts < 2).any()):
        raise ValueError(
            "token_counts must be >= 2 (the expansion is in the L − 1 other keys)"
        )
    return counts


def token_bound(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    token_counts,
    temperatures: Sequence[float] | None = None,
    n_samples: int = DEFAULT_SAMPLES,
    generator: torch.Generator | None = None,
    mask_self: bool = False,
    min_keys: float = MIN_KEYS,
) -> TokenBound:
    """First-order bound on the best symmetric model's excess at each L of ``token_counts``
    (integers ≥ 2): ``min_c`` over ``temperatures`` (values of ``c s²``, ``2 (c s²)² < 1``) of the
    first-order excess of ``W_KQ = c (P − J)`` with its fitted readout (asymptotic in L).
    ``n_samples`` tokens in each of the fit and evaluation samples.
    """
    counts = _token_counts(token_counts)
    problem = _Problem(
        gmm, alpha_bar, temperatures, n_samples, generator, mask_self, min_keys
    )
    theta, limit, excess = problem.evaluate(counts)
    best = excess.argmin(0)  # (M,)
    cols = torch.arange(counts.numel())
    chosen = theta[best, cols]
    temps = problem.temperatures[best]
    finite = torch.isfinite(excess[best, cols])
    stderr = torch.tensor(
        [
            problem.stderr(t, th, int(n)) if ok else math.inf
            for t, th, n, ok in zip(
                temps.tolist(), chosen, counts.tolist(), finite, strict=True
            )
        ],
        dtype=torch.float64,
    )
    coefficients = torch.stack(
        [
            problem.coefficients(t, th)
            for t, th in zip(temps.tolist(), chosen, strict=True)
        ]
    )
    bound = excess[best, cols]
    lim = limit[best, cols]
    return TokenBound(
        n_tokens=counts.long(),
        excess=bound,
        stderr=stderr,
        temperature=torch.where(finite, temps, torch.nan),
        limit=torch.where(finite, lim, torch.nan),
        slope=torch.where(finite, (bound - lim) * (counts - 1), torch.nan),
        coefficients=torch.where(finite[:, None, None], coefficients, torch.nan),
        temperatures=problem.temperatures,
        grid_excess=excess,
        ess=problem.fit.ess,
    )


def tokens_needed(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    target: float,
    temperatures: Sequence[float] | None = None,
    n_samples: int = DEFAULT_SAMPLES,
    generator: torch.Generator | None = None,
    mask_self: bool = False,
    min_keys: float = MIN_KEYS,
) -> float:
    """Smallest L ≥ 2 with ``token_bound(L) ≤ target`` (geometric scan, then bisection); ``inf``
    if none up to :data:`MAX_TOKENS`. Same samples as :func:`token_bound` for the same generator.
    """
    if not (isinstance(target, int | float) and math.isfinite(target) and target > 0):
        raise ValueError(f"target must be a finite number > 0, got {target!r}")
    problem = _Problem(
        gmm, alpha_bar, temperatures, n_samples, generator, mask_self, min_keys
    )

    def bound(n: Tensor) -> Tensor:
        return problem.evaluate(n.to(torch.float64))[2].min(0).values

    scan = torch.unique(
        torch.logspace(math.log10(2), math.log10(MAX_TOKENS), 97).round()
    )
    below = (bound(scan) <= target).nonzero()
    if below.numel() == 0:
        return math.inf
    first = int(below[0])
    if first == 0:
        return 2.0
    lo, hi = int(scan[first - 1]), int(scan[first])  # bound(lo) > target >= bound(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bound(torch.tensor([mid]))[0] <= target:
            hi = mid
        else:
            lo = mid
    return float(hi)
