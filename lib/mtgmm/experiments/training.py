"""Experiments of chapter *Training dynamics*: SGD on the population DDPM loss from the
book's default start, its failure modes, and numerical checks of the symmetry proposition and
of the saddle lemma.

Every function takes the mixture and a noise level and sizes itself by the active preset
(:func:`mtgmm.runtime.by_preset`): the quick preset (a 2-core CPU, about a minute for the
chapter) trains at L = 32 with batch 16 for a few hundred steps; the full preset uses the
setting of :mod:`mtgmm.training`'s docstring (L = 128, batch 64, 600 steps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..attention import AttentionDenoiser, SymmetricBasis
from ..best import readout_fit
from ..mixture import MultiTokenGMM
from ..objective import ddpm_loss, noisy_batch
from ..runtime import by_preset
from ..theory import orthonormal_symmetric_basis, permutation_isometry
from ..training import TrainingHistory, train


@dataclass(frozen=True)
class TrainingSetting:
    """The sizes of one chapter run: tokens, steps, batch, evaluation sequences, log period."""

    n_tokens: int
    steps: int
    batch_size: int
    n_eval_sequences: int
    log_every: int


def setting(steps: int | None = None) -> TrainingSetting:
    """The preset's sizes (``steps`` overrides the number of updates)."""
    return TrainingSetting(
        n_tokens=by_preset(32, 128),
        steps=steps or by_preset(250, 600),
        batch_size=by_preset(16, 64),
        n_eval_sequences=by_preset(128, 1024),
        log_every=by_preset(25, 30),
    )


def run(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    seed: int,
    config: TrainingSetting,
    **options,
) -> tuple[AttentionDenoiser, TrainingHistory]:
    """Train a fresh :class:`~mtgmm.attention.AttentionDenoiser` with :func:`mtgmm.training.train`
    (``options`` are its :class:`~mtgmm.training.TrainOptions`); returns the model and history."""
    model = AttentionDenoiser(gmm.dim)
    history = train(
        model,
        gmm,
        alpha_bar,
        config.n_tokens,
        steps=config.steps,
        generator=torch.Generator().manual_seed(seed),
        batch_size=config.batch_size,
        n_eval_sequences=config.n_eval_sequences,
        log_every=config.log_every,
        **options,
    )
    return model, history


