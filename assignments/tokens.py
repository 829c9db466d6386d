"""Graded questions of the tokens chapter (book/tokens.md), for tools/build_assignments.py.
See assignments/ddpm.py for the form of the tests.

``my_power_law`` rewrites ``mtgmm.stats.fit_power_law``, which the chapter's tail fits call:
in the student notebook they call the student's function instead (the question moves up to
just before them). ``my_extrapolated_tokens`` extends a measured curve beyond its last point,
which the chapter's own ``tokens_for_target`` (an interpolation inside the measured range)
never does; that function stays in the student notebook as a tool, and the graded function
may not call it.
"""

from __future__ import annotations


def slope_and_interval(my_power_law):
    """an exact power law gives its slope and prefactor, with a small error bar"""
    import numpy as np

    x = np.array([4.0, 8, 16, 32, 64])
    y = 3.0 * x**-0.7
    fit = my_power_law(x, y, 0.01 * y)
    for name in ("slope", "slope_stderr", "prefactor", "chi2_per_dof"):
        assert hasattr(fit, name), f"return a PowerLaw (no {name})"
    assert abs(fit.slope + 0.7) < 1e-9, f"slope {fit.slope}, expected -0.7"
    assert abs(fit.prefactor - 3.0) < 1e-9, f"prefactor {fit.prefactor}, expected 3"
    assert 0 < fit.slope_stderr < 0.05 and fit.chi2_per_dof < 1e-12


def weights_and_scale(my_power_law):
    """scaling y leaves the slope and scales the prefactor; the error bar widens with the
    errors, and chi2/dof falls as their square"""
    import numpy as np

    rng = np.random.default_rng(81)
    x = np.geomspace(2, 512, 9)
    y = x**-0.5 * np.exp(0.03 * rng.standard_normal(9))
    se = 0.03 * y
    fit = my_power_law(x, y, se)
    scaled = my_power_law(x, 7 * y, 7 * se)
    assert abs(fit.slope - scaled.slope) < 1e-9
    assert abs(scaled.prefactor / fit.prefactor - 7) < 1e-9
    wide = my_power_law(x, y, 4 * se)
    assert abs(wide.chi2_per_dof * 16 - fit.chi2_per_dof) < 1e-9
    assert wide.slope_stderr > 1.5 * fit.slope_stderr


def fit_values(my_power_law):
    """stored values at fixed inputs"""
    import numpy as np

    rng = np.random.default_rng(82)
    x = np.geomspace(8, 1024, 8)
    y = 2 * x**-0.8 * np.exp(0.05 * rng.standard_normal(8))
    out = []
    for rel in (0.04, 0.01):  # chi2/dof below and above one
        fit = my_power_law(x, y, rel * y)
        out += [fit.slope, fit.slope_stderr, fit.prefactor, fit.chi2_per_dof]
    return np.array(out)


def exact_law(my_extrapolated_tokens):
    """on an exact power law, the crossing; no error bar without a slope error"""
    value, se = my_extrapolated_tokens(64.0, 0.5, -1.0, 0.0, 0.1)
    assert abs(value - 320) < 1e-9, f"L* = {value}, expected 320"
    assert se == 0


def error_bar(my_extrapolated_tokens):
    """the error bar is linear in se(p), zero at the last point, and grows with the
    distance of the target from it"""
    v1, se1 = my_extrapolated_tokens(512.0, 0.6, -0.46, 0.02, 0.5)
    v2, se2 = my_extrapolated_tokens(512.0, 0.6, -0.46, 0.04, 0.5)
    assert abs(v1 - v2) < 1e-9 and abs(se2 - 2 * se1) < 1e-9
    v0, se0 = my_extrapolated_tokens(512.0, 0.6, -0.46, 0.02, 0.6)
    assert abs(v0 - 512) < 1e-9 and abs(se0) < 1e-12
    v3, se3 = my_extrapolated_tokens(512.0, 0.6, -0.46, 0.02, 0.3)
    assert v3 > v1 and se3 / v3 > se1 / v1


def extrapolated_values(my_extrapolated_tokens):
    """stored values at fixed inputs"""
    import numpy as np

    cases = [(512.0, 0.62, -0.46, 0.02, 0.5), (256.0, 1.3, -0.8, 0.05, 0.2)]
    return np.array([my_extrapolated_tokens(*case) for case in cases], dtype=float)


QUESTIONS = {
    "ex-tokens-fit": dict(
        function="my_power_law",
        tests=[
            ("visible", 1, slope_and_interval),
            ("hidden", 1, weights_and_scale),
            ("stored", 2, fit_values),
        ],
        # the package function the exercise rewrites: no student cell names it, and the
        # chapter's tail fits call the student's function instead
        package=["fit_power_law"],
        route="my_power_law",
        forbid=["fit_power_law", "mtgmm"],
        setup="import numpy as np\n\nfrom mtgmm.stats import PowerLaw\n",
        wrong=("(np.log(y) - design @ coef)", "(np.log(y) + design @ coef)"),
    ),
    "ex-tokens-target": dict(
        function="my_extrapolated_tokens",
        tests=[
            ("visible", 1, exact_law),
            ("hidden", 1, error_bar),
            ("stored", 2, extrapolated_values),
        ],
        forbid=["tokens_for_target", "mtgmm"],
        setup="import math\n",
        wrong=("math.exp(log_ratio / slope)", "math.exp(-log_ratio / slope)"),
    ),
}
