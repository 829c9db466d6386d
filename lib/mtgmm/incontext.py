"""Means drawn afresh for each sequence (derived in :doc:`When the means change with each
sequence <../incontext>`).

A sequence draws a frame ``F = [R μ_1 … R μ_K]`` (R Haar on O(d), or a sign per mean), then
its tokens from ``Σ_k π_k N(F_k, σ0² I)``. :func:`known_means_eps` is the oracle given F;
the Bayes estimator ``E[ε_l | X_t]`` averages it over the posterior of F
(:func:`frame_posterior_eps` for finitely many frames, :func:`bayes_eps` over R).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import alpha_bar_tensor, last_dim, positive_int
from .mixture import MultiTokenGMM

GROUPS = ("orthogonal", "sign")


def haar_orthogonal(
    n: int, dim: int, generator: torch.Generator | None = None, dtype=None
) -> Tensor:
    """``n`` Haar matrices on O(d), (n, d, d): the sign-fixed Q factor of a Gaussian matrix
    (Mezzadri 2007), in float64.
    """
    n, dim = positive_int(n, "n"), positive_int(dim, "dim")
    device = generator.device if generator is not None else "cpu"
    g = torch.randn(
        n, dim, dim, generator=generator, dtype=torch.float64, device=device
    )
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return q.to(dtype or torch.get_default_dtype())


class RotatedGMM(MultiTokenGMM):
    """A :class:`~mtgmm.mixture.MultiTokenGMM` with a fresh map g per sequence: frame ``F = μ gᵀ``,
    g Haar on O(d) (``group="orthogonal"``) or a sign per mean (``group="sign"``). ``means``
    stays the reference μ, so built-in excess risks are against the fixed-means oracle.
    """

    def __init__(self, means, weights=None, sigma0: float = 0.0, group="orthogonal"):
        super().__init__(means, weights, sigma0)
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        self.group = group

    @classmethod
    def orthogonal(cls, n_clusters, dim, radius, sigma0=0.0, seed=0, dtype=None):
        """As :meth:`mtgmm.mixture.MultiTokenGMM.orthogonal`, with Haar frames per sequence."""
        base = MultiTokenGMM.orthogonal(n_clusters, dim, radius, sigma0, seed, dtype)
        return cls(base.means, base.weights, base.sigma0)

    def fixed(self) -> MultiTokenGMM:
        """The book's mixture with the reference means μ for every sequence."""
        return MultiTokenGMM(self.means, self.weights, self.sigma0)

    def to(self, device=None, dtype=None) -> RotatedGMM:
        means = self.means.to(device=device, dtype=dtype)
        return RotatedGMM(means, self.weights.to(means), self.sigma0, self.group)

    def draw_frames(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` frames ``F = μ gᵀ`` of shape ``(n, K, d)``."""
        n = positive_int(n, "n")
        device = self.means.device if generator is None else generator.device
        means = self.means.to(device)
        if self.group == "sign":
            flips = torch.randint(
                0, 2, (n, self.n_clusters, 1), generator=generator, device=device
            )
            return means * (2 * flips - 1).to(means)
        g = haar_orthogonal(n, self.dim, generator, means.dtype).to(device)
        return means @ g.transpose(-1, -2)

    def sample_frames(
        self, n: int, n_tokens: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0, labels, frames)`` of shapes ``(n, L, d)``, ``(n, L)``, ``(n, K, d)``."""
        n_tokens = positive_int(n_tokens, "n_tokens")
        frames = self.draw_frames(n, generator)
        return (*self._tokens(frames, frames.shape[0], n_tokens, generator), frames)

    def sample(self, n, n_tokens, generator=None) -> tuple[Tensor, Tensor]:
        """``(x0, labels)`` as :meth:`mtgmm.mixture.MultiTokenGMM.sample`, a frame per sequence."""
        x0, labels, _ = self.sample_frames(n, n_tokens, generator)
        return x0, labels

    def __repr__(self) -> str:
        return f"RotatedGMM(group={self.group!r}, {super().__repr__()})"


def _levels(gmm: MultiTokenGMM, x_t: Tensor, alpha_bar) -> tuple[Tensor, ...]:
    """``(a, b, s²)`` of shape ``(L,)`` (one level per token, or one for all)."""
    last_dim(x_t, gmm.dim)
    ab = alpha_bar_tensor(alpha_bar, like=x_t)
    if ab.ndim > 1 or (ab.ndim == 1 and ab.numel() not in (1, x_t.shape[-2])):
        raise ValueError(
            f"alpha_bar must be a number or a (L,) = ({x_t.shape[-2]},) tensor, "
            f"got shape {tuple(ab.shape)}"
        )
    ab = ab.expand(x_t.shape[-2])
    s2 = gmm.noise_variance(ab)
    if bool((s2 <= 0).any()):
        raise ValueError("alpha_bar = 1 needs sigma0 > 0 (the token law is degenerate)")
    return ab.sqrt(), (1 - ab).sqrt(), s2


def _logits(gmm, frames: Tensor, x_t: Tensor, a: Tensor, s2: Tensor) -> Tensor:
    """log π_k − ‖x_l − a_l F_k‖²/(2 s_l²), shape (..., M, L, K), frames (..., M, K, d)."""
    scores = torch.einsum("...ld,...mkd->...mlk", x_t, frames)
    sq = (frames**2).sum(-1)[..., None, :]  # (..., M, 1, K)
    quad = (a[:, None] * scores - 0.5 * (a**2)[:, None] * sq) / s2[:, None]
    return gmm.log_weights.to(x_t) + quad


def _frame_eps(gmm, frames, x_t, a, b, s2) -> tuple[Tensor, Tensor]:
    """ε*_F(x_l) = (b/s²)(x − a Σ_k w_k F_k) per frame (..., M, L, d), and each frame's
    log-likelihood (..., M) up to a constant.
    """
    logits = _logits(gmm, frames, x_t, a, s2)
    cluster_mean = torch.softmax(logits, -1) @ frames  # (..., M, L, d)
    eps = (b / s2)[:, None] * (x_t[..., None, :, :] - a[:, None] * cluster_mean)
    return eps, torch.logsumexp(logits, -1).sum(-1)


def known_means_eps(
    gmm: MultiTokenGMM, x_t: Tensor, frames: Tensor, alpha_bar
) -> Tensor:
    """E[ε | x_t, F]: :func:`~mtgmm.oracle.oracle_eps` with means ``frames`` (n, K, d) per
    sequence; ``x_t`` (n, L, d), ``alpha_bar`` a number or one level per token (L,).
    """
    if frames.ndim != 3 or frames.shape[1:] != gmm.means.shape:
        raise ValueError(f"frames must have shape (n, K, d), got {tuple(frames.shape)}")
    a, b, s2 = _levels(gmm, x_t, alpha_bar)
    return _frame_eps(gmm, frames[:, None].to(x_t), x_t, a, b, s2)[0][:, 0]


def frame_posterior_eps(
    gmm: MultiTokenGMM,
    x_t: Tensor,
    frames: Tensor,
    alpha_bar,
    log_prior: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(E[ε_l | X_t], w)`` over a finite set of frames (M, K, d) or (n, M, K, d), with
    ``w_m ∝ prior_m · Π_l Σ_k π_k N(x_l; a_l F_{m,k}, s_l² I)``; shapes (n, L, d) and (n, M).
    """
    if frames.ndim == 3:
        frames = frames.expand(x_t.shape[0], *frames.shape)
    if frames.ndim != 4 or frames.shape[-2:] != gmm.means.shape:
        raise ValueError(
            f"frames must have shape (M, K, d) or (n, M, K, d), got {tuple(frames.shape)}"
        )
    a, b, s2 = _levels(gmm, x_t, alpha_bar)
    eps, loglik = _frame_eps(gmm, frames.to(x_t), x_t, a, b, s2)
    if log_prior is not None:
        loglik = loglik + log_prior.to(loglik)
    w = torch.softmax(loglik, -1)
    return torch.einsum("nm,nmld->nld", w, eps), w


@dataclass(frozen=True)
class BayesEstimate:
    """``eps`` (n, L, d) of :func:`bayes_eps`, and per sequence the last ``ess``, the tempering
    ``stages`` and the mean Metropolis acceptance.
    """

    eps: Tensor
    ess: Tensor
    n_stages: Tensor
    acceptance: Tensor
    n_particles: int


def _next_beta(loglik: Tensor, beta: Tensor, logw: Tensor) -> Tensor:
    """Per sequence, the largest β' ≤ 1 whose reweighting keeps ESS ≥ M/2 (bisection)."""
    m = loglik.shape[-1]
    lo, hi = beta.clone(), torch.ones_like(beta)

    def ess(b):
        w = torch.softmax(logw + (b - beta)[:, None] * loglik, -1)
        return 1 / (w**2).sum(-1)

    done = ess(hi) >= m / 2
    for _ in range(30):
        mid = (lo + hi) / 2
        ok = ess(mid) >= m / 2
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(done, torch.ones_like(beta), torch.maximum(lo, beta + 1e-6))


def bayes_eps(
    gmm: RotatedGMM,
    x_t: Tensor,
    alpha_bar,
    n_particles: int = 256,
    n_moves: int = 3,
    generator: torch.Generator | None = None,
) -> BayesEstimate:
    """E[ε_l | X_t] for Haar frames by tempered sequential Monte Carlo over R: reweight to the
    largest β keeping ESS ≥ M/2, resample, and take ``n_moves`` Metropolis steps ``F ← F Qᵀ``
    with Q the Cayley transform ``(I − hA/2)⁻¹(I + hA/2)`` of a skew-symmetric Gaussian A.
    """
    if not isinstance(gmm, RotatedGMM) or gmm.group != "orthogonal":
        raise ValueError("gmm must be a RotatedGMM with group='orthogonal'")
    if x_t.ndim != 3:
        raise ValueError(f"x_t must have shape (n, L, d), got {tuple(x_t.shape)}")
    m, n_moves = (
        positive_int(n_particles, "n_particles"),
        positive_int(n_moves, "n_moves"),
    )
    a, b, s2 = _levels(gmm, x_t, alpha_bar)
    n, d = x_t.shape[0], gmm.dim
    frames = gmm.to(dtype=x_t.dtype).draw_frames(n * m, generator).view(n, m, -1, d)
    frames = frames.to(x_t.device)
    _, loglik = _frame_eps(gmm, frames, x_t, a, b, s2)
    beta = torch.zeros(n, dtype=x_t.dtype, device=x_t.device)
    logw = torch.zeros_like(loglik)
    step = torch.ones_like(beta)
    stages, accepted, tries = torch.zeros_like(beta), torch.zeros_like(beta), 0
    rows = torch.arange(n, device=x_t.device)[:, None]
    eye = torch.eye(d, dtype=x_t.dtype, device=x_t.device)
    while bool((beta < 1).any()):
        new = _next_beta(loglik, beta, logw)
        logw = logw + (new - beta)[:, None] * loglik
        w = torch.softmax(logw, -1)
        ess = 1 / (w**2).sum(-1)
        stages += (new > beta).to(stages)
        beta = new
        pick = torch.multinomial(w, m, replacement=True, generator=generator)
        frames, loglik = frames[rows, pick], loglik[rows, pick]
        logw = torch.zeros_like(logw)
        for _ in range(n_moves):
            g = torch.randn(n, m, d, d, generator=generator, dtype=x_t.dtype)
            skew = (g - g.transpose(-1, -2)).to(x_t.device) / 2**0.5
            half = step[:, None, None, None] * skew / 2
            q = torch.linalg.solve(eye - half, eye + half)  # Cayley: Q orthogonal
            proposal = frames @ q.transpose(-1, -2)
            _, prop_ll = _frame_eps(gmm, proposal, x_t, a, b, s2)
            u = torch.rand(n, m, generator=generator, dtype=x_t.dtype).to(x_t.device)
            accept = u.log() < beta[:, None] * (prop_ll - loglik)
            frames = torch.where(accept[..., None, None], proposal, frames)
            loglik = torch.where(accept, prop_ll, loglik)
            rate = accept.to(x_t.dtype).mean(-1)
            accepted, tries = accepted + rate, tries + 1
            step = (step * torch.where(rate > 0.3, 1.3, 0.7)).clamp(1e-4, 3.0)
    eps, _ = _frame_eps(gmm, frames, x_t, a, b, s2)
    return BayesEstimate(eps.mean(1), ess, stages, accepted / max(tries, 1), m)


def risk_bracket(eps: Tensor, eps_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sequence (n,) ``(lower, middle, upper)`` of the Bayes risk per token from an
    estimate ε̂ of E[ε | X_t]: ``‖ε‖² − ‖ε̂‖²``, ``‖ε‖² − ⟨ε, ε̂⟩``, ``‖ε − ε̂‖²``.
    """
    if eps.shape != eps_hat.shape or eps.ndim != 3:
        raise ValueError("eps and eps_hat must have the same shape (n, L, d)")
    upper = ((eps - eps_hat) ** 2).sum(-1).mean(-1)
    lower = ((eps**2).sum(-1) - (eps_hat**2).sum(-1)).mean(-1)
    return lower, (lower + upper) / 2, upper


__all__ = [
    "BayesEstimate",
    "RotatedGMM",
    "bayes_eps",
    "frame_posterior_eps",
    "haar_orthogonal",
    "known_means_eps",
    "risk_bracket",
]
