"""Graded questions of the DDPM chapter (book/ddpm.md), read by tools/build_assignments.py.

Each test is a function whose parameter is the student's function (otter passes the
notebook's variable of that name). ``visible`` tests go to the student; ``hidden`` and
``stored`` ones only to the autograder. A ``stored`` test returns values: the build computes
them with the solution and the autograder compares the student's with a tolerance.
"""

from __future__ import annotations


def shape_and_zero(single_gaussian_eps):
    """single_gaussian_eps keeps the shape of x and vanishes at x = a_t mu"""
    import torch

    mu = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    x = torch.zeros(5, 3, dtype=torch.float64)
    out = single_gaussian_eps(x, mu, 0.7, 0.5)
    assert isinstance(out, torch.Tensor), "return a torch tensor"
    assert out.shape == x.shape, f"shape {tuple(out.shape)}, expected {tuple(x.shape)}"
    centre = single_gaussian_eps((0.5**0.5 * mu)[None], mu, 0.7, 0.5)
    assert centre.abs().max() < 1e-12, "the noise estimate at x = a_t mu is 0"


def affine_in_x(single_gaussian_eps):
    """an affine map of x, a multiple of the identity (one Gaussian: a linear oracle)"""
    import torch

    gen = torch.Generator().manual_seed(11)
    mu = torch.randn(4, generator=gen, dtype=torch.float64)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    fx, fy = single_gaussian_eps(x, mu, 0.5, 0.3), single_gaussian_eps(y, mu, 0.5, 0.3)
    ratio = (fx - fy) / (x - y)
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-9)
    assert 0 < ratio.flatten()[0] < 1 / (1 - 0.3) ** 0.5


def limits(single_gaussian_eps):
    """sigma0 -> 0 gives (x - a mu)/b; sigma0 = 1 and mu = 0 gives b x"""
    import torch

    gen = torch.Generator().manual_seed(12)
    mu = torch.randn(3, generator=gen, dtype=torch.float64)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    a, b = 0.6**0.5, 0.4**0.5
    torch.testing.assert_close(single_gaussian_eps(x, mu, 0.0, 0.6), (x - a * mu) / b)
    torch.testing.assert_close(single_gaussian_eps(x, 0 * mu, 1.0, 0.6), b * x)


def values(single_gaussian_eps):
    """stored values at fixed inputs"""
    import torch

    gen = torch.Generator().manual_seed(13)
    mu = torch.randn(3, generator=gen, dtype=torch.float64)
    x = 2 * torch.randn(10, 3, generator=gen, dtype=torch.float64)
    return [single_gaussian_eps(x, mu, s0, ab) for s0, ab in [(0.7, 0.9), (0.3, 0.2)]]


QUESTIONS = {
    "ex-ddpm-single-gaussian": dict(
        function="single_gaussian_eps",
        tests=[
            ("visible", 1, shape_and_zero),
            ("hidden", 1, affine_in_x),
            ("hidden", 1, limits),
            ("stored", 2, values),
        ],
        # the K = 1 case of the package's oracle: the answer may not call it
        forbid=["oracle_eps", "MultiTokenGMM", "mtgmm"],
        wrong=("(x - a * mu)", "(x + a * mu)"),
    ),
}
