"""A fast smoke test of the shared training run (chapters *Training dynamics* and
*Convergence*)."""

from mtgmm.experiments.training import TrainingSetting, run


def test_training_run_tiny(gmm):
    config = TrainingSetting(
        n_tokens=8, steps=6, batch_size=4, n_eval_sequences=8, log_every=3
    )
    model, history = run(gmm, 0.9, 0, config)
    assert history.excess.shape == (3,) and history.coordinates.shape == (3, 3, 3)
    assert model.W_KQ.shape == (8, 8)
    _, again = run(gmm, 0.9, 0, config)
    assert (again.excess == history.excess).all()  # seeded
