"""Experiments of chapter *From denoiser to sampler*: ancestral sampling with the oracle and
with trained timestep banks, and what the samples look like against the true mixture.

Sizes come from :func:`mtgmm.runtime.by_preset`: the quick preset (a 2-core CPU) uses a
cosine schedule of T = 50 steps, banks for L = 8 and 128 trained briefly, and about 8,000
sampled tokens per sampler; the full preset (a GPU) uses T = 1000, the default training
recipe of :func:`mtgmm.training.train_bank` and eight times more tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention import WEIGHT_NAMES, AttentionBank, SymmetricBasis
from ..metrics import (
    SampleSummary,
    cluster_assignments,
    cluster_statistics,
    summarize_samples,
)
from ..mixture import MultiTokenGMM
from ..oracle import bayes_risk_estimates
from ..runtime import by_preset, pick_device
from ..sampling import NoisePredictor, ddpm_sample, oracle_eps_fn, reverse_coefficients
from ..schedules import NoiseSchedule
from ..training import BankHistory, train_bank


def chapter_schedule(n_steps: int | None = None) -> NoiseSchedule:
    """The chapter's schedule: cosine with T = ``n_steps`` (default 50 quick, 1000 full)."""
    return NoiseSchedule.cosine(n_steps or by_preset(50, 1000))


def sample_budget() -> int:
    """Tokens drawn per sampler for the quality comparisons (8,192 quick, 65,536 full)."""
    return by_preset(8192, 65536)


# --------------------------------------------------------------------------------------------
# The oracle sampler and the number of steps
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscretisationSweep:
    """Oracle samples for several schedule lengths T and both reverse variances.

    ``spread[v, i]`` is the within-cluster spread √(tr Cov_k / d), averaged over clusters, of
    oracle samples drawn with variance ``variances[v]`` and T = ``n_steps[i]`` (to compare
    with σ0); ``spread_stderr`` its standard error (per-cluster jackknife errors combined as
    independent, the clusters holding disjoint tokens). ``mean_error`` is the root mean
    square over clusters of ‖mean_k − μ_k‖ and ``mean_error_floor`` the value sampling noise
    alone gives. ``reference_*`` are the same statistics for exact samples of the same size.
    """

    n_steps: tuple[int, ...]
    variances: tuple[str, ...]
    spread: Tensor
    spread_stderr: Tensor
    mean_error: Tensor
    mean_error_floor: Tensor
    reference_spread: float
    reference_spread_stderr: float
    n_tokens: int


def _spread_and_error(
    samples: Tensor, gmm: MultiTokenGMM
) -> tuple[float, float, float, float]:
    """(mean spread, its standard error, RMS mean error, RMS floor) of ``samples``."""
    stats = cluster_statistics(samples, gmm)
    k = stats.spread.numel()
    return (
        stats.spread.mean().item(),
        (stats.spread_stderr**2).sum().sqrt().item() / k,
        (stats.mean_error**2).mean().sqrt().item(),
        (stats.mean_error_floor**2).mean().sqrt().item(),
    )


def discretisation_sweep(
    gmm: MultiTokenGMM,
    n_steps: tuple[int, ...] | None = None,
    variances: tuple[str, ...] = ("beta", "posterior"),
    n_sequences: int | None = None,
    n_tokens: int = 8,
    seed: int = 0,
) -> DiscretisationSweep:
    """Sample with the oracle ε* on cosine schedules of several lengths T and measure the
    within-cluster spread and the cluster means of the samples (see
    :class:`DiscretisationSweep`). The oracle acts token by token, so ``n_tokens`` only
    groups tokens into sequences for the error bars."""
    n_steps = n_steps or by_preset(
        (10, 20, 50, 100, 1000), (10, 20, 50, 100, 200, 500, 1000)
    )
    n_sequences = n_sequences or by_preset(1024, 8192)
    shape = (len(variances), len(n_steps))
    spread, spread_se, error, floor = (
        torch.zeros(shape, dtype=torch.float64) for _ in range(4)
    )
    for v, variance in enumerate(variances):
        for i, steps in enumerate(n_steps):
            schedule = NoiseSchedule.cosine(steps)
            x = ddpm_sample(
                oracle_eps_fn(gmm, schedule),
                schedule,
                n_sequences,
                n_tokens,
                variance=variance,
                generator=torch.Generator().manual_seed(seed + 100 * v + i),
                progress=False,
            )
            spread[v, i], spread_se[v, i], error[v, i], floor[v, i] = _spread_and_error(
                x, gmm
            )
    exact, _ = gmm.sample(
        n_sequences, n_tokens, generator=torch.Generator().manual_seed(seed - 1)
    )
    ref, ref_se, _, _ = _spread_and_error(exact, gmm)
    return DiscretisationSweep(
        n_steps=tuple(n_steps),
        variances=tuple(variances),
        spread=spread,
        spread_stderr=spread_se,
        mean_error=error,
        mean_error_floor=floor,
        reference_spread=ref,
        reference_spread_stderr=ref_se,
        n_tokens=n_sequences * n_tokens,
    )


