"""The Bayes-optimal (oracle) denoiser and the Bayes risk (derived in :doc:`/book/mixture`).

For a noisy token x at level ᾱ, ``a = √ᾱ``, ``b = √(1-ᾱ)``, ``s² = a²σ0² + b²``:

* ``w_k(x) = softmax_k( log π_k − ‖x − a μ_k‖² / (2 s²) )``,
* ``E[x0 | x] = m + (a σ0² / s²)(x − a m)`` with ``m(x) = Σ_k w_k(x) μ_k``,
* ``ε*(x) = E[ε | x] = (b / s²)(x − a m(x))``.

``x_t`` is (..., d); ``alpha_bar`` a float in (0, 1] or a tensor broadcastable over
``x_t.shape[:-1]``.
"""

from __future__ import annotations

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
from .mixture import MultiTokenGMM, add_noise


def _levels(gmm: MultiTokenGMM, x_t: Tensor, alpha_bar: float | Tensor):
    """Validate inputs; return ``(a, b, s², means)`` shaped to broadcast against ``x_t``."""
    last_dim(x_t, gmm.dim)
    ab = leading_broadcast(alpha_bar_tensor(alpha_bar, like=x_t), x_t)
    return ab.sqrt(), (1 - ab).sqrt(), gmm.noise_variance(ab), gmm.means.to(x_t)


def _posterior_logits(gmm, x_t, a, s2, means) -> Tensor:
    # −‖x − aμ_k‖²/(2s²) up to a k-independent term: (a⟨x, μ_k⟩ − a²‖μ_k‖²/2) / s².
    # Where s² = 0 (σ0 = 0, ᾱ = 1) the posterior is a hard assignment; any tiny s² gives it.
    s2 = torch.where(s2 > 0, s2, torch.finfo(s2.dtype).eps)
    scores = a * (x_t @ means.T) - 0.5 * a**2 * (means**2).sum(-1)
    return gmm.log_weights.to(x_t) + scores / s2


def posterior_weights(
    gmm: MultiTokenGMM, x_t: Tensor, alpha_bar: float | Tensor
) -> Tensor:
    """w_k(x_t) = P(z = k | x_t), shape ``x_t.shape[:-1] + (K,)``
    (`Mixture <../mixture.html#the-oracle-denoiser>`__).
    """
    a, _, s2, means = _levels(gmm, x_t, alpha_bar)
    return torch.softmax(_posterior_logits(gmm, x_t, a, s2, means), dim=-1)


def _posterior_cluster_mean(gmm, x_t, a, s2, means) -> Tensor:
    """m(x) = Σ_k w_k(x) μ_k."""
    return torch.softmax(_posterior_logits(gmm, x_t, a, s2, means), dim=-1) @ means


