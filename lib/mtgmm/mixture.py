"""The multi-token Gaussian mixture and its forward noising (derived in :doc:`/book/mixture`).

A data point is L tokens ``x_l = μ_{z_l} + σ0 ξ_l``, labels ``z_l ~ π`` i.i.d.,
``ξ_l ~ N(0, I_d)``; at level ᾱ a token is distributed as ``Σ_k π_k N(a μ_k, s² I_d)``,
``s² = a² σ0² + b²``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import (
    alpha_bar_tensor,
    last_dim,
    leading_broadcast,
    nonnegative_float,
    positive_int,
)


class MultiTokenGMM:
    """Tokens drawn i.i.d. from ``Σ_k π_k N(μ_k, σ0² I_d)``
    (`Mixture <../mixture.html#the-data-model>`__).

    Args:
        means: (K, d) cluster means μ_k.
        weights: (K,) mixing distribution π (uniform when ``None``).
        sigma0: within-cluster standard deviation σ0 ≥ 0.
    """

    def __init__(
        self, means: Tensor, weights: Tensor | None = None, sigma0: float = 0.0
    ):
        means = torch.as_tensor(means)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(
                f"means must be a 2-D (K, d) tensor, got shape {tuple(means.shape)}"
            )
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite")
        k = means.shape[0]
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=means.dtype, device=means.device)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if weights.shape != (k,):
            raise ValueError(
                f"weights must have shape (K,) = ({k},) to match means, got {tuple(weights.shape)}"
            )
        if bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
            raise ValueError("weights must be finite and non-negative")
        if abs(weights.sum().item() - 1.0) > 1e-6:
            raise ValueError(
                f"weights must sum to 1, got sum {weights.sum().item():.8g}"
            )
        self.means = means
        self.weights = weights
        self.sigma0 = nonnegative_float(sigma0, "sigma0")

    @classmethod
    def orthogonal(
        cls,
        n_clusters: int,
        dim: int,
        radius: float,
        sigma0: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype | None = None,
    ) -> MultiTokenGMM:
        """K orthogonal means of norm ``radius`` under a seeded Haar rotation (needs
        ``n_clusters <= dim``).
        """
        n_clusters = positive_int(n_clusters, "n_clusters")
        dim = positive_int(dim, "dim")
        if n_clusters > dim:
            raise ValueError(
                f"n_clusters must be <= dim for orthogonal means, got {n_clusters} > {dim}"
            )
        radius = nonnegative_float(radius, "radius")
        gen = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(
            torch.randn(dim, dim, generator=gen, dtype=torch.float64)
        )
        q = q * torch.sign(torch.diagonal(r))
        means = radius * q[:, :n_clusters].T
        return cls(means.to(dtype or torch.get_default_dtype()), sigma0=sigma0)

    @property
    def n_clusters(self) -> int:
        """K, the number of clusters."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """d, the token dimension."""
        return self.means.shape[1]

    @property
    def log_weights(self) -> Tensor:
        """log π_k (−inf for empty clusters)."""
        return self.weights.log()

    def to(self, device=None, dtype=None) -> MultiTokenGMM:
        """A copy with parameters on ``device`` and/or of ``dtype``."""
        means = self.means.to(device=device, dtype=dtype)
        return MultiTokenGMM(means, self.weights.to(means), self.sigma0)

    def noise_variance(self, alpha_bar: float | Tensor) -> Tensor:
        """s² = ᾱ σ0² + 1 − ᾱ, broadcast over ``alpha_bar``
        (`Mixture <../mixture.html#the-noisy-marginal>`__).
        """
        ab = alpha_bar_tensor(alpha_bar)
        return ab * self.sigma0**2 + (1 - ab)

    def cluster_snr(self, alpha_bar: float | Tensor) -> Tensor:
        """a · r / s: mean norm r = max_k ‖μ_k‖ against the noise scale s (∞ when s = 0)."""
        ab = alpha_bar_tensor(alpha_bar)
        r = self.means.norm(dim=1).max().to(ab.dtype)
        return ab.sqrt() * r / self.noise_variance(ab).sqrt()

    def span_basis(self, tol: float = 1e-6) -> Tensor:
        """Orthonormal basis ``(m, d)`` of the span of the means (m = its dimension)."""
        if self.means.abs().max() == 0:
            return self.means.new_zeros(0, self.dim)
        _, sv, vh = torch.linalg.svd(self.means, full_matrices=False)
        return vh[sv > tol * sv[0]]

    def span_projector(self) -> Tensor:
        """P, the orthogonal projector onto span{μ_k} (d × d)."""
        u = self.span_basis()
        return u.T @ u

    def mean_direction_projector(self) -> Tensor:
        """J, the projector onto the direction of Σ_k μ_k (zero when that sum is 0)."""
        total = self.means.sum(0)
        norm = total.norm()
        if norm == 0:
            return torch.zeros(self.dim, self.dim, dtype=self.means.dtype)
        u = total / norm
        return torch.outer(u, u)

    def sample(
        self, n: int, n_tokens: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(x0, labels)`` of shapes (n, L, d) and (n, L), labels i.i.d. with law π."""
        n = positive_int(n, "n")
        device = self.means.device if generator is None else generator.device
        return self._tokens(self.means.to(device), n, n_tokens, generator)

    def _tokens(self, means: Tensor, n: int, n_tokens: int, generator) -> tuple:
        """``(x0, labels)`` around ``means`` (K, d), or around a frame (n, K, d) a sequence."""
        n_tokens, w = positive_int(n_tokens, "n_tokens"), self.weights.to(means.device)
        labels = torch.multinomial(w, n * n_tokens, True, generator=generator)
        labels = labels.view(n, n_tokens)
        rows = torch.arange(n, device=means.device)[:, None]
        x0 = means.expand(n, *means.shape[-2:])[rows, labels]
        if self.sigma0 > 0:
            x0 = x0 + self.sigma0 * torch.randn(
                x0.shape, generator=generator, device=means.device, dtype=means.dtype
            )
        return x0, labels

    def log_prob(self, x: Tensor, alpha_bar: float | Tensor = 1.0) -> Tensor:
        """log p_t(x) of each token under ``Σ_k π_k N(a μ_k, s² I)``; shape ``x.shape[:-1]``."""
        last_dim(x, self.dim, "x")
        ab = leading_broadcast(alpha_bar_tensor(alpha_bar, like=x), x)
        s2 = self.noise_variance(ab)
        if bool((s2 == 0).any()):
            raise ValueError(
                "the density is undefined where s² = a²σ0² + b² = 0 (σ0 = 0, ᾱ = 1)"
            )
        means = self.means.to(x)
        sq = ((x[..., None, :] - ab.sqrt()[..., None] * means) ** 2).sum(-1)
        logits = self.log_weights.to(x) - sq / (2 * s2)
        return torch.logsumexp(logits, -1) - 0.5 * self.dim * torch.log(
            2 * math.pi * s2[..., 0]
        )

    def __repr__(self) -> str:
        return (
            f"MultiTokenGMM(K={self.n_clusters}, d={self.dim}, sigma0={self.sigma0:g}, "
            f"mean norms={[round(v, 3) for v in self.means.norm(dim=1).tolist()]})"
        )


def add_noise(
    x0: Tensor, alpha_bar: float | Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The forward process ``x_t = √ᾱ x0 + √(1-ᾱ) ε``; returns ``(x_t, ε)``
    (`DDPM <../ddpm.html#the-forward-process>`__).
    """
    ab = leading_broadcast(alpha_bar_tensor(alpha_bar, like=x0), x0)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, eps
