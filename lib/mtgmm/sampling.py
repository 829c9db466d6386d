"""Ancestral DDPM sampling with any noise predictor (derived in :doc:`/book/sampling`).

Ho et al. (2020), Algorithm 2: from ``x_T ~ N(0, I)``, for ``t = T-1, …, 0``

    x_{t-1} = (x_t − β_t / √(1 − ᾱ_t) · ε̂(x_t, t)) / √α_t + σ_t z,    z ~ N(0, I),

with ``σ_t² = β_t`` (default) or ``β̃_t = (1 − ᾱ_{t-1}) / (1 − ᾱ_t) · β_t``, and no noise
at the last step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm import tqdm

from ._checks import positive_int
from .attention import AttentionBank
from .mixture import MultiTokenGMM
from .oracle import oracle_eps
from .schedules import NoiseSchedule

NoisePredictor = Callable[[Tensor, Tensor], Tensor]
"""``eps_fn(x_t, t)``: x_t of shape ``(n, L, d)``, long timestep indices t of shape ``(n,)``;
returns ε̂ of shape ``(n, L, d)`` (the signature of :class:`~mtgmm.attention.AttentionBank`)."""

VARIANCES = ("beta", "posterior")


class OracleNoisePredictor:
    """``(x_t, t) ↦ ε*(x_t)`` at level ᾱ_t per sequence, as a sampler input (carries ``gmm``,
    ``schedule`` and ``dim``).
    """

    def __init__(self, gmm: MultiTokenGMM, schedule: NoiseSchedule) -> None:
        self.gmm = gmm
        self.schedule = schedule
        self.dim = gmm.dim

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        alpha_bar = self.schedule.alpha_bar_at(t).to(device=x_t.device, dtype=x_t.dtype)
        return oracle_eps(self.gmm, x_t, alpha_bar[:, None])


def oracle_eps_fn(gmm: MultiTokenGMM, schedule: NoiseSchedule) -> OracleNoisePredictor:
    """The oracle ε*(x_t) as a noise predictor for :func:`ddpm_sample`."""
    return OracleNoisePredictor(gmm, schedule)


def reverse_coefficients(
    schedule: NoiseSchedule, variance: str = "beta"
) -> tuple[Tensor, Tensor, Tensor]:
    """``1/√α_t``, ``β_t / √(1 − ᾱ_t)`` and ``σ_t`` (σ_0 = 0), float64 (T,) each; the ε̂
    coefficient is 0 where ᾱ_t = 1.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    ab, alphas, betas = schedule.alpha_bar, schedule.alphas, schedule.betas
    one_minus = 1 - ab
    safe = one_minus > 0
    denom = torch.where(safe, one_minus, 1.0)
    eps_coef = torch.where(safe, betas / denom.sqrt(), 0.0)
    if variance == "beta":
        sigma2 = betas.clone()
    else:
        prev = torch.cat([ab.new_ones(1), ab[:-1]])
        sigma2 = torch.where(safe, (1 - prev) / denom * betas, 0.0)
    sigma2[0] = 0.0
    return 1 / alphas.sqrt(), eps_coef, sigma2.sqrt()


def _resolve_predictor(
    eps_fn: NoisePredictor | AttentionBank, schedule: NoiseSchedule, dim: int | None
) -> int:
    """Check ``eps_fn`` against the schedule; return the token dimension d."""
    if not callable(eps_fn):
        raise ValueError(
            f"eps_fn must be callable as eps_fn(x_t, t), got {type(eps_fn)}"
        )
    if isinstance(eps_fn, AttentionBank) and eps_fn.n_steps != schedule.n_steps:
        raise ValueError(
            f"the AttentionBank has n_steps = {eps_fn.n_steps} layers but the schedule has "
            f"T = {schedule.n_steps} steps; they must be equal"
        )
    own = getattr(eps_fn, "dim", None)
    if dim is None and own is None:
        raise ValueError(
            "dim (the token dimension d) is needed when eps_fn does not carry .dim"
        )
    if dim is not None and own is not None and int(dim) != int(own):
        raise ValueError(f"dim = {dim} disagrees with eps_fn.dim = {own}")
    return positive_int(dim if dim is not None else own, "dim")


