"""Shared sizes and a one-call training run, used by the training and convergence chapters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import AttentionDenoiser
from ..mixture import MultiTokenGMM
from ..training import TrainingHistory, train


@dataclass(frozen=True)
class TrainingSetting:
    """The sizes of one training run: tokens, steps, batch, evaluation sequences, log
    period (used by :func:`run`)."""

    n_tokens: int
    steps: int
    batch_size: int
    n_eval_sequences: int
    log_every: int


def run(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    seed: int,
    config: TrainingSetting,
    **options,
) -> tuple[AttentionDenoiser, TrainingHistory]:
    """Train a fresh :class:`~mtgmm.attention.AttentionDenoiser` with
    :func:`mtgmm.training.train` at the sizes of ``config`` (``options`` as in
    :class:`~mtgmm.training.TrainOptions`); returns the model and its history."""
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
