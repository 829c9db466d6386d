"""Experiments of chapter *A map of the gap*: the best one-layer model over SNR and L."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from ..best import BestInClass, best_in_class
from ..mixture import MultiTokenGMM
from ..runtime import by_preset


@dataclass(frozen=True)
class GapMap:
    """Best-in-class excess risk on a grid of noise levels (rows) and token counts (columns).

    ``excess``/``stderr``: per-token excess over the oracle, on fresh sequences;
    ``bayes``/``bayes_stderr``: the Bayes risk of each row, for scale; ``snr``: the cluster
    signal-to-noise ratio a r / s of each row; ``temperature``: c s², the P-coefficient of
    the fitted W_KQ times s²; ``coefficients``: the fitted (3, 3) reduced coordinates."""

    alpha_bars: Tensor
    token_counts: Tensor
    snr: Tensor
    excess: Tensor
    stderr: Tensor
    bayes: Tensor
    bayes_stderr: Tensor
    temperature: Tensor
    coefficients: Tensor


Fit = Callable[[MultiTokenGMM, float, int, int], BestInClass]
"""``fit(gmm, ᾱ, L, seed)``: one :func:`mtgmm.best.best_in_class` call with chosen sizes."""


def best_grid(
    cases: Sequence[tuple[MultiTokenGMM, float]],
    token_counts: Sequence[int],
    fit: Fit,
    seed: int = 0,
    progress: bool = False,
    desc: str = "best in class",
) -> tuple[Tensor, ...]:
    """Run ``fit`` on every (mixture, ᾱ) of ``cases`` (rows) and L of ``token_counts``
    (columns), with seed ``seed + 1000 i + j``. Returns excess, stderr, temperature c s²
    (P-coefficient of W_KQ times s²), the (3, 3) coordinates, and the Bayes risk of each
    row with its standard error."""
    shape = (len(cases), len(token_counts))
    excess, stderr, temperature = (
        torch.zeros(shape, dtype=torch.float64) for _ in range(3)
    )
    coefficients = torch.zeros(*shape, 3, 3, dtype=torch.float64)
    bayes, bayes_se = (torch.zeros(shape[0], dtype=torch.float64) for _ in range(2))
    grid = [(i, j) for i in range(shape[0]) for j in range(shape[1])]
    for i, j in tqdm(grid, desc=desc, disable=not progress):
        gmm, alpha_bar = cases[i]
        result = fit(gmm, alpha_bar, token_counts[j], seed + 1000 * i + j)
        excess[i, j], stderr[i, j] = result.excess, result.stderr
        coefficients[i, j] = result.coefficients
        temperature[i, j] = (
            result.coefficients[0, 0] * gmm.noise_variance(alpha_bar).item()
        )
        bayes[i], bayes_se[i] = result.bayes_risk, result.bayes_risk_stderr
    return excess, stderr, temperature, coefficients, bayes, bayes_se


def gap_map_of(
    gmm: MultiTokenGMM,
    alpha_bars: Sequence[float],
    token_counts: Sequence[int],
    fit: Fit,
    seed: int = 0,
    progress: bool = False,
    desc: str = "best in class",
) -> GapMap:
    """:func:`best_grid` over the noise levels ``alpha_bars`` of one mixture, as a
    :class:`GapMap`."""
    cases = [(gmm, a) for a in alpha_bars]
    excess, stderr, temperature, coefficients, bayes, bayes_se = best_grid(
        cases, token_counts, fit, seed, progress, desc
    )
    levels = torch.tensor(alpha_bars, dtype=torch.float64)
    return GapMap(
        levels,
        torch.tensor(token_counts),
        gmm.cluster_snr(levels),
        excess,
        stderr,
        bayes,
        bayes_se,
        temperature,
        coefficients,
    )


def gap_map(
    gmm: MultiTokenGMM,
    alpha_bars: tuple[float, ...] | None = None,
    token_counts: tuple[int, ...] | None = None,
    include_j: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> GapMap:
    """Run :func:`mtgmm.best.best_in_class` on every (ᾱ, L) of the grid."""
    alpha_bars = alpha_bars or by_preset(
        (0.95, 0.9, 0.7, 0.5, 0.3, 0.1), tuple(x / 20 for x in range(19, 0, -1))
    )
    token_counts = token_counts or by_preset(
        (8, 32, 128), (8, 16, 32, 64, 128, 256, 512, 1024)
    )
    budget = by_preset(2**15, 2**17)

    def fit(
        mixture: MultiTokenGMM, alpha_bar: float, n_tokens: int, seed: int
    ) -> BestInClass:
        return best_in_class(
            mixture,
            alpha_bar,
            n_tokens,
            n_sequences=max(64, budget // n_tokens),
            generator=torch.Generator().manual_seed(seed),
            include_j=include_j,
            n_eval_sequences=by_preset(512, 2048),
            bayes_samples=by_preset(50_000, 200_000),
        )

    return gap_map_of(gmm, alpha_bars, token_counts, fit, seed, progress)
