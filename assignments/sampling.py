"""Graded questions of the sampling chapter (book/sampling.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests.

No cell of the chapter computes the exercise's variance β_t s_{t-1}^2 / s_t^2 (the leak check
of tests/test_assignments.py says so). ``reverse_coefficients``, the sampler's coefficients,
stays in the student notebook as a tool: it gives only the two standard variances, the ends
σ0 = 1 and σ0 = 0 that the exercise's prompt itself states, and the graded function may not
call it (the stored values are at σ0 strictly between). The wrong answer is a wrapper
(2 v − β_t in place of v).
"""

from __future__ import annotations


def shape_and_ends(cluster_reverse_variance):
    """one variance per step t = 1..T; sigma0 = 1 gives beta_t"""
    import torch

    import mtgmm

    schedule = mtgmm.NoiseSchedule.cosine(50)
    out = cluster_reverse_variance(schedule, 1.0)
    assert isinstance(out, torch.Tensor), "return a torch tensor"
    assert out.shape == schedule.betas[1:].shape, f"shape {tuple(out.shape)}"
    torch.testing.assert_close(out, schedule.betas[1:])


def posterior_limit_and_order(cluster_reverse_variance):
    """sigma0 = 0 gives the posterior variance beta~_t; in between, between the two"""
    import torch

    import mtgmm

    schedule = mtgmm.NoiseSchedule.linear(200)
    ab = schedule.alpha_bar
    tilde = schedule.betas[1:] * (1 - ab[:-1]) / (1 - ab[1:])
    torch.testing.assert_close(cluster_reverse_variance(schedule, 0.0), tilde)
    middle = cluster_reverse_variance(schedule, 0.5)
    assert (middle >= tilde - 1e-12).all() and (
        middle <= schedule.betas[1:] + 1e-12
    ).all()


def values(cluster_reverse_variance):
    """stored values at fixed inputs"""
    import mtgmm

    schedule = mtgmm.NoiseSchedule.cosine(40)
    return [cluster_reverse_variance(schedule, s0) for s0 in (0.2, 0.5, 0.8)]


QUESTIONS = {
    "ex-sampling-variance": dict(
        function="cluster_reverse_variance",
        tests=[
            ("visible", 1, shape_and_ends),
            ("hidden", 1, posterior_limit_and_order),
            ("stored", 2, values),
        ],
        forbid=["reverse_coefficients", "sampling"],
        wrong=(
            "lambda right: lambda schedule, sigma0: "
            "2 * right(schedule, sigma0) - schedule.betas[1:]"
        ),
    ),
}
