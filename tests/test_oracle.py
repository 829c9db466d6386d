"""The oracle against independent computations: quadrature, autograd, symmetry."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from mtgmm import MultiTokenGMM, add_noise, oracle_eps, oracle_x0, posterior_weights

from .conftest import rng

MEANS_1D = [[-2.0], [0.5], [3.0]]
WEIGHTS_1D = [0.2, 0.5, 0.3]


def _prior_density_1d(x0: float, sigma0: float) -> np.ndarray:
    """Per-cluster terms π_k N(x0; μ_k, σ0²) of the clean-token density, in 1-D."""
    mu = np.array(MEANS_1D)[:, 0]
    return np.array(WEIGHTS_1D) * np.exp(-((x0 - mu) ** 2) / (2 * sigma0**2)) / sigma0


@pytest.mark.parametrize("alpha_bar", [0.95, 0.5, 0.05])
@pytest.mark.parametrize("x", [-3.0, 0.1, 1.7, 4.0])
def test_oracle_matches_quadrature_in_1d(alpha_bar, x):
    sigma0 = 0.6
    a, b = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    lik = lambda x0: np.exp(-((x - a * x0) ** 2) / (2 * b**2))  # noqa: E731

    def moment(power, k):
        f = lambda x0: x0**power * _prior_density_1d(x0, sigma0)[k] * lik(x0)  # noqa: E731
        return integrate.quad(
            f, -15, 15, points=[-2, 0.5, 3, x / a], limit=200, epsabs=0
        )[0]

    z = np.array([moment(0, k) for k in range(3)])
    mean_x0 = sum(moment(1, k) for k in range(3)) / z.sum()
    g = MultiTokenGMM(
        torch.tensor(MEANS_1D, dtype=torch.float64), torch.tensor(WEIGHTS_1D), sigma0
    )
    xt = torch.tensor([[x]], dtype=torch.float64)
    np.testing.assert_allclose(
        posterior_weights(g, xt, alpha_bar)[0].numpy(),
        z / z.sum(),
        rtol=1e-7,
        atol=1e-12,
    )
    np.testing.assert_allclose(
        oracle_x0(g, xt, alpha_bar).item(), mean_x0, rtol=1e-7, atol=1e-10
    )
    np.testing.assert_allclose(
        oracle_eps(g, xt, alpha_bar).item(),
        (x - a * mean_x0) / b,
        rtol=1e-7,
        atol=1e-10,
    )


@pytest.mark.parametrize("alpha_bar", [0.8, 0.3])
def test_oracle_matches_quadrature_in_2d(alpha_bar):
    means = np.array([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])
    weights = np.array([0.5, 0.25, 0.25])
    sigma0 = 0.5
    a, b = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    grid = np.linspace(-6, 6, 1201)
    g1, g2 = np.meshgrid(grid, grid, indexing="ij")
    pts = np.stack([g1, g2], -1)  # (n, n, 2) values of x0
    prior = sum(
        w * np.exp(-((pts - m) ** 2).sum(-1) / (2 * sigma0**2))
        for w, m in zip(weights, means, strict=True)
    )
    g = MultiTokenGMM(torch.tensor(means), torch.tensor(weights), sigma0)
    for x in [np.array([1.0, 0.5]), np.array([-0.7, -1.2]), np.array([2.5, 2.5])]:
        post = prior * np.exp(-((x - a * pts) ** 2).sum(-1) / (2 * b**2))
        mass = integrate.trapezoid(integrate.trapezoid(post, grid, axis=1), grid)
        mean_x0 = [
            integrate.trapezoid(
                integrate.trapezoid(post * pts[..., i], grid, axis=1), grid
            )
            / mass
            for i in range(2)
        ]
        eps_quad = (x - a * np.array(mean_x0)) / b
        eps = oracle_eps(g, torch.tensor(x)[None], alpha_bar)[0].numpy()
        np.testing.assert_allclose(eps, eps_quad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("alpha_bar", [0.99, 0.7, 0.2, 0.01])
def test_tweedie_oracle_is_minus_b_times_the_score(skewed_gmm, alpha_bar):
    """ε*(x) = −b ∇ log p_t(x), the score from autograd of an independent mixture density."""
    g = skewed_gmm.to(dtype=torch.float64)
    a, b = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    s = (a**2 * g.sigma0**2 + b**2) ** 0.5
    components = torch.distributions.Independent(
        torch.distributions.Normal(a * g.means, s), 1
    )
    p_t = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(g.weights), components
    )
    x = torch.randn(64, 3, generator=rng(2), dtype=torch.float64) * 2
    x.requires_grad_(True)
    (score,) = torch.autograd.grad(p_t.log_prob(x).sum(), x)
    torch.testing.assert_close(
        oracle_eps(g, x.detach(), alpha_bar), -b * score, rtol=1e-9, atol=1e-11
    )
    # and the package's own density agrees with torch.distributions
    torch.testing.assert_close(
        g.log_prob(x.detach(), alpha_bar), p_t.log_prob(x.detach())
    )


def test_oracle_x0_and_eps_are_consistent(skewed_gmm):
    """x_t = a E[x0|x_t] + b E[ε|x_t] (linearity of the conditional mean)."""
    g = skewed_gmm.to(dtype=torch.float64)
    x = torch.randn(5, 7, 3, generator=rng(3), dtype=torch.float64)
    for ab in [0.9, 0.4, 0.02]:
        recon = ab**0.5 * oracle_x0(g, x, ab) + (1 - ab) ** 0.5 * oracle_eps(g, x, ab)
        torch.testing.assert_close(recon, x)


def test_oracle_is_the_conditional_mean_by_monte_carlo(gmm):
    """Among all functions of x_t, ε* minimises the risk: adding any perturbation raises it,
    and the residual ε − ε* is uncorrelated with functions of x_t (within error bars)."""
    g = gmm.to(dtype=torch.float64)
    x0, _ = g.sample(20000, 1, generator=rng(4))
    x_t, eps = add_noise(x0, 0.6, generator=rng(5))
    resid = eps - oracle_eps(g, x_t, 0.6)
    for feature in [x_t, x_t**2, torch.tanh(x_t)]:
        corr = (resid * feature).sum(-1).flatten()
        assert abs(corr.mean().item()) < 4 * corr.std().item() / corr.numel() ** 0.5


@settings(max_examples=25, deadline=None)
@given(
    perm_seed=st.integers(0, 10_000),
    alpha_bar=st.floats(0.01, 0.99),
    sigma0=st.floats(0.0, 1.5),
)
def test_oracle_is_invariant_under_relabelling_clusters(perm_seed, alpha_bar, sigma0):
    gen = rng(perm_seed)
    means = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 2
    weights = torch.softmax(torch.randn(5, generator=gen, dtype=torch.float64), 0)
    perm = torch.randperm(5, generator=gen)
    g, g_perm = (
        MultiTokenGMM(means, weights, sigma0),
        MultiTokenGMM(means[perm], weights[perm], sigma0),
    )
    x = torch.randn(4, 3, 6, generator=gen, dtype=torch.float64) * 3
    torch.testing.assert_close(
        oracle_eps(g, x, alpha_bar), oracle_eps(g_perm, x, alpha_bar)
    )
    torch.testing.assert_close(
        posterior_weights(g, x, alpha_bar)[..., perm],
        posterior_weights(g_perm, x, alpha_bar),
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    alpha_bar=st.floats(0.01, 1.0),
    sigma0=st.floats(0.0, 1.5),
)
def test_oracle_is_equivariant_under_rotating_means_and_inputs(seed, alpha_bar, sigma0):
    gen = rng(seed)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    means = torch.randn(3, 6, generator=gen, dtype=torch.float64) * 2
    x = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 3
    g, g_rot = (
        MultiTokenGMM(means, sigma0=sigma0),
        MultiTokenGMM(means @ q.T, sigma0=sigma0),
    )
    torch.testing.assert_close(
        oracle_eps(g_rot, x @ q.T, alpha_bar), oracle_eps(g, x, alpha_bar) @ q.T
    )
    torch.testing.assert_close(
        oracle_x0(g_rot, x @ q.T, alpha_bar), oracle_x0(g, x, alpha_bar) @ q.T
    )


@pytest.mark.parametrize("shape", [(8,), (5, 8), (3, 5, 8), (2, 3, 4, 8)])
def test_output_shapes_follow_the_input(gmm, shape):
    x = torch.randn(shape, generator=rng(0))
    assert oracle_eps(gmm, x, 0.5).shape == shape
    assert oracle_x0(gmm, x, 0.5).shape == shape
    assert posterior_weights(gmm, x, 0.5).shape == shape[:-1] + (4,)


def test_alpha_bar_broadcasts_over_leading_dims(gmm):
    x = torch.randn(3, 5, 8, generator=rng(0), dtype=torch.float64)
    g = gmm.to(dtype=torch.float64)
    levels = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    batched = oracle_eps(g, x, levels[:, None])
    for i, ab in enumerate(levels.tolist()):
        torch.testing.assert_close(batched[i], oracle_eps(g, x[i], ab))
    per_token = torch.rand(3, 5, generator=rng(1), dtype=torch.float64) * 0.9 + 0.05
    out = oracle_eps(g, x, per_token)
    torch.testing.assert_close(
        out[1, 2], oracle_eps(g, x[1, 2], per_token[1, 2].item())
    )
    with pytest.raises(ValueError, match="broadcast"):
        oracle_eps(g, x, torch.full((4,), 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_preserved(gmm, dtype):
    x = torch.randn(2, 3, 8, dtype=dtype)
    assert oracle_eps(gmm, x, 0.5).dtype == dtype
    assert posterior_weights(gmm, x, torch.tensor(0.5)).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(gmm):
    x = torch.randn(2, 3, 8, device="cuda")
    out = oracle_eps(gmm, x, 0.5)
    assert out.device.type == "cuda"
    torch.testing.assert_close(
        out.cpu(), oracle_eps(gmm, x.cpu(), 0.5), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("sigma0", [0.0, 0.5])
@pytest.mark.parametrize("alpha_bar", [1e-7, 1e-4, 0.5, 1 - 1e-4, 1 - 1e-6, 1.0])
def test_float32_is_finite_and_accurate_at_both_ends(sigma0, alpha_bar):
    g64 = MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=sigma0).to(
        dtype=torch.float64
    )
    x0, _ = g64.sample(200, 4, generator=rng(0))
    x_t, _ = add_noise(x0, alpha_bar, generator=rng(1))
    x32 = x_t.float()
    ab32 = torch.tensor(alpha_bar, dtype=torch.float32)
    g32 = g64.to(dtype=torch.float32)
    for fn in (oracle_eps, oracle_x0, posterior_weights):
        out = fn(g32, x32, ab32)
        assert bool(torch.isfinite(out).all()), fn.__name__
    reference = oracle_eps(g64, x32.double(), ab32.double())
    err = (oracle_eps(g32, x32, ab32).double() - reference).norm(dim=-1)
    # float32 rounding of x_t (≈ 1e-7 · ‖x_t‖) is amplified by at most b/s² ≤ 1/b
    b = (1 - ab32.double()).sqrt().item()
    assert err.max().item() <= 1e-5 + 4e-7 * 6 / max(b, 1e-3)
    if alpha_bar == 1.0:
        assert oracle_eps(g32, x32, 1.0).abs().max().item() == 0.0
        torch.testing.assert_close(oracle_x0(g32, x32, 1.0), x32)


@pytest.mark.parametrize(
    "alpha_bar", [0.0, -0.1, 1.5, float("nan"), torch.tensor([0.5, 0.0])]
)
def test_alpha_bar_outside_unit_interval_is_rejected(gmm, alpha_bar):
    for fn in (oracle_eps, oracle_x0, posterior_weights):
        with pytest.raises(ValueError, match=r"alpha_bar must lie in \(0, 1\]"):
            fn(gmm, torch.zeros(2, 8), alpha_bar)


def test_wrong_token_dimension_is_rejected(gmm):
    with pytest.raises(ValueError, match="last dimension d = 8"):
        oracle_eps(gmm, torch.zeros(2, 5, 7), 0.5)
    with pytest.raises(ValueError, match="last dimension"):
        oracle_eps(gmm, torch.tensor(1.0), 0.5)
