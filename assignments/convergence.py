"""Graded questions of the convergence chapter (book/convergence.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests.

The chapter's theorem run uses ``mtgmm.bounds.temperature_iterations`` as a tool, so it stays
in the student notebook; the graded function may not call it. The chapter is still being
rewritten, so the wrong answer is a wrapper (one step too many), not an edit of the
solution's code.
"""

from __future__ import annotations


def integer_and_zero(my_temperature_iterations):
    """an integer; zero when the starting bound S distance0^2 / 2 is already small enough"""
    k = my_temperature_iterations(0.1, 1e-3, 100.0, 10.0, 0.005)
    assert isinstance(k, int) and not isinstance(k, bool), "return an int"
    assert my_temperature_iterations(0.01, 1.0, 10.0, 1.0, 0.05) == 0


def smallest_sufficient(my_temperature_iterations):
    """the bound after K steps is at most the target, after K - 1 it is not; K grows as
    the target falls"""
    import math

    previous = 0
    for target in (1e-1, 1e-2, 1e-4, 1e-6):
        S, m, step, d0 = 50.0, 2.0, 0.01, 0.3
        k = my_temperature_iterations(d0, target, S, m, step)
        bound = S * d0**2 / 2
        assert bound * (1 - step * m) ** (2 * k) <= target * (1 + 1e-9)
        assert k == 0 or bound * (1 - step * m) ** (2 * (k - 1)) > target
        assert k >= previous
        previous = k
    assert math.isfinite(previous)


def values(my_temperature_iterations):
    """stored values at fixed inputs"""
    import numpy as np

    rng = np.random.default_rng(71)
    out = []
    for _ in range(40):
        S = rng.uniform(1, 500)
        m = rng.uniform(0.01, 1) * S
        step = rng.uniform(0.1, 0.99) / S
        d0, target = rng.uniform(0.01, 0.5), 10 ** rng.uniform(-6, -1)
        out.append(my_temperature_iterations(d0, target, S, m, step))
    return np.array(out, dtype=float)


QUESTIONS = {
    "ex-conv-iterations": dict(
        function="my_temperature_iterations",
        tests=[
            ("visible", 1, integer_and_zero),
            ("hidden", 1, smallest_sufficient),
            ("stored", 2, values),
        ],
        forbid=["temperature_iterations", "bounds", "mtgmm"],
        setup="import math\n",
        tolerance={"rtol": 0, "atol": 0},
        wrong="lambda right: lambda *args: right(*args) + 1",
    ),
}