# --------------------------------------------------------------------------------------------
# Training the banks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedBank:
    """A timestep bank trained by :func:`mtgmm.training.train_bank` on sequences of
    ``n_tokens`` tokens, with its training ``history`` (final per-timestep excess risk in
    ``history.excess``) and the ``steps`` and ``batch_size`` it was trained with."""

    n_tokens: int
    bank: AttentionBank
    history: BankHistory
    steps: int
    batch_size: int


def bank_recipe(n_tokens: int) -> tuple[int, int]:
    """(steps, batch size per timestep) for a bank at L = ``n_tokens``.

    Full preset: the default recipe of :func:`~mtgmm.training.train_bank` (600 steps, 64
    sequences). Quick preset: 300 steps of 64 sequences for short contexts, and for long
    ones (L > 32) 100 steps of 8 sequences, which keeps the cost per step at
    T·B·L² ≈ 6.6 million attention scores (T = 50) and the bank short of fully trained.
    """
    if by_preset(False, True):
        return 600, 64
    return (300, 64) if n_tokens <= 32 else (100, 8)


def train_banks(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    token_counts: tuple[int, ...] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    steps: int | None = None,
    batch_size: int | None = None,
) -> list[TrainedBank]:
    """Train one :class:`~mtgmm.attention.AttentionBank` per L in ``token_counts`` (default
    8 and 128) over the whole ``schedule``, with the steps and batch size of
    :func:`bank_recipe` unless ``steps`` or ``batch_size`` are given; the final per-timestep
    excess is evaluated on ``by_preset(256, 1024)`` fresh sequences."""
    token_counts = token_counts or (8, 128)
    device = torch.device(device) if device is not None else pick_device()
    trained = []
    for j, n_tokens in enumerate(token_counts):
        recipe_steps, recipe_batch = bank_recipe(n_tokens)
        n_steps, batch = steps or recipe_steps, batch_size or recipe_batch
        bank = AttentionBank(schedule.n_steps, gmm.dim).to(device)
        history = train_bank(
            bank,
            gmm.to(device=device),
            schedule,
            n_tokens,
            n_steps,
            generator=torch.Generator(device=device).manual_seed(seed + j),
            progress=progress,
            batch_size=batch,
            n_eval_sequences=by_preset(256, 1024),
        )
        trained.append(
            TrainedBank(n_tokens, bank.requires_grad_(False), history, n_steps, batch)
        )
    return trained


# --------------------------------------------------------------------------------------------
# Which timesteps matter: per-step risk and the KL budget
# --------------------------------------------------------------------------------------------


def kl_weights(schedule: NoiseSchedule, variance: str = "beta") -> Tensor:
    """λ_t, float64 ``(T,)``: the KL divergence between two reverse steps from the same x_t
    whose noise predictions differ by δ is ``λ_t ‖δ‖²`` per token.

    The two steps are Gaussians with the same covariance σ_t² I and means that differ by
    ``(β_t / (b_t √α_t)) δ``, so ``λ_t = β_t² / (2 σ_t² α_t b_t²)``; with σ_t² = β_t this is
    ``β_t / (2 α_t b_t²)``. The last step (index 0) adds no noise: its λ is set to 0, and its
    error is a deterministic shift instead (see :class:`RiskProfile`).
    """
    inv_sqrt_alpha, eps_coef, sigma = reverse_coefficients(schedule, variance)
    shift = (inv_sqrt_alpha * eps_coef) ** 2
    return torch.where(
        sigma > 0, shift / (2 * torch.where(sigma > 0, sigma, 1) ** 2), 0.0
    )


