"""The readout profile of ``mtgmm.best``: chunked, checkpointed attention changes nothing."""

import torch

from mtgmm import MultiTokenGMM, best, noisy_batch, oracle_eps


def _value_and_gradient(x, target, basis):
    kappa = torch.tensor([0.3, -0.05, 0.1], dtype=torch.float64, requires_grad=True)
    value, theta = best.readout_profile(x, target, basis, mask_self=False)(kappa)
    value.backward()
    return value.detach(), theta.detach(), kappa.grad


def test_checkpointed_chunks_equal_one_pass(monkeypatch):
    gmm = MultiTokenGMM.orthogonal(
        3, 6, radius=3.0, sigma0=0.5, seed=0, dtype=torch.float64
    )
    x, _ = noisy_batch(gmm, 0.8, 10, 16, torch.Generator().manual_seed(0))
    target = oracle_eps(gmm, x, 0.8)
    basis, _ = best.invariant_matrices(gmm, include_j=True)
    whole = _value_and_gradient(x, target, basis)
    monkeypatch.setattr(
        best, "PROFILE_CHUNK_SCORES", 3 * 16 * 16
    )  # chunks of 3 sequences
    chunked = _value_and_gradient(x, target, basis)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b)


def test_best_in_class_reference_values(gmm):
    """Regression: the best symmetric excess at two settings (generator seed 0), and the
    optimum at ᾱ = 0.5, L = 8 is uniform attention (W_KQ ≈ 0)."""
    reference = {0.9: 0.704, 0.5: 1.680}
    for alpha_bar, value in reference.items():
        result = best.best_in_class(
            gmm,
            alpha_bar,
            8,
            generator=torch.Generator().manual_seed(0),
            bayes_samples=10_000,
        )
        assert abs(result.excess - value) < 4 * result.stderr + 0.01 * value
    s2 = gmm.noise_variance(0.5).item()
    assert abs(result.coefficients[0, 0].item() * s2) < 0.05


def test_the_profile_runs_on_the_requested_device_with_the_same_samples():
    """``device`` moves only the fitting work: the samples are drawn on the CPU, so the
    default device (the CPU here) and an explicit one give the same fit, and MPS (no
    float64) falls back to the CPU."""
    from mtgmm.best import _device, readout_fit

    gmm = MultiTokenGMM.orthogonal(3, 6, 3.0, 0.5, seed=1)
    kq = torch.tensor([0.3, 0.0, -0.3])
    fits = [
        readout_fit(
            gmm, 0.8, 16, kq, 64, torch.Generator().manual_seed(5), device=device
        )
        for device in (None, "cpu")
    ]
    first, second = (f[0].weights().values() for f in fits)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fits[0][1:] == fits[1][1:]
    assert _device("mps").type == "cpu" and _device("cpu").type == "cpu"
