"""Graded questions of the alignment chapter (book/alignment.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests.

The chapter computes the same map itself (its ``linear_weights``, used by its experiments),
so the answer stands in the chapter's code: the exercise is the derivation, and the graded
function may not call ``linear_weights``.
"""

from __future__ import annotations


def shape_and_symmetry(my_linear_weights):
    """a symmetric d x d matrix; at pure noise (alpha_bar = 0) the identity"""
    import torch

    eye = torch.eye(5, dtype=torch.float64)
    p = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    w = my_linear_weights(0.6, 2.0, 2, 0.5, p)
    assert isinstance(w, torch.Tensor), "return a torch tensor"
    assert w.shape == (5, 5), f"shape {tuple(w.shape)}, expected (5, 5)"
    torch.testing.assert_close(w, w.T)
    torch.testing.assert_close(my_linear_weights(0.0, 2.0, 2, 0.5, p), eye)


def blocks(my_linear_weights):
    """W maps span and complement to themselves, with b_t / s_t^2 on the complement"""
    import torch

    gen = torch.Generator().manual_seed(61)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    p = u[:, :3] @ u[:, :3].T
    eye = torch.eye(6, dtype=torch.float64)
    ab, s0 = 0.7, 0.4
    w = my_linear_weights(ab, 3.0, 3, s0, p)
    torch.testing.assert_close(w @ p, p @ w)
    s2 = ab * s0**2 + 1 - ab
    torch.testing.assert_close(w @ (eye - p), (1 - ab) ** 0.5 / s2 * (eye - p))
    inside = torch.linalg.eigvalsh(p @ w @ p)[-3:]
    assert (inside < (1 - ab) ** 0.5 / s2).all(), "the span is shrunk more"


def values(my_linear_weights):
    """stored values at fixed inputs"""
    import torch

    gen = torch.Generator().manual_seed(62)
    u, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    p = u[:, :4] @ u[:, :4].T
    return [my_linear_weights(ab, 4.0, 4, 0.5, p) for ab in (0.99, 0.5, 0.01)]


QUESTIONS = {
    "ex-alignment-linear": dict(
        function="my_linear_weights",
        tests=[
            ("visible", 1, shape_and_symmetry),
            ("hidden", 1, blocks),
            ("stored", 2, values),
        ],
        forbid=["linear_weights", "mtgmm"],
        wrong=("(a2 * r**2 / K + s2)", "(a2 * r**2 / K - s2)"),
    ),
}
