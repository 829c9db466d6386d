"""Theory toolkit: the infinite-token limit of attention, its finite-token corrections, the
invariant subspace and the convergence bounds (chapters *Self-attention as a mean
denoiser*, *Tokens per data point*, *Training dynamics* and *The convergence theorem*).

Notation: at level ᾱ a noisy token is drawn from the marginal ``Σ_k π_k N(a μ_k, s² I)``,
``a = √ᾱ``, ``b = √(1−ᾱ)``, ``s² = a²σ0² + b²``. Rows are tokens; a query row is
``q = x W_KQ``; keys and values are the tokens themselves (values then multiplied by W_V).

The one identity everything rests on is the moment generating function of a Gaussian
component, ``E_k e^{⟨v,x⟩} = exp(a⟨v, μ_k⟩ + s²‖v‖²/2)``, and its tilting property: the law
``e^{⟨v,x⟩} N(a μ_k, s² I) / E_k e^{⟨v,x⟩}`` is ``N(a μ_k + s² v, s² I)``.

Which statements are exact and which asymptotic is said in each docstring.
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
    SymmetricBasis,
    attend,
)
from .mixture import MultiTokenGMM, add_noise
from .objective import noisy_batch
from .oracle import oracle_eps
from .stats import mean_stderr

WeightsLike = (
    AttentionDenoiser | AttentionBank | Sequence[Tensor] | Mapping[str, Tensor]
)
_BATCH = 2**15  # marginal tokens per Monte Carlo chunk


# ----------------------------------------------------------------------------- weights


def as_weights(weights: WeightsLike) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_KQ, W_V, W_S)`` in float64, detached, from a model (denoiser or bank), a
    sequence of three matrices in that order, or a mapping with those names (such as
    ``model.weights()``). Matrices may carry leading batch dims, e.g. a bank's (T, d, d)."""
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
    """Validate; return ``(a, s², means, log π)``, with a and s² shaped (..., 1) for ``q``."""
    last_dim(q, gmm.dim, "q")
    ab = leading_broadcast(alpha_bar_tensor(alpha_bar, like=q), q)
    return (
        ab.sqrt(),
        gmm.noise_variance(ab),
        gmm.means.to(q),
        gmm.log_weights.to(q),
    )


def attention_limit(gmm: MultiTokenGMM, alpha_bar: float | Tensor, q: Tensor) -> Tensor:
    """The infinite-token attention output for query rows ``q`` (..., d) (exact limit).

    With keys x_j i.i.d. from the marginal, the law of large numbers applied to numerator
    and denominator gives ``Σ_j softmax_j(⟨q, x_j⟩) x_j → E[e^{⟨q,x⟩} x] / E[e^{⟨q,x⟩}]``
    almost surely. Component k contributes ``π_k Z_k (a μ_k + s² q)`` with
    ``Z_k = exp(a⟨q, μ_k⟩ + s²‖q‖²/2)`` (tilting), and the factor ``exp(s²‖q‖²/2)`` is common
    to every k, so for any means and weights

        limit = s² q + a Σ_k ω_k μ_k,   ω = softmax_k(log π_k + a⟨q, μ_k⟩).

    ``alpha_bar`` is a float or a tensor broadcastable over ``q.shape[:-1]``.
    """
    a, s2, means, log_pi = _levels(gmm, alpha_bar, q)
    omega = torch.softmax(log_pi + a * (q @ means.T), dim=-1)
    return s2 * q + a * (omega @ means)


