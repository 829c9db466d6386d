"""Sample quality against the true multi-token mixture (chapter :doc:`/book/sampling`).

Three views of a sample set, each with an error bar that says what it covers:

* cluster occupancy (which cluster each token falls in) against the weights π;
* per-cluster statistics (mean, within-cluster spread) against μ_k and σ0;
* the sliced 2-Wasserstein distance between the token clouds, against fresh exact samples,
  next to its noise floor (the same distance between two exact sample sets).

Samples are ``(n, L, d)`` (n sequences of L tokens) or ``(N, d)`` (N lone tokens). Error bars
treat **sequences** as the independent units: a sampler whose denoiser is attention couples
the tokens of a sequence, while different sequences are independent draws. Nonlinear
statistics get delete-one-sequence jackknife standard errors.
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
    """The cluster of each token, shape ``samples.shape[:-1]``.

    For σ0 > 0 the Bayes classifier ``argmax_k w_k(x)`` (posterior weights at ᾱ = 1, so
    ``log π_k − ‖x − μ_k‖² / (2σ0²)``); for σ0 = 0 the nearest mean. When clusters overlap
    some exact samples are assigned to the wrong cluster, which biases the statistics below
    even for perfect samples: compare against exact samples (:func:`summarize_samples` does).
    """
    if samples.shape[-1] != gmm.dim:
        raise ValueError(f"samples must have last dimension d = {gmm.dim}")
    g64 = gmm.to(device=samples.device, dtype=torch.float64)
    x = samples.to(torch.float64)
    if gmm.sigma0 > 0:
        return posterior_weights(g64, x, 1.0).argmax(-1)
    return ((x[..., None, :] - g64.means) ** 2).sum(-1).argmin(-1)


class _Sums(NamedTuple):
    """Per-sequence sufficient statistics: ``counts`` (n, K), ``offsets`` (n, K, d) = sums of
    x − μ_k over the tokens assigned to k, ``squares`` (n, K) = sums of ‖x − μ_k‖²."""

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
    """``statistic`` of the totals over sequences and its delete-one-sequence jackknife
    standard error ``√((n−1)/n Σ_i (θ_(−i) − θ̄)²)``. ``statistic`` must act on leading axes."""
    n = sums.counts.shape[0]
    total = _Sums(*(v.sum(0) for v in sums))
    leave_out = _Sums(*(t - v for t, v in zip(total, sums, strict=True)))
    replicates = statistic(leave_out)
    spread = ((replicates - replicates.mean(0)) ** 2).sum(0)
    return statistic(total), ((n - 1) / n * spread).sqrt()


@dataclass(frozen=True)
class Occupancy:
    """Fractions of tokens per cluster against π.

    ``fractions`` and ``stderr`` (jackknife over sequences) have shape (K,); ``tv`` is the
    total-variation distance ``½ Σ_k |p̂_k − π_k|`` (biased upwards by sampling noise: its size
    for exact samples is of order √(K / N)); ``chi2`` with ``df`` degrees of freedom and
    ``p_value`` test H0: E p̂ = π (see :func:`cluster_occupancy`).
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
    """How often each cluster is visited, with standard errors and a test against π.

    Tokens are assigned by :func:`cluster_assignments`. The test is a Wald test in score
    form: with f_i the fraction vector of sequence i (one coordinate dropped, as they sum
    to 1), ``χ² = n δᵀ S₀⁺ δ`` with ``δ = mean_i f_i − π`` and ``S₀ = mean_i (f_i − π)(f_i − π)ᵀ``,
    the covariance estimated under H0 across sequences, so dependent tokens within a sequence
    are allowed; χ² → χ²_{K−1} under H0 as n → ∞. For independent tokens it tends to Pearson's
    statistic. It never exceeds n, so a badly wrong sampler still gets a tiny p-value.
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
    """Per-cluster statistics of the tokens assigned to each cluster (arrays over K).

    * ``means`` (K, d) and ``means_stderr`` (K, d): mean of the assigned tokens;
    * ``mean_error`` = ‖mean − μ_k‖ with a jackknife ``mean_error_stderr`` (meaningful when
      the error is well above the floor) and ``mean_error_floor`` = √(Σ_j stderr_kj²), the
      root-mean-square error sampling noise alone would produce: E‖mean − μ_k‖² =
      ‖bias‖² + floor²;
    * ``spread`` = √(tr Cov_k / d), the within-cluster standard deviation per coordinate
      (to compare with σ0), and ``spread_stderr``.

    Clusters with fewer than 2 assigned tokens get NaN.
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
    """Mean and spread of the tokens assigned to each cluster, against μ_k and σ0.

    Sums are taken around μ_k (no cancellation); standard errors are delete-one-sequence
    jackknife estimates.
    """
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
    """W2² between the empirical laws of each column of ``px`` (N, P) and ``py`` (M, P),
    both sorted along axis 0: ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du, exact for empirical quantiles."""
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
    """Squared sliced 2-Wasserstein distance SW2² between two token clouds, and its
    Monte Carlo standard error over directions.

    ``SW2²(X, Y) = E_θ W2²(θ·X, θ·Y)``, θ uniform on the unit sphere; each W2² is exact
    between the empirical 1-D laws (sorted projections). The estimate averages ``P`` random
    directions (or the given ``directions`` (P, d), to share them across comparisons); the
    error bar is std/√P over directions: it covers the choice of directions only,
    **conditional on the two clouds**, not the sampling noise of the clouds (see
    :func:`sliced_wasserstein_to_truth` for that). Tokens are pooled: ``x`` (N, d) or
    (..., d), ``y`` likewise; sizes may differ. For Gaussians N(m, I) and N(m + δ, I),
    SW2² = E(θ·δ)² = ‖δ‖² / d.
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
    """SW2² of a sample set against exact samples, and the noise floor.

    Over ``n_repeats`` repeats r with fresh exact sets A_r, B_r of the same shape as the
    samples S and shared directions: ``value`` = mean_r SW2²(S, A_r), ``floor`` =
    mean_r SW2²(B_r, A_r) (what perfect samples score at this size), ``excess`` =
    mean_r (SW2²(S, A_r) − SW2²(B_r, A_r)), whose expectation is 0 when S is drawn from the
    mixture. The ``*_stderr`` are over repeats, conditional on S (they do not cover the
    randomness of S itself); ``floor_sd`` is the spread of one floor draw, the scale on which
    a single sample set's value fluctuates. Tokens are pooled: this compares the law of one
    token, not the joint law of a sequence.
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
    """Compare ``samples`` with fresh exact samples of the same size in SW2² and give the
    noise floor, so that "indistinguishable at this sample size" can be read off: the
    excess is consistent with 0 (see :class:`SlicedComparison`)."""
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
        """One row for a table: occupancy test, worst mean error (samples and exact
        reference), average spread (samples, reference, σ0) and the SW2² comparison."""
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
    """Occupancy, per-cluster statistics and the SW2² comparison of ``samples``, with the
    per-cluster statistics of a fresh exact sample set of the same shape as ``reference``
    (it carries the estimators' own biases, e.g. misassigned tokens when clusters overlap)."""
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
