"""Closed forms for the attention layer: the infinite-token limit, its 1/L correction and
the symmetric coordinates.

At level ᾱ a noisy token is drawn from ``Σ_k π_k N(a μ_k, s² I)``, ``a = √ᾱ``,
``b = √(1−ᾱ)``, ``s² = a²σ0² + b²``; a query row is ``q = x W_KQ``. Everything rests on the
Gaussian tilting identity: ``e^{⟨v,x⟩} N(a μ_k, s² I)`` normalised is ``N(a μ_k + s² v, s² I)``
(derived in :doc:`/book/attention`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import (
    alpha_bar_tensor,
    last_dim,
    leading_broadcast,
    positive_int,
    single_level,
)
from .attention import (
    WEIGHT_NAMES,
    AttentionBank,
    AttentionDenoiser,
)
from .mixture import MultiTokenGMM, add_noise
from .oracle import oracle_eps
from .stats import mean_stderr

WeightsLike = (
    AttentionDenoiser | AttentionBank | Sequence[Tensor] | Mapping[str, Tensor]
)
_BATCH = 2**15  # marginal tokens per Monte Carlo chunk


# ----------------------------------------------------------------------------- weights


def as_weights(weights: WeightsLike) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_KQ, W_V, W_S)`` in float64, detached, from a model, three matrices or a mapping
    with those names; each (..., d, d).
    """
    if isinstance(weights, AttentionDenoiser | AttentionBank):
        mats = [getattr(weights, name) for name in WEIGHT_NAMES]
    elif isinstance(weights, Mapping):
        missing = [name for name in WEIGHT_NAMES if name not in weights]
        if missing:
            raise ValueError(
                f"weights mapping must hold {WEIGHT_NAMES}, missing {missing}"
            )
        mats = [weights[name] for name in WEIGHT_NAMES]
    else:
        mats = list(weights)
        if len(mats) != 3:
            raise ValueError(
                f"weights must be three matrices {WEIGHT_NAMES}, got {len(mats)}"
            )
    out = tuple(torch.as_tensor(w).detach().to(torch.float64) for w in mats)
    for name, w in zip(WEIGHT_NAMES, out, strict=True):
        if w.ndim < 2 or w.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"{name} must have shape (..., d, d), got {tuple(w.shape)}"
            )
    if len({w.shape[-1] for w in out}) != 1:
        raise ValueError(
            f"W_KQ, W_V, W_S must share d, got shapes {[tuple(w.shape) for w in out]}"
        )
    return out


def _mask_self_of(weights: WeightsLike, mask_self: bool | None) -> bool:
    """The model's own ``mask_self`` unless overridden; False for bare matrices."""
    if mask_self is not None:
        return bool(mask_self)
    return bool(getattr(weights, "mask_self", False))


def _check_dim(w: Tensor, gmm: MultiTokenGMM) -> None:
    if w.shape[-1] != gmm.dim:
        raise ValueError(
            f"weights must be d × d with d = {gmm.dim}, got {tuple(w.shape)}"
        )


# ------------------------------------------------------------------ the infinite-token limit


def _levels(gmm: MultiTokenGMM, alpha_bar: float | Tensor, q: Tensor):
    """Validate; return ``(a, s², means, log π)``, a and s² shaped (..., 1) for ``q``."""
    last_dim(q, gmm.dim, "q")
    ab = leading_broadcast(alpha_bar_tensor(alpha_bar, like=q), q)
    return (
        ab.sqrt(),
        gmm.noise_variance(ab),
        gmm.means.to(q),
        gmm.log_weights.to(q),
    )


def attention_limit(gmm: MultiTokenGMM, alpha_bar: float | Tensor, q: Tensor) -> Tensor:
    """Infinite-token attention output for query rows ``q`` (..., d):

        s² q + a Σ_k ω_k μ_k,   ω = softmax_k(log π_k + a⟨q, μ_k⟩).

    Exact limit for keys i.i.d. from the marginal; derived in :doc:`/book/attention`.
    """
    a, s2, means, log_pi = _levels(gmm, alpha_bar, q)
    omega = torch.softmax(log_pi + a * (q @ means.T), dim=-1)
    return s2 * q + a * (omega @ means)


