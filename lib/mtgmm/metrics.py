"""Sample quality against the true multi-token mixture: the sliced 2-Wasserstein distance
next to its noise floor (:doc:`/book/sampling`, :doc:`/book/incontext`).

Samples are ``(n, L, d)`` or ``(N, d)`` (lone tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import last_dim, positive_int
from .mixture import MultiTokenGMM
from .stats import mean_stderr


def _as_sequences(samples: Tensor, gmm: MultiTokenGMM) -> Tensor:
    """``samples`` as a float64 ``(n, L, d)`` tensor (lone tokens become sequences of one)."""
    if not isinstance(samples, Tensor) or samples.ndim not in (2, 3):
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples)
        raise ValueError(
            f"samples must be a tensor of shape (n, L, d) or (N, d), got {shape}"
        )
    last_dim(samples, gmm.dim, "samples")
    x = samples.detach().to(torch.float64)
    x = x[:, None] if x.ndim == 2 else x
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"samples must hold at least 2 sequences of >= 1 token, got {x.shape}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("samples must be finite (no NaN or inf)")
    return x


def random_directions(
    n_projections: int, dim: int, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """``n_projections`` directions uniform on the unit sphere of R^d, float64 ``(P, d)``."""
    n_projections = positive_int(n_projections, "n_projections")
    dim = positive_int(dim, "dim")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    g = torch.randn(
        n_projections, dim, generator=generator, device=device, dtype=torch.float64
    )
    return g / g.norm(dim=1, keepdim=True)


def _w2_squared_1d(px: Tensor, py: Tensor) -> Tensor:
    """W2² between the empirical laws of the sorted columns of ``px`` (N, P) and ``py`` (M, P)."""
    n, m = px.shape[0], py.shape[0]
    if n == m:
        return ((px - py) ** 2).mean(0)
    # breakpoints of both quantile functions on the integer scale u·n·m
    cuts = torch.cat([torch.arange(1, n + 1) * m, torch.arange(1, m + 1) * n]).unique()
    widths = torch.diff(cuts, prepend=cuts.new_zeros(1)).to(px) / (n * m)
    ix, iy = ((cuts - 1) // m).to(px.device), ((cuts - 1) // n).to(px.device)
    return (widths[:, None] * (px[ix] - py[iy]) ** 2).sum(0)


def _pooled(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[-2] < 1:
        raise ValueError(f"{name} must be a tensor of shape (N, d) or (..., L, d)")
    x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
    directions: Tensor | None = None,
) -> tuple[float, float]:
    """SW2² between two token clouds and its standard error over directions:

        SW2²(X, Y) = E_θ W2²(θ·X, θ·Y),  θ uniform on the unit sphere,

    averaged over ``n_projections`` random (or the given) ``directions``; the error bar is
    conditional on the clouds.
    """
    px, py = _pooled(x, "x"), _pooled(y, "y")
    if px.shape[1] != py.shape[1]:
        raise ValueError(
            f"x and y must have the same token dimension, got {px.shape[1]} and {py.shape[1]}"
        )
    if px.device != py.device:
        raise ValueError(
            f"x and y must be on the same device, got {px.device} and {py.device}"
        )
    if directions is None:
        directions = random_directions(n_projections, px.shape[1], generator, px.device)
    elif directions.ndim != 2 or directions.shape[1] != px.shape[1]:
        raise ValueError(f"directions must have shape (P, d = {px.shape[1]})")
    directions = directions.to(px)
    per_direction = []
    chunk = max(1, 2**22 // max(px.shape[0], py.shape[0]))
    for theta in directions.split(chunk):
        sx = (px @ theta.T).sort(0).values
        sy = (py @ theta.T).sort(0).values
        per_direction.append(_w2_squared_1d(sx, sy))
    return mean_stderr(torch.cat(per_direction))


@dataclass(frozen=True)
class SlicedComparison:
    """SW2² of samples S against fresh exact sets A_r: ``value`` = mean_r SW2²(S, A_r),
    ``floor`` = mean_r SW2²(B_r, A_r), ``excess`` = their mean difference (0 in expectation
    for exact S); standard errors over repeats; ``floor_sd`` the spread of one floor draw.
    """

    value: float
    value_stderr: float
    floor: float
    floor_stderr: float
    floor_sd: float
    excess: float
    excess_stderr: float
    n_tokens: int
    n_projections: int
    n_repeats: int


def _exact_like(samples: Tensor, gmm: MultiTokenGMM, generator) -> Tensor:
    """Fresh exact samples with the shape of ``samples`` ((n, L, d) or (N, d))."""
    n, n_tokens = (samples.shape[0], 1) if samples.ndim == 2 else samples.shape[:2]
    return gmm.sample(n, n_tokens, generator=generator)[0].reshape(samples.shape)


def sliced_wasserstein_to_truth(
    samples: Tensor,
    gmm: MultiTokenGMM,
    n_projections: int = 256,
    n_repeats: int = 4,
    generator: torch.Generator | None = None,
) -> SlicedComparison:
    """The :class:`SlicedComparison` of ``samples`` with exact samples of the same size."""
    x = _as_sequences(samples, gmm)
    n_repeats = positive_int(n_repeats, "n_repeats")
    if n_repeats < 2:
        raise ValueError("n_repeats must be >= 2 to give standard errors over repeats")
    directions = random_directions(n_projections, gmm.dim, generator)
    device = directions.device
    x = x.to(device)
    values, floors = [], []
    for _ in range(n_repeats):
        a, b = (_exact_like(x, gmm, generator).to(device) for _ in range(2))
        values.append(sliced_wasserstein(x, a, directions=directions)[0])
        floors.append(sliced_wasserstein(b, a, directions=directions)[0])
    v, f = torch.tensor(values), torch.tensor(floors)
    se = n_repeats**-0.5
    return SlicedComparison(
        value=v.mean().item(),
        value_stderr=v.std().item() * se,
        floor=f.mean().item(),
        floor_stderr=f.std().item() * se,
        floor_sd=f.std().item(),
        excess=(v - f).mean().item(),
        excess_stderr=(v - f).std().item() * se,
        n_tokens=x.shape[0] * x.shape[1],
        n_projections=directions.shape[0],
        n_repeats=n_repeats,
    )


__all__ = [
    "SlicedComparison",
    "random_directions",
    "sliced_wasserstein",
    "sliced_wasserstein_to_truth",
]
