"""Graded questions of the convergence chapter (book/convergence.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests.

``my_gd_iterations`` is the count of eq-conv-iterations, which the chapter takes from the
package twice: ``gd_iterations`` (the readout's k_r) and ``temperature_iterations`` (K_tau,
the same count from the starting bound S distance0^2 / 2). In the student notebook both calls
go to the student's function instead (the question moves up to just before the first).
"""

from __future__ import annotations


def integer_and_zero(my_gd_iterations):
    """an integer; zero when the starting gap is already at most the target; enough steps"""
    k = my_gd_iterations(0.5, 1e-3, 10.0, 1.0, 0.1)
    assert isinstance(k, int) and not isinstance(k, bool), "return an int"
    assert my_gd_iterations(0.01, 0.05, 10.0, 1.0, 0.1) == 0
    assert 0.5 * 0.9 ** (2 * k) <= 1e-3 < 0.5 * 0.9 ** (2 * (k - 1))


def smallest_sufficient(my_gd_iterations):
    """rho^(2K) excess0 <= target < rho^(2(K - 1)) excess0, with rho set by mu for short
    steps and by lam for long ones; K grows as the target falls"""
    # 2/lam = 0.02: a short step has rho = 1 - step mu, a long one |1 - step lam|
    for step in (0.004, 0.0199):
        lam, mu, excess0 = 100.0, 2.0, 0.3
        rho = max(abs(1 - step * mu), abs(1 - step * lam))
        previous = 0
        for target in (1e-1, 1e-2, 1e-4, 1e-6):
            k = my_gd_iterations(excess0, target, lam, mu, step)
            assert excess0 * rho ** (2 * k) <= target * (1 + 1e-9)
            assert k == 0 or excess0 * rho ** (2 * (k - 1)) > target
            assert k >= previous
            previous = k


def values(my_gd_iterations):
    """stored values at fixed inputs"""
    import numpy as np

    rng = np.random.default_rng(71)
    out = []
    for _ in range(40):
        lam = rng.uniform(1, 500)
        mu = rng.uniform(0.01, 1) * lam
        step = rng.uniform(0.1, 1.9) / lam
        excess0, target = rng.uniform(0.01, 5), 10 ** rng.uniform(-6, -1)
        out.append(my_gd_iterations(excess0, target, lam, mu, step))
    return np.array(out, dtype=float)


QUESTIONS = {
    "ex-conv-iterations": dict(
        function="my_gd_iterations",
        tests=[
            ("visible", 1, integer_and_zero),
            ("hidden", 1, smallest_sufficient),
            ("stored", 2, values),
        ],
        # the package functions whose count the exercise asks for: no student cell names
        # them, and the chapter's calls go to the student's function
        package=["gd_iterations", "temperature_iterations"],
        route={
            "gd_iterations": (
                "lambda excess0, target, lam, mu, step, quadratic=True: "
                "my_gd_iterations(excess0, target, lam, mu, step)"
            ),
            "temperature_iterations": (
                "lambda distance0, target, S, m, step: "
                "my_gd_iterations(S * distance0**2 / 2, target, S, m, step)"
            ),
        },
        forbid=["gd_iterations", "temperature_iterations", "mtgmm"],
        setup="import math\n",
        tolerance={"rtol": 0, "atol": 0},
        wrong=("abs(1 - step * mu)", "abs(1 + step * mu)"),
    ),
}
