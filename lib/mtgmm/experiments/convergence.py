"""Experiments of chapter *The convergence theorem*: one numerical check per lemma (symmetry,
convexity of the readout, the temperature landscape, finite-L concentration) and the data of
the figure that compares predicted and measured iteration counts and excess risks.

Sizes follow the active preset (:func:`mtgmm.runtime.by_preset`): the quick preset keeps the
chapter near a minute on a 2-core CPU; the full preset uses larger samples and grids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from ..attention import AttentionDenoiser, SymmetricBasis, attend
from ..best import best_in_class
from ..bounds import Profile, sign_changes, temperature_iterations, tokens_needed
from ..mixture import MultiTokenGMM
from ..objective import ddpm_loss, excess_risk, noisy_batch
from ..oracle import bayes_risk
from ..runtime import by_preset
from ..theory import (
    WeightsLike,
    as_weights,
    gd_iterations,
    measured_token_gap,
    orthonormal_symmetric_basis,
    readout_hessian,
    token_expansion,
    weights_from_coordinates,
)
from .training import TrainingSetting, run


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def start_temperature(
    gmm: MultiTokenGMM, alpha_bar: float, init_scale: float = 2.0
) -> float:
    """The temperature ``τ0 = init_scale · s² / E‖x‖²`` of the default start
    ``W_KQ = init_scale · I / m̂`` of :func:`mtgmm.train` (m̂ the mean squared token norm, here
    its population value ``E‖x‖² = ᾱ Σ_k π_k ‖μ_k‖² + d s²``): the P coefficient of W_KQ
    times s²."""
    s2 = gmm.noise_variance(alpha_bar).item()
    mean_sq = (
        alpha_bar * (gmm.weights * (gmm.means**2).sum(-1)).sum().item() + gmm.dim * s2
    )
    return init_scale * s2 / mean_sq


# ------------------------------------------------------------------ symmetry reduction


@dataclass(frozen=True)
class GradientSymmetry:
    """The mean DDPM gradient over independent batches at a symmetric point, split into its
    symmetric part and the rest, per matrix (W_KQ, W_V, W_S): Frobenius norms of the two mean
    parts and the norm that Monte Carlo noise alone would give each, ``√(Σ var / n)`` over
    the entries (so ``asymmetric / asymmetric_noise ≈ 1`` means "consistent with zero")."""

    symmetric: np.ndarray
    asymmetric: np.ndarray
    symmetric_noise: np.ndarray
    asymmetric_noise: np.ndarray
    n_batches: int


def gradient_symmetry(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    n_batches: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> GradientSymmetry:
    """Gradients of the DDPM loss (noise targets) at ``weights`` on ``n_batches`` fresh
    batches, in float64 (lemma *symmetry reduction*)."""
    n_batches = n_batches or by_preset(48, 256)
    g64 = gmm.to(dtype=torch.float64)
    basis = SymmetricBasis(g64)
    net = AttentionDenoiser.from_weights(*as_weights(weights)).double()
    generator = _rng(seed)
    grads = []
    for _ in range(n_batches):
        x_t, eps = noisy_batch(g64, alpha_bar, batch_size, n_tokens, generator)
        params = [net.W_KQ, net.W_V, net.W_S]
        grads.append(torch.stack(torch.autograd.grad(ddpm_loss(net(x_t), eps), params)))
    grads = torch.stack(grads)  # (n, 3, d, d)
    sym = basis.project(grads)
    parts = []
    for part in (sym, grads - sym):
        mean = part.mean(0)
        noise = (part.var(0).sum((-1, -2)) / n_batches).sqrt()
        parts.append((torch.linalg.matrix_norm(mean).numpy(), noise.numpy()))
    (s, s_noise), (a, a_noise) = parts
    return GradientSymmetry(s, a, s_noise, a_noise, n_batches)


# ------------------------------------------------------------- convexity of the readout


def hessian_spectrum(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    w_kq: Tensor,
    n_repeats: int = 8,
    n_sequences: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) of the readout Hessian in the orthonormal symmetric coordinates
    (:func:`mtgmm.theory.readout_hessian`) on ``n_repeats`` independent samples: mean and
    standard error over the samples, each of shape (2m,)."""
    n_sequences = n_sequences or by_preset(
        max(16, 2**12 // n_tokens), max(64, 2**15 // n_tokens)
    )
    g64 = gmm.to(dtype=torch.float64)
    basis = SymmetricBasis(g64)
    generator = _rng(seed)
    eigs = []
    for _ in range(n_repeats):
        x_t, _ = noisy_batch(g64, alpha_bar, n_sequences, n_tokens, generator)
        eigs.append(torch.linalg.eigvalsh(readout_hessian(w_kq, x_t, basis)))
    eigs = torch.stack(eigs).numpy()
    return eigs.mean(0), eigs.std(0, ddof=1) / np.sqrt(n_repeats)


@dataclass(frozen=True)
class ReadoutDescent:
    """Gradient descent on the readout (W_V, W_S, symmetric) at a fixed W_KQ on one fixed
    sample: ``gap[k]`` = loss after k steps minus the least-squares minimum; the step, the
    extreme Hessian eigenvalues on the same sample, and the (3, 3) reduced coordinates of the
    final model (rows W_KQ, W_V, W_S)."""

    gap: np.ndarray
    step: float
    smoothness: float
    strong_convexity: float
    coefficients: Tensor

    def predicted_steps(self, excess0: float, target: float) -> int:
        """:func:`mtgmm.theory.gd_iterations` (quadratic) with this run's constants."""
        return gd_iterations(
            excess0,
            target,
            self.smoothness,
            self.strong_convexity,
            self.step,
            quadratic=True,
        )

    def measured_steps(self, target: float) -> int:
        """The first step with ``gap ≤ target`` (−1 if none)."""
        hit = self.gap <= target
        return int(np.argmax(hit)) if hit.any() else -1

    def contraction_rate(self, floor: float = 1e-9) -> float:
        """The measured contraction of the gap per step: ``exp`` of the slope of ``log gap``
        over the second half of the run, keeping only gaps above ``floor · gap[0]`` (a long
        run reaches roundoff, where the gap stops contracting or turns negative)."""
        tail = self.gap[len(self.gap) // 2 :]
        steps = np.arange(len(tail))[tail > floor * self.gap[0]]
        if len(steps) < 2:
            raise ValueError(
                "the gap reaches roundoff before the second half: run fewer steps"
            )
        return float(np.exp(np.polyfit(steps, np.log(tail[steps]), 1)[0]))


def readout_descent(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    w_kq: Tensor,
    step_scale: float = 1.0,
    n_steps: int | None = None,
    n_sequences: int | None = None,
    seed: int = 0,
) -> ReadoutDescent:
    """Run ``n_steps`` of gradient descent with step ``step_scale / λ_max(H)`` from the zero
    readout, the gradient by automatic differentiation of the DDPM loss (noise targets) of the
    layer written as ``F θ`` (features precomputed, since W_KQ is fixed, and the loss expanded
    as ``θᵀ G θ − 2 hᵀ θ + c`` with their Gram matrix); the minimum by least squares; the
    eigenvalues from :func:`mtgmm.theory.readout_hessian` (lemma *convexity of the
    readout*)."""
    n_steps = by_preset(1500, 4000) if n_steps is None else n_steps
    n_sequences = n_sequences or by_preset(
        max(16, 2**13 // n_tokens), max(64, 2**16 // n_tokens)
    )
    g64 = gmm.to(dtype=torch.float64)
    x_t, eps = noisy_batch(g64, alpha_bar, n_sequences, n_tokens, _rng(seed))
    w_kq = w_kq.to(torch.float64)
    e = orthonormal_symmetric_basis(SymmetricBasis(g64))
    m = e.shape[0]
    eigs = torch.linalg.eigvalsh(readout_hessian(w_kq, x_t, SymmetricBasis(g64)))
    step = step_scale / eigs[-1].item()
    attended = attend(x_t, w_kq, torch.eye(gmm.dim, dtype=torch.float64))
    # the layer's output is F θ with F the features (x E_a, A X E_a), one row per output entry
    feats = torch.cat(
        [torch.einsum("nld,mde->nlem", v, e) for v in (x_t, attended)], -1
    )
    feats, target = feats.reshape(-1, 2 * m), eps.reshape(-1)
    n_tokens_total = x_t.shape[0] * x_t.shape[1]
    gram, cross = feats.T @ feats / n_tokens_total, feats.T @ target / n_tokens_total
    total = target @ target / n_tokens_total

    def loss(theta: Tensor) -> Tensor:  # mean ‖Fθ − ε‖² per token, expanded
        return theta @ gram @ theta - 2 * cross @ theta + total

    floor = loss(torch.linalg.solve(gram, cross)).item()
    theta = torch.zeros(2 * m, dtype=torch.float64, requires_grad=True)
    gaps = []
    for k in range(n_steps + 1):
        value = loss(theta)
        gaps.append(value.item() - floor)
        if k == n_steps:
            break
        (grad,) = torch.autograd.grad(value, theta)
        with torch.no_grad():
            theta -= step * grad
    w_s, w_v = (torch.einsum("m,mij->ij", part, e) for part in theta.detach().split(m))
    coefficients = SymmetricBasis(g64).coordinates(torch.stack([w_kq, w_v, w_s]))
    return ReadoutDescent(
        np.array(gaps), step, eigs[-1].item(), eigs[0].item(), coefficients
    )


# -------------------------------------------------------------- the temperature landscape


@dataclass(frozen=True)
class Landscape:
    """The profile ℓ(τ) on a grid at one (ᾱ, L): values, their standard errors (over the
    sample's sequences), slopes ℓ', the resolved stationary points, the start τ0, the grid
    minimiser τ* and whether the landscape hypothesis holds (ℓ' has the sign of τ − τ* at
    every grid point between τ0 and τ*, and no stationary point lies strictly between)."""

    alpha_bar: float
    n_tokens: int
    temperatures: np.ndarray
    values: np.ndarray
    stderr: np.ndarray
    slopes: np.ndarray
    stationary: list[float]
    tau0: float
    tau_star: float
    value_star: float
    holds: bool


def landscape(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    temperatures: tuple[float, ...] | None = None,
    n_sequences: int | None = None,
    seed: int = 0,
) -> Landscape:
    """The profile of :class:`mtgmm.bounds.Profile` on a grid of temperatures, with the
    checks of the landscape hypothesis (lemma *the temperature landscape*)."""
    temperatures = temperatures or tuple(
        np.round(np.linspace(-0.2, 0.6, by_preset(17, 33)), 3).tolist()
    )
    n_sequences = n_sequences or by_preset(
        max(32, 2**13 // n_tokens), max(64, 2**16 // n_tokens)
    )
    profile = Profile(gmm, alpha_bar, n_tokens, n_sequences, _rng(seed))
    values, slopes = profile.scan(temperatures)
    stderr = [
        (v := profile.per_sequence(t)).std().item() / np.sqrt(v.numel())
        for t in temperatures
    ]
    tau_star, value_star = profile.minimum(temperatures)
    tau0 = start_temperature(gmm, alpha_bar)
    stationary = sign_changes(temperatures, slopes)
    lo, hi = sorted((tau0, tau_star))
    grid = torch.tensor(temperatures, dtype=torch.float64)
    between = (grid > lo) & (grid < hi)
    signs_ok = bool((torch.sign(slopes[between]) == np.sign(tau0 - tau_star)).all())
    tolerance = 0.5 * float(np.diff(temperatures).max())
    others = [p for p in stationary if lo < p < hi and abs(p - tau_star) > tolerance]
    return Landscape(
        alpha_bar,
        n_tokens,
        np.asarray(temperatures),
        values.numpy(),
        np.asarray(stderr),
        slopes.numpy(),
        stationary,
        tau0,
        tau_star,
        value_star,
        signs_ok and not others,
    )


@dataclass(frozen=True)
class TemperatureDescent:
    """Gradient descent on the profile from τ0 with step 1/S: the trajectory (``taus``,
    ``gaps`` = ℓ(τ_k) − ℓ(τ*)), the constants S and m of
    :func:`mtgmm.bounds.temperature_iterations` measured on the segment [τ0, τ*], and the
    predicted and measured step counts for each target."""

    taus: np.ndarray
    gaps: np.ndarray
    tau0: float
    tau_star: float
    value_star: float
    smoothness: float
    secant: float
    step: float
    targets: np.ndarray
    predicted: np.ndarray
    measured: np.ndarray

    def envelope(self, n_steps: int | None = None) -> np.ndarray:
        """The guaranteed gap ``(S/2)(1 − η m)^{2k} |τ0 − τ*|²`` at steps k = 0 … n_steps − 1
        (default: as many as were run)."""
        k = np.arange(len(self.gaps) if n_steps is None else n_steps)
        contraction = (1 - self.step * self.secant) ** (2 * k)
        return self.smoothness / 2 * contraction * (self.tau0 - self.tau_star) ** 2


def temperature_descent(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    targets: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 1e-5),
    n_sequences: int | None = None,
    n_grid: int | None = None,
    seed: int = 0,
) -> TemperatureDescent:
    """Measure the constants on the profile, run gradient descent with step 1/S until the
    gap is below the smallest target, and count steps (lemma *the temperature landscape* and
    the theorem's iteration count)."""
    n_sequences = n_sequences or by_preset(
        max(32, 2**13 // n_tokens), max(64, 2**16 // n_tokens)
    )
    n_grid = n_grid or by_preset(17, 65)
    profile = Profile(gmm, alpha_bar, n_tokens, n_sequences, _rng(seed))
    tau0 = start_temperature(gmm, alpha_bar)
    tau_star, value_star = profile.minimum(np.linspace(-0.2, 0.6, 17).tolist())
    smoothness, secant = profile.descent_constants(tau0, tau_star, n_grid)
    step = 1 / smoothness
    tau, taus, gaps = tau0, [], []
    for _ in range(by_preset(200, 1000)):
        value, slope = profile.derivative(tau)
        taus.append(tau)
        gaps.append(value - value_star)
        if gaps[-1] <= min(targets):
            break
        tau -= step * slope
    gaps = np.array(gaps)
    distance = abs(tau0 - tau_star)
    predicted = [
        temperature_iterations(distance, t, smoothness, secant, step) for t in targets
    ]
    measured = [int(np.argmax(gaps <= t)) if (gaps <= t).any() else -1 for t in targets]
    return TemperatureDescent(
        np.array(taus),
        gaps,
        tau0,
        tau_star,
        value_star,
        smoothness,
        secant,
        step,
        np.array(targets),
        np.array(predicted),
        np.array(measured),
    )


# ---------------------------------------------------------------- finite-L concentration


@dataclass(frozen=True)
class TokenGapCheck:
    """Measured ``excess(L) − limit`` of fixed weights (:func:`mtgmm.theory.measured_token_gap`)
    against the expansion's ``slope/(L − 1)``, with standard errors, at each L."""

    token_counts: np.ndarray
    measured: np.ndarray
    measured_stderr: np.ndarray
    predicted: np.ndarray
    predicted_stderr: np.ndarray
    kappa: float


def token_gap_check(
    weights: WeightsLike,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    token_counts: tuple[int, ...] = (16, 32, 64, 128, 256),
    n_sequences: int | None = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> TokenGapCheck:
    """The lemma *finite-L concentration* for one fixed model."""
    n_sequences = n_sequences or by_preset(256, 2048)
    n_samples = n_samples or by_preset(2**15, 2**18)
    generator = _rng(seed)
    expansion = token_expansion(weights, gmm, alpha_bar, n_samples, generator)
    counts = torch.tensor(token_counts, dtype=torch.float64)
    slope_se = expansion.covariance[1:, 1:].sum().clamp_min(0).sqrt().item()
    measured = [
        measured_token_gap(weights, gmm, alpha_bar, n, n_sequences, generator)
        for n in token_counts
    ]
    return TokenGapCheck(
        np.array(token_counts),
        np.array([m for m, _ in measured]),
        np.array([s for _, s in measured]),
        (expansion.slope / (counts - 1)).numpy(),
        (slope_se / (counts - 1)).numpy(),
        expansion.kappa,
    )


# --------------------------------------------------------------- measured excess against L


@dataclass(frozen=True)
class MeasuredModels:
    """Excess risk (and standard error) at each L of the best symmetric model
    (:func:`mtgmm.best.best_in_class`) and of a model trained by the default recipe
    (:func:`mtgmm.train`)."""

    token_counts: np.ndarray
    best: np.ndarray
    best_stderr: np.ndarray
    best_temperature: np.ndarray
    trained: np.ndarray
    trained_stderr: np.ndarray


def measured_models(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    token_counts: tuple[int, ...] | None = None,
    seed: int = 0,
) -> MeasuredModels:
    """Best-in-class and trained excess at a few L (the right panel of the chapter's
    figure)."""
    token_counts = token_counts or by_preset((32, 128), (32, 64, 128, 256, 512))
    s2 = gmm.noise_variance(alpha_bar).item()
    config = TrainingSetting(
        n_tokens=2,
        steps=by_preset(250, 600),
        batch_size=by_preset(16, 64),
        n_eval_sequences=by_preset(128, 1024),
        log_every=by_preset(250, 600),
    )
    rows = []
    for n in token_counts:
        best = best_in_class(
            gmm,
            alpha_bar,
            n,
            n_sequences=by_preset(max(32, 2**13 // n), None),
            generator=_rng(seed),
            n_eval_sequences=by_preset(128, 2048),
            bayes_samples=1000,
        )
        _, history = run(gmm, alpha_bar, seed, replace(config, n_tokens=n))
        rows.append(
            (
                best.excess,
                best.stderr,
                best.coefficients[0, 0].item() * s2,
                history.final_excess,
                history.final_stderr,
            )
        )
    cols = np.array(rows).T
    return MeasuredModels(np.array(token_counts), *cols)


# ------------------------------------------------------------------- the theorem at work


@dataclass(frozen=True)
class TheoremRun:
    """One instance of the theorem: the token count L(ε_tok), the temperature
    descent to ε_τ, the readout descent at the final temperature (from zero, for the
    predicted number of steps k_r to reach ε_r), and the excess of the resulting model on
    fresh sequences with its standard error."""

    targets: tuple[float, float, float]
    n_tokens: int
    descent: TemperatureDescent
    readout: ReadoutDescent
    readout_start: float
    readout_steps: int
    excess: float
    excess_stderr: float


def theorem_run(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    targets: tuple[float, float, float] = (0.1, 0.01, 0.01),
    seed: int = 0,
) -> TheoremRun:
    """Follow the theorem for ``targets = (ε_tok, ε_τ, ε_r)``: L = tokens_needed(ε_tok);
    K_τ temperature steps from the default start's temperature; k_r readout steps from the
    zero readout, with the initial gap bounded by ``d − R*`` (the zero readout's risk is d);
    then the excess of the model on fresh sequences (chapter *The convergence theorem*)."""
    eps_tok, eps_tau, eps_r = targets
    n_tokens = int(tokens_needed(gmm, alpha_bar, eps_tok, generator=_rng(seed)))
    descent = temperature_descent(gmm, alpha_bar, n_tokens, (eps_tau,), seed=seed)
    basis = SymmetricBasis(gmm.to(dtype=torch.float64))
    w_kq = descent.taus[-1] / gmm.noise_variance(alpha_bar).item() * (basis.P - basis.J)
    probe = readout_descent(gmm, alpha_bar, n_tokens, w_kq, n_steps=0, seed=seed)
    risk, _ = bayes_risk(gmm.to(dtype=torch.float64), alpha_bar, 20_000, _rng(seed))
    start = gmm.dim - risk
    steps = probe.predicted_steps(start, eps_r)
    readout = readout_descent(gmm, alpha_bar, n_tokens, w_kq, n_steps=steps, seed=seed)
    model = AttentionDenoiser.from_weights(
        *weights_from_coordinates(readout.coefficients, basis)
    ).double()
    n_eval = by_preset(max(64, 2**15 // n_tokens), max(256, 2**18 // n_tokens))
    excess, stderr = excess_risk(
        model, gmm.to(dtype=torch.float64), alpha_bar, n_tokens, n_eval, _rng(seed + 1)
    )
    return TheoremRun(
        targets,
        n_tokens,
        descent,
        readout,
        start,
        steps,
        excess,
        stderr,
    )
