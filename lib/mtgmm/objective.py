"""The DDPM objective at one noise level and the excess risk of a denoiser (derived in
:doc:`/book/ddpm`): ``R_t(f) = E‖f(X_t)_l − ε_l‖² = R*_t + E‖f(X_t)_l − ε*(x_{t,l})‖²``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import positive_int
from .mixture import MultiTokenGMM, add_noise
from .oracle import oracle_eps
from .stats import mean_stderr

Denoiser = Callable[[Tensor], Tensor]


def noisy_batch(
    gmm: MultiTokenGMM,
    alpha_bar: float | Tensor,
    n: int,
    n_tokens: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Fresh ``(x_t, ε)`` of shape (n, L, d); ``alpha_bar`` a float or (n, 1), one level per
    sequence.
    """
    x0, _ = gmm.sample(n, n_tokens, generator=generator)
    return add_noise(x0, alpha_bar, generator=generator)


def ddpm_loss(prediction: Tensor, eps: Tensor) -> Tensor:
    """The per-token DDPM loss ``mean over tokens of ‖ε̂ − ε‖²`` (summed over d)."""
    return ((prediction - eps) ** 2).sum(-1).mean()


MAX_SCORES = 2**26
"""Attention scores per evaluation batch of :func:`excess_risk` (256 MiB in float32), which
caps the batch at long contexts: 256 sequences up to L = 512, one at L = 8192."""


@torch.no_grad()
def excess_risk(
    model: Denoiser,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    n_sequences: int = 2048,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Per-token excess risk ``E‖f(X_t)_l − ε*(x_{t,l})‖²`` and its standard error over
    ``n_sequences`` fresh sequences (the independent units), in batches of at most
    ``batch_size`` sequences and :data:`MAX_SCORES` scores
    (`DDPM <../ddpm.html#checking-the-decomposition-by-monte-carlo>`__). The sequences are
    drawn where ``generator`` is; with ``device`` they are moved there before ``model``
    (which must live there) and the oracle see them.
    """
    n_sequences = positive_int(n_sequences, "n_sequences")
    batch_size = min(
        positive_int(batch_size, "batch_size"), max(1, MAX_SCORES // n_tokens**2)
    )
    on_device = gmm if device is None else gmm.to(device=device)
    per_sequence = []
    done = 0
    while done < n_sequences:
        nb = min(batch_size, n_sequences - done)
        x_t, _ = noisy_batch(gmm, alpha_bar, nb, n_tokens, generator)
        x_t = x_t if device is None else x_t.to(device)
        gap = ((model(x_t) - oracle_eps(on_device, x_t, alpha_bar)) ** 2).sum(-1)
        gap = gap.mean(-1)
        per_sequence.append(gap.double().cpu())
        done += nb
    return mean_stderr(torch.cat(per_sequence))
