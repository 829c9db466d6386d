"""Graded questions of the alignment chapter (book/alignment.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests.

The graded function is the closed-form risk of the best linear map, which the chapter never
computes: its ``linear_weights`` (the map itself, for the chapter's own mixture, by a matrix
inverse) stays in the student notebook as a tool, and the graded function may not call it.
"""

from __future__ import annotations


def zero_at_noise(my_linear_risk):
    """a float between 0 and d; 0 at pure noise (alpha_bar = 0), where the oracle is x"""
    risk = my_linear_risk(0.6, 2.0, 3, 6, 0.5)
    assert isinstance(float(risk), float), "return a number"
    assert 0 < risk < 6, f"risk {risk}, expected between 0 and d = 6"
    assert abs(my_linear_risk(0.0, 2.0, 3, 6, 0.5)) < 1e-12


def against_the_matrix(my_linear_risk):
    """d - b^2 tr M^-1 with M built from explicit orthogonal means; tends to d as b -> 0"""
    import torch

    gen = torch.Generator().manual_seed(61)
    d, K, r, s0 = 7, 3, 2.5, 0.4
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    means = r * u[:, :K].T  # (K, d), orthogonal, norm r
    eye = torch.eye(d, dtype=torch.float64)
    for ab in (0.9, 0.3):
        m = ab * (means.T @ means / K + s0**2 * eye) + (1 - ab) * eye
        expected = d - (1 - ab) * torch.linalg.inv(m).trace().item()
        assert abs(my_linear_risk(ab, r, K, d, s0) - expected) < 1e-9
    assert abs(my_linear_risk(1 - 1e-12, r, K, d, s0) - d) < 1e-6


def values(my_linear_risk):
    """stored values at fixed inputs"""
    import numpy as np

    cases = [(0.99, 4.0, 4, 8, 0.5), (0.5, 4.0, 4, 8, 0.5), (0.7, 3.0, 2, 5, 0.8)]
    return np.array([my_linear_risk(*case) for case in cases], dtype=float)


QUESTIONS = {
    "ex-alignment-linear": dict(
        function="my_linear_risk",
        tests=[
            ("visible", 1, zero_at_noise),
            ("hidden", 1, against_the_matrix),
            ("stored", 2, values),
        ],
        forbid=["linear_weights", "mtgmm"],
        wrong=("(a2 * r**2 / K + s2)", "(a2 * r**2 / K - s2)"),
    ),
}
