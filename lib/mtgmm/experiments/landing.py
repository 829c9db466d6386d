"""The data behind the landing page's figure: the book's main result in one picture.

At one noise level a one-layer transformer is trained from the book's start
(:func:`mtgmm.training.train`) at several sequence lengths L. Its excess risk over the Bayes
risk is set beside two references evaluated on the same kind of fresh sequences: attention
that cannot select (W_KQ = 0, best value and skip readout) and the infinite-token mean-denoising
construction of chapter *Self-attention as a mean denoiser*. The attention map of one trained
layer, with the tokens ordered by cluster, shows the mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..attention import AttentionDenoiser, attention_weights, mean_denoising_weights
from ..best import readout_fit
from ..mixture import MultiTokenGMM, add_noise
from ..objective import excess_risk
from ..oracle import bayes_risk
from ..runtime import by_preset
from ..training import train


@dataclass(frozen=True)
class MainResult:
    """Excess risk per token (mean, standard error) against L for the trained transformer,
    uniform attention and the mean-denoising construction; the Bayes risk for scale; the
    attention map of the layer trained at ``map_tokens`` on one sequence sorted by label."""

    alpha_bar: float
    n_tokens: np.ndarray
    trained: np.ndarray
    trained_stderr: np.ndarray
    uniform: np.ndarray
    uniform_stderr: np.ndarray
    construction: np.ndarray
    construction_stderr: np.ndarray
    bayes_risk: float
    bayes_stderr: float
    attention: Tensor
    labels: Tensor


def main_result(
    gmm: MultiTokenGMM,
    alpha_bar: float = 0.9,
    token_counts: tuple[int, ...] | None = None,
    map_tokens: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> MainResult:
    """Train at each L of ``token_counts`` (quick: 32, 64, 128, 256; full: up to 1024) and
    evaluate the three models on fresh sequences; ``map_tokens`` must be one of the L."""
    token_counts = token_counts or by_preset(
        (32, 64, 128, 256), (32, 64, 128, 256, 512, 1024)
    )
    if map_tokens not in token_counts:
        raise ValueError(
            f"map_tokens must be one of token_counts {token_counts}, got {map_tokens}"
        )
    steps, batch, n_eval = by_preset(250, 600), by_preset(16, 64), by_preset(128, 1024)
    rows, attention, labels = [], None, None
    for i, n_tokens in enumerate(tqdm(token_counts, desc="L", disable=not progress)):
        generator = torch.Generator().manual_seed(seed + i)
        model = AttentionDenoiser(gmm.dim)
        history = train(
            model,
            gmm,
            alpha_bar,
            n_tokens,
            steps=steps,
            generator=generator,
            batch_size=batch,
            n_eval_sequences=n_eval,
        )
        construction = AttentionDenoiser.from_weights(
            *mean_denoising_weights(gmm, alpha_bar)
        )
        _, uniform, uniform_se = readout_fit(
            gmm,
            alpha_bar,
            n_tokens,
            torch.zeros(3),
            generator=generator,
            n_eval_sequences=n_eval,
        )
        rows.append(
            (
                history.final_excess,
                history.final_stderr,
                uniform,
                uniform_se,
                *excess_risk(construction, gmm, alpha_bar, n_tokens, n_eval, generator),
            )
        )
        if n_tokens == map_tokens:
            x0, labels = gmm.sample(1, n_tokens, generator=generator)
            noisy, _ = add_noise(x0, alpha_bar, generator)
            order = torch.argsort(labels[0], stable=True)
            with torch.no_grad():
                attention = attention_weights(noisy[:, order], model.W_KQ)[0]
            labels = labels[0, order]
    risk, risk_se = bayes_risk(
        gmm, alpha_bar, by_preset(50_000, 200_000), torch.Generator().manual_seed(seed)
    )
    columns = np.array(rows).T
    return MainResult(
        alpha_bar, np.array(token_counts), *columns, risk, risk_se, attention, labels
    )
