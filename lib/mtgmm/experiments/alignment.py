"""Experiments of chapter *Alignment with the MMSE estimator*: how close trained timestep
banks are to the oracle ε* along a schedule, what their attention does (mean denoising), and
the temperature of their attention against the oracle's 1/s_t².

Notation: at level ᾱ, ``a = √ᾱ``, ``b = √(1−ᾱ)``, ``s² = a²σ0² + b²``; rows are tokens and a
query row is ``q = x W_KQ``. The *temperature* of a key–query matrix is ``τ = α s²``, α its
P-coefficient in ``α P + β P⊥ + γ J``; the oracle construction has τ = 1.

Sizes come from :func:`mtgmm.runtime.by_preset`: the quick preset (a 2-core CPU) evaluates
64 sequences per timestep and scans the best model at L ≤ 512 with three fitting seeds; the
full preset (a GPU) uses four times more sequences and L up to 2048.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .._checks import alpha_bar_tensor, positive_int
from ..attention import (
    WEIGHT_NAMES,
    AttentionBank,
    SymmetricBasis,
    attention_weights,
    mean_denoising_weights,
)
from ..best import best_in_class, readout_fit
from ..mixture import MultiTokenGMM, add_noise
from ..oracle import oracle_eps, posterior_weights
from ..runtime import by_preset
from ..schedules import NoiseSchedule
from ..theory import (
    attention_limit,
    limit_excess,
    reduced_coordinates,
    weights_from_coordinates,
)

# --------------------------------------------------------------------------------------------
# Estimates with standard errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate ``mean`` and its standard error ``stderr`` (same shapes)."""

    mean: Tensor
    stderr: Tensor