def oracle_x0(gmm: MultiTokenGMM, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """E[x0 | x_t] = m + (a σ0² / s²)(x_t − a m), shape of ``x_t``
    (`Mixture <../mixture.html#the-oracle-denoiser>`__).
    """
    a, _, s2, means = _levels(gmm, x_t, alpha_bar)
    m = _posterior_cluster_mean(gmm, x_t, a, s2, means)
    # where s² = 0 we have a = 1 and x0 = x_t exactly, which the coefficient 1/a gives
    shrink = torch.where(s2 > 0, a * gmm.sigma0**2 / torch.where(s2 > 0, s2, 1), 1 / a)
    return m + shrink * (x_t - a * m)


def oracle_eps(gmm: MultiTokenGMM, x_t: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """ε*(x_t) = E[ε | x_t] = (b / s²)(x_t − a m(x_t)), shape of ``x_t``
    (`Mixture <../mixture.html#the-oracle-denoiser>`__).
    """
    a, b, s2, means = _levels(gmm, x_t, alpha_bar)
    m = _posterior_cluster_mean(gmm, x_t, a, s2, means)
    gain = torch.where(s2 > 0, b / torch.where(s2 > 0, s2, 1), 0)
    return gain * (x_t - a * m)


@dataclass(frozen=True)
class RiskEstimates:
    """Estimates of the per-token Bayes risk R*_t = E‖ε − ε*(x_t)‖², one entry per ᾱ:
    ``exact`` off the span of the means; inside it the Monte Carlo means ``direct`` of
    ‖ε − ε*‖², ``identity`` of ``m − ‖ε*‖²``, ``conditional`` of ``tr Cov(ε | x_t)``, and their
    minimum-variance ``combined``, each with ``*_stderr``.
    """

    alpha_bar: Tensor
    exact: Tensor
    direct: Tensor
    direct_stderr: Tensor
    identity: Tensor
    identity_stderr: Tensor
    conditional: Tensor
    conditional_stderr: Tensor
    combined: Tensor
    combined_stderr: Tensor
    n_samples: int

    @property
    def estimate(self) -> Tensor:
        """``exact + combined``."""
        return self.exact + self.combined


def _posterior_variance(span_gmm: MultiTokenGMM, x_t: Tensor, ab: Tensor) -> Tensor:
    """tr Cov(ε | x_t) = m a²σ0²/s² + (a b / s²)² Σ_k w_k ‖μ_k − m(x_t)‖²."""
    a, b, s2, means = _levels(span_gmm, x_t, ab)
    w = torch.softmax(_posterior_logits(span_gmm, x_t, a, s2, means), dim=-1)
    centred = means - (w @ means)[..., None, :]  # μ_k − m(x_t), kept apart for accuracy
    spread = (w * (centred**2).sum(-1)).sum(-1)
    ok = s2[..., 0] > 0
    s2 = torch.where(ok, s2[..., 0], 1.0)
    a, b, m = a[..., 0], b[..., 0], span_gmm.dim
    within = m * a**2 * span_gmm.sigma0**2 / s2
    return torch.where(ok, within + (a * b / s2) ** 2 * spread, float(m))


def _risk_moments(span_gmm, alpha_bar, n_samples, generator, batch_size):
    """Means (3, A) and covariances (3, 3, A) of D = ‖ε−ε*‖², I = m − ‖ε*‖², V = tr Cov(ε | x_t)
    per ᾱ, on shared x0 and ε (sums around the first batch's means).
    """
    m, n_levels = span_gmm.dim, alpha_bar.numel()
    ab = alpha_bar[:, None]
    shift, first, second = None, 0.0, 0.0
    done = 0
    while done < n_samples:
        nb = min(batch_size, n_samples - done)
        x0, _ = span_gmm.sample(nb, 1, generator=generator)
        x_t, eps = add_noise(x0[:, 0].expand(n_levels, nb, m), ab, generator=generator)
        eps_star = oracle_eps(span_gmm, x_t, ab)
        values = torch.stack(
            [
                ((eps - eps_star) ** 2).sum(-1),
                m - (eps_star**2).sum(-1),
                _posterior_variance(span_gmm, x_t, ab),
            ]
        )  # (3, A, nb)
        if shift is None:
            shift = values.mean(-1, keepdim=True)
        centred = values - shift
        first = first + centred.sum(-1)
        second = second + torch.einsum("ian,jan->ija", centred, centred)
        done += nb
    mean = first / n_samples
    cov = second / n_samples - mean[:, None] * mean[None, :]
    return mean + shift[..., 0], cov


def _best_combination(mean_x, mean_y, var_x, var_y, cov):
    """Minimum-variance unbiased combination λ x + (1 − λ) y; returns (mean, variance)."""
    denom = var_x + var_y - 2 * cov
    safe = denom > 1e-300
    lam = torch.where(safe, (var_y - cov) / torch.where(safe, denom, 1.0), 0.5).clamp(
        0, 1
    )
    var = lam**2 * var_x + (1 - lam) ** 2 * var_y + 2 * lam * (1 - lam) * cov
    return lam * mean_x + (1 - lam) * mean_y, var.clamp_min(0)


def bayes_risk_estimates(
    gmm: MultiTokenGMM,
    alpha_bar: float | Tensor,
    n_samples: int = 200_000,
    generator: torch.Generator | None = None,
    batch_size: int = 2**16,
) -> RiskEstimates:
    """All estimators of R*_t for ``alpha_bar`` of shape (A,), sharing random numbers:

        R* = (d − m)(1 − b²/s²) + [Monte Carlo over the span of the means],

    inside the span by ``E‖ε − ε*‖² = m − E‖ε*‖² = E tr Cov(ε | x_t)``
    (`Mixture <../mixture.html#the-bayes-risk>`__).
    """
    n_samples = positive_int(n_samples, "n_samples")
    batch_size = positive_int(batch_size, "batch_size")
    ab = alpha_bar_tensor(alpha_bar).to(torch.float64).flatten()
    if ab.numel() == 0:
        raise ValueError("alpha_bar must hold at least one value")
    s2 = gmm.noise_variance(ab)
    perp_per_dim = torch.where(s2 > 0, 1 - (1 - ab) / torch.where(s2 > 0, s2, 1), 1.0)
    basis = gmm.span_basis().to(torch.float64)
    m = basis.shape[0]
    exact = (gmm.dim - m) * perp_per_dim
    if m == 0:
        zero = torch.zeros_like(ab)
        return RiskEstimates(ab, exact, *[zero] * 8, n_samples)
    span_gmm = MultiTokenGMM(
        gmm.means.to(torch.float64) @ basis.T, gmm.weights, gmm.sigma0
    )
    per_batch = max(1, batch_size // ab.numel())
    mean, cov = _risk_moments(span_gmm, ab, n_samples, generator, per_batch)
    var = torch.diagonal(cov).T.clamp_min(0)  # (3, A)
    combined, combined_var = _best_combination(
        mean[2], mean[1], var[2], var[1], cov[2, 1]
    )
    se = ((torch.cat([var, combined_var[None]])) / n_samples).sqrt()
    return RiskEstimates(
        alpha_bar=ab,
        exact=exact,
        direct=mean[0],
        direct_stderr=se[0],
        identity=mean[1],
        identity_stderr=se[1],
        conditional=mean[2],
        conditional_stderr=se[2],
        combined=combined,
        combined_stderr=se[3],
        n_samples=n_samples,
    )


def bayes_risk(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_samples: int = 200_000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Per-token Bayes risk R*_t = E‖ε − E[ε | x_t]‖² at one ᾱ, with a standard error (the
    ``estimate`` of :func:`bayes_risk_estimates`).
    """
    ab = torch.tensor([single_level(alpha_bar)], dtype=torch.float64)
    est = bayes_risk_estimates(gmm, ab, n_samples, generator)
    return est.estimate.item(), est.combined_stderr.item()
