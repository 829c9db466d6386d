"""Small statistics helpers shared by the chapters: means with standard errors, power-law
fits with error bars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def mean_stderr(values: Tensor | np.ndarray, dim: int | None = None):
    """Sample mean and standard error ``std / √n`` (``ddof = 1``): two floats over all entries
    (``dim = None``), else two tensors reduced over ``dim``.
    """
    values = torch.as_tensor(values)
    if dim is None:
        n = values.numel()
        stderr = values.std().item() / n**0.5 if n > 1 else float("nan")
        return values.mean().item(), stderr
    n = values.shape[dim]
    return values.mean(dim), values.std(dim) / n**0.5


@dataclass(frozen=True)
class PowerLaw:
    """``y ≈ prefactor · x^slope``, fitted on log–log axes, with one-standard-error bars."""

    slope: float
    slope_stderr: float
    prefactor: float
    chi2_per_dof: float

    def __call__(self, x: float | Tensor | np.ndarray) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=float) ** self.slope

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """A ``z``-standard-error confidence interval for the slope (95% by default)."""
        return self.slope - z * self.slope_stderr, self.slope + z * self.slope_stderr


def fit_power_law(x, y, y_stderr) -> PowerLaw:
    """Weighted least squares of ``log y`` on ``log x`` with weights ``(y / y_stderr)²``; the
    slope's standard error is inflated by √(χ²/dof) when the points scatter more than that.
    """
    x, y, se = (
        torch.as_tensor(np.array(v) if isinstance(v, np.ndarray) else v)
        .to(torch.float64)
        .cpu()
        .numpy()
        for v in (x, y, y_stderr)
    )
    if x.ndim != 1 or x.shape != y.shape or y.shape != se.shape or len(x) < 3:
        raise ValueError("x, y and y_stderr must be 1-D arrays of the same length >= 3")
    if (x <= 0).any() or (y <= 0).any() or (se <= 0).any():
        raise ValueError("x, y and y_stderr must be positive for a log-log fit")
    log_x, log_y, w = np.log(x), np.log(y), (y / se) ** 2
    design = np.stack([np.ones_like(log_x), log_x], 1)
    normal = design.T @ (w[:, None] * design)
    coef = np.linalg.solve(normal, design.T @ (w * log_y))
    resid = log_y - design @ coef
    chi2 = float((w * resid**2).sum() / (len(x) - 2))
    cov = np.linalg.inv(normal) * max(1.0, chi2)
    return PowerLaw(
        float(coef[1]), float(np.sqrt(cov[1, 1])), float(np.exp(coef[0])), chi2
    )
