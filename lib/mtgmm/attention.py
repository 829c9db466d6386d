"""The one-layer attention denoiser and its constructions (derived in :doc:`/book/attention`).

For one data point ``X`` (L × d, rows are tokens),

    f(X) = X W_S + softmax(X W_KQ Xᵀ) X W_V,

softmax along each row (over all keys, the query's own too unless ``mask_self``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import alpha_bar_tensor, last_dim, positive_int
from .fast import FUSED_MIN_TOKENS_CPU, masked_scores, row_softmax, uses_fused
from .mixture import MultiTokenGMM

WEIGHT_NAMES = ("W_KQ", "W_V", "W_S")


def _self_mask(n_tokens: int, device) -> Tensor:
    """Boolean (L, L) mask, True where a query may attend (everywhere but the diagonal)."""
    return ~torch.eye(n_tokens, dtype=torch.bool, device=device)


def attend(x: Tensor, w_kq: Tensor, w_v: Tensor, mask_self: bool = False) -> Tensor:
    """``softmax(X W_KQ Xᵀ) X W_V`` for tokens ``x`` (…, L, d); weights may carry leading batch
    dims. Takes torch's fused kernel on GPUs (and on CPU from ``mtgmm.fast.FUSED_MIN_TOKENS_CPU``
    tokens), else the written-out formula (:func:`attention_weights`); equal to rounding.
    """
    if x.device.type != "cpu" or x.shape[-2] >= FUSED_MIN_TOKENS_CPU:
        # the fused kernel: query X W_KQ, key X, value X W_V, scale 1
        mask = _self_mask(x.shape[-2], x.device) if mask_self else None
        return F.scaled_dot_product_attention(
            x @ w_kq, x, x @ w_v, attn_mask=mask, scale=1.0
        )
    return attention_weights(x, w_kq, mask_self) @ x @ w_v  # (…, L, L) @ (…, L, d)


def attention_weights(x: Tensor, w_kq: Tensor, mask_self: bool = False) -> Tensor:
    """The (…, L, L) attention matrix ``A_ij ∝ exp(x_i W_KQ x_jᵀ)``, rows summing to 1
    (``A_ii = 0`` if ``mask_self``).
    """
    scores = (x @ w_kq) @ x.transpose(-1, -2)  # s_ij = x_i W_KQ x_jᵀ
    if mask_self:
        scores = scores.masked_fill(~_self_mask(x.shape[-2], x.device), float("-inf"))
    return row_softmax(scores)  # = torch.softmax(scores, -1)


def attend_fused(
    x: Tensor, w_kq: Tensor, w_v: Tensor, mask_self: bool = False
) -> Tensor:
    """:func:`attend` forced onto the fused kernel (``scaled_dot_product_attention``)."""
    mask = _self_mask(x.shape[-2], x.device) if mask_self else None
    return F.scaled_dot_product_attention(
        x @ w_kq, x, x @ w_v, attn_mask=mask, scale=1.0
    )


def attend_explicit(
    x: Tensor, w_kq: Tensor, w_v: Tensor, mask_self: bool = False
) -> Tensor:
    """:func:`attend` forced onto the written-out formula ``A X W_V``."""
    return attention_weights(x, w_kq, mask_self) @ x @ w_v


def _attention(query: Tensor, x: Tensor, values: Tensor, mask_self: bool) -> Tensor:
    """softmax(Q Xᵀ) V with the kernel :func:`attend` would choose for ``x``."""
    if uses_fused(x):
        mask = _self_mask(x.shape[-2], x.device) if mask_self else None
        return F.scaled_dot_product_attention(
            query, x, values, attn_mask=mask, scale=1.0
        )
    return row_softmax(masked_scores(query, x, mask_self)) @ values


def timestep_layers(
    x: Tensor, w_kq: Tensor, w_v: Tensor, w_s: Tensor, mask_self: bool = False
) -> Tensor:
    """``f_i(X) = X W_S[i] + softmax(X W_KQ[i] Xᵀ) X W_V[i]`` for every sequence X of ``x[i]``:
    ``x`` (m, n, L, d), weights (m, d, d).
    """
    m, n, n_tokens, d = x.shape
    flat = x.reshape(m, n * n_tokens, d)
    query = (flat @ w_kq).view(x.shape)
    attended = _attention(query, x, x, mask_self).reshape(flat.shape)  # softmax(Q Xᵀ) X
    return (flat @ w_s + attended @ w_v).view(x.shape)


def _check_tokens(x: Tensor, dim: int, mask_self: bool) -> None:
    if x.ndim < 2:
        raise ValueError(f"x_t must have shape (..., L, d), got {tuple(x.shape)}")
    last_dim(x, dim)
    if mask_self and x.shape[-2] < 2:
        raise ValueError("mask_self needs at least 2 tokens per sequence (L >= 2)")


class AttentionDenoiser(nn.Module):
    """One layer, one head: ``f(X) = X W_S + softmax(X W_KQ Xᵀ) X W_V``, mapping (..., L, d)
    to ε̂ of the same shape; the three d × d parameters start at zero.

    Args:
        dim: token dimension d.
        mask_self: if True a token does not attend to itself.
    """

    def __init__(self, dim: int, mask_self: bool = False) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.mask_self = bool(mask_self)
        self.W_KQ = nn.Parameter(torch.zeros(dim, dim))
        self.W_V = nn.Parameter(torch.zeros(dim, dim))
        self.W_S = nn.Parameter(torch.zeros(dim, dim))

    @classmethod
    def from_weights(
        cls, w_kq: Tensor, w_v: Tensor, w_s: Tensor, mask_self: bool = False
    ):
        """A denoiser holding copies of the given d × d matrices."""
        model = cls(w_kq.shape[-1], mask_self)
        model.set_weights(w_kq, w_v, w_s)
        return model

    def set_weights(self, w_kq: Tensor, w_v: Tensor, w_s: Tensor) -> None:
        """Overwrite the three matrices (any dtype/device; cast to the module's)."""
        for name, value in zip(WEIGHT_NAMES, (w_kq, w_v, w_s), strict=True):
            param = getattr(self, name)
            if tuple(value.shape) != (self.dim, self.dim):
                raise ValueError(
                    f"{name} must have shape (d, d) = {(self.dim, self.dim)}"
                )
            with torch.no_grad():
                param.copy_(value)

    def weights(self) -> dict[str, Tensor]:
        """The three matrices, detached, by name."""
        return {name: getattr(self, name).detach() for name in WEIGHT_NAMES}

    def forward(self, x_t: Tensor) -> Tensor:
        """ε̂ = x_t W_S + softmax(x_t W_KQ x_tᵀ) x_t W_V for ``x_t`` of shape (…, L, d)."""
        _check_tokens(x_t, self.dim, self.mask_self)
        return x_t @ self.W_S + attend(x_t, self.W_KQ, self.W_V, self.mask_self)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, mask_self={self.mask_self}"


class AttentionBank(nn.Module):
    """One :class:`AttentionDenoiser` per timestep, stored as banks (T, d, d): ``bank(x_t, t)``
    runs sequence i of ``x_t`` (n, L, d) through the layer of timestep ``t[i]`` (or one int).
    """

    def __init__(self, n_steps: int, dim: int, mask_self: bool = False) -> None:
        super().__init__()
        self.n_steps = positive_int(n_steps, "n_steps")
        self.dim = positive_int(dim, "dim")
        self.mask_self = bool(mask_self)
        self.W_KQ = nn.Parameter(torch.zeros(n_steps, dim, dim))
        self.W_V = nn.Parameter(torch.zeros(n_steps, dim, dim))
        self.W_S = nn.Parameter(torch.zeros(n_steps, dim, dim))

    def _timesteps(self, t: int | Tensor, n: int, device) -> tuple[Tensor, int, int]:
        """``t`` as a long tensor of shape (n,), with its smallest and largest value."""
        t = torch.as_tensor(t, device=device)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timesteps, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(
                f"t must be an int or have shape (n,) = ({n},), got {tuple(t.shape)}"
            )
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= self.n_steps:
            raise ValueError(
                f"t must lie in 0 … {self.n_steps - 1} (T = {self.n_steps})"
            )
        return t.long(), low, high

    def forward(self, x_t: Tensor, t: int | Tensor) -> Tensor:
        """ε̂ for ``x_t`` (n, L, d), sequence i through the layer of timestep ``t[i]``."""
        if x_t.ndim != 3:
            raise ValueError(f"x_t must have shape (n, L, d), got {tuple(x_t.shape)}")
        _check_tokens(x_t, self.dim, self.mask_self)
        t, low, high = self._timesteps(t, x_t.shape[0], x_t.device)
        if low == high:  # one timestep for the whole batch
            return self.by_timestep(x_t[None], low)[0]
        w_kq, w_v, w_s = self.W_KQ[t], self.W_V[t], self.W_S[t]  # (n, d, d) each
        return x_t @ w_s + attend(x_t, w_kq, w_v, self.mask_self)

    def by_timestep(self, x_t: Tensor, first: int = 0) -> Tensor:
        """ε̂ for ``x_t`` (m, n, L, d): the sequences of ``x_t[i]`` through the layer of timestep
        ``first + i`` (:func:`timestep_layers`).
        """
        if x_t.ndim != 4:
            raise ValueError(
                f"x_t must have shape (m, n, L, d), got {tuple(x_t.shape)}"
            )
        _check_tokens(x_t, self.dim, self.mask_self)
        if isinstance(first, bool) or int(first) != first or first < 0:
            raise ValueError(f"first must be an integer >= 0, got {first!r}")
        if first + x_t.shape[0] > self.n_steps:
            raise ValueError(
                f"first + m = {first} + {x_t.shape[0]} must be at most T = {self.n_steps}"
            )
        steps = slice(first, first + x_t.shape[0])
        return timestep_layers(
            x_t, self.W_KQ[steps], self.W_V[steps], self.W_S[steps], self.mask_self
        )

    def layer(self, t: int) -> AttentionDenoiser:
        """A standalone copy of timestep ``t``'s layer."""
        (t,) = self._timesteps(t, 1, "cpu")[0].tolist()
        return AttentionDenoiser.from_weights(
            self.W_KQ[t].detach(),
            self.W_V[t].detach(),
            self.W_S[t].detach(),
            self.mask_self,
        )

    def load_layer(self, t: int, layer: AttentionDenoiser) -> None:
        """Copy ``layer``'s matrices into timestep ``t``."""
        (t,) = self._timesteps(t, 1, "cpu")[0].tolist()
        with torch.no_grad():
            for name in WEIGHT_NAMES:
                getattr(self, name)[t].copy_(getattr(layer, name))

    def extra_repr(self) -> str:
        return f"n_steps={self.n_steps}, dim={self.dim}, mask_self={self.mask_self}"


class SymmetricBasis:
    """J (projector onto Σ_k μ_k), P − J and P⊥ = I − P: a Frobenius-orthogonal basis of the
    matrices ``W = α P + β P⊥ + γ J`` left fixed by the symmetries of an orthogonal, equal-norm,
    uniform mixture (:doc:`/book/training`).
    """

    def __init__(self, gmm: MultiTokenGMM) -> None:
        p = gmm.span_projector().to(torch.float64)
        j = gmm.mean_direction_projector().to(torch.float64)
        self.P, self.J = p, j
        self.P_perp = torch.eye(gmm.dim, dtype=torch.float64) - p
        self._orthogonal = torch.stack([j, p - j, self.P_perp])  # (3, d, d)

    def compose(self, coefficients: Tensor) -> Tensor:
        """W = α P + β P⊥ + γ J from ``coefficients[..., :] = (α, β, γ)``."""
        c = torch.as_tensor(coefficients)
        basis = torch.stack([self.P, self.P_perp, self.J]).to(c)
        return torch.einsum("...i,ijk->...jk", c, basis)

    def coordinates(self, w: Tensor) -> Tensor:
        """(α, β, γ) of the Frobenius projection of ``w`` (…, d, d) onto the symmetric matrices."""
        e = self._orthogonal.to(w)
        norms = (e**2).sum((-1, -2))
        c = torch.einsum("...jk,ijk->...i", w, e) / torch.where(norms > 0, norms, 1)
        # W = c_J J + c_{P−J} (P − J) + c_⊥ P⊥ = c_{P−J} P + c_⊥ P⊥ + (c_J − c_{P−J}) J
        return torch.stack([c[..., 1], c[..., 2], c[..., 0] - c[..., 1]], -1)

    def project(self, w: Tensor) -> Tensor:
        """The symmetric part of ``w``: ``compose(coordinates(w))``."""
        return self.compose(self.coordinates(w))

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.P, self.P_perp, self.J))


def mean_denoising_weights(
    gmm: MultiTokenGMM, alpha_bar: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The infinite-token construction ``W_KQ = P/s²``, ``W_V = −(b/s²) P``,
    ``W_S = (b/s²)(I + P)``, whose L → ∞ limit is ε* for orthogonal equal-norm means.
    """
    ab = alpha_bar_tensor(alpha_bar).to(torch.float64)
    if ab.numel() != 1:
        raise ValueError("alpha_bar must be a single value")
    s2 = gmm.noise_variance(ab).item()
    if s2 == 0:
        raise ValueError(
            "the construction needs s² = a²σ0² + b² > 0 (not σ0 = 0 with ᾱ = 1)"
        )
    b = (1 - ab).sqrt().item()
    p = gmm.span_projector().to(torch.float64)
    eye = torch.eye(gmm.dim, dtype=torch.float64)
    return p / s2, -(b / s2) * p, (b / s2) * (eye + p)
