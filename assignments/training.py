"""Graded questions of the training chapter (book/training.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests."""

from __future__ import annotations


def scalar_and_zero_on_the_class(my_invariance_defect):
    """a scalar tensor, zero on alpha P + beta P_perp + gamma J, positive off it"""
    import torch

    import mtgmm

    gmm = mtgmm.MultiTokenGMM.orthogonal(3, 6, radius=2.0, seed=3, dtype=torch.float64)
    p, j = gmm.span_projector(), gmm.mean_direction_projector()
    eye = torch.eye(6, dtype=torch.float64)
    inside = 0.7 * p + 1.3 * (eye - p) - 0.4 * j
    out = my_invariance_defect(inside, gmm)
    assert isinstance(out, torch.Tensor) and out.ndim == 0, "return a scalar tensor"
    assert out.abs() < 1e-10, "a matrix of the invariant class has no defect"
    assert my_invariance_defect(inside + torch.outer(eye[0], eye[1]), gmm) > 0.1


def norm_properties(my_invariance_defect):
    """homogeneous, blind to the invariant class, and the full norm of an antisymmetric W"""
    import torch

    import mtgmm

    gmm = mtgmm.MultiTokenGMM.orthogonal(4, 8, radius=3.0, seed=4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(51)
    w = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    d = my_invariance_defect(w, gmm)
    torch.testing.assert_close(my_invariance_defect(-2.5 * w, gmm), 2.5 * d)
    p = gmm.span_projector()
    torch.testing.assert_close(my_invariance_defect(w + 3 * p, gmm), d)
    anti = w - w.T
    torch.testing.assert_close(
        my_invariance_defect(anti, gmm), torch.linalg.matrix_norm(anti)
    )


def values(my_invariance_defect):
    """stored values at fixed inputs"""
    import torch

    import mtgmm

    gmm = mtgmm.MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=5)
    gen = torch.Generator().manual_seed(52)
    ws = torch.randn(3, 8, 8, generator=gen, dtype=torch.float64)
    return torch.stack([my_invariance_defect(w, gmm) for w in ws])


QUESTIONS = {
    "ex-training-defect": dict(
        function="my_invariance_defect",
        tests=[
            ("visible", 1, scalar_and_zero_on_the_class),
            ("hidden", 1, norm_properties),
            ("stored", 2, values),
        ],
        package=["invariance_defect"],
        forbid=["invariance_defect", "theory"],
        wrong=("w - projection", "w + projection"),
    ),
}
