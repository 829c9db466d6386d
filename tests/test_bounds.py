"""The token bound against independent computations: the theory module's expansion and
Monte Carlo excess of the chosen weights, the measured excess of finite-L models, and its own
consistency (monotone in L, tokens_needed inverts it)."""

import math

import pytest
import torch

from mtgmm.attention import AttentionDenoiser, SymmetricBasis
from mtgmm.bounds import _Problem, token_bound, tokens_needed
from mtgmm.objective import excess_risk
from mtgmm.symmetry import weights_from_coordinates
from mtgmm.theory import (
    attention_fluctuation,
    ess_fraction,
    limit_excess,
    token_expansion,
)

from .conftest import rng

GRID = (0.0, 0.06, 0.12, 0.18, 0.24)


def _model(bound, i, gmm):
    w = weights_from_coordinates(
        bound.coefficients[i], SymmetricBasis(gmm.to(dtype=torch.float64))
    )
    return AttentionDenoiser.from_weights(*w).double(), w


def test_bound_decreases_with_tokens(gmm):
    bound = token_bound(gmm, 0.9, [16, 32, 64, 128, 512, 4096], GRID, 2**13, rng(0))
    assert bool(torch.isfinite(bound.excess).all())
    steps = bound.excess[1:] - bound.excess[:-1]
    assert bool((steps < 3 * bound.stderr[1:]).all()), bound.excess
    assert bound.excess[-1] < bound.excess[0] / 10
    # the minimising temperature moves up from uniform attention as L grows
    assert bound.temperature[0] == 0.0 and bound.temperature[-1] >= 0.12


def test_bound_is_the_expansion_of_the_chosen_weights(gmm):
    """The bound at L is limit + slope/(L − 1) of one fixed model; the theory module's
    token_expansion of that model, on independent samples, must give the same numbers."""
    bound = token_bound(gmm, 0.9, [128], GRID, 2**14, rng(1))
    _, w = _model(bound, 0, gmm)
    exp = token_expansion(w, gmm, 0.9, 2**14, rng(2))
    tol = 4 * math.hypot(bound.stderr[0].item(), exp.stderr(128).item())
    assert abs(exp.excess(128).item() - bound.excess[0].item()) < tol
    lim, lim_se = limit_excess(w, gmm, 0.9, 2**14, rng(3))
    assert abs(lim - bound.limit[0].item()) < 4 * lim_se + 1e-3
    assert bound.slope[0].item() == pytest.approx(
        (bound.excess[0] - bound.limit[0]).item() * 127, rel=1e-9
    )


@pytest.mark.parametrize("alpha_bar, n_tokens", [(0.9, 128), (0.1, 64)])
def test_bound_is_above_the_measured_excess_of_its_model(gmm, alpha_bar, n_tokens):
    """Upper bound to first order: the measured excess of W(c*, L) at L (an upper bound on the
    best symmetric model) is below the bound, and close to it at these moderate L."""
    bound = token_bound(gmm, alpha_bar, [n_tokens], GRID, 2**13, rng(4))
    model, _ = _model(bound, 0, gmm)
    g64 = gmm.to(dtype=torch.float64)
    measured, se = excess_risk(model, g64, alpha_bar, n_tokens, 256, rng(5))
    assert measured < bound.excess[0].item() + 3 * math.hypot(
        se, bound.stderr[0].item()
    )
    assert measured > 0.85 * bound.excess[0].item()


def test_fluctuation_matrix_matches_theory(gmm):
    """The per-token fluctuation matrix V_ab = tr(E_aᵀ Σ_q E_b) (written out in bounds) has
    the theory module's attention_fluctuation on its diagonal and by polarisation."""
    problem = _Problem(gmm, 0.9, (0.15,), 256, rng(6), mask_self=False, min_keys=4.0)
    x = problem.eval_tokens
    _, _, fluct, _, ess = problem._features(x, 0.15)
    q = x @ problem.w_kq(0.15)
    e = problem.basis
    g64 = gmm.to(dtype=torch.float64)
    torch.testing.assert_close(ess, ess_fraction(g64, 0.9, q))
    for a in range(e.shape[0]):
        torch.testing.assert_close(
            fluct[:, a, a], attention_fluctuation(g64, 0.9, q, e[a])
        )
        for b in range(a):
            both = attention_fluctuation(g64, 0.9, q, e[a] + e[b])
            torch.testing.assert_close(
                both, fluct[:, a, a] + fluct[:, b, b] + 2 * fluct[:, a, b]
            )


def test_tokens_needed_inverts_the_bound(gmm):
    kwargs = dict(temperatures=GRID, n_samples=2**12)
    needed = tokens_needed(gmm, 0.9, 0.1, generator=rng(7), **kwargs)
    assert 16 < needed < 10_000
    n = int(needed)
    bound = token_bound(gmm, 0.9, [n - 1, n], generator=rng(7), **kwargs)
    assert bound.excess[1] <= 0.1 < bound.excess[0]


def test_tokens_needed_is_inf_below_the_floor(gmm):
    # at ᾱ = 0.5 the L = ∞ excess of the grid's hottest temperature is about 0.3
    assert tokens_needed(gmm, 0.5, 0.05, GRID, 2**12, rng(8)) == math.inf


def test_short_contexts_are_gated(gmm):
    bound = token_bound(gmm, 0.9, [2, 8], GRID, 2**12, rng(9), min_keys=4.0)
    assert bound.excess[0] == math.inf and math.isnan(bound.temperature[0].item())
    assert (
        bound.temperature[1] == 0.0
    )  # only uniform attention has (L − 1) ESS >= 4 at L = 8
    assert bound.ess[0] == pytest.approx(1.0) and bool((bound.ess[1:] < 1).all())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(token_counts=[1, 8]), "token_counts"),
        (dict(token_counts=[8.5]), "token_counts"),
        (dict(temperatures=(0.1, 0.8)), "temperatures"),
        (dict(temperatures=()), "temperatures"),
        (dict(n_samples=0), "n_samples"),
        (dict(alpha_bar=1.5), "alpha_bar"),
        (dict(min_keys=-1.0), "min_keys"),
    ],
)
def test_token_bound_rejects_invalid_arguments(gmm, kwargs, match):
    args = (
        dict(alpha_bar=0.9, token_counts=[8], temperatures=GRID, n_samples=64) | kwargs
    )
    with pytest.raises(ValueError, match=match):
        token_bound(gmm, **args)


@pytest.mark.parametrize("target", [0.0, -1.0, math.inf, math.nan])
def test_tokens_needed_rejects_invalid_targets(gmm, target):
    with pytest.raises(ValueError, match="target"):
        tokens_needed(gmm, 0.9, target, GRID, 64)