def _resolve_device(device, generator: torch.Generator | None) -> torch.device:
    """The ``device`` argument, else the generator's device, else CPU; they must agree."""
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"device {device} differs from the generator's device {generator.device}"
        )
    return device


def _check_bank(bank: AttentionBank, device: torch.device, dtype: torch.dtype) -> None:
    """Raise unless the bank's parameters live on ``device`` with ``dtype``."""
    param = bank.W_S
    if param.device.type != device.type or param.dtype != dtype:
        raise ValueError(
            f"the AttentionBank's parameters ({param.dtype} on {param.device}) must match the "
            f"sampling dtype and device ({dtype} on {device}); move the bank with .to()"
        )


@torch.no_grad()
def ddpm_sample(
    eps_fn: NoisePredictor | AttentionBank,
    schedule: NoiseSchedule,
    n: int,
    n_tokens: int,
    dim: int | None = None,
    *,
    variance: str = "beta",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    return_trajectory: bool = False,
    trajectory_every: int = 1,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Draw ``n`` sequences of ``n_tokens`` tokens by ancestral DDPM sampling, vectorised over
    sequences and tokens.

    Args:
        eps_fn: ``eps_fn(x_t, t)``, e.g. :func:`oracle_eps_fn` or an
            :class:`~mtgmm.attention.AttentionBank` with T layers.
        schedule: the noise schedule (T steps).
        dim: token dimension d (optional when ``eps_fn`` has ``dim``).
        variance: ``"beta"`` (σ_t² = β_t) or ``"posterior"`` (σ_t² = β̃_t).
        generator, device, dtype: randomness, placement and float type of the samples.
        progress: show a tqdm bar.
        return_trajectory, trajectory_every: also return every k-th state.

    Returns:
        ``x_0`` (n, L, d), or ``(x_0, states, steps)`` with states (n_saved, n, L, d) and
        their DDPM steps, from T down to 0.
    """
    n = positive_int(n, "n")
    n_tokens = positive_int(n_tokens, "n_tokens")
    trajectory_every = positive_int(trajectory_every, "trajectory_every")
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule)}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    dim = _resolve_predictor(eps_fn, schedule, dim)
    device = _resolve_device(device, generator)
    if isinstance(eps_fn, AttentionBank):
        _check_bank(eps_fn, device, dtype)
    inv_sqrt_alpha, eps_coef, sigma = (
        c.to(device=device, dtype=dtype)
        for c in reverse_coefficients(schedule, variance)
    )
    n_steps = schedule.n_steps
    x = torch.randn(n, n_tokens, dim, generator=generator, device=device, dtype=dtype)
    states, steps = [x], [n_steps]
    for t in tqdm(
        range(n_steps - 1, -1, -1), disable=not progress, desc="DDPM", leave=False
    ):
        timesteps = torch.full((n,), t, dtype=torch.long, device=device)
        eps_hat = eps_fn(x, timesteps)
        if not isinstance(eps_hat, Tensor) or eps_hat.shape != x.shape:
            shape = (
                tuple(eps_hat.shape) if isinstance(eps_hat, Tensor) else type(eps_hat)
            )
            raise ValueError(
                f"eps_fn must return a tensor of the shape of x_t, {tuple(x.shape)}; got {shape}"
            )
        x = inv_sqrt_alpha[t] * (x - eps_coef[t] * eps_hat.to(dtype))
        if t > 0:
            x = x + sigma[t] * torch.randn(
                x.shape, generator=generator, device=device, dtype=dtype
            )
        if return_trajectory and (t == 0 or (n_steps - t) % trajectory_every == 0):
            states.append(x)
            steps.append(t)
    if not return_trajectory:
        return x
    return x, torch.stack(states), torch.tensor(steps, dtype=torch.long)


__all__ = [
    "NoisePredictor",
    "OracleNoisePredictor",
    "ddpm_sample",
    "oracle_eps_fn",
    "reverse_coefficients",
]
