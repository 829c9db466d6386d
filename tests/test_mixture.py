import pytest
import torch

from mtgmm import MultiTokenGMM, add_noise

from .conftest import rng


def test_orthogonal_means_have_the_requested_geometry():
    g = MultiTokenGMM.orthogonal(4, 8, radius=3.0, sigma0=0.2, seed=5)
    gram = g.means @ g.means.T
    torch.testing.assert_close(gram, 9.0 * torch.eye(4), atol=1e-5, rtol=0)
    assert g.n_clusters == 4 and g.dim == 8 and g.sigma0 == 0.2
    torch.testing.assert_close(g.weights, torch.full((4,), 0.25))
    # a random rotation: not aligned with the coordinate axes, reproducible per seed
    assert g.means.abs().max() < 3.0 - 1e-3
    torch.testing.assert_close(
        g.means, MultiTokenGMM.orthogonal(4, 8, 3.0, seed=5).means
    )
    assert not torch.allclose(
        g.means, MultiTokenGMM.orthogonal(4, 8, 3.0, seed=6).means
    )


def test_projectors(gmm):
    p, j = gmm.span_projector(), gmm.mean_direction_projector()
    for proj, rank in [(p, 4), (j, 1)]:
        torch.testing.assert_close(proj @ proj, proj, atol=1e-5, rtol=0)
        torch.testing.assert_close(proj, proj.T)
        assert torch.trace(proj).item() == pytest.approx(rank, abs=1e-5)
    torch.testing.assert_close(gmm.means @ p, gmm.means, atol=1e-5, rtol=0)
    torch.testing.assert_close(p @ j, j, atol=1e-5, rtol=0)  # J lies inside the span


def test_sample_shapes_labels_and_spread(skewed_gmm):
    x0, labels = skewed_gmm.sample(4000, 8, generator=rng(1))
    assert x0.shape == (4000, 8, 3) and labels.shape == (4000, 8)
    freq = torch.bincount(labels.flatten(), minlength=3).double() / labels.numel()
    se = (
        skewed_gmm.weights.double() * (1 - skewed_gmm.weights.double()) / labels.numel()
    ).sqrt()
    assert bool(((freq - skewed_gmm.weights.double()).abs() < 5 * se).all())
    resid = x0 - skewed_gmm.means[labels]
    assert resid.std().item() == pytest.approx(0.7, rel=0.02)
    again, _ = skewed_gmm.sample(4000, 8, generator=rng(1))
    torch.testing.assert_close(x0, again)


def test_noiseless_samples_sit_on_the_means():
    g = MultiTokenGMM.orthogonal(3, 5, radius=2.0)
    x0, labels = g.sample(10, 6, generator=rng(0))
    torch.testing.assert_close(x0, g.means[labels])


def test_add_noise_is_the_forward_process(gmm):
    x0, _ = gmm.sample(3, 5, generator=rng(0))
    ab = torch.tensor([[0.9], [0.5], [0.1]])
    x_t, eps = add_noise(x0, ab, generator=rng(1))
    torch.testing.assert_close(
        x_t, ab[..., None].sqrt() * x0 + (1 - ab[..., None]).sqrt() * eps
    )


def test_log_prob_integrates_to_one_in_1d():
    g = MultiTokenGMM(
        torch.tensor([[-2.0], [1.5]], dtype=torch.float64),
        torch.tensor([0.3, 0.7]),
        0.4,
    )
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64)[:, None]
    for ab in [1.0, 0.6, 0.05]:
        density = g.log_prob(grid, ab).exp()
        assert torch.trapezoid(density, grid[:, 0]).item() == pytest.approx(
            1.0, abs=1e-8
        )


def test_noise_variance_broadcasts(gmm):
    ab = torch.tensor([[0.1], [0.5], [0.9]], dtype=torch.float64)
    expected = ab * gmm.sigma0**2 + 1 - ab
    torch.testing.assert_close(gmm.noise_variance(ab), expected)
    assert gmm.noise_variance(ab).shape == (3, 1)


def test_cluster_snr_and_noise_variance(gmm):
    assert gmm.noise_variance(0.9).item() == pytest.approx(0.9 * 0.25 + 0.1)
    assert gmm.cluster_snr(0.9).item() == pytest.approx(
        0.9**0.5 * 4 / 0.325**0.5, rel=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"means": torch.zeros(4)}, "2-D"),
        ({"means": torch.zeros(2, 3, 4)}, "2-D"),
        ({"means": torch.zeros(0, 3)}, "2-D"),
        ({"means": torch.tensor([[float("nan")]])}, "finite"),
        ({"means": torch.zeros(2, 3), "sigma0": -0.1}, "sigma0"),
        ({"means": torch.zeros(2, 3), "weights": torch.tensor([0.5, 0.6])}, "sum to 1"),
        (
            {"means": torch.zeros(2, 3), "weights": torch.tensor([1.5, -0.5])},
            "non-negative",
        ),
        ({"means": torch.zeros(2, 3), "weights": torch.tensor([1.0])}, r"shape \(K,\)"),
    ],
)
def test_invalid_mixtures_are_rejected(kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        MultiTokenGMM(**kwargs)


def test_invalid_sizes_are_rejected(gmm):
    with pytest.raises(ValueError, match="n must"):
        gmm.sample(0, 4)
    with pytest.raises(ValueError, match="n_tokens"):
        gmm.sample(2, -1)
    with pytest.raises(ValueError, match="n_clusters must be <= dim"):
        MultiTokenGMM.orthogonal(5, 4, 1.0)
    with pytest.raises(ValueError, match="radius"):
        MultiTokenGMM.orthogonal(2, 4, -1.0)
    with pytest.raises(ValueError, match="x must have last dimension"):
        gmm.log_prob(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="undefined"):
        MultiTokenGMM.orthogonal(2, 4, 1.0).log_prob(torch.zeros(4), 1.0)
