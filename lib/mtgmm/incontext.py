"""Means drawn afresh for each sequence (derived in :doc:`When the means change with each
sequence <../incontext>`).

A sequence draws a frame ``F = [R μ_1 … R μ_K]`` (R Haar on O(d), or a sign per mean), then
its tokens from ``Σ_k π_k N(F_k, σ0² I)``. :func:`known_means_eps` is the oracle given F;
the Bayes estimator ``E[ε_l | X_t]`` averages it over the posterior of F
(:func:`frame_posterior_eps` for finitely many frames; over R the chapter samples it with
:func:`frame_eps`).
"""

from __future__ import annotations

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


def frame_eps(gmm: MultiTokenGMM, frames: Tensor, x_t: Tensor, alpha_bar):
    """Per frame, the oracle ``ε*_F(x_l) = (b/s²)(x_l − a Σ_k w_k F_k)`` (..., M, L, d) and
    the sequence's log-likelihood ``Σ_l log Σ_k π_k N(x_l; a F_k, s² I)`` (..., M), up to a
    constant; ``frames`` (..., M, K, d), ``x_t`` (..., L, d).
    """
    a, b, s2 = _levels(gmm, x_t, alpha_bar)
    return _frame_eps(gmm, frames.to(x_t), x_t, a, b, s2)


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


__all__ = [
    "RotatedGMM",
    "frame_eps",
    "frame_posterior_eps",
    "haar_orthogonal",
    "known_means_eps",
]
