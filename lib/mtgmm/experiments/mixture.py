"""Experiments of chapter *The multi-token Gaussian mixture and its oracle*."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..mixture import MultiTokenGMM
from ..oracle import bayes_risk_estimates
from ..runtime import by_preset
from ..schedules import NoiseSchedule


@dataclass(frozen=True)
class RiskCurve:
    """R*_t over a schedule for one mixture: timesteps, ᾱ_t, estimate and standard error."""

    label: str
    radius: float
    sigma0: float
    timesteps: Tensor
    alpha_bar: Tensor
    risk: Tensor
    stderr: Tensor


def bayes_risk_curves(
    schedule: NoiseSchedule,
    radii: tuple[float, ...] = (1.0, 2.0, 4.0),
    sigmas: tuple[float, ...] = (0.0, 0.5),
    n_clusters: int = 4,
    dim: int = 8,
    n_points: int | None = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> list[RiskCurve]:
    """Per-token Bayes risk R*_t along ``schedule`` for orthogonal mixtures of each radius r
    and within-cluster spread σ0, at ``n_points`` evenly spaced timesteps."""
    n_points = n_points or by_preset(40, 200)
    n_samples = n_samples or by_preset(50_000, 400_000)
    timesteps = (
        torch.linspace(0, schedule.n_steps - 1, n_points).round().long().unique()
    )
    alpha_bar = schedule.alpha_bar_at(timesteps)
    curves = []
    for sigma0 in sigmas:
        for radius in radii:
            gmm = MultiTokenGMM.orthogonal(
                n_clusters, dim, radius, sigma0=sigma0, seed=seed
            )
            generator = torch.Generator().manual_seed(seed)
            est = bayes_risk_estimates(gmm, alpha_bar, n_samples, generator=generator)
            label = f"r = {radius:g}, σ0 = {sigma0:g}"
            curves.append(
                RiskCurve(
                    label,
                    radius,
                    sigma0,
                    timesteps,
                    alpha_bar,
                    est.estimate,
                    est.combined_stderr,
                )
            )
    return curves