def _mean(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over the first axis (the independent units) and its standard error."""
    n = values.shape[0]
    return values.mean(0), values.std(0) / n**0.5


def _ratio_of_means(num: Tensor, den: Tensor) -> tuple[Tensor, Tensor]:
    """``Σ num / Σ den`` over the first axis and its delta-method standard error,
    ``sd(num − R den) / (√n mean(den))``."""
    ratio = num.mean(0) / den.mean(0)
    n = num.shape[0]
    return ratio, (num - ratio * den).std(0) / (n**0.5 * den.mean(0))


def _stack(rows: list[tuple[Tensor, Tensor]]) -> Estimate:
    """Stack (mean, stderr) pairs along a new last axis (one per timestep)."""
    return Estimate(
        torch.stack([r[0] for r in rows], -1), torch.stack([r[1] for r in rows], -1)
    )


# --------------------------------------------------------------------------------------------
# Reference denoisers: the best linear map, uniform attention, (tempered) mean denoising
# --------------------------------------------------------------------------------------------


def _level(alpha_bar: float) -> float:
    ab = alpha_bar_tensor(alpha_bar)
    if ab.numel() != 1:
        raise ValueError("alpha_bar must be a single value")
    return float(ab)


def linear_weights(gmm: MultiTokenGMM, alpha_bar: float) -> Tensor:
    """The best per-token linear noise predictor ``ε̂ = x W`` (no attention), float64 (d, d):

        W = b M⁻¹,   M = E[xᵀx] = a² (Σ_k π_k μ_kᵀ μ_k + σ0² I) + b² I,

    the normal equations of least squares with ``E[xᵀ ε] = b I`` (ε is independent of x0).
    As ε* = E[ε | x], W is also the best linear approximation of ε* (chapter *Alignment with
    the MMSE estimator*)."""
    ab = _level(alpha_bar)
    means = gmm.means.to(torch.float64)
    weights = gmm.weights.to(torch.float64)
    eye = torch.eye(gmm.dim, dtype=torch.float64)
    second = ab * ((means.T * weights) @ means + gmm.sigma0**2 * eye) + (1 - ab) * eye
    return (1 - ab) ** 0.5 * torch.linalg.inv(second)


def tempered_weights(
    gmm: MultiTokenGMM, alpha_bar: float, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Tempered mean denoising: ``W_KQ = τ P/s²``, ``W_V = −(b/s²) P``,
    ``W_S = (b/s²)(I + τ P)`` (τ = ``temperature``; τ = 1 is
    :func:`mtgmm.mean_denoising_weights`, from which it is built: τ W_KQ, W_V and
    W_S + (1 − τ) W_V). As L → ∞ the layer tends to ``(b/s²)(x − a m_τ(x))`` with
    ``m_τ = Σ_k ω_k μ_k`` and ω the tempered posterior (proposition *tempered mean
    denoising*)."""
    w_kq, w_v, w_s = mean_denoising_weights(gmm, alpha_bar)
    return temperature * w_kq, w_v, w_s + (1 - temperature) * w_v


def _bank_from(weights: list[tuple[Tensor, Tensor, Tensor]], dim: int) -> AttentionBank:
    """A float32 CPU bank holding one (W_KQ, W_V, W_S) per timestep."""
    bank = AttentionBank(len(weights), dim)
    with torch.no_grad():
        for name, mats in zip(WEIGHT_NAMES, zip(*weights, strict=True), strict=True):
            getattr(bank, name).copy_(torch.stack(mats))
    return bank.requires_grad_(False)


def construction_bank(
    gmm: MultiTokenGMM, schedule: NoiseSchedule, temperature: float = 1.0
) -> AttentionBank:
    """The (tempered) mean-denoising construction at every timestep (:func:`tempered_weights`;
    ``temperature=1`` gives :func:`mtgmm.mean_denoising_weights`)."""
    return _bank_from(
        [tempered_weights(gmm, ab, temperature) for ab in schedule.alpha_bar.tolist()],
        gmm.dim,
    )


def linear_bank(gmm: MultiTokenGMM, schedule: NoiseSchedule) -> AttentionBank:
    """The best per-token linear map of :func:`linear_weights` at every timestep (W_KQ = W_V
    = 0, W_S = W): the baseline without attention."""
    zero = torch.zeros(gmm.dim, gmm.dim, dtype=torch.float64)
    mats = [(zero, zero, linear_weights(gmm, ab)) for ab in schedule.alpha_bar.tolist()]
    return _bank_from(mats, gmm.dim)


def uniform_attention_bank(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    n_tokens: int,
    n_sequences: int | None = None,
    seed: int = 0,
) -> AttentionBank:
    """The best symmetric layer with ``W_KQ = 0`` at every timestep: attention is the plain
    average of the sequence, and ``W_V, W_S`` are the least-squares readout of
    :func:`mtgmm.best.readout_fit` on ``n_sequences`` sequences (default ``max(32, 2^13/L)``).
    The baseline with attention but no similarity."""
    n_tokens = positive_int(n_tokens, "n_tokens")
    n_sequences = n_sequences or max(32, 2**13 // n_tokens)
    mats = []
    for t, ab in enumerate(schedule.alpha_bar.tolist()):
        model, _, _ = readout_fit(
            gmm,
            ab,
            n_tokens,
            torch.zeros(3),
            n_sequences=n_sequences,
            generator=torch.Generator().manual_seed(seed + t),
            n_eval_sequences=2,
        )
        mats.append(tuple(model.weights().values()))
    return _bank_from(mats, gmm.dim)


# --------------------------------------------------------------------------------------------
# Sequences along a schedule
# --------------------------------------------------------------------------------------------


def _timestep_sequences(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    n_sequences: int,
    n_tokens: int,
    generator: torch.Generator,
) -> Iterator[tuple[int, float, Tensor, Tensor]]:
    """For every timestep t: ``(t, ᾱ_t, x_t, labels)`` with fresh float32 CPU sequences
    ``x_t`` (n, L, d) and their cluster labels (n, L)."""
    for t, ab in enumerate(schedule.alpha_bar.tolist()):
        x0, labels = gmm.sample(n_sequences, n_tokens, generator=generator)
        x_t, _ = add_noise(x0, ab, generator=generator)
        yield t, ab, x_t, labels


def _check_banks(banks: Mapping[str, AttentionBank], schedule: NoiseSchedule) -> None:
    if not banks:
        raise ValueError("predictors must hold at least one bank")
    for name, bank in banks.items():
        if bank.n_steps != schedule.n_steps:
            raise ValueError(
                f"bank {name!r} has {bank.n_steps} timesteps, the schedule {schedule.n_steps}"
            )


def _run(bank: AttentionBank, x_t: Tensor, t: int) -> Tensor:
    """The bank's ε̂ for ``x_t`` at timestep t, computed on the bank's device, back on the CPU."""
    param = bank.W_S
    with torch.no_grad():
        return bank(x_t.to(param.device, param.dtype), t).float().cpu()


# --------------------------------------------------------------------------------------------
# 1. Alignment along the schedule
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignmentProfile:
    """How close each predictor's ε̂ is to ε* at every timestep (rows: ``names``; columns:
    timesteps; all predictors on the same sequences of ``n_tokens`` tokens).

    ``relative_error``: the root of the ratio of means ``E‖ε̂ − ε*‖² / E‖ε*‖²`` over tokens and
    sequences (0 for the oracle, 1 for ε̂ = 0). ``cosine``: the mean over tokens of
    ``cos(ε̂_l, ε*_l)``. ``excess``: ``E‖ε̂ − ε*‖²`` per token. Standard errors treat the
    ``n_sequences`` sequences of each timestep as the independent units.
    """

    names: tuple[str, ...]
    n_tokens: int
    n_sequences: int
    alpha_bar: Tensor
    relative_error: Estimate
    cosine: Estimate
    excess: Estimate


def alignment_profile(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    predictors: Mapping[str, AttentionBank],
    n_tokens: int,
    n_sequences: int | None = None,
    seed: int = 0,
) -> AlignmentProfile:
    """Evaluate every bank of ``predictors`` against ε* on ``n_sequences`` fresh sequences per
    timestep (default ``by_preset(64, 256)``) of ``n_tokens`` tokens (see
    :class:`AlignmentProfile`)."""
    _check_banks(predictors, schedule)
    n_tokens = positive_int(n_tokens, "n_tokens")
    n_sequences = positive_int(n_sequences or by_preset(64, 256), "n_sequences")
    if n_sequences < 2:
        raise ValueError("n_sequences must be >= 2 for standard errors")
    g32 = gmm.to(device="cpu", dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    rel, cos, exc = [], [], []
    for t, ab, x_t, _ in _timestep_sequences(
        g32, schedule, n_sequences, n_tokens, generator
    ):
        target = oracle_eps(g32, x_t, ab)
        eps_hat = torch.stack([_run(bank, x_t, t) for bank in predictors.values()], 1)
        gap = ((eps_hat - target[:, None]) ** 2).sum(-1).mean(-1).double()  # (n, P)
        size = (target**2).sum(-1).mean(-1).double()[:, None].expand_as(gap)
        ratio, ratio_se = _ratio_of_means(gap, size)
        rel.append((ratio.sqrt(), ratio_se / (2 * ratio.sqrt())))
        cosines = F.cosine_similarity(eps_hat, target[:, None], dim=-1, eps=1e-12)
        cos.append(_mean(cosines.mean(-1).double()))
        exc.append(_mean(gap))
    return AlignmentProfile(
        tuple(predictors),
        n_tokens,
        n_sequences,
        schedule.alpha_bar,
        _stack(rel),
        _stack(cos),
        _stack(exc),
    )


# --------------------------------------------------------------------------------------------
# 2. Mean denoising made visible
# --------------------------------------------------------------------------------------------


def cluster_attention_limit(
    gmm: MultiTokenGMM, alpha_bar: float | Tensor, q: Tensor
) -> Tensor:
    """``ω(q) = softmax_k(log π_k + a⟨q, μ_k⟩)``, shape ``q.shape[:-1] + (K,)``: as L → ∞ the
    share of the attention weight of query ``q`` that falls on the keys of cluster k
    (the k-th term of :func:`mtgmm.theory.attention_limit`'s tilted mixture)."""
    ab = alpha_bar_tensor(alpha_bar, like=q)
    logits = ab.sqrt()[..., None] * (q @ gmm.means.to(q).T)
    return torch.softmax(gmm.log_weights.to(q) + logits, dim=-1)


def tempered_posterior(
    gmm: MultiTokenGMM, x_t: Tensor, alpha_bar: float | Tensor, temperature: float
) -> Tensor:
    """``ω ∝ π^{1−τ} w^τ`` (w the oracle posterior of x_t, τ = ``temperature``), shape
    ``x_t.shape[:-1] + (K,)``; for uniform π, ``w^τ / Σ_k w_k^τ``. With equal-norm means this
    is :func:`cluster_attention_limit` at ``q = τ x P / s²`` (proposition *tempered mean
    denoising*), computed here from the posterior instead."""
    log_w = posterior_weights(gmm, x_t, alpha_bar).clamp_min(1e-300).log()
    return torch.softmax(
        (1 - temperature) * gmm.log_weights.to(x_t) + temperature * log_w, -1
    )


def tempered_limit_excess(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    temperature: float,
    n_samples: int = 100_000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """The L = ∞ excess of :func:`tempered_weights` from the proposition's formula,

        E‖ε_τ − ε*‖² = (a b / s²)² E‖m_τ(x) − m(x)‖²,

    over marginal tokens, with ``m_τ`` from :func:`tempered_posterior` (not through attention);
    returns the mean and its standard error (float64)."""
    n_samples = positive_int(n_samples, "n_samples")
    ab = _level(alpha_bar)
    g64 = gmm.to(device="cpu", dtype=torch.float64)
    x0, _ = g64.sample(n_samples, 1, generator=generator)
    x, _ = add_noise(x0[:, 0], ab, generator=generator)
    w = posterior_weights(g64, x, ab)
    omega = tempered_posterior(g64, x, ab, temperature)
    gain = ab**0.5 * (1 - ab) ** 0.5 / g64.noise_variance(ab).item()
    values = gain**2 * (((omega - w) @ g64.means) ** 2).sum(-1)
    mean, stderr = _mean(values)
    return mean.item(), stderr.item()


def limit_readout_excess(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    w_kq: Tensor,
    n_samples: int = 100_000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """The L = ∞ excess of the best *unrestricted* readout for a fixed ``W_KQ``: the best
    ``x W_S + h_∞(x) W_V`` over all d × d matrices W_S, W_V, with h_∞ =
    :func:`mtgmm.theory.attention_limit` at ``q = x W_KQ``; fitted by least squares on
    ``n_samples`` marginal tokens and scored on as many fresh ones. Returns the mean excess
    and its standard error.

    Since ``h_∞ = s² x W_KQ + a Σ_k ω_k μ_k`` and the first term is linear in x, the same
    functions are ``x A + (h_∞ Uᵀ) B`` with U an orthonormal basis of the span of the means:
    the features ``[x, h_∞ Uᵀ]`` have full rank (d + rank), so the fit is well posed."""
    n_samples = positive_int(n_samples, "n_samples")
    ab = _level(alpha_bar)
    g64 = gmm.to(device="cpu", dtype=torch.float64)
    w_kq = torch.as_tensor(w_kq, dtype=torch.float64)
    span = g64.span_basis()

    def features_and_target() -> tuple[Tensor, Tensor]:
        x0, _ = g64.sample(n_samples, 1, generator=generator)
        x, _ = add_noise(x0[:, 0], ab, generator=generator)
        h = attention_limit(g64, ab, x @ w_kq)
        return torch.cat([x, h @ span.T], -1), oracle_eps(g64, x, ab)

    fit_x, fit_y = features_and_target()
    readout = torch.linalg.lstsq(fit_x, fit_y).solution
    test_x, test_y = features_and_target()
    mean, stderr = _mean(((test_x @ readout - test_y) ** 2).sum(-1))
    return mean.item(), stderr.item()


def posterior_averaging_map(
    gmm: MultiTokenGMM, x_t: Tensor, alpha_bar: float
) -> Tensor:
    """The oracle's co-membership averaging map ``A*_ij = Σ_k w_k(x_i) w_k(x_j) / N_k``,
    ``N_k = Σ_j w_k(x_j)``, for one sequence ``x_t`` (L, d) or a batch (…, L, L). Rows sum to
    1, and ``Σ_j A*_ij x_j = Σ_k w_k(x_i) x̄_k`` with ``x̄_k`` the posterior-weighted mean of the
    tokens, which tends to ``a m(x_i)`` as L → ∞: mean denoising with the posterior known."""
    w = posterior_weights(gmm, x_t, alpha_bar)  # (..., L, K)
    return (w / w.sum(-2, keepdim=True)) @ w.transpose(-1, -2)


@dataclass(frozen=True)
class AttentionSnapshot:
    """One sequence of ``L`` tokens, ordered by cluster label (``labels``, sorted), noised
    with the same x0 and ε at each of ``timesteps``: the bank's attention matrices
    ``attention`` (n_t, L, L) and the oracle's :func:`posterior_averaging_map`
    ``posterior_map`` (n_t, L, L)."""

    timesteps: tuple[int, ...]
    alpha_bar: Tensor
    labels: Tensor
    attention: Tensor
    posterior_map: Tensor


def attention_snapshot(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    bank: AttentionBank,
    timesteps: tuple[int, ...],
    n_tokens: int,
    seed: int = 0,
) -> AttentionSnapshot:
    """Draw one sequence, sort its tokens by label and record both maps at ``timesteps``."""
    generator = torch.Generator().manual_seed(seed)
    g32 = gmm.to(device="cpu", dtype=torch.float32)
    x0, labels = g32.sample(1, positive_int(n_tokens, "n_tokens"), generator=generator)
    order = torch.argsort(labels[0], stable=True)
    x0, labels = x0[0, order], labels[0, order]
    eps = torch.randn(x0.shape, generator=generator)
    attention, posterior = [], []
    for t in timesteps:
        ab = schedule.alpha_bar[t].item()
        x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
        attention.append(attention_weights(x_t, bank.W_KQ[t].detach().float().cpu()))
        posterior.append(posterior_averaging_map(g32, x_t, ab))
    return AttentionSnapshot(
        tuple(timesteps),
        schedule.alpha_bar[list(timesteps)],
        labels,
        torch.stack(attention),
        torch.stack(posterior),
    )


@dataclass(frozen=True)
class MeanDenoisingProfile:
    """What one bank's attention does at every timestep (means over the tokens of a
    sequence; standard errors over ``n_sequences`` sequences of ``n_tokens`` tokens).

    * ``own_mass``: attention weight a token puts on the tokens of its own cluster (itself
      included); ``own_mass_limit``: its L = ∞ value ``E ω_z(x W_KQ)``
      (:func:`cluster_attention_limit`, the bank's own W_KQ); ``posterior_own``: ``E w_z(x)``,
      the oracle posterior of the true label, which is the L = ∞ value at the oracle
      temperature; uniform attention gives about 1/K.
    * The attention's *implied centre* ``ĉ = (h − s² q) P`` (h the attention output, q the
      query): by :func:`mtgmm.theory.attention_limit` it tends to ``a Σ_k ω_k μ_k``, the
      attention's estimate of the shrunken centre. ``centre_to_oracle`` is
      ``E‖ĉ − a m(x)‖²``, ``centre_to_truth`` is ``E‖ĉ − a μ_z‖²``, ``limit_to_oracle`` is
      ``E‖a Σ_k ω_k μ_k − a m(x)‖²`` (what is left at L = ∞) and ``oracle_to_truth`` is
      ``E‖a m(x) − a μ_z‖²``, each divided by ``E‖a μ_z‖²`` (ratios of means).
    """

    n_tokens: int
    n_sequences: int
    alpha_bar: Tensor
    own_mass: Estimate
    own_mass_limit: Estimate
    posterior_own: Estimate
    centre_to_oracle: Estimate
    centre_to_truth: Estimate
    limit_to_oracle: Estimate
    oracle_to_truth: Estimate


def _own_share(probabilities: Tensor, labels: Tensor) -> Tensor:
    """Per sequence, the mean over tokens of the probability (…, L, K) of the true label."""
    return probabilities.gather(-1, labels[..., None])[..., 0].mean(-1).double()


def _mean_denoising_row(
    gmm: MultiTokenGMM, alpha_bar: float, w_kq: Tensor, x_t: Tensor, labels: Tensor
) -> dict[str, tuple[Tensor, Tensor]]:
    """The :class:`MeanDenoisingProfile` entries of one timestep (sequences ``x_t``)."""
    a, s2 = alpha_bar**0.5, gmm.noise_variance(alpha_bar).item()
    q = x_t @ w_kq
    attn = attention_weights(x_t, w_kq)
    same = (labels[..., :, None] == labels[..., None, :]).to(attn)
    omega = cluster_attention_limit(gmm, alpha_bar, q)
    w = posterior_weights(gmm, x_t, alpha_bar)
    centre = (attn @ x_t - s2 * q) @ gmm.span_projector().to(x_t)
    truth, oracle, limit = (
        a * gmm.means[labels],
        a * w @ gmm.means,
        a * omega @ gmm.means,
    )
    scale = (truth**2).sum(-1).mean(-1).double()

    def distance(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return _ratio_of_means(((u - v) ** 2).sum(-1).mean(-1).double(), scale)

    return {
        "own_mass": _mean((attn * same).sum(-1).mean(-1).double()),
        "own_mass_limit": _mean(_own_share(omega, labels)),
        "posterior_own": _mean(_own_share(w, labels)),
        "centre_to_oracle": distance(centre, oracle),
        "centre_to_truth": distance(centre, truth),
        "limit_to_oracle": distance(limit, oracle),
        "oracle_to_truth": distance(oracle, truth),
    }


def mean_denoising_profile(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    bank: AttentionBank,
    n_tokens: int,
    n_sequences: int | None = None,
    seed: int = 0,
) -> MeanDenoisingProfile:
    """Measure :class:`MeanDenoisingProfile` on ``n_sequences`` fresh sequences per timestep
    (default ``by_preset(64, 256)``)."""
    _check_banks({"bank": bank}, schedule)
    n_tokens = positive_int(n_tokens, "n_tokens")
    n_sequences = positive_int(n_sequences or by_preset(64, 256), "n_sequences")
    if n_sequences < 2:
        raise ValueError("n_sequences must be >= 2 for standard errors")
    g32 = gmm.to(device="cpu", dtype=torch.float32)
    rows: dict[str, list] = {}
    generator = torch.Generator().manual_seed(seed)
    for t, ab, x_t, labels in _timestep_sequences(
        g32, schedule, n_sequences, n_tokens, generator
    ):
        w_kq = bank.W_KQ[t].detach().float().cpu()
        for name, value in _mean_denoising_row(g32, ab, w_kq, x_t, labels).items():
            rows.setdefault(name, []).append(value)
    estimates = {name: _stack(values) for name, values in rows.items()}
    return MeanDenoisingProfile(n_tokens, n_sequences, schedule.alpha_bar, **estimates)


# --------------------------------------------------------------------------------------------
# 3. The temperature
# --------------------------------------------------------------------------------------------


def bank_temperature(
    bank: AttentionBank, gmm: MultiTokenGMM, schedule: NoiseSchedule
) -> Tensor:
    """``τ_t = α_t s_t²`` per timestep (float64, (T,)), α_t the P-coefficient of the
    symmetric part of the bank's ``W_KQ[t]`` (:func:`mtgmm.theory.reduced_coordinates`)."""
    _check_banks({"bank": bank}, schedule)
    alpha = reduced_coordinates(bank, SymmetricBasis(gmm))[:, 0, 0]
    return alpha * gmm.noise_variance(schedule.alpha_bar.to(torch.float64)).cpu()


@dataclass(frozen=True)
class TemperatureScan:
    """The best symmetric model (:func:`mtgmm.best.best_in_class`) on a grid of noise levels
    (rows) and token counts (columns), fitted from ``n_seeds`` independent samples.

    ``temperature``: τ = α s² of the fitted W_KQ, mean and standard error over the seeds (the
    fit is the random part). ``excess``: its excess risk at L on fresh sequences (mean over
    seeds; the standard error combines the evaluations'). ``limit``: the L = ∞ excess of the
    same weights (:func:`mtgmm.theory.limit_excess`), the part more tokens would not remove;
    ``excess − limit`` is the finite-token part. ``snr``: the cluster SNR a r / s per row.
    """

    alpha_bars: Tensor
    token_counts: Tensor
    n_seeds: int
    snr: Tensor
    temperature: Estimate
    excess: Estimate
    limit: Estimate


def temperature_scan(
    gmm: MultiTokenGMM,
    alpha_bars: tuple[float, ...] | None = None,
    token_counts: tuple[int, ...] | None = None,
    n_seeds: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> TemperatureScan:
    """Fit :func:`mtgmm.best.best_in_class` at every (ᾱ, L) with ``n_seeds`` seeds (defaults:
    ᾱ ∈ {0.9, 0.5} and L ∈ {8, 32, 128, 512} quick, ᾱ ∈ {0.9, 0.7, 0.5} and L up to 2048
    full; 3 seeds), each on about ``by_preset(2^13, 2^15)`` tokens (at least 16 sequences), and
    score each fit at L and at L = ∞ (see :class:`TemperatureScan`)."""
    alpha_bars = alpha_bars or by_preset((0.9, 0.5), (0.9, 0.7, 0.5))
    token_counts = token_counts or by_preset((8, 32, 128, 512), (8, 32, 128, 512, 2048))
    n_seeds = positive_int(n_seeds or 3, "n_seeds")
    if n_seeds < 2:
        raise ValueError("n_seeds must be >= 2 for a standard error of the temperature")
    budget = by_preset(2**13, 2**15)
    shape = (len(alpha_bars), len(token_counts), n_seeds)
    tau, excess, excess_se, limit, limit_se = (
        torch.zeros(shape, dtype=torch.float64) for _ in range(5)
    )
    basis = SymmetricBasis(gmm.to(device="cpu", dtype=torch.float64))
    grid = [
        (i, j, k)
        for i in range(len(alpha_bars))
        for j in range(len(token_counts))
        for k in range(n_seeds)
    ]
    for i, j, k in tqdm(grid, desc="best in class", disable=not progress):
        ab, n_tokens = alpha_bars[i], token_counts[j]
        generator = torch.Generator().manual_seed(seed + 10_000 * i + 100 * j + k)
        best = best_in_class(
            gmm,
            ab,
            n_tokens,
            n_sequences=max(16, budget // n_tokens),
            generator=generator,
            n_eval_sequences=by_preset(256, 1024),
            bayes_samples=1000,
        )
        weights = weights_from_coordinates(best.coefficients, basis)
        tau[i, j, k] = best.coefficients[0, 0] * gmm.noise_variance(ab).item()
        excess[i, j, k], excess_se[i, j, k] = best.excess, best.stderr
        limit[i, j, k], limit_se[i, j, k] = limit_excess(
            weights, gmm, ab, by_preset(30_000, 200_000), generator
        )
    levels = torch.tensor(alpha_bars, dtype=torch.float64)
    return TemperatureScan(
        levels,
        torch.tensor(token_counts),
        n_seeds,
        gmm.cluster_snr(levels),
        Estimate(*_mean(tau.movedim(-1, 0))),
        Estimate(excess.mean(-1), (excess_se**2).sum(-1).sqrt() / n_seeds),
        Estimate(limit.mean(-1), (limit_se**2).sum(-1).sqrt() / n_seeds),
    )


def tempered_profile(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    temperatures: Tensor,
    n_samples: int | None = None,
    seed: int = 0,
) -> tuple[Estimate, Estimate]:
    """The L = ∞ excess against the temperature τ of ``W_KQ = τ P / s²``: with the
    construction's readout (:func:`tempered_limit_excess`) and with the best unrestricted
    readout (:func:`limit_readout_excess`); each an :class:`Estimate` of shape
    ``temperatures.shape``, on ``n_samples`` tokens (default ``by_preset(20_000, 200_000)``)."""
    n_samples = n_samples or by_preset(20_000, 200_000)
    s2 = gmm.noise_variance(_level(alpha_bar)).item()
    p = gmm.span_projector().to(torch.float64)
    construction, readout = [], []
    for j, tau in enumerate(torch.as_tensor(temperatures).tolist()):
        generator = torch.Generator().manual_seed(seed + j)
        construction.append(
            tempered_limit_excess(gmm, alpha_bar, tau, n_samples, generator)
        )
        readout.append(
            limit_readout_excess(gmm, alpha_bar, tau * p / s2, n_samples, generator)
        )
    return tuple(
        Estimate(*torch.tensor(rows, dtype=torch.float64).T)
        for rows in (construction, readout)
    )


__all__ = [
    "AlignmentProfile",
    "AttentionSnapshot",
    "Estimate",
    "MeanDenoisingProfile",
    "TemperatureScan",
    "alignment_profile",
    "attention_snapshot",
    "bank_temperature",
    "cluster_attention_limit",
    "construction_bank",
    "limit_readout_excess",
    "linear_bank",
    "linear_weights",
    "mean_denoising_profile",
    "posterior_averaging_map",
    "tempered_limit_excess",
    "tempered_posterior",
    "tempered_profile",
    "tempered_weights",
    "temperature_scan",
    "uniform_attention_bank",
]