@dataclass(frozen=True)
class RiskProfile:
    """Per-timestep Bayes risk and trained-bank excess along a schedule, and the KL budget.

    ``bayes``/``bayes_stderr``: R*_t per token (:func:`mtgmm.bayes_risk_estimates`);
    ``excess``/``excess_stderr``: ``(n_banks, T)``, the banks' final excess risk
    (``BankHistory.excess``); ``weights``: λ_t of :func:`kl_weights`; ``kl``/``kl_stderr``:
    ``Σ_t λ_t excess_t`` per bank, the KL divergence per token between the path of the
    oracle sampler and that of the bank's, down to x_1 (excess measured on the forward
    marginals, which the oracle sampler's states follow up to discretisation error);
    ``final_shift``: the root-mean-square displacement the bank's error causes in the last,
    noise-free step, ``(β_1 / (b_1 √α_1)) √excess_1``.
    """

    alpha_bar: Tensor
    bayes: Tensor
    bayes_stderr: Tensor
    token_counts: tuple[int, ...]
    excess: Tensor
    excess_stderr: Tensor
    weights: Tensor
    kl: Tensor
    kl_stderr: Tensor
    final_shift: Tensor


def risk_profile(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    trained: list[TrainedBank],
    n_samples: int | None = None,
    seed: int = 0,
) -> RiskProfile:
    """Assemble a :class:`RiskProfile`: the Bayes risk of every timestep (``n_samples``
    tokens, default ``by_preset(20_000, 50_000)``, shared across timesteps) and the banks'
    per-timestep excess weighted by :func:`kl_weights`."""
    n_samples = n_samples or by_preset(20_000, 50_000)
    est = bayes_risk_estimates(
        gmm.to(dtype=torch.float64),
        schedule.alpha_bar,
        n_samples,
        torch.Generator().manual_seed(seed),
    )
    weights = kl_weights(schedule)
    excess = torch.stack(
        [torch.as_tensor(tb.history.excess, dtype=torch.float64) for tb in trained]
    )
    stderr = torch.stack(
        [
            torch.as_tensor(tb.history.excess_stderr, dtype=torch.float64)
            for tb in trained
        ]
    )
    inv_sqrt_alpha, eps_coef, _ = reverse_coefficients(schedule)
    return RiskProfile(
        alpha_bar=schedule.alpha_bar,
        bayes=est.estimate,
        bayes_stderr=est.combined_stderr,
        token_counts=tuple(tb.n_tokens for tb in trained),
        excess=excess,
        excess_stderr=stderr,
        weights=weights,
        kl=(weights * excess).sum(-1),
        kl_stderr=((weights * stderr) ** 2).sum(-1).sqrt(),
        final_shift=inv_sqrt_alpha[0] * eps_coef[0] * excess[:, 0].sqrt(),
    )


# --------------------------------------------------------------------------------------------
# Sample quality
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dispersion:
    """Index of dispersion of the per-sequence cluster counts, ``Σ_k Var_i(c_ik) /
    Σ_k L p̂_k (1 − p̂_k)`` (c_ik: tokens of sequence i assigned to cluster k, p̂_k the pooled
    fraction): 1 when the tokens of a sequence are independent, above 1 when they clump
    into the same clusters. ``stderr`` is a delete-one-sequence jackknife error."""

    value: float
    stderr: float


def _dispersion_index(first: Tensor, second: Tensor, n: int, n_tokens: int) -> Tensor:
    """The index from the sums over n sequences of the counts (``first``, (..., K)) and of
    their squares (``second``)."""
    mean = first / n
    var = (second - first**2 / n) / (n - 1)
    p = mean / n_tokens
    return var.sum(-1) / (n_tokens * (p * (1 - p)).sum(-1)).clamp_min(1e-300)


def dispersion(samples: Tensor, gmm: MultiTokenGMM) -> Dispersion:
    """The :class:`Dispersion` of ``samples`` ``(n, L, d)`` (tokens assigned to clusters by
    :func:`mtgmm.metrics.cluster_assignments`)."""
    if samples.ndim != 3 or samples.shape[0] < 3:
        raise ValueError("samples must have shape (n, L, d) with n >= 3 sequences")
    n, n_tokens = samples.shape[:2]
    labels = cluster_assignments(samples, gmm)
    counts = (
        torch.nn.functional.one_hot(labels, gmm.n_clusters).sum(1).to(torch.float64)
    )
    first, second = counts.sum(0), (counts**2).sum(0)
    replicates = _dispersion_index(first - counts, second - counts**2, n - 1, n_tokens)
    spread = ((replicates - replicates.mean()) ** 2).sum()
    value = _dispersion_index(first, second, n, n_tokens).item()
    return Dispersion(value, ((n - 1) / n * spread).sqrt().item())


