"""DDPM noise schedules (derived in :doc:`/book/ddpm`): ``x_t = a_t x_0 + b_t ε``,
``a_t = √ᾱ_t``, ``b_t = √(1 - ᾱ_t)``, ``ᾱ_t = Π_{s ≤ t} (1 - β_s)``, for timestep indices
``t = 0, …, T-1`` (DDPM's step ``t + 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import positive_int


class NoiseSchedule:
    """A DDPM schedule, stored as its ᾱ values in float64; ``alpha_bar``, ``a``, ``b``, ``snr``,
    ``betas``, ``alphas`` are (T,) tensors (`DDPM <../ddpm.html#the-forward-process>`__).
    """

    def __init__(
        self, alpha_bar: Sequence[float] | Tensor, name: str = "custom"
    ) -> None:
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64).flatten()
        if ab.numel() == 0:
            raise ValueError("alpha_bar must hold at least one value")
        if not bool(((ab > 0) & (ab <= 1)).all()):
            raise ValueError("alpha_bar values must lie in (0, 1]")
        if ab.numel() > 1 and not bool((ab[1:] <= ab[:-1]).all()):
            raise ValueError("alpha_bar must be non-increasing in t (noise only grows)")
        self.alpha_bar = ab
        self.name = name

    @classmethod
    def from_alpha_bar(cls, values: Sequence[float] | Tensor) -> NoiseSchedule:
        """A schedule with the given ᾱ values (non-increasing, each in (0, 1])."""
        return cls(values, name="custom")

    @classmethod
    def linear(
        cls, n_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Ho et al. (2020): β_t linear from ``beta_start`` to ``beta_end``."""
        n_steps = positive_int(n_steps, "n_steps")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError("betas must satisfy 0 < beta_start <= beta_end < 1")
        betas = torch.linspace(beta_start, beta_end, n_steps, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, 0), name="linear")

    @classmethod
    def cosine(
        cls, n_steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999
    ):
        """Nichol & Dhariwal (2021): ᾱ_t = f(t)/f(0), f(t) = cos²(π/2 · (t/T + s)/(1 + s)),
        with each β_t clipped at ``max_beta``."""
        n_steps = positive_int(n_steps, "n_steps")
        if offset < 0 or not 0 < max_beta < 1:
            raise ValueError("offset must be >= 0 and max_beta in (0, 1)")
        grid = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
        f = torch.cos((grid + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(torch.cumprod(1 - betas, 0), name="cosine")

    @property
    def n_steps(self) -> int:
        """T, the number of timesteps."""
        return self.alpha_bar.numel()

    def __len__(self) -> int:
        return self.n_steps

    @property
    def a(self) -> Tensor:
        """a_t = √ᾱ_t, the signal scale."""
        return self.alpha_bar.sqrt()

    @property
    def b(self) -> Tensor:
        """b_t = √(1 - ᾱ_t), the noise scale."""
        return (1 - self.alpha_bar).sqrt()

    @property
    def snr(self) -> Tensor:
        """ᾱ_t / (1 - ᾱ_t) (infinite where ᾱ_t = 1)."""
        return self.alpha_bar / (1 - self.alpha_bar)

    @property
    def alphas(self) -> Tensor:
        """α_t = ᾱ_t / ᾱ_{t-1} = 1 - β_t."""
        prev = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar[:-1]])
        return self.alpha_bar / prev

    @property
    def betas(self) -> Tensor:
        """β_t = 1 - α_t."""
        return 1 - self.alphas

    def check_timesteps(self, t: int | Tensor) -> Tensor:
        """Return ``t`` as a long tensor, or raise unless every entry is in 0 … T-1."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.n_steps):
            raise ValueError(
                f"timesteps must lie in 0 … {self.n_steps - 1} (T = {self.n_steps}), "
                f"got values in [{int(t.min())}, {int(t.max())}]"
            )
        return t.long()

    def alpha_bar_at(self, t: int | Tensor) -> Tensor:
        """ᾱ at timestep index (or tensor of indices) ``t``."""
        return self.alpha_bar[self.check_timesteps(t).cpu()]

    def __repr__(self) -> str:
        ab = self.alpha_bar
        return (
            f"NoiseSchedule({self.name}, T={self.n_steps}, "
            f"ᾱ from {ab[0].item():.4g} to {ab[-1].item():.3g})"
        )
