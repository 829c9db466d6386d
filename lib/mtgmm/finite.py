"""Non-asymptotic bounds at finitely many tokens (chapter *The convergence theorem*).

For a query token x, with query row q = x W_KQ, and n = L − 1 other keys x_j drawn i.i.d.
from the noisy marginal Σ_k π_k N(c_k, s² I), c_k = a μ_k, the attention output is a
self-normalised importance-sampling estimate of the tilted mean m_q
(:func:`mtgmm.theory.attention_limit`), with weights w_j = e^{⟨q, x_j⟩}. Every moment the
bounds use is a closed form of (x, W), by Gaussian tilting; the expectation over the query
token is a Monte Carlo average with a standard error. See the chapter
`Convergence <../convergence.html#a-non-asymptotic-bound-at-finite-l>`__.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import positive_int, single_level
from .mixture import MultiTokenGMM
from .oracle import oracle_eps
from .stats import mean_stderr
from .theory import (
    WeightsLike,
    _marginal_tokens,
    as_weights,
    attention_limit,
    layer_limit,
)


@dataclass(frozen=True)
class KeyMoments:
    """Closed-form key moments for each query row (shapes ``(...)``, ``mean`` ``(..., d)``).

    With w = e^{⟨q, x⟩}, Z = E w and u = (x − m_q) W_V: ``log_z`` = log Z, ``rho`` =
    E w² / Z², ``sigma2`` = E[w² ‖u‖²] / Z², ``m2`` = E‖u‖², ``m4`` = E‖u‖⁴, ``mean`` = m_q.
    """

    log_z: Tensor
    rho: Tensor
    sigma2: Tensor
    m2: Tensor
    m4: Tensor
    mean: Tensor


def key_moments(
    gmm: MultiTokenGMM, alpha_bar: float, q: Tensor, w_v: Tensor
) -> KeyMoments:
    """The moments of :class:`KeyMoments` for query rows ``q`` (..., d), exactly.

    Component k, tilted by e^{j⟨q, x⟩}, is N(c_k + j s² q, s² I) with mass
    π_k exp(j⟨q, c_k⟩ + j² s²‖q‖²/2); so Z = Σ_k π_k e^{⟨q,c_k⟩ + s²‖q‖²/2},
    E w² = Σ_k π_k e^{2⟨q,c_k⟩ + 2s²‖q‖²}, and E[w²‖u‖²] adds ‖(c_k + 2s²q − m_q)W_V‖² +
    s²‖W_V‖_F² per component. For a Gaussian row y ~ N(μ, Σ),
    E‖y‖⁴ = (‖μ‖² + tr Σ)² + 2 tr Σ² + 4 μ Σ μᵀ, here with Σ = s² W_Vᵀ W_V.
    """
    ab = single_level(alpha_bar)
    g = gmm.to(dtype=torch.float64)
    q = q.to(torch.float64)
    w_v = w_v.to(torch.float64)
    s2 = g.noise_variance(ab).item()
    c = math.sqrt(ab) * g.means  # (K, d)
    log_pi = g.log_weights
    lin = q @ c.T  # ⟨q, c_k⟩, (..., K)
    qq = (q**2).sum(-1, keepdim=True)  # ‖q‖², (..., 1)
    log_z = torch.logsumexp(log_pi + lin, -1) + s2 * qq[..., 0] / 2
    log_w2 = log_pi + 2 * lin + 2 * s2 * qq  # per component, (..., K)
    rho = (torch.logsumexp(log_w2, -1) - 2 * log_z).exp()
    mean = attention_limit(g, ab, q)  # m_q, the tilted mean
    trace = s2 * (w_v**2).sum()
    tilted = ((c + 2 * s2 * q[..., None, :] - mean[..., None, :]) @ w_v) ** 2
    sigma2 = ((log_w2 - 2 * log_z[..., None]).exp() * (tilted.sum(-1) + trace)).sum(-1)
    mu = (c - mean[..., None, :]) @ w_v  # (..., K, d)
    mu2 = (mu**2).sum(-1)
    trace_sq = s2**2 * ((w_v.T @ w_v) ** 2).sum()
    quad = s2 * ((mu @ w_v.T) ** 2).sum(-1)
    pi = log_pi.exp()
    m2 = ((mu2 + trace) * pi).sum(-1)
    m4 = (((mu2 + trace) ** 2 + 2 * trace_sq + 4 * quad) * pi).sum(-1)
    return KeyMoments(log_z, rho, sigma2, m2, m4, mean)


@dataclass(frozen=True)
class ErrorBound:
    """Per-query bounds on the attention error δ = (O_L − m_q) W_V at a token x:
    ``bias`` ≥ ‖E[δ | x]‖ and ``second`` ≥ E[‖δ‖² | x] (shapes ``(...)``)."""

    bias: Tensor
    second: Tensor


def attention_error_bound(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    x: Tensor,
    n_tokens: int,
    h: float = 0.5,
    mask_self: bool = False,
) -> ErrorBound:
    """The bounds of :class:`ErrorBound` at tokens ``x`` (..., d), for L = ``n_tokens``.

    With n = L − 1, ρ, σ², M₂, M₄ from :func:`key_moments`, r₀ = e^{⟨q, x⟩}/Z (the query's
    own key; 0 if ``mask_self``), u₀ = (x − m_q) W_V and p = exp(−n h²/(2ρ)) (the chance
    that the normalised denominator falls below 1 − h), for any h in (0, 1)::

        E‖δ‖² ≤ (σ²/n + (r₀/n)² ‖u₀‖²)/(1 − h)² + ‖u₀‖² p + √(n M₄ p)
        ‖Eδ‖ ≤ (r₀/n)‖u₀‖ (1 + √((ρ − 1)/n)/(1 − h)) + √(σ²(ρ − 1))/(n(1 − h))
               + (√(σ²/n) + √(‖u₀‖² + n M₂)) √p
    """
    n_tokens = positive_int(n_tokens, "n_tokens")
    if n_tokens < 2:
        raise ValueError(f"n_tokens must be at least 2 (one other key), got {n_tokens}")
    if not 0 < h < 1:
        raise ValueError(f"h must lie in (0, 1), got {h}")
    w_kq, w_v, _ = as_weights(weights)
    x = x.to(torch.float64)
    q = x @ w_kq
    mom = key_moments(gmm, alpha_bar, q, w_v)
    n = n_tokens - 1
    u0 = (((x - mom.mean) @ w_v) ** 2).sum(-1)  # ‖u₀‖²
    if mask_self:
        r0, u0_self = torch.zeros_like(u0), torch.zeros_like(u0)
    else:
        r0, u0_self = ((q * x).sum(-1) - mom.log_z).exp(), u0
    root_p = (-n * h**2 / (4 * mom.rho)).exp()  # √p
    beta = r0 / n
    second = (mom.sigma2 / n + beta**2 * u0) / (1 - h) ** 2
    second = second + u0_self * root_p**2 + (n * mom.m4).sqrt() * root_p
    excess_rho = (mom.rho - 1).clamp_min(0)
    bias = beta * u0.sqrt() * (1 + (excess_rho / n).sqrt() / (1 - h))
    bias = bias + (mom.sigma2 * excess_rho).sqrt() / (n * (1 - h))
    bias = bias + ((mom.sigma2 / n).sqrt() + (u0_self + n * mom.m2).sqrt()) * root_p
    return ErrorBound(bias, second)


@dataclass(frozen=True)
class ExcessBound:
    """Two-sided bound on the excess risk per token at L tokens, split as E_L = E_∞ + (E_L −
    E_∞): ``limit`` is E_∞ (the infinite-token layer's excess) and ``gap_lower`` ≤ E_L −
    E_∞ ≤ ``gap_upper``; each is a Monte Carlo mean over query tokens with its standard
    error (``*_stderr``)."""

    n_tokens: int
    limit: float
    limit_stderr: float
    gap_upper: float
    gap_upper_stderr: float
    gap_lower: float
    gap_lower_stderr: float

    @property
    def upper(self) -> float:
        """The upper bound on E_L."""
        return self.limit + self.gap_upper

    @property
    def lower(self) -> float:
        """The lower bound on E_L."""
        return self.limit + self.gap_lower


def excess_bound(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    n_samples: int = 100_000,
    generator: torch.Generator | None = None,
    h_grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    mask_self: bool = False,
) -> ExcessBound:
    """E_∞ + E[2‖g‖ b̄ + v̄] ≥ E_L ≥ E_∞ − 2 E[‖g‖ b̄], with g = f_∞ − ε* at the query token
    and b̄, v̄ the bounds of :func:`attention_error_bound`, minimised over ``h_grid`` token by
    token (each h gives a valid bound, so their minimum is one). The expectation over the
    query is a Monte Carlo mean over ``n_samples`` marginal tokens."""
    n_samples = positive_int(n_samples, "n_samples")
    ab = single_level(alpha_bar)
    g64 = gmm.to(dtype=torch.float64)
    x = _marginal_tokens(g64, ab, n_samples, generator)
    gap = ((layer_limit(weights, g64, ab, x) - oracle_eps(g64, x, ab)) ** 2).sum(-1)
    bounds = [
        attention_error_bound(weights, g64, ab, x, n_tokens, h, mask_self)
        for h in h_grid
    ]
    bias = torch.stack([b.bias for b in bounds]).amin(0)
    up = torch.stack([2 * gap.sqrt() * b.bias + b.second for b in bounds]).amin(0)
    return ExcessBound(
        n_tokens,
        *mean_stderr(gap),
        *mean_stderr(up),
        *mean_stderr(-2 * gap.sqrt() * bias),
    )


def oracle_gap(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    x: Tensor,
    mask_self: bool = False,
) -> tuple[Tensor, float]:
    """Γ(x) and α for the lower bound at few keys (the chapter's lower-bound theorem).

    With e = qP/‖qP‖, the attention output O (a convex combination of the keys) satisfies
    ⟨m_q − O, e⟩ ≥ Γ(x) − s Ξ₊, Ξ the largest of the n keys' standard normal noises along
    e, where Γ = ⟨m_q, e⟩ − max(⟨x, e⟩, max_k ⟨c_k, e⟩) (the ⟨x, e⟩ term only when the
    query sees its own key). ``W_V`` must be α P + β P⊥, so that ``‖z W_V‖ ≥ |α| |⟨z, e⟩|``.
    Returns (Γ of shape ``(...)``, α).
    """
    w_kq, w_v, _ = as_weights(weights)
    g = gmm.to(dtype=torch.float64)
    p = g.span_projector().to(torch.float64)
    alpha = (torch.trace(p @ w_v) / torch.trace(p)).item()
    if not torch.allclose(p @ w_v, alpha * p, atol=1e-9) or not torch.allclose(
        w_v @ p, alpha * p, atol=1e-9
    ):
        raise ValueError("weights: W_V must act on span(P) as α·I (W_V = α P + β P⊥)")
    x = x.to(torch.float64)
    q = x @ w_kq
    direction = q @ p
    e = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    mean = attention_limit(g, alpha_bar, q)
    c = math.sqrt(single_level(alpha_bar)) * g.means
    top = (e @ c.T).amax(-1)
    if not mask_self:
        top = torch.maximum(top, (x * e).sum(-1))
    return (mean * e).sum(-1) - top, alpha


def max_normal_moment(gamma: Tensor, scale: float, n_keys: int) -> Tensor:
    """E[(Γ − scale · Ξ₊)₊²] for Ξ the largest of ``n_keys`` standard normals, exactly in
    law: ∫₀^{Γ/scale} 2 scale (Γ − scale t) Φ(t)^n dt (integration by parts), by the
    trapezoidal rule on 2,001 points; 0 where Γ ≤ 0."""
    n_keys = positive_int(n_keys, "n_keys")
    top = (gamma / scale).clamp_min(0)
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    t = top[..., None] * grid  # (..., 2001)
    cdf = (n_keys * torch.special.log_ndtr(t)).exp()
    integrand = 2 * scale * (gamma[..., None] - scale * t) * cdf
    return torch.trapezoid(integrand, t, dim=-1)