def layer_limit(
    weights: WeightsLike, gmm: MultiTokenGMM, alpha_bar: float | Tensor, x: Tensor
) -> Tensor:
    """The layer's infinite-token output for token rows ``x`` (..., d):
    ``x W_S + attention_limit(x W_KQ) W_V`` (exact limit, keys i.i.d. from the marginal).

    ``weights`` is a model or ``(W_KQ, W_V, W_S)`` (see :func:`as_weights`); matrices with
    leading dims broadcast against ``x`` as in ``x @ W``.
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
    """The L = ∞ excess risk ``E‖layer_limit(x) − ε*(x)‖²`` over marginal tokens x, by Monte
    Carlo, with a standard error. It is 0 for ``mean_denoising_weights`` whenever the means
    have equal norms (orthogonality is not needed at L = ∞; any π): then ω is the oracle
    posterior w (chapter *Self-attention as a mean denoiser*)."""
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


# ------------------------------------------------------------- effective sample size


def effective_sample_size(attn: Tensor) -> Tensor:
    """Kish's effective sample size ``(Σ_j A_ij)² / Σ_j A_ij²`` of each row of attention
    weights (sum over the last axis; a (…, L, L) attention matrix gives one value per query).
    It is L for uniform weights and 1 when one key takes all the weight."""
    if attn.ndim < 1 or attn.shape[-1] < 1:
        raise ValueError(
            f"attn must have a non-empty last axis (keys), got {tuple(attn.shape)}"
        )
    return attn.sum(-1) ** 2 / (attn**2).sum(-1)


def ess_fraction(gmm: MultiTokenGMM, alpha_bar: float | Tensor, q: Tensor) -> Tensor:
    """Population ESS per key, ``(E e^{⟨q,x⟩})² / E e^{2⟨q,x⟩}`` (exact), shape ``q.shape[:-1]``.

    By the mixture moment generating function,

        ESS/L → exp(−s²‖q‖²) · (Σ_k π_k e^{a⟨q,μ_k⟩})² / Σ_k π_k e^{2a⟨q,μ_k⟩}.

    The second factor lies in (0, 1] (Cauchy–Schwarz). For one component it is 1; for a
    query near cluster k at high SNR it is about π_k (only that cluster's keys count). So
    with ``W_KQ = cP`` the ESS is about ``L π_k exp(−c² s² ‖P x‖²)``: exponentially small in
    SNR² at the oracle temperature c = 1/s² (chapter *Self-attention as a mean denoiser*).
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
    """Pieces of the delta method for query rows q: the limit m (..., d), the relative
    second-moment weights ρ_k = π_k E_k e^{2⟨q,x⟩} / (E e^{⟨q,x⟩})² (..., K), the offsets
    δ_k = a μ_k + 2 s² q − m (..., K, d) of the 2q-tilted component means, log E e^{⟨q,x⟩}
    (...,) and s² (..., 1)."""
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
    """Trace of the asymptotic covariance of the attention output (asymptotic, L → ∞).

    For n i.i.d. keys, self-normalised importance sampling obeys the CLT
    ``√n (Σ_j softmax_j(⟨q,x_j⟩) x_j − m_q) → N(0, Σ_q)`` with
    ``Σ_q = E[w² (x − m_q)(x − m_q)ᵀ] / (E w)²``, ``w = e^{⟨q,x⟩}`` (delta method). For the
    mixture, the 2q-tilted component k is ``N(a μ_k + 2 s² q, s² I)``, so

        Σ_q = Σ_k ρ_k [s² I + δ_k δ_kᵀ],  δ_k = a μ_k + 2 s² q − m_q,
        ρ_k = π_k e^{2a⟨q,μ_k⟩ + 2s²‖q‖²} / (Σ_l π_l e^{a⟨q,μ_l⟩ + s²‖q‖²/2})²

    (Σ_k ρ_k = 1 / ess_fraction). Returns ``tr(W_Vᵀ Σ_q W_V)`` of shape ``q.shape[:-1]``,
    with ``W_V = value_map`` (d × d_out; identity when None).
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
    """The O(1/n) bias of the attention output (asymptotic): with n i.i.d. keys,
    ``E[Σ_j softmax_j x_j] − m_q = β/n + O(1/n²)``; returns β (..., d).

    Expanding the ratio N̄/D̄ of sample means to second order (delta method) gives the
    self-normalisation bias ``−E[w²(x − m_q)]/(E w)² = −Σ_k ρ_k δ_k`` (notation of
    :func:`attention_fluctuation`). If the query token x_i (``query_token``) is also among
    the keys, as in unmasked self-attention, it adds ``e^{⟨q, x_i⟩}(x_i − m_q) / E e^{⟨q,x⟩}``.
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
    """κ = 2 s⁴ σ_max(W_KQ)², which decides whether the 1/L constant exists (exact).

    With q = x W_KQ the per-query fluctuation obeys
    ``s²‖W_V‖²_F e^{s²‖q‖²} ≤ tr(W_Vᵀ Σ_q W_V) ≤ C(q) e^{s²‖q‖²}`` (C polynomial in q), and
    for x ~ N(a μ_k, s² I), ``E e^{s²‖x W_KQ‖²} < ∞`` iff κ < 1. So for W_V ≠ 0 the expected
    fluctuation E tr(W_Vᵀ Σ_q W_V) is finite iff κ < 1, and its Monte Carlo estimate has
    finite variance iff κ < 1/2. The bias term of :class:`TokenExpansion` is finite for
    κ < 1 as well; for κ ≥ 1 the 1/L constant is reported as infinite (the bias term, of the
    same exponential order, is not shown to cancel). For ``W_KQ = c(P − J)`` or ``cP``,
    κ = 2(c s²)²: finite iff c s² < 1/√2, so never at the oracle temperature c s² = 1,
    where the excess indeed falls more slowly than 1/L (chapter *Self-attention as a mean
    denoiser*).

    Unless the diagonal is masked, the query's own key adds a stricter condition on the Monte
    Carlo *estimate* of the bias term: for ``W_KQ = c(P − J)`` with τ = c s², its self weight
    grows like ``exp((τ − τ²/2)‖z'‖²)`` (z' the standard normal part in the span of P − J), so
    the estimate has finite variance only for τ < 1 − 1/√2 ≈ 0.29 (chapter *The convergence
    theorem*; :mod:`mtgmm.bounds` keeps its temperature grid below it).
    """
    w = torch.as_tensor(w_kq).detach().to(torch.float64)
    if w.ndim != 2:
        raise ValueError("w_kq must be one (d, d) matrix")
    s2 = gmm.noise_variance(single_level(alpha_bar)).item()
    return 2 * s2**2 * torch.linalg.matrix_norm(w, ord=2).item() ** 2


@dataclass(frozen=True)
class TokenExpansion:
    """First-order expansion of a fixed layer's excess risk in the number of keys
    (asymptotic, L → ∞; chapter *Self-attention as a mean denoiser*):

        excess(L) ≈ limit + (variance + bias) / n,   n = L − 1 i.i.d. keys per query.

    ``limit`` = E‖g‖², g = layer_limit − ε*, the L = ∞ excess. ``variance`` =
    E tr(W_Vᵀ Σ_q W_V), the fluctuation of the attention output. ``bias`` = 2 E⟨g, β W_V⟩,
    where β/n ≈ E[attention output − m_q | query] collects the O(1/n) ratio bias of
    self-normalised weights, −E[w²(x − m_q)]/(E w)², and, unless the diagonal is masked,
    the query's own key, e^{⟨q,x_i⟩}(x_i − m_q)/E w. Terms of order 1/n² are dropped, and
    they are small only once L · ESS fraction ≫ 1 for typical queries. ``kappa`` is
    :func:`variance_exponent`; when κ ≥ 1 the constant is infinite (variance = ∞, bias =
    NaN) and the expansion does not apply. ``covariance`` is the covariance of the three
    Monte Carlo means (limit, variance, bias); reliable only for κ < 1/2.
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
        """Predicted excess at ``n_tokens`` = L (int or tensor of ints ≥ 2)."""
        return self.limit + self.slope / self._keys(n_tokens)

    def stderr(self, n_tokens: int | Tensor) -> Tensor:
        """Monte Carlo standard error of :meth:`excess` (the expansion's own error aside)."""
        k = 1 / self._keys(n_tokens)
        if self.kappa >= 1:
            return torch.full_like(k, math.inf)
        c = torch.stack([torch.ones_like(k), k, k], -1)
        return (
            torch.einsum("...i,ij,...j->...", c, self.covariance, c).clamp_min(0).sqrt()
        )

    def tokens_needed(self, target: float) -> int:
        """Smallest L with predicted excess ≤ ``target`` (needs target > limit and κ < 1;
        the answer inherits the expansion's asymptotic nature)."""
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
    """Estimate the :class:`TokenExpansion` of fixed weights by Monte Carlo over query
    tokens (closed forms inside each term). ``mask_self`` defaults to the model's own
    setting (False for bare matrices). Asymptotic in L: accurate when L times the ESS
    fraction of typical queries is large, i.e. at low temperature; see
    :func:`variance_exponent` for when the constant is finite (chapter *Self-attention as a
    mean denoiser*)."""
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
def measured_token_gap(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    n_sequences: int = 1024,
    generator: torch.Generator | None = None,
    mask_self: bool | None = None,
    batch_size: int = 256,
) -> tuple[float, float]:
    """Measured ``excess(L) − limit`` of fixed weights, with a standard error over sequences:
    the per-token mean of ``‖f(X)_l − ε*_l‖² − ‖layer_limit(x_l) − ε*_l‖²`` on the same
    sampled sequences (the L = ∞ term as a control variate, so the finite-L part is seen
    far more precisely than as a difference of two separate estimates). The measurement
    that :class:`TokenExpansion`'s ``slope/(L − 1)`` predicts."""
    n_tokens = positive_int(n_tokens, "n_tokens")
    n_sequences = positive_int(n_sequences, "n_sequences")
    batch_size = positive_int(batch_size, "batch_size")
    ab = single_level(alpha_bar)
    w = as_weights(weights)
    _check_dim(w[0], gmm)
    model = AttentionDenoiser.from_weights(
        *w, mask_self=_mask_self_of(weights, mask_self)
    )
    model = model.double()
    g64 = gmm.to(dtype=torch.float64)
    parts, done = [], 0
    while done < n_sequences:
        x_t, _ = noisy_batch(
            g64, ab, min(batch_size, n_sequences - done), n_tokens, generator
        )
        eps_star = oracle_eps(g64, x_t, ab)
        finite = ((model(x_t) - eps_star) ** 2).sum(-1)
        limit = ((layer_limit(w, g64, ab, x_t) - eps_star) ** 2).sum(-1)
        parts.append((finite - limit).mean(-1))
        done += x_t.shape[0]
    return mean_stderr(torch.cat(parts))


def predicted_excess(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    n_samples: int = 200_000,
    generator: torch.Generator | None = None,
    mask_self: bool | None = None,
) -> tuple[float, float]:
    """First-order prediction of the excess risk of fixed weights at L = ``n_tokens``, with
    its Monte Carlo standard error: ``limit + (variance + bias)/(L − 1)`` from
    :func:`token_expansion` (asymptotic; see there)."""
    exp = token_expansion(weights, gmm, alpha_bar, n_samples, generator, mask_self)
    return exp.excess(n_tokens).item(), exp.stderr(n_tokens).item()


# -------------------------------------------------------------- the invariant subspace


def symmetrize(
    weights: WeightsLike, basis: SymmetricBasis
) -> tuple[Tensor, Tensor, Tensor]:
    """Each matrix projected onto the symmetric matrices αP + βP⊥ + γJ (Frobenius
    projection, the average over the symmetry group; chapter *Training dynamics*)."""
    return tuple(basis.project(w) for w in as_weights(weights))


def reduced_coordinates(weights: WeightsLike, basis: SymmetricBasis) -> Tensor:
    """(…, 3, 3) coordinates of the symmetric parts: rows W_KQ, W_V, W_S; columns α, β, γ
    in ``W = α P + β P⊥ + γ J``. Leading dims of the weights (a bank's T) are kept."""
    return basis.coordinates(torch.stack(as_weights(weights), -3))


def weights_from_coordinates(
    coordinates: Tensor, basis: SymmetricBasis
) -> tuple[Tensor, Tensor, Tensor]:
    """The inverse of :func:`reduced_coordinates`: ``(W_KQ, W_V, W_S)`` from (…, 3, 3)."""
    c = torch.as_tensor(coordinates, dtype=torch.float64)
    if c.ndim < 2 or c.shape[-2:] != (3, 3):
        raise ValueError(
            f"coordinates must have shape (..., 3, 3), got {tuple(c.shape)}"
        )
    mats = basis.compose(c)
    return mats[..., 0, :, :], mats[..., 1, :, :], mats[..., 2, :, :]


def invariance_defect(weights: WeightsLike, basis: SymmetricBasis) -> Tensor:
    """Frobenius norm of the non-symmetric part ``W − project(W)`` of each matrix,
    shape (…, 3) in the order W_KQ, W_V, W_S."""
    w = torch.stack(as_weights(weights), -3)
    return torch.linalg.matrix_norm(w - basis.project(w))


def permutation_isometry(
    gmm: MultiTokenGMM, permutation: Sequence[int], complement: Tensor | None = None
) -> Tensor:
    """An orthogonal Q (d × d, row convention x ↦ xQ) with ``μ_k Q = μ_{σ(k)}``.

    On the span of the means Q is ``M⁺ M_σ``; on the orthogonal complement it acts as the
    orthogonal matrix ``complement`` (size d − rank, in the basis given by the trailing rows
    of the SVD; identity when None). Such a Q exists only when the Gram matrix of the means
    is invariant under σ (e.g. orthogonal, equal-norm means); otherwise ValueError. Both
    properties are checked to 1e-6 relative, so Q is as exact as the means are.
    """
    means = gmm.means.to(torch.float64)
    perm = torch.as_tensor(list(permutation), dtype=torch.long)
    if sorted(perm.tolist()) != list(range(gmm.n_clusters)):
        raise ValueError(
            f"permutation must reorder 0 … {gmm.n_clusters - 1}, got {perm}"
        )
    span = gmm.span_basis().to(torch.float64)  # (m, d)
    eye = torch.eye(gmm.dim, dtype=torch.float64)
    rest = (
        torch.linalg.svd(span, full_matrices=True)[2][span.shape[0] :]
        if len(span)
        else eye
    )
    if complement is None:
        complement = torch.eye(rest.shape[0], dtype=torch.float64)
    complement = torch.as_tensor(complement, dtype=torch.float64)
    if complement.shape != (rest.shape[0],) * 2:
        raise ValueError(f"complement must be ({rest.shape[0]}, {rest.shape[0]})")
    q = torch.linalg.pinv(means) @ means[perm] + rest.T @ complement @ rest
    # checked to 1e-6 (relative), so that means rounded to float32 still qualify
    tol = 1e-6 * max(1.0, means.abs().max().item())
    orthogonal = torch.allclose(q @ q.T, eye, atol=1e-6)
    if not (orthogonal and torch.allclose(means @ q, means[perm], atol=tol)):
        raise ValueError(
            "no orthogonal map permutes these means this way (their Gram matrix is not "
            "invariant under the permutation), or complement is not orthogonal"
        )
    return q


# ---------------------------------------------------------------- convergence bounds


def score_matching_error(excess: float | Tensor, alpha_bar: float | Tensor) -> Tensor:
    """Score-matching error ``E‖s_θ − ∇ log p_t‖² = excess / b²`` of the score
    ``s_θ = −f/b`` (exact: Tweedie, ∇ log p_t = −ε*/b; chapter *DDPM in one chapter*)."""
    ab = alpha_bar_tensor(alpha_bar)
    if bool((ab >= 1).any()):
        raise ValueError(
            "alpha_bar must be < 1: at ᾱ = 1 (b = 0) the score is undefined"
        )
    return torch.as_tensor(excess, dtype=ab.dtype) / (1 - ab)


def orthonormal_symmetric_basis(basis: SymmetricBasis) -> Tensor:
    """(m, d, d): J, (P − J)/‖P − J‖_F, P⊥/‖P⊥‖_F, Frobenius-orthonormal, zero ones left
    out (m ≤ 3). Gradient descent on full matrices that stays in the invariant subspace is
    gradient descent in these coordinates, so their Hessian is the one that sets its rate."""
    mats = torch.stack([basis.J, basis.P - basis.J, basis.P_perp])
    norms = torch.linalg.matrix_norm(mats)
    keep = norms > 1e-9
    return mats[keep] / norms[keep][:, None, None]


def readout_hessian(
    w_kq: Tensor,
    x_t: Tensor,
    basis: SymmetricBasis | None = None,
    mask_self: bool = False,
) -> Tensor:
    """Hessian of the empirical DDPM loss (mean over tokens of ‖f − ε‖², exactly quadratic)
    in the readout ``(W_V, W_S)`` for fixed ``W_KQ``, on the samples ``x_t`` (n, L, d); it
    does not depend on ε.

    With features φ = [A, x] per token (A = softmax(x W_KQ Xᵀ) X, the attention output
    before W_V), the loss is ``mean ‖φ [W_V; W_S] − ε‖²``. With ``basis=None`` returns
    ``H = 2 mean φφᵀ`` (2d × 2d): the full Hessian is ``H ⊗ I_d`` (same eigenvalues). With a
    :class:`~mtgmm.attention.SymmetricBasis`, returns the (2m × 2m) Hessian in the
    Frobenius-orthonormal coordinates of :func:`orthonormal_symmetric_basis`, W_V's
    coordinates first. Its extreme eigenvalues are the strong convexity μ and smoothness of
    :func:`gd_iterations` (chapter *The convergence theorem*).
    """
    if x_t.ndim != 3:
        raise ValueError(f"x_t must have shape (n, L, d), got {tuple(x_t.shape)}")
    d = x_t.shape[-1]
    if tuple(w_kq.shape) != (d, d):
        raise ValueError(
            f"w_kq must have shape (d, d) = {(d, d)}, got {tuple(w_kq.shape)}"
        )
    if mask_self and x_t.shape[1] < 2:
        raise ValueError("mask_self needs at least 2 tokens per sequence (L >= 2)")
    x = x_t.to(torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    feats = torch.stack([attend(x, w_kq.to(x), eye, mask_self), x], -2)  # (n, L, 2, d)
    n_rows = x.shape[0] * x.shape[1]
    if basis is None:
        phi = feats.reshape(n_rows, 2 * d)
        return 2 * phi.T @ phi / n_rows
    e = orthonormal_symmetric_basis(basis).to(x)
    psi = torch.einsum("nlvd,mde->nlvme", feats, e).flatten(2, 3)  # (n, L, 2m, d)
    return 2 * torch.einsum("nlae,nlbe->ab", psi, psi) / n_rows


def gd_iterations(
    excess0: float,
    target: float,
    smoothness: float,
    strong_convexity: float,
    step: float,
    quadratic: bool = False,
) -> int:
    """Iterations of gradient descent that guarantee ``f(θ_k) − f* ≤ target`` from
    ``f(θ_0) − f* = excess0`` (a rigorous bound; chapter *The convergence theorem*).

    General μ-strongly convex, ℓ-smooth f, step η ∈ (0, 1/ℓ]: ``f(θ_k) − f* ≤ (1 − ημ)^k
    (f(θ_0) − f*)``, so ``k = ⌈log(excess0/target) / (−log(1 − ημ))⌉``.

    ``quadratic=True`` (the readout loss for fixed W_KQ, Hessian H with spectrum in
    [μ, ℓ]): the error contracts by ``ρ = max(|1 − ημ|, |1 − ηℓ|)`` per step and f − f* by
    ρ², for any η ∈ (0, 2/ℓ); ``k = ⌈log(excess0/target) / (−2 log ρ)⌉``. Here f* is the
    minimum of that quadratic (the best readout for this W_KQ), not the Bayes risk.
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
