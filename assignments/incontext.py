"""Graded questions of the in-context chapter (book/incontext.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests.

The student's ``my_sign_bayes(x_t, ab)`` reads the chapter's ``gmm``, ``K`` and ``sigma0``;
``setup`` defines them as the chapter does, for the values stored at build time.
"""

from __future__ import annotations

SETUP = """\
from mtgmm.incontext import RotatedGMM

gmm = RotatedGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0)
d, K, r, sigma0 = gmm.dim, gmm.n_clusters, 4.0, gmm.sigma0
"""


def shapes(my_sign_bayes, gmm):
    """the estimate has the shape of x_t; the frames are the 2^K sign patterns of the means"""
    import torch

    gen = torch.Generator().manual_seed(41)
    x_t = torch.randn(2, 3, gmm.dim, generator=gen)
    out = my_sign_bayes(x_t, 0.3)
    assert isinstance(out, tuple) and len(out) == 2, "return (estimate, frames)"
    eps, frames = out
    assert eps.shape == x_t.shape, (
        f"shape {tuple(eps.shape)}, expected {tuple(x_t.shape)}"
    )
    K = gmm.n_clusters
    assert frames.shape == (2**K, K, gmm.dim), f"frames shape {tuple(frames.shape)}"


def odd_and_frames(my_sign_bayes, gmm):
    """flipping every token flips the estimate (the sign group holds -1); the frames are
    ± each mean, all 2^K patterns once"""
    import torch

    gen = torch.Generator().manual_seed(42)
    x_t = 2 * torch.randn(2, 4, gmm.dim, generator=gen)
    eps, frames = my_sign_bayes(x_t, 0.4)
    minus, _ = my_sign_bayes(-x_t, 0.4)
    torch.testing.assert_close(minus, -eps, rtol=1e-4, atol=1e-5)
    signs = (frames * gmm.means).sum(-1) / (gmm.means**2).sum(-1)
    torch.testing.assert_close(signs.abs(), torch.ones_like(signs))
    assert len({tuple(row.tolist()) for row in signs.sign()}) == 2**gmm.n_clusters


def one_token_limit(my_sign_bayes, gmm):
    """at alpha_bar -> 0 the tokens carry no signal: the estimate tends to x_t"""
    import torch

    gen = torch.Generator().manual_seed(43)
    x_t = torch.randn(1, 3, gmm.dim, generator=gen)
    eps, _ = my_sign_bayes(x_t, 1e-6)
    torch.testing.assert_close(eps, x_t, rtol=1e-3, atol=1e-3)


def values(my_sign_bayes, gmm):
    """stored values at fixed inputs"""
    import torch

    gen = torch.Generator().manual_seed(44)
    x_t = 1.5 * torch.randn(2, 3, gmm.dim, generator=gen)
    return [my_sign_bayes(x_t, ab)[0] for ab in (0.3, 0.8)]


QUESTIONS = {
    "ex-incontext-signs": dict(
        function="my_sign_bayes",
        tests=[
            ("visible", 1, shapes),
            ("hidden", 1, odd_and_frames),
            ("hidden", 1, one_token_limit),
            ("stored", 2, values),
        ],
        package=["frame_posterior_eps"],
        forbid=["frame_posterior_eps", "bayes_eps", "RotatedGMM"],
        setup=SETUP,
        tolerance={"rtol": 1e-4, "atol": 1e-5},
        wrong=("torch.softmax(loglik, 0)", "torch.softmax(-loglik, 0)"),
    ),
}
