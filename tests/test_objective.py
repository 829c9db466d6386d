"""``excess_risk`` caps its evaluation batches by attention scores, not by a fixed count."""

import torch

from mtgmm import AttentionDenoiser, MultiTokenGMM, excess_risk, objective


def test_score_cap_equals_the_same_small_batches(monkeypatch):
    gmm = MultiTokenGMM.orthogonal(2, 4, radius=2.0, sigma0=0.5, seed=0)
    model = AttentionDenoiser(4)
    with torch.no_grad():
        model.W_KQ.copy_(0.2 * torch.eye(4))
        model.W_S.copy_(0.5 * torch.eye(4))

    def run(batch_size: int) -> tuple[float, float]:
        return excess_risk(
            model, gmm, 0.7, 64, 10, torch.Generator().manual_seed(3), batch_size
        )

    small = run(3)
    monkeypatch.setattr(
        objective, "MAX_SCORES", 3 * 64 * 64
    )  # three sequences of L = 64
    assert run(256) == small
    assert run(256) != run(2)  # the batching does change which noise each sequence gets


def test_device_scores_the_generators_sample():
    """With ``device`` the sequences are still the generator's (drawn on the CPU, then
    moved), so the score is the same as without it; here the device is the CPU."""
    gmm = MultiTokenGMM.orthogonal(2, 4, radius=2.0, sigma0=0.5, seed=0)
    model = AttentionDenoiser(4)
    with torch.no_grad():
        model.W_KQ.copy_(0.2 * torch.eye(4))

    def run(**kwargs) -> tuple[float, float]:
        return excess_risk(
            model, gmm, 0.7, 8, 6, torch.Generator().manual_seed(3), **kwargs
        )

    assert run(device="cpu") == run() != run(device="cpu", batch_size=2)
