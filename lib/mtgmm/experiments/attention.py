"""Experiments of chapter *Self-attention as a mean denoiser*."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention import attention_weights
from ..best import readout_fit
from ..mixture import MultiTokenGMM, add_noise
from ..objective import noisy_batch
from ..runtime import by_preset
from ..theory import (
    attention_fluctuation,
    attention_limit,
    effective_sample_size,
    ess_fraction,
)


def _marginal(
    gmm: MultiTokenGMM, alpha_bar: float, shape: tuple[int, ...], generator
) -> Tensor:
    """Noisy tokens of the given leading ``shape`` drawn i.i.d. from the step marginal."""
    x0, _ = gmm.sample(int(torch.tensor(shape).prod()), 1, generator=generator)
    x, _ = add_noise(x0[:, 0], alpha_bar, generator=generator)
    return x.reshape(*shape, gmm.dim)


@dataclass(frozen=True)
class LimitConvergence:
    """Root-mean-square distance between finite-L attention and its limit, per temperature.

    ``rms[i, j]`` is for temperature ``temperatures[i]`` (the value of c s² in W_KQ = c P)
    and ``token_counts[j]`` keys; ``rms_stderr`` its standard error over independent key
    sets; ``predicted[i, j]`` the delta-method value √(E tr Σ_q / L) (∞ when it diverges)."""

    temperatures: tuple[float, ...]
    token_counts: Tensor
    rms: Tensor
    rms_stderr: Tensor
    predicted: Tensor


def limit_convergence(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    temperatures: tuple[float, ...] = (0.15, 1.0),
    token_counts: Tensor | None = None,
    n_queries: int = 64,
    n_repeats: int | None = None,
    seed: int = 0,
) -> LimitConvergence:
    """Attention of fixed queries ``q = c x_i P`` over L i.i.d. marginal keys, against the
    infinite-token limit, for growing L (theorem *attention limit*)."""
    g = gmm.to(dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    token_counts = (
        token_counts
        if token_counts is not None
        else 2 ** torch.arange(4, by_preset(15, 18))
    )
    n_repeats = n_repeats or by_preset(24, 96)
    s2 = g.noise_variance(alpha_bar).item()
    p = g.span_projector()
    x = _marginal(g, alpha_bar, (n_queries,), generator)
    rms, rms_se, predicted = [], [], []
    for temperature in temperatures:
        q = (temperature / s2) * x @ p
        limit = attention_limit(g, alpha_bar, q)
        trace = attention_fluctuation(g, alpha_bar, q).mean().item()
        row, row_se = [], []
        for n_keys in token_counts.tolist():
            errors = []
            for _ in range(n_repeats):
                keys = _marginal(g, alpha_bar, (n_keys,), generator)
                out = torch.softmax(q @ keys.T, dim=-1) @ keys
                errors.append(((out - limit) ** 2).sum(-1).mean())
            errors = torch.stack(errors)
            mse, mse_se = errors.mean(), errors.std() / n_repeats**0.5
            row.append(mse.sqrt())
            row_se.append(mse_se / (2 * mse.sqrt()))
        rms.append(torch.stack(row))
        rms_se.append(torch.stack(row_se))
        kappa = 2 * temperature**2
        predicted.append(
            (trace / token_counts.double()).sqrt()
            if kappa < 1
            else torch.full((len(token_counts),), float("inf"), dtype=torch.float64)
        )
    return LimitConvergence(
        tuple(temperatures),
        token_counts,
        torch.stack(rms),
        torch.stack(rms_se),
        torch.stack(predicted),
    )


@dataclass(frozen=True)
class EssProfile:
    """Effective sample size of self-attention rows, divided by L, against temperature:
    measured (mean over queries, with a standard error over sequences) and from the
    closed form of :func:`mtgmm.theory.ess_fraction` on the same queries."""

    temperatures: Tensor
    n_tokens: int
    measured: Tensor
    measured_stderr: Tensor
    closed_form: Tensor


def ess_profile(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    temperatures: Tensor | None = None,
    n_tokens: int | None = None,
    n_sequences: int = 16,
    seed: int = 0,
) -> EssProfile:
    """ESS/L of the rows of softmax(X W_KQ Xᵀ), W_KQ = c P, for c s² over ``temperatures``."""
    g = gmm.to(dtype=torch.float64)
    temperatures = (
        temperatures if temperatures is not None else torch.linspace(0.0, 1.0, 11)
    )
    n_tokens = n_tokens or by_preset(2048, 8192)
    generator = torch.Generator().manual_seed(seed)
    x_t, _ = noisy_batch(g, alpha_bar, n_sequences, n_tokens, generator)
    s2 = g.noise_variance(alpha_bar).item()
    p = g.span_projector()
    measured, measured_se, closed = [], [], []
    for temperature in temperatures.tolist():
        w_kq = (temperature / s2) * p
        per_sequence = (
            effective_sample_size(attention_weights(x_t, w_kq)).mean(-1) / n_tokens
        )
        measured.append(per_sequence.mean())
        measured_se.append(per_sequence.std() / n_sequences**0.5)
        closed.append(ess_fraction(g, alpha_bar, x_t @ w_kq).mean())
    return EssProfile(
        temperatures,
        n_tokens,
        torch.stack(measured),
        torch.stack(measured_se),
        torch.stack(closed),
    )


@dataclass(frozen=True)
class TemperatureTradeoff:
    """Excess risk of ``W_KQ = c (P − J)`` with the best value and skip matrices, against
    the temperature c s² (columns) for several token counts (rows), with standard errors."""

    temperatures: Tensor
    token_counts: Tensor
    excess: Tensor
    stderr: Tensor

    def best_temperature(self) -> Tensor:
        """The grid temperature with the smallest excess, per token count."""
        return self.temperatures[self.excess.argmin(-1)]


def temperature_tradeoff(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    temperatures: Tensor | None = None,
    token_counts: tuple[int, ...] | None = None,
    seed: int = 0,
) -> TemperatureTradeoff:
    """Profile the excess over the temperature with :func:`mtgmm.best.readout_fit`."""
    temperatures = (
        temperatures
        if temperatures is not None
        else torch.tensor(
            by_preset(
                (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
                tuple(x / 40 for x in range(41)),
            ),
            dtype=torch.float64,
        )
    )
    token_counts = token_counts or by_preset((16, 64, 256), (16, 64, 256, 1024, 4096))
    s2 = gmm.noise_variance(alpha_bar).item()
    budget = by_preset(2**14, 2**17)
    excess = torch.zeros(len(token_counts), len(temperatures), dtype=torch.float64)
    stderr = torch.zeros_like(excess)
    for i, n_tokens in enumerate(token_counts):
        for j, temperature in enumerate(temperatures.tolist()):
            c = temperature / s2
            _, excess[i, j], stderr[i, j] = readout_fit(
                gmm,
                alpha_bar,
                n_tokens,
                torch.tensor([c, 0.0, -c]),
                n_sequences=max(32, budget // n_tokens),
                generator=torch.Generator().manual_seed(seed + 100 * i + j),
                n_eval_sequences=by_preset(256, 2048),
            )
    return TemperatureTradeoff(temperatures, torch.tensor(token_counts), excess, stderr)
