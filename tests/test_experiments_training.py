"""A fast smoke test of the experiments behind chapter *Training dynamics*."""

import numpy as np
import torch

from mtgmm.experiments.training import (
    TrainingSetting,
    divergence_step,
    equivariance_error,
    least_squares_readout,
    seed_runs,
    symmetric_gradient,
)


def test_training_experiments_tiny(gmm):
    config = TrainingSetting(
        n_tokens=8, steps=6, batch_size=4, n_eval_sequences=8, log_every=3
    )
    runs = seed_runs(gmm, 0.9, seeds=(0, 1), config=config)
    assert runs.excess.shape == (2, 3) and runs.coordinates.shape == (2, 3, 3, 3)
    mean, stderr = runs.mean_and_stderr(runs.excess)
    assert mean.shape == (3,) and np.all(stderr >= 0)
    assert divergence_step(gmm, 0.9, 0, config) is None
    assert divergence_step(gmm, 0.9, 0, config, lr=1e6) is not None
    saddle = least_squares_readout(gmm, 0.9, 8)
    assert torch.count_nonzero(saddle.W_KQ) == 0
    grad, se = symmetric_gradient(saddle, gmm, 0.9, 8, n_batches=3, batch_size=4)
    assert grad.shape == se.shape == (3,)
    error, scale = equivariance_error(saddle, gmm, 0.9, 8)
    assert error < 1e-5 * max(1.0, scale)  # float32 means: Q is orthogonal to ~1e-7