@dataclass(frozen=True)
class SeedRuns:
    """Several seeds of the same recipe. ``excess``: (seeds, n_log); ``coordinates``:
    (seeds, n_log, 3, 3); ``defect``: (seeds, n_log, 3); ``step``: (n_log,)."""

    step: np.ndarray
    excess: np.ndarray
    coordinates: np.ndarray
    defect: np.ndarray
    histories: list[TrainingHistory]

    def mean_and_stderr(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean over seeds and its standard error (seed-to-seed spread / √seeds)."""
        n = values.shape[0]
        spread = values.std(0, ddof=1) if n > 1 else np.zeros_like(values[0])
        return values.mean(0), spread / np.sqrt(n)


def seed_runs(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    seeds: tuple[int, ...] | None = None,
    config: TrainingSetting | None = None,
    **options,
) -> SeedRuns:
    """The same recipe (``options``, default: the book's default start) over several seeds."""
    seeds = seeds or by_preset((0, 1, 2), (0, 1, 2, 3, 4))
    config = config or setting()
    histories = [run(gmm, alpha_bar, s, config, **options)[1] for s in seeds]
    return SeedRuns(
        histories[0].step,
        np.stack([h.excess for h in histories]),
        np.stack([h.coordinates for h in histories]),
        np.stack([h.defect for h in histories]),
        histories,
    )


@dataclass(frozen=True)
class TemperatureProfile:
    """Excess risk along ``W_KQ = c (P − J)`` with ``W_V, W_S`` at their least-squares
    values: ``temperatures`` (c s²), ``excess`` and ``stderr``."""

    temperatures: np.ndarray
    excess: np.ndarray
    stderr: np.ndarray


def temperature_profile(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int | None = None,
    temperatures: tuple[float, ...] | None = None,
    seed: int = 0,
) -> TemperatureProfile:
    """The profile excess of :func:`mtgmm.best.readout_fit` along ``c (P − J)``, on common
    random numbers (one fitting and one evaluation sample for every c)."""
    n_tokens = n_tokens or setting().n_tokens
    temperatures = temperatures or by_preset(
        (-0.3, -0.15, -0.05, 0.0, 0.05, 0.15, 0.3),
        tuple(np.linspace(-0.3, 0.3, 13).tolist()),
    )
    s2 = gmm.noise_variance(alpha_bar).item()
    excess, stderr = [], []
    for c in temperatures:
        _, e, se = readout_fit(
            gmm,
            alpha_bar,
            n_tokens,
            torch.tensor([c / s2, 0.0, -c / s2]),
            n_sequences=by_preset(128, 1024),
            generator=torch.Generator().manual_seed(seed),
            n_eval_sequences=by_preset(128, 1024),
        )
        excess.append(e)
        stderr.append(se)
    return TemperatureProfile(
        np.array(temperatures), np.array(excess), np.array(stderr)
    )


def symmetric_gradient(
    model: AttentionDenoiser,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    n_batches: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The W_KQ gradient of the DDPM loss at ``model``'s weights, projected on the
    Frobenius-orthonormal symmetric directions J, (P − J)/‖P − J‖, P⊥/‖P⊥‖
    (:func:`mtgmm.theory.orthonormal_symmetric_basis`): mean over ``n_batches`` independent
    fresh batches and its standard error, each of shape (3,). Computed in float64."""
    n_batches = n_batches or by_preset(24, 128)
    gmm64 = gmm.to(dtype=torch.float64)
    directions = orthonormal_symmetric_basis(SymmetricBasis(gmm64))
    net = AttentionDenoiser(gmm.dim, model.mask_self).double()
    net.set_weights(*(w.detach().double() for w in model.weights().values()))
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n_batches):
        x_t, eps = noisy_batch(gmm64, alpha_bar, batch_size, n_tokens, generator)
        (grad,) = torch.autograd.grad(ddpm_loss(net(x_t), eps), [net.W_KQ])
        samples.append(torch.einsum("jk,ijk->i", grad, directions))
    values = torch.stack(samples).numpy()
    return values.mean(0), values.std(0, ddof=1) / np.sqrt(n_batches)


def least_squares_readout(
    gmm: MultiTokenGMM, alpha_bar: float, n_tokens: int, seed: int = 0
) -> AttentionDenoiser:
    """The model with ``W_KQ = 0`` and ``W_V, W_S`` at their (symmetric) least-squares values
    (:func:`mtgmm.best.readout_fit`): the saddle of the lemma."""
    model, _, _ = readout_fit(
        gmm,
        alpha_bar,
        n_tokens,
        torch.zeros(3),
        n_sequences=by_preset(1024, 4096),
        generator=torch.Generator().manual_seed(seed),
        n_eval_sequences=64,
    )
    return model


def equivariance_error(
    model: AttentionDenoiser,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    permutation: tuple[int, ...] = (1, 2, 3, 0),
    seed: int = 0,
) -> tuple[float, float]:
    """Check ``∇L(QᵀWQ) = Qᵀ ∇L(W) Q`` on one batch: the gradient at the conjugated weights on
    the rotated batch ``(XQ, εQ)`` against the conjugated gradient on ``(X, ε)``, Q the
    isometry that permutes the means (:func:`mtgmm.theory.permutation_isometry`). Returns the
    largest absolute difference and the largest gradient entry (float64)."""
    gmm64 = gmm.to(dtype=torch.float64)
    q = permutation_isometry(gmm64, permutation)
    x_t, eps = noisy_batch(
        gmm64, alpha_bar, 8, n_tokens, torch.Generator().manual_seed(seed)
    )
    weights = [w.detach().double() for w in model.weights().values()]

    def gradients(ws: list[Tensor], x: Tensor, e: Tensor) -> list[Tensor]:
        net = AttentionDenoiser(gmm.dim, model.mask_self).double()
        net.set_weights(*ws)
        params = [net.W_KQ, net.W_V, net.W_S]
        return list(torch.autograd.grad(ddpm_loss(net(x), e), params))

    plain = gradients(weights, x_t, eps)
    moved = gradients([q.T @ w @ q for w in weights], x_t @ q, eps @ q)
    error = max(
        (m - q.T @ g @ q).abs().max().item() for m, g in zip(moved, plain, strict=True)
    )
    return error, max(g.abs().max().item() for g in plain)


def divergence_step(
    gmm: MultiTokenGMM, alpha_bar: float, seed: int, config: TrainingSetting, **options
) -> int | None:
    """Train as :func:`run` does and return the step at which the loss stopped being finite
    (:func:`mtgmm.training.train` raises there), or ``None`` if the run finished."""
    try:
        run(gmm, alpha_bar, seed, config, **options)
    except RuntimeError as error:
        found = re.search(r"diverged at step (\d+)", str(error))
        if found is None:
            raise
        return int(found.group(1))
    return None