def layer_limit(
    weights: WeightsLike, gmm: MultiTokenGMM, alpha_bar: float | Tensor, x: Tensor
) -> Tensor:
    """Infinite-token layer output ``x W_S + attention_limit(x W_KQ) W_V`` for rows ``x``
    (..., d); weights as in :func:`as_weights`.
    """
    w_kq, w_v, w_s = as_weights(weights)
    _check_dim(w_kq, gmm)
    last_dim(x, gmm.dim, "x")
    x = x.to(torch.float64)
    return (
        x @ w_s
        + attention_limit(gmm.to(dtype=torch.float64), alpha_bar, x @ w_kq) @ w_v
    )


def _marginal_tokens(gmm: MultiTokenGMM, alpha_bar: float, n: int, generator) -> Tensor:
    """``n`` i.i.d. noisy tokens (n, d) from the marginal at level ᾱ."""
    x0, _ = gmm.sample(n, 1, generator=generator)
    x, _ = add_noise(x0[:, 0], alpha_bar, generator=generator)
    return x


def limit_excess(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_samples: int = 200_000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Monte Carlo ``E‖layer_limit(x) − ε*(x)‖²`` over marginal tokens, with a standard
    error: the L = ∞ excess risk (:doc:`/book/attention`).
    """
    n_samples = positive_int(n_samples, "n_samples")
    ab = single_level(alpha_bar)
    g64 = gmm.to(dtype=torch.float64)
    parts, done = [], 0
    while done < n_samples:
        x = _marginal_tokens(g64, ab, min(_BATCH, n_samples - done), generator)
        gap = layer_limit(weights, g64, ab, x) - oracle_eps(g64, x, ab)
        parts.append((gap**2).sum(-1))
        done += x.shape[0]
    return mean_stderr(torch.cat(parts))


# -------------------------------------------------------------------- the ESS fraction


def ess_fraction(gmm: MultiTokenGMM, alpha_bar: float | Tensor, q: Tensor) -> Tensor:
    """Population ESS per key ``(E e^{⟨q,x⟩})² / E e^{2⟨q,x⟩}``, shape ``q.shape[:-1]``:

        exp(−s²‖q‖²) · (Σ_k π_k e^{a⟨q,μ_k⟩})² / Σ_k π_k e^{2a⟨q,μ_k⟩}

    (exact; :doc:`/book/attention`).
    """
    a, s2, means, log_pi = _levels(gmm, alpha_bar, q)
    qm = q @ means.T
    log_frac = (
        -s2[..., 0] * (q**2).sum(-1)
        + 2 * torch.logsumexp(log_pi + a * qm, -1)
        - torch.logsumexp(log_pi + 2 * a * qm, -1)
    )
    return log_frac.exp()


# ------------------------------------------------------------ finite-token fluctuations


def _tilted_terms(gmm: MultiTokenGMM, alpha_bar: float | Tensor, q: Tensor):
    """Delta-method pieces for queries q: limit m (..., d), weights ρ_k (..., K), offsets
    δ_k = a μ_k + 2 s² q − m (..., K, d), log E e^{⟨q,x⟩} (...,) and s² (..., 1).
    """
    a, s2, means, log_pi = _levels(gmm, alpha_bar, q)
    qm = q @ means.T
    t = log_pi + a * qm
    lse = torch.logsumexp(t, -1, keepdim=True)
    q2 = (q**2).sum(-1, keepdim=True)
    m = s2 * q + a * (torch.softmax(t, -1) @ means)
    rho = (log_pi + 2 * a * qm + s2 * q2 - 2 * lse).exp()
    delta = a[..., None] * means + (2 * s2 * q - m)[..., None, :]
    log_z = (lse + s2 * q2 / 2)[..., 0]
    return m, rho, delta, log_z, s2


def attention_fluctuation(
    gmm: MultiTokenGMM,
    alpha_bar: float | Tensor,
    q: Tensor,
    value_map: Tensor | None = None,
) -> Tensor:
    """``tr(W_Vᵀ Σ_q W_V)``, Σ_q the asymptotic covariance of the attention output:

        Σ_q = Σ_k ρ_k [s² I + δ_k δ_kᵀ],  δ_k = a μ_k + 2 s² q − m_q,
        ρ_k = π_k e^{2a⟨q,μ_k⟩ + 2s²‖q‖²} / (Σ_l π_l e^{a⟨q,μ_l⟩ + s²‖q‖²/2})².

    Shape ``q.shape[:-1]``; ``value_map`` is W_V (d, d_out), identity when None. Asymptotic in
    L (delta method); derived in :doc:`/book/attention`.
    """
    _, rho, delta, _, s2 = _tilted_terms(gmm, alpha_bar, q)
    if value_map is None:
        spread = (delta**2).sum(-1)
        frob2 = gmm.dim
    else:
        value_map = value_map.to(q)
        if value_map.ndim != 2 or value_map.shape[0] != gmm.dim:
            raise ValueError(f"value_map must be (d, d_out) with d = {gmm.dim}")
        spread = ((delta @ value_map) ** 2).sum(-1)
        frob2 = (value_map**2).sum()
    return (rho * (s2 * frob2 + spread)).sum(-1)


def attention_bias(
    gmm: MultiTokenGMM,
    alpha_bar: float | Tensor,
    q: Tensor,
    query_token: Tensor | None = None,
) -> Tensor:
    """β (..., d) with ``E[attention output] − m_q = β/n + O(1/n²)`` for n i.i.d. keys:

        β = −Σ_k ρ_k δ_k  [+ e^{⟨q,x_i⟩}(x_i − m_q) / E e^{⟨q,x⟩} if ``query_token`` x_i is a key]

    (notation of :func:`attention_fluctuation`; :doc:`/book/gap`, :doc:`/book/convergence`).
    """
    m, rho, delta, log_z, _ = _tilted_terms(gmm, alpha_bar, q)
    beta = -(rho[..., None] * delta).sum(-2)
    if query_token is None:
        return beta
    if query_token.shape != q.shape:
        raise ValueError(
            f"query_token must have the shape of q {tuple(q.shape)}, got {tuple(query_token.shape)}"
        )
    query_token = query_token.to(q)
    return beta + ((q * query_token).sum(-1) - log_z).exp()[..., None] * (
        query_token - m
    )


def variance_exponent(w_kq: Tensor, gmm: MultiTokenGMM, alpha_bar: float) -> float:
    """κ = 2 s⁴ σ_max(W_KQ)²: the 1/L constant is finite iff κ < 1, its Monte Carlo
    estimate has finite variance iff κ < 1/2 (:doc:`/book/convergence`, *Finitely many tokens*).
    """
    w = torch.as_tensor(w_kq).detach().to(torch.float64)
    if w.ndim != 2:
        raise ValueError("w_kq must be one (d, d) matrix")
    s2 = gmm.noise_variance(single_level(alpha_bar)).item()
    return 2 * s2**2 * torch.linalg.matrix_norm(w, ord=2).item() ** 2


@dataclass(frozen=True)
class TokenExpansion:
    """First-order expansion of a fixed layer's excess in n = L − 1 keys per query:

        excess(L) ≈ limit + (variance + bias) / n,

    ``limit`` = E‖g‖² with g = layer_limit − ε*, ``variance`` = E tr(W_Vᵀ Σ_q W_V), ``bias`` =
    2 E⟨g, β W_V⟩; ``kappa`` is :func:`variance_exponent` (for κ ≥ 1 variance = ∞, bias =
    NaN) and ``covariance`` that of the three Monte Carlo means. Asymptotic in L; derived in
    :doc:`/book/convergence`, *Finitely many tokens*.
    """

    limit: float
    variance: float
    bias: float
    covariance: Tensor
    kappa: float
    n_samples: int
    mask_self: bool

    @property
    def slope(self) -> float:
        """The 1/n coefficient ``variance + bias`` (∞ when κ ≥ 1)."""
        return self.variance + self.bias if self.kappa < 1 else math.inf

    def _keys(self, n_tokens) -> Tensor:
        n_tokens = torch.as_tensor(n_tokens, dtype=torch.float64)
        if bool((n_tokens < 2).any()):
            raise ValueError(
                "n_tokens must be >= 2 (the expansion is in the L − 1 other keys)"
            )
        return n_tokens - 1

    def excess(self, n_tokens: int | Tensor) -> Tensor:
        """Predicted excess at L = ``n_tokens`` (int or tensor, ≥ 2)."""
        return self.limit + self.slope / self._keys(n_tokens)

    def stderr(self, n_tokens: int | Tensor) -> Tensor:
        """Monte Carlo standard error of :meth:`excess`."""
        k = 1 / self._keys(n_tokens)
        if self.kappa >= 1:
            return torch.full_like(k, math.inf)
        c = torch.stack([torch.ones_like(k), k, k], -1)
        return (
            torch.einsum("...i,ij,...j->...", c, self.covariance, c).clamp_min(0).sqrt()
        )

    def tokens_needed(self, target: float) -> int:
        """Smallest L with predicted excess ≤ ``target``.

        Raises:
            ValueError: if target ≤ limit, or κ ≥ 1.
        """
        if target <= self.limit:
            raise ValueError(
                f"target must exceed the L = ∞ excess {self.limit:.4g}: more tokens cannot "
                "remove the limit's own bias"
            )
        if self.kappa >= 1:
            raise ValueError(
                f"the 1/L constant is infinite (kappa = {self.kappa:.3g} >= 1)"
            )
        if self.slope <= 0:
            return 2
        return 1 + max(1, math.ceil(self.slope / (target - self.limit)))


def token_expansion(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_samples: int = 200_000,
    generator: torch.Generator | None = None,
    mask_self: bool | None = None,
) -> TokenExpansion:
    """Monte Carlo estimate of the :class:`TokenExpansion` of fixed weights, over query
    tokens from the marginal; ``mask_self`` defaults to the model's own.
    """
    n_samples = positive_int(n_samples, "n_samples")
    ab = single_level(alpha_bar)
    mask = _mask_self_of(weights, mask_self)
    w_kq, w_v, w_s = as_weights(weights)
    _check_dim(w_kq, gmm)
    if w_kq.ndim != 2:
        raise ValueError("token_expansion needs one layer's (d, d) matrices")
    kappa = variance_exponent(w_kq, gmm, ab)
    g64 = gmm.to(dtype=torch.float64)
    parts, done = [], 0
    while done < n_samples:
        x = _marginal_tokens(g64, ab, min(_BATCH, n_samples - done), generator)
        q = x @ w_kq
        g = layer_limit((w_kq, w_v, w_s), g64, ab, x) - oracle_eps(g64, x, ab)
        variance = attention_fluctuation(g64, ab, q, w_v)
        beta = attention_bias(g64, ab, q, None if mask else x)
        bias = 2 * (g * (beta @ w_v)).sum(-1)
        parts.append(torch.stack([(g**2).sum(-1), variance, bias], -1))
        done += x.shape[0]
    values = torch.cat(parts)
    mean = values.mean(0).tolist()
    cov = torch.cov(values.T).reshape(3, 3) / n_samples
    if kappa >= 1:
        mean[1:] = [math.inf, math.nan]
    return TokenExpansion(*mean, cov, kappa, n_samples, mask_self=mask)


@torch.no_grad()
# ------------------------------------------------------------------------ scores


def score_matching_error(excess: float | Tensor, alpha_bar: float | Tensor) -> Tensor:
    """``E‖s_θ − ∇ log p_t‖² = excess / b²`` for the score ``s_θ = −f/b`` (Tweedie;
    :doc:`/book/tokens`).

    Raises:
        ValueError: if ᾱ = 1, where the score is undefined.
    """
    ab = alpha_bar_tensor(alpha_bar)
    if bool((ab >= 1).any()):
        raise ValueError(
            "alpha_bar must be < 1: at ᾱ = 1 (b = 0) the score is undefined"
        )
    return torch.as_tensor(excess, dtype=ab.dtype) / (1 - ab)
