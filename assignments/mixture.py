"""Graded questions of the mixture chapter (book/mixture.md), read by tools/build_assignments.py.

See assignments/ddpm.py for the form of the tests.
"""

from __future__ import annotations


def shape_and_finite(my_oracle_eps):
    """my_oracle_eps keeps the shape (n, d) of x and stays finite far from the means"""
    import torch

    means = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    x = torch.linspace(-40, 40, 14, dtype=torch.float64).reshape(7, 2)
    out = my_oracle_eps(x, means, weights, 0.5, 0.5)
    assert isinstance(out, torch.Tensor), "return a torch tensor"
    assert out.shape == x.shape, f"shape {tuple(out.shape)}, expected {tuple(x.shape)}"
    assert torch.isfinite(out).all(), "not finite: use the log-space softmax"


def symmetries(my_oracle_eps):
    """the same under a relabelling of the clusters; odd when the mixture is symmetric"""
    import torch

    gen = torch.Generator().manual_seed(21)
    means = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    weights = torch.softmax(torch.randn(4, generator=gen, dtype=torch.float64), 0)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    out = my_oracle_eps(x, means, weights, 0.4, 0.6)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(
        my_oracle_eps(x, means[perm], weights[perm], 0.4, 0.6), out
    )
    sym = torch.cat([means[:2], -means[:2]])
    w = torch.full((4,), 0.25, dtype=torch.float64)
    torch.testing.assert_close(
        my_oracle_eps(-x, sym, w, 0.4, 0.6), -my_oracle_eps(x, sym, w, 0.4, 0.6)
    )


def one_cluster_limit(my_oracle_eps):
    """K = 1 gives the linear oracle b (x - a mu) / s^2"""
    import torch

    gen = torch.Generator().manual_seed(22)
    mu = torch.randn(1, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    a, b, s2 = 0.3**0.5, 0.7**0.5, 0.3 * 0.8**2 + 0.7
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(
        my_oracle_eps(x, mu, one, 0.8, 0.3), b / s2 * (x - a * mu)
    )


def values(my_oracle_eps):
    """stored values at fixed inputs"""
    import torch

    gen = torch.Generator().manual_seed(23)
    means = 2 * torch.randn(3, 4, generator=gen, dtype=torch.float64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    x = 3 * torch.randn(12, 4, generator=gen, dtype=torch.float64)
    return [my_oracle_eps(x, means, weights, 0.5, ab) for ab in (0.95, 0.5, 0.05)]


QUESTIONS = {
    "ex-mixture-code-oracle": dict(
        function="my_oracle_eps",
        tests=[
            ("visible", 1, shape_and_finite),
            ("hidden", 1, symmetries),
            ("hidden", 1, one_cluster_limit),
            ("stored", 2, values),
        ],
        # the package function the exercise rewrites: no student cell names it, and the
        # chapter's quadrature check calls the student's function instead
        package=["oracle_eps"],
        route=(
            "lambda gmm, x, alpha_bar: my_oracle_eps("
            "x, gmm.means, gmm.weights, gmm.sigma0, alpha_bar)"
        ),
        forbid=["mtgmm", "oracle_eps"],
        wrong=("(x - a * w @ means)", "(x + a * w @ means)"),
    ),
}
