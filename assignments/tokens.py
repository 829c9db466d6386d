"""Graded questions of the tokens chapter (book/tokens.md), for tools/build_assignments.py.
See assignments/ddpm.py for the form of the tests.

The chapter uses ``mtgmm.stats.fit_power_law`` and its own ``tokens_for_target`` as tools
throughout (their results are objects and pairs the exercises' functions do not return), so
they stay in the student notebook; the graded functions may not call them. The chapter is
still being rewritten, so the wrong answers are wrappers, not edits of the solutions' code.
"""

from __future__ import annotations


def slope_and_interval(my_power_law):
    """an exact power law gives its slope, inside a narrow interval"""
    import numpy as np

    x = np.array([4.0, 8, 16, 32, 64])
    y = 3.0 * x**-0.7
    out = my_power_law(x, y, 0.01 * y)
    assert isinstance(out, tuple) and len(out) == 2, "return (slope, (low, high))"
    slope, (low, high) = out
    assert abs(slope + 0.7) < 1e-9, f"slope {slope}, expected -0.7"
    assert low <= slope <= high and high - low < 0.1


def weights_and_scale(my_power_law):
    """scaling y leaves the slope; the interval widens with the errors, and symmetric"""
    import numpy as np

    rng = np.random.default_rng(81)
    x = np.geomspace(2, 512, 9)
    y = x**-0.5 * np.exp(0.03 * rng.standard_normal(9))
    se = 0.03 * y
    slope, (low, high) = my_power_law(x, y, se)
    slope2, _ = my_power_law(x, 7 * y, 7 * se)
    assert abs(slope - slope2) < 1e-9
    assert abs((high - slope) - (slope - low)) < 1e-9
    _, (low4, high4) = my_power_law(x, y, 4 * se)
    assert high4 - low4 > 1.5 * (high - low)


def fit_values(my_power_law):
    """stored values at fixed inputs"""
    import numpy as np

    rng = np.random.default_rng(82)
    x = np.geomspace(8, 1024, 8)
    y = 2 * x**-0.8 * np.exp(0.05 * rng.standard_normal(8))
    slope, (low, high) = my_power_law(x, y, 0.04 * y)
    return np.array([slope, low, high])


def crossing(my_tokens_for_target):
    """the crossing of a power law, and nan when the curve never reaches the target"""
    import math

    import numpy as np

    x = np.array([4.0, 16, 64, 256])
    y = 10 * x**-1.0
    assert abs(my_tokens_for_target(x, y, 0.1) - 100) < 1e-6
    assert math.isnan(my_tokens_for_target(x, y, 0.001))


def bracket_and_limits(my_tokens_for_target):
    """inside the bracketing pair; at a measured point, that point; above the start, nan"""
    import math

    import numpy as np

    x = np.array([2.0, 8, 32, 128, 512])
    y = np.array([5.0, 2.0, 1.5, 0.4, 0.1])
    got = my_tokens_for_target(x, y, 1.0)
    assert 32 < got < 128
    assert abs(my_tokens_for_target(x, y, 0.4) - 128) < 1e-6
    assert math.isnan(my_tokens_for_target(x, y, 6.0))


def target_values(my_tokens_for_target):
    """stored values at fixed inputs"""
    import numpy as np

    x = np.array([4.0, 8, 16, 32, 64, 128])
    y = np.array([3.0, 1.9, 1.1, 0.7, 0.35, 0.2])
    return np.array([my_tokens_for_target(x, y, t) for t in (2.5, 1.0, 0.5, 0.21, 0.1)])


QUESTIONS = {
    "ex-tokens-fit": dict(
        function="my_power_law",
        tests=[
            ("visible", 1, slope_and_interval),
            ("hidden", 1, weights_and_scale),
            ("stored", 2, fit_values),
        ],
        forbid=["fit_power_law", "stats", "mtgmm"],
        setup="import numpy as np\n",
        wrong="lambda right: lambda *a: (-right(*a)[0], right(*a)[1])",
    ),
    "ex-tokens-target": dict(
        function="my_tokens_for_target",
        tests=[
            ("visible", 1, crossing),
            ("hidden", 1, bracket_and_limits),
            ("stored", 2, target_values),
        ],
        forbid=["tokens_for_target", "mtgmm"],
        setup="import numpy as np\n",
        # interpolating on linear axes instead of log-log ones
        wrong=(
            "lambda right: lambda x, y, target: float(np.interp(-target, -np.asarray(y),"
            " np.asarray(x), left=np.nan, right=np.nan))"
        ),
    ),
}
