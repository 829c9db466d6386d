"""Argument checks shared by the package: every failure is a ``ValueError`` that names
the argument and the rule it broke."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def positive_int(value: int, name: str) -> int:
    """Return ``value`` as an int, or raise if it is not an integer ≥ 1."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def nonnegative_float(value: float, name: str) -> float:
    """Return ``value`` as a float, or raise if it is negative or not finite."""
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def alpha_bar_tensor(alpha_bar: float | Tensor, like: Tensor | None = None) -> Tensor:
    """``alpha_bar`` as a tensor (dtype and device of ``like`` if given); check 0 < ᾱ ≤ 1."""
    if like is not None:
        ab = torch.as_tensor(alpha_bar, dtype=like.dtype, device=like.device)
    elif isinstance(alpha_bar, Tensor) and alpha_bar.is_floating_point():
        ab = alpha_bar
    else:  # Python numbers (and integer tensors) are read in float64, losing nothing
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64)
    if ab.numel() and not bool(((ab > 0) & (ab <= 1)).all()):
        raise ValueError(
            "alpha_bar must lie in (0, 1] (ᾱ_t = prod of (1 - β_s)); "
            f"got values in [{ab.min().item():.3g}, {ab.max().item():.3g}]"
        )
    return ab


def single_level(alpha_bar: float | Tensor) -> float:
    """One noise level ᾱ as a float; raise unless it is a single value in (0, 1]."""
    ab = alpha_bar_tensor(alpha_bar)
    if ab.numel() != 1:
        raise ValueError(
            f"alpha_bar must be a single value here, got shape {tuple(ab.shape)}"
        )
    return float(ab)


def last_dim(x: Tensor, dim: int, name: str = "x_t") -> None:
    """Raise unless ``x`` has at least one axis and its last axis has size ``dim``."""
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{name} must have last dimension d = {dim} (one row per token), "
            f"got shape {tuple(x.shape)}"
        )


def leading_broadcast(ab: Tensor, x: Tensor, name: str = "alpha_bar") -> Tensor:
    """Check that ``ab`` broadcasts over the leading axes of ``x``; return ``ab[..., None]``."""
    try:
        torch.broadcast_shapes(ab.shape, x.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"{name} of shape {tuple(ab.shape)} must broadcast over the leading dimensions "
            f"{tuple(x.shape[:-1])} of x_t"
        ) from err
    return ab[..., None]
