"""Sample quality against the true multi-token mixture (:doc:`/book/sampling`): cluster
occupancy against π, per-cluster mean and spread against μ_k and σ0, and the sliced
2-Wasserstein distance next to its noise floor.

Samples are ``(n, L, d)`` or ``(N, d)`` (lone tokens). Sequences are the independent units
of every error bar; nonlinear statistics get delete-one-sequence jackknife errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from scipy import stats
from torch import Tensor

from ._checks import positive_int
from .mixture import MultiTokenGMM
from .oracle import posterior_weights
from .stats import mean_stderr


def _as_sequences(samples: Tensor, gmm: MultiTokenGMM) -> Tensor:
    """``samples`` as a float64 ``(n, L, d)`` tensor (lone tokens become sequences of one)."""
    if not isinstance(samples, Tensor) or samples.ndim not in (2, 3):
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples)
        raise ValueError(
            f"samples must be a tensor of shape (n, L, d) or (N, d), got {shape}"
        )
    if samples.shape[-1] != gmm.dim:
        raise ValueError(
            f"samples must have last dimension d = {gmm.dim} (the mixture's), "
            f"got shape {tuple(samples.shape)}"
        )
    x = samples.detach().to(torch.float64)
    x = x[:, None] if x.ndim == 2 else x
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"samples must hold at least 2 sequences of >= 1 token, got {x.shape}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("samples must be finite (no NaN or inf)")
    return x


def cluster_assignments(samples: Tensor, gmm: MultiTokenGMM) -> Tensor:
    """The cluster of each token, shape ``samples.shape[:-1]``: ``argmax_k log π_k − ‖x −
    μ_k‖² / (2σ0²)`` (the nearest mean when σ0 = 0).
    """
    if samples.shape[-1] != gmm.dim:
        raise ValueError(f"samples must have last dimension d = {gmm.dim}")
    g64 = gmm.to(device=samples.device, dtype=torch.float64)
    x = samples.to(torch.float64)
    if gmm.sigma0 > 0:
        return posterior_weights(g64, x, 1.0).argmax(-1)
    return ((x[..., None, :] - g64.means) ** 2).sum(-1).argmin(-1)


class _Sums(NamedTuple):
    """Per sequence: ``counts`` (n, K), sums of x − μ_k (n, K, d) and of ‖x − μ_k‖² (n, K)."""

    counts: Tensor
    offsets: Tensor
    squares: Tensor


def _sequence_sums(x: Tensor, gmm: MultiTokenGMM) -> _Sums:
    labels = cluster_assignments(x, gmm)
    one_hot = torch.nn.functional.one_hot(labels, gmm.n_clusters).to(x)  # (n, L, K)
    diff = x - gmm.means.to(x)[labels]
    return _Sums(
        counts=one_hot.sum(1),
        offsets=torch.einsum("nlk,nld->nkd", one_hot, diff),
        squares=torch.einsum("nlk,nl->nk", one_hot, (diff**2).sum(-1)),
    )


def _jackknife(
    statistic: Callable[[_Sums], Tensor], sums: _Sums
) -> tuple[Tensor, Tensor]:
    """``statistic`` of the totals and its delete-one-sequence jackknife standard error."""
    n = sums.counts.shape[0]
    total = _Sums(*(v.sum(0) for v in sums))
    leave_out = _Sums(*(t - v for t, v in zip(total, sums, strict=True)))
    replicates = statistic(leave_out)
    spread = ((replicates - replicates.mean(0)) ** 2).sum(0)
    return statistic(total), ((n - 1) / n * spread).sqrt()


@dataclass(frozen=True)
class Occupancy:
    """Fractions of tokens per cluster (K,) with jackknife ``stderr``, ``tv = ½ Σ_k |p̂_k −
    π_k|``, and ``chi2``, ``df``, ``p_value`` of the test of :func:`cluster_occupancy`.
    """

    fractions: Tensor
    stderr: Tensor
    weights: Tensor
    counts: Tensor
    tv: float
    chi2: float
    df: int
    p_value: float


def _occupancy_test(fractions: Tensor, weights: Tensor) -> tuple[float, int, float]:
    """Score test of E f_i = π from per-sequence fraction vectors ``fractions`` (n, K)."""
    n = fractions.shape[0]
    centred = (fractions - weights)[
        :, :-1
    ]  # fractions and π sum to 1: drop one coordinate
    delta = centred.mean(0)
    cov0 = centred.T @ centred / n
    chi2 = (n * delta @ torch.linalg.pinv(cov0, hermitian=True) @ delta).item()
    df = int(torch.linalg.matrix_rank(cov0, hermitian=True))
    return chi2, df, float(stats.chi2.sf(chi2, df)) if df > 0 else float("nan")


def cluster_occupancy(samples: Tensor, gmm: MultiTokenGMM) -> Occupancy:
    """Occupancy of each cluster with a score test of E p̂ = π across sequences:

        χ² = n δᵀ S₀⁺ δ,  δ = mean_i f_i − π,  S₀ = mean_i (f_i − π)(f_i − π)ᵀ,

    f_i the fraction vector of sequence i; χ² → χ²_{K−1} under H0.
    """
    x = _as_sequences(samples, gmm)
    sums = _sequence_sums(x, gmm)
    weights = gmm.weights.to(x) / gmm.weights.to(x).sum()
    fractions, stderr = _jackknife(
        lambda s: s.counts / s.counts.sum(-1, keepdim=True), sums
    )
    chi2, df, p_value = _occupancy_test(sums.counts / x.shape[1], weights)
    return Occupancy(
        fractions=fractions,
        stderr=stderr,
        weights=weights,
        counts=sums.counts.sum(0).long(),
        tv=0.5 * (fractions - weights).abs().sum().item(),
        chi2=chi2,
        df=df,
        p_value=p_value,
    )


@dataclass(frozen=True)
class ClusterStatistics:
    """Per-cluster statistics (arrays over K; NaN below 2 assigned tokens): ``means`` and
    ``means_stderr`` (K, d), ``mean_error`` = ‖mean − μ_k‖ with its ``mean_error_stderr`` and
    ``mean_error_floor`` = √(Σ_j stderr_kj²), and ``spread`` = √(tr Cov_k / d) with
    ``spread_stderr``.
    """

    counts: Tensor
    means: Tensor
    means_stderr: Tensor
    mean_error: Tensor
    mean_error_stderr: Tensor
    mean_error_floor: Tensor
    spread: Tensor
    spread_stderr: Tensor
    target_means: Tensor
    sigma0: float


def _mean_offset(s: _Sums) -> Tensor:
    return s.offsets / s.counts[..., None]


def _spread(s: _Sums) -> Tensor:
    """√(tr Cov / d) with the unbiased (C − 1) denominator, from sums around μ_k."""
    dim = s.offsets.shape[-1]
    scatter = s.squares - (s.offsets**2).sum(-1) / s.counts
    return (scatter.clamp_min(0) / ((s.counts - 1) * dim)).sqrt()


def cluster_statistics(samples: Tensor, gmm: MultiTokenGMM) -> ClusterStatistics:
    """Mean and spread of the tokens assigned to each cluster, with jackknife errors."""
    x = _as_sequences(samples, gmm)
    sums = _sequence_sums(x, gmm)
    offset, offset_se = _jackknife(_mean_offset, sums)
    error, error_se = _jackknife(lambda s: _mean_offset(s).norm(dim=-1), sums)
    spread, spread_se = _jackknife(_spread, sums)
    means = gmm.means.to(x)
    few = sums.counts.sum(0) < 2
    nan = torch.tensor(float("nan"), dtype=x.dtype)
    return ClusterStatistics(
        counts=sums.counts.sum(0).long(),
        means=means + offset,
        means_stderr=torch.where(few[:, None], nan, offset_se),
        mean_error=error,
        mean_error_stderr=torch.where(few, nan, error_se),
        mean_error_floor=torch.where(few, nan, (offset_se**2).sum(-1).sqrt()),
        spread=torch.where(few, nan, spread),
        spread_stderr=torch.where(few, nan, spread_se),
        target_means=means,
        sigma0=gmm.sigma0,
    )


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


def _nanmax(values: Tensor) -> float:
    finite = values[~values.isnan()]
    return finite.max().item() if finite.numel() else float("nan")


@dataclass(frozen=True)
class SampleSummary:
    """All sample-quality metrics of one sample set (see :func:`summarize_samples`)."""

    occupancy: Occupancy
    statistics: ClusterStatistics
    reference: ClusterStatistics
    sliced: SlicedComparison

    def headline(self) -> dict[str, float]:
        """One table row: occupancy test, worst mean error, spread and SW2²."""
        s, r, sw = self.statistics, self.reference, self.sliced
        return {
            "tv": self.occupancy.tv,
            "chi2": self.occupancy.chi2,
            "p_value": self.occupancy.p_value,
            "max_mean_error": _nanmax(s.mean_error),
            "max_mean_error_reference": _nanmax(r.mean_error),
            "spread": s.spread.nanmean().item(),
            "spread_reference": r.spread.nanmean().item(),
            "sigma0": s.sigma0,
            "sw2": sw.value,
            "sw2_floor": sw.floor,
            "sw2_excess": sw.excess,
            "sw2_excess_stderr": sw.excess_stderr,
        }


def summarize_samples(
    samples: Tensor,
    gmm: MultiTokenGMM,
    n_projections: int = 256,
    n_repeats: int = 4,
    generator: torch.Generator | None = None,
) -> SampleSummary:
    """Occupancy, per-cluster statistics and SW2² of ``samples``, next to the statistics of an
    exact sample set of the same shape (``reference``).
    """
    x = _as_sequences(samples, gmm)
    sliced = sliced_wasserstein_to_truth(x, gmm, n_projections, n_repeats, generator)
    exact = _exact_like(x, gmm, generator)
    return SampleSummary(
        occupancy=cluster_occupancy(x, gmm),
        statistics=cluster_statistics(x, gmm),
        reference=cluster_statistics(exact, gmm),
        sliced=sliced,
    )


__all__ = [
    "ClusterStatistics",
    "Occupancy",
    "SampleSummary",
    "SlicedComparison",
    "cluster_assignments",
    "cluster_occupancy",
    "cluster_statistics",
    "random_directions",
    "sliced_wasserstein",
    "sliced_wasserstein_to_truth",
    "summarize_samples",
]