@dataclass(frozen=True)
class SamplerResult:
    """One sampler's samples ``(n, L, d)`` and their quality: ``summary`` (occupancy,
    per-cluster statistics, sliced Wasserstein against fresh exact samples; see
    :func:`mtgmm.metrics.summarize_samples`) and the within-sequence ``dispersion``."""

    name: str
    n_tokens: int
    samples: Tensor
    summary: SampleSummary
    dispersion: Dispersion


def compare_samplers(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    trained: list[TrainedBank],
    n_total: int | None = None,
    n_projections: int | None = None,
    seed: int = 0,
) -> list[SamplerResult]:
    """Exact samples, oracle DDPM samples and samples of every trained bank, ``n_total``
    tokens each (default :func:`sample_budget`), all measured against the mixture.

    Exact and oracle samples come in sequences of the largest L among the banks; each bank
    samples sequences of its own L. Every sampler starts from the same seed. The sliced
    Wasserstein comparison uses ``n_projections`` directions (default
    ``by_preset(64, 256)``) and 4 repeats; metrics are computed on the CPU.
    """
    n_total = n_total or sample_budget()
    n_projections = n_projections or by_preset(64, 256)
    longest = max((tb.n_tokens for tb in trained), default=8)
    samplers: list[tuple[str, NoisePredictor | None, int]] = [
        ("exact", None, longest),
        ("oracle", oracle_eps_fn(gmm, schedule), longest),
    ]
    samplers += [(f"bank L={tb.n_tokens}", tb.bank, tb.n_tokens) for tb in trained]
    results = []
    for name, eps_fn, n_tokens in samplers:
        n = max(3, n_total // n_tokens)
        if eps_fn is None:
            x, _ = gmm.sample(
                n, n_tokens, generator=torch.Generator().manual_seed(seed)
            )
        else:
            x = _sample(eps_fn, gmm, schedule, n, n_tokens, seed)
        x = x.cpu()
        summary = summarize_samples(
            x, gmm, n_projections, generator=torch.Generator().manual_seed(seed + 1)
        )
        results.append(SamplerResult(name, n_tokens, x, summary, dispersion(x, gmm)))
    return results


def _sample(
    eps_fn: NoisePredictor,
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    n: int,
    n_tokens: int,
    seed: int,
    device: torch.device | str | None = None,
    **kwargs,
):
    """``ddpm_sample`` seeded with ``seed``, on ``device`` (default: the bank's device for a
    bank or a :class:`HybridPredictor`, the CPU otherwise)."""
    if device is None:
        bank = eps_fn.bank if isinstance(eps_fn, HybridPredictor) else eps_fn
        device = (
            bank.W_S.device if isinstance(bank, AttentionBank) else torch.device("cpu")
        )
    generator = torch.Generator(device=device).manual_seed(seed)
    return ddpm_sample(
        eps_fn,
        schedule,
        n,
        n_tokens,
        dim=gmm.dim,
        generator=generator,
        progress=False,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# The shape of one sequence, and its orientation
# --------------------------------------------------------------------------------------------


def _kmeans(
    x: Tensor, k: int, generator: torch.Generator, n_iter: int = 25, n_restarts: int = 4
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on every sequence of ``x`` (n, L, d) at once, best of ``n_restarts``
    random starts (distinct tokens). Returns centres (n, k, d) and the within-cluster sum of
    squares (n,)."""
    n, n_tokens, d = x.shape
    best_sse = torch.full((n,), float("inf"), dtype=x.dtype)
    best = x.new_zeros(n, k, d)
    for _ in range(n_restarts):
        start = torch.rand(n, n_tokens, generator=generator, dtype=x.dtype).argsort(-1)[
            :, :k
        ]
        centres = x.gather(1, start[..., None].expand(n, k, d))
        for _ in range(n_iter + 1):
            labels = torch.cdist(x, centres).argmin(-1)
            one_hot = torch.nn.functional.one_hot(labels, k).to(x)  # (n, L, k)
            counts = one_hot.sum(1)[..., None]
            sums = one_hot.transpose(1, 2) @ x
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        sse = (
            (x - centres.gather(1, labels[..., None].expand(n, n_tokens, d))) ** 2
        ).sum((1, 2))
        better = sse < best_sse
        best_sse = torch.where(better, sse, best_sse)
        best = torch.where(better[:, None, None], centres, best)
    return best, best_sse


@dataclass(frozen=True)
class SequenceShape:
    """What k-means (K clusters) finds inside each sequence, averaged over sequences, each
    as ``(mean, standard error over sequences)``:

    * ``centre_norm``: mean norm of the fitted centres (r for the mixture);
    * ``centre_distance``: mean distance between two fitted centres (r√2 for orthogonal
      means of norm r);
    * ``spread``: √(within-cluster sum of squares / (L d)), the within-cluster standard
      deviation per coordinate (slightly below σ0 even for exact samples: the fit adapts);
    * ``offset``: root mean square over the fitted centres of the distance to the nearest
      true mean μ_k: small when the sequence's clusters sit where the mixture's are,
      large when they sit elsewhere (e.g. in a rotated position);
    * ``centroid``: distance between the mean of the sequence's tokens and the mixture's
      mean Σ_k π_k μ_k (of order r / √L for exact samples).
    """

    centre_norm: tuple[float, float]
    centre_distance: tuple[float, float]
    spread: tuple[float, float]
    offset: tuple[float, float]
    centroid: tuple[float, float]


def sequence_shape(samples: Tensor, gmm: MultiTokenGMM, seed: int = 0) -> SequenceShape:
    """Fit K centres to every sequence of ``samples`` ``(n, L, d)`` separately and
    summarise the fits (see :class:`SequenceShape`). Meaningful when L is several times K."""
    if (
        samples.ndim != 3
        or samples.shape[0] < 2
        or samples.shape[1] < 2 * gmm.n_clusters
    ):
        raise ValueError("samples must have shape (n, L, d) with n >= 2 and L >= 2K")
    x = samples.detach().cpu().to(torch.float64)
    k = gmm.n_clusters
    centres, sse = _kmeans(x, k, torch.Generator().manual_seed(seed))
    pairs = torch.cdist(centres, centres)
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    to_means = torch.cdist(centres, gmm.means.to(x)[None].expand(x.shape[0], -1, -1))

    def summary(values: Tensor) -> tuple[float, float]:
        return values.mean().item(), values.std().item() / values.numel() ** 0.5

    return SequenceShape(
        centre_norm=summary(centres.norm(dim=-1).mean(-1)),
        centre_distance=summary(pairs[:, off_diagonal].mean(-1)),
        spread=summary((sse / (x.shape[1] * x.shape[2])).sqrt()),
        offset=summary((to_means.min(-1).values ** 2).mean(-1).sqrt()),
        centroid=summary(
            (x.mean(1) - gmm.weights.to(x) @ gmm.means.to(x)).norm(dim=-1)
        ),
    )


def symmetry_rotations(
    gmm: MultiTokenGMM, n: int, generator: torch.Generator
) -> Tensor:
    """``n`` random orthogonal d × d maps g, float64 ``(n, d, d)``, that commute with P and J:
    Haar-random on the span of the means orthogonal to Σ_k μ_k, the identity elsewhere.
    Every matrix α P + β P⊥ + γ J commutes with them."""
    p = gmm.span_projector().to(torch.float64)
    j = gmm.mean_direction_projector().to(torch.float64)
    eigenvalues, vectors = torch.linalg.eigh(p - j)
    basis = vectors[:, eigenvalues > 0.5]  # (d, m): orthonormal basis of span ∩ J⊥
    m = basis.shape[1]
    q, r = torch.linalg.qr(
        torch.randn(n, m, m, generator=generator, dtype=torch.float64)
    )
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # Haar on O(m)
    eye = torch.eye(gmm.dim, dtype=torch.float64)
    return eye + basis @ (q - torch.eye(m, dtype=torch.float64)) @ basis.T


def symmetry_defect(bank: AttentionBank, gmm: MultiTokenGMM) -> Tensor:
    """Relative size of the non-symmetric part of each of the bank's three matrices, float64
    ``(3,)`` (W_KQ, W_V, W_S): ``‖W − project(W)‖ / ‖W‖`` in the Frobenius norm over all
    timesteps, with the projection onto α P + β P⊥ + γ J of :class:`mtgmm.SymmetricBasis`
    (0 for an exactly symmetric bank, 1 for one with no symmetric part)."""
    basis = SymmetricBasis(gmm)
    rows = []
    for name in WEIGHT_NAMES:
        w = getattr(bank, name).detach().cpu().to(torch.float64)
        norm = w.norm()
        rows.append(
            (w - basis.project(w)).norm() / norm if norm > 0 else w.new_zeros(())
        )
    return torch.stack(rows)


def rotate_sequences(samples: Tensor, gmm: MultiTokenGMM, seed: int = 0) -> Tensor:
    """Each sequence of ``samples`` ``(n, L, d)`` rotated by its own random map of
    :func:`symmetry_rotations` (rows are tokens, so a sequence X becomes X g)."""
    g = symmetry_rotations(gmm, samples.shape[0], torch.Generator().manual_seed(seed))
    return (samples.to(torch.float64) @ g).to(samples.dtype)


# --------------------------------------------------------------------------------------------
# Which timesteps matter, measured: the bank on one window, the oracle elsewhere
# --------------------------------------------------------------------------------------------


class HybridPredictor:
    """``(x_t, t) ↦`` the bank's ε̂ at the timesteps where ``use_bank[t]`` is True and the
    oracle's ε* elsewhere (a noise predictor for :func:`mtgmm.ddpm_sample`; every sequence
    of a call must share its timestep, as in the sampler)."""

    def __init__(
        self,
        bank: AttentionBank,
        gmm: MultiTokenGMM,
        schedule: NoiseSchedule,
        use_bank: Tensor,
    ) -> None:
        if use_bank.shape != (schedule.n_steps,):
            raise ValueError(f"use_bank must have shape (T,) = ({schedule.n_steps},)")
        self.bank, self.use_bank, self.dim = bank, use_bank.bool().cpu(), bank.dim
        self.oracle = oracle_eps_fn(gmm.to(device=bank.W_S.device), schedule)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        if bool((t != t[0]).any()):
            raise ValueError("all sequences of one call must share their timestep")
        return self.bank(x_t, t) if self.use_bank[int(t[0])] else self.oracle(x_t, t)


@dataclass(frozen=True)
class WindowAblation:
    """Samples from hybrid samplers: the bank on the timesteps of one window and the oracle
    on all others, plus the two pure samplers. ``names[i]`` describes configuration i;
    ``windows`` the (first, last) timestep index of each window; ``spread`` (pooled
    within-cluster spread, clusters from the Bayes classifier, with standard errors),
    ``mean_error`` (RMS over clusters of ‖mean_k − μ_k‖) and ``shape`` (per-sequence fits,
    :class:`SequenceShape`) for each configuration."""

    names: tuple[str, ...]
    windows: tuple[tuple[int, int], ...]
    spread: Tensor
    spread_stderr: Tensor
    mean_error: Tensor
    shape: tuple[SequenceShape, ...]


def window_ablation(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    trained: TrainedBank,
    n_windows: int = 3,
    n_total: int | None = None,
    seed: int = 0,
) -> WindowAblation:
    """Split the timesteps into ``n_windows`` windows of (nearly) equal length
    (``torch.tensor_split``) and sample with the bank on one window at a time (the oracle
    elsewhere), from the same seed as the pure samplers."""
    n_total = n_total or sample_budget()
    n_steps, n_tokens = schedule.n_steps, trained.n_tokens
    parts = torch.arange(n_steps).tensor_split(
        n_windows
    )  # as equal as possible, in order
    windows = tuple((int(part[0]), int(part[-1])) for part in parts)
    masks = [torch.zeros(n_steps, dtype=torch.bool)]
    names = ["oracle everywhere"]
    for first, last in reversed(
        windows
    ):  # from the noisy end, the order the sampler runs
        mask = torch.zeros(n_steps, dtype=torch.bool)
        mask[first : last + 1] = True
        masks.append(mask)
        names.append(f"bank on t = {first}…{last}")
    masks.append(torch.ones(n_steps, dtype=torch.bool))
    names.append("bank everywhere")
    n = max(3, n_total // n_tokens)
    rows, shapes = [], []
    for mask in masks:
        predictor = HybridPredictor(trained.bank, gmm, schedule, mask)
        x = _sample(predictor, gmm, schedule, n, n_tokens, seed).cpu()
        spread, spread_se, error, _ = _spread_and_error(x, gmm)
        rows.append((spread, spread_se, error))
        shapes.append(sequence_shape(x, gmm, seed))
    table = torch.tensor(rows, dtype=torch.float64)
    return WindowAblation(
        tuple(names), windows, table[:, 0], table[:, 1], table[:, 2], tuple(shapes)
    )


@dataclass(frozen=True)
class PathExcess:
    """Per-timestep excess ``E‖ε̂_t(X_t) − ε*(x_t)‖²`` per token of one bank, measured on the
    states the sampler actually visits: ``on_oracle_path`` along the oracle sampler's
    trajectories, ``on_own_path`` along the bank's own (same seeds); each ``(T,)`` with
    standard errors over sequences. Compare with the excess on the forward marginals
    (``BankHistory.excess``)."""

    n_tokens: int
    on_oracle_path: Tensor
    on_oracle_path_stderr: Tensor
    on_own_path: Tensor
    on_own_path_stderr: Tensor


@torch.no_grad()
def path_excess(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    trained: TrainedBank,
    n_total: int | None = None,
    seed: int = 0,
) -> PathExcess:
    """Run the oracle sampler and the bank's sampler from the same seed on ``n_total``
    tokens (default ``by_preset(4096, 32768)``, in sequences of the bank's L) and evaluate
    the bank's error against ε* at every visited state (see :class:`PathExcess`)."""
    n = max(2, (n_total or by_preset(4096, 32768)) // trained.n_tokens)
    bank, n_tokens = trained.bank, trained.n_tokens
    device = bank.W_S.device
    oracle = oracle_eps_fn(gmm.to(device=device), schedule)
    rows = []
    for eps_fn in (oracle, bank):
        _, states, steps = _sample(
            eps_fn, gmm, schedule, n, n_tokens, seed, device, return_trajectory=True
        )
        per_step = []
        for state, step in zip(states[:-1], steps[:-1].tolist(), strict=True):
            t = torch.full((n,), step - 1, dtype=torch.long, device=device)
            gap = (
                ((bank(state, t) - oracle(state, t)) ** 2)
                .sum(-1)
                .mean(-1)
                .double()
                .cpu()
            )
            per_step.append(torch.stack([gap.mean(), gap.std() / n**0.5]))
        rows.append(torch.stack(per_step).flip(0))  # index = timestep t = step − 1
    return PathExcess(
        n_tokens, rows[0][:, 0], rows[0][:, 1], rows[1][:, 0], rows[1][:, 1]
    )


# --------------------------------------------------------------------------------------------
# Trajectories (for the animation)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trajectories:
    """Reverse trajectories of one sequence under several noise predictors, from the same
    initial noise and the same injected noise. ``states[p]`` has shape ``(n_saved, L, d)``
    for predictor ``names[p]``; ``steps`` the DDPM step of each saved state (T down to 0);
    ``labels[p]`` the cluster the Bayes classifier gives each final token."""

    names: tuple[str, ...]
    steps: Tensor
    states: Tensor
    labels: Tensor


def reverse_trajectories(
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    predictors: dict[str, NoisePredictor],
    n_tokens: int,
    n_frames: int = 26,
    seed: int = 0,
) -> Trajectories:
    """Run each predictor on one sequence of ``n_tokens`` tokens, keeping about
    ``n_frames`` states (every ⌈T / (n_frames − 1)⌉-th step, plus x_T and x_0)."""
    every = max(1, -(-schedule.n_steps // max(1, n_frames - 1)))
    states, labels, steps = [], [], None
    for eps_fn in predictors.values():
        x, path, steps = _sample(
            eps_fn,
            gmm,
            schedule,
            1,
            n_tokens,
            seed,
            return_trajectory=True,
            trajectory_every=every,
        )
        states.append(path[:, 0].cpu())
        labels.append(cluster_assignments(x[0].cpu(), gmm))
    return Trajectories(
        tuple(predictors), steps, torch.stack(states), torch.stack(labels)
    )


__all__ = [
    "DiscretisationSweep",
    "Dispersion",
    "HybridPredictor",
    "PathExcess",
    "RiskProfile",
    "SamplerResult",
    "SequenceShape",
    "Trajectories",
    "TrainedBank",
    "WindowAblation",
    "bank_recipe",
    "chapter_schedule",
    "compare_samplers",
    "discretisation_sweep",
    "dispersion",
    "kl_weights",
    "path_excess",
    "reverse_trajectories",
    "risk_profile",
    "rotate_sequences",
    "sample_budget",
    "sequence_shape",
    "symmetry_defect",
    "symmetry_rotations",
    "train_banks",
    "window_ablation",
]
