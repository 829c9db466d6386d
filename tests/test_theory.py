"""The theory toolkit against independent computations: brute-force attention over huge key
sets, repeated finite-L draws, measured excess risk and autograd."""

import itertools
import math

import numpy as np
import pytest
import torch

from mtgmm.attention import (
    AttentionDenoiser,
    SymmetricBasis,
    mean_denoising_weights,
)
from mtgmm.mixture import MultiTokenGMM, add_noise
from mtgmm.objective import excess_risk, noisy_batch
from mtgmm.oracle import oracle_eps
from mtgmm.symmetry import orthonormal_symmetric_basis
from mtgmm.theory import (
    attention_bias,
    attention_fluctuation,
    attention_limit,
    ess_fraction,
    layer_limit,
    limit_excess,
    score_matching_error,
    token_expansion,
    variance_exponent,
)

from .conftest import rng


@torch.no_grad()
def measured_token_gap(weights, g, ab, n_tokens, n_seq, generator, mask_self=False):
    """excess(L) − limit measured on the same sequences, the L = ∞ term as control
    variate: mean and standard error over sequences (the chapter's cell, in 64 batches)."""
    model = AttentionDenoiser.from_weights(*weights, mask_self=mask_self).double()
    parts = []
    for n in [len(c) for c in torch.arange(n_seq).chunk(max(1, n_seq // 64))]:
        x_t, _ = noisy_batch(g, ab, n, n_tokens, generator)
        eps_star = oracle_eps(g, x_t, ab)
        finite = ((model(x_t) - eps_star) ** 2).sum(-1)
        limit = ((layer_limit(weights, g, ab, x_t) - eps_star) ** 2).sum(-1)
        parts.append((finite - limit).mean(-1))
    gaps = torch.cat(parts)
    return gaps.mean().item(), gaps.std().item() / len(gaps) ** 0.5


F64 = torch.float64


def _marginal(
    g: MultiTokenGMM, alpha_bar: float, n_sets: int, n_keys: int, gen
) -> torch.Tensor:
    """(n_sets, n_keys, d) i.i.d. noisy tokens from the step-ᾱ marginal."""
    x0, _ = g.sample(n_sets, n_keys, generator=gen)
    return add_noise(x0, alpha_bar, generator=gen)[0]


def _queries(
    g: MultiTokenGMM, alpha_bar: float, n: int, temperature: float, gen
) -> torch.Tensor:
    """Query rows q = x W of marginal tokens, for a random W with s² ‖W‖_op = temperature."""
    s2 = g.noise_variance(alpha_bar).item()
    w = torch.randn(g.dim, g.dim, generator=gen, dtype=F64)
    w = w / torch.linalg.matrix_norm(w, 2) * temperature / s2
    return _marginal(g, alpha_bar, 1, n, gen)[0] @ w


def _brute_attention(keys: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_j softmax_j(⟨q, x_j⟩) x_j for key sets (R, n, d) and queries (Q, d): (R, Q, d)."""
    return torch.softmax(keys @ q.T, dim=-2).transpose(-1, -2) @ keys


# ----------------------------------------------------------- the infinite-token limit


@pytest.mark.parametrize("which", ["gmm", "skewed_gmm"])
def test_attention_limit_is_the_large_L_limit_at_rate_one_over_sqrt_L(which, request):
    """Brute-force attention over up to 2·10⁵ keys: the error to the closed-form limit falls
    like L^(−1/2) (log-log slope over 4 key counts, 6 key sets each) and has the size the
    fluctuation formula gives."""
    g = request.getfixturevalue(which).to(dtype=F64)
    gen, ab = rng(1), 0.6
    q = _queries(g, ab, 4, temperature=0.3, gen=gen)
    limit = attention_limit(g, ab, q)
    sizes = [3125, 12_500, 50_000, 200_000]
    rms = []
    for n in sizes:
        errors = [
            _brute_attention(_marginal(g, ab, 1, n, gen), q)[0] - limit
            for _ in range(6)
        ]
        rms.append(torch.stack(errors).pow(2).sum(-1).mean().sqrt().item())
    slope = np.polyfit(np.log(sizes), np.log(rms), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.12), (slope, rms)
    expected = (attention_fluctuation(g, ab, q).mean() / sizes[-1]).sqrt().item()
    assert 0.6 < rms[-1] / expected < 1.5, (rms[-1], expected)
    assert rms[-1] < 0.01 * limit.norm(dim=-1).mean()


def test_attention_limit_formula_for_general_means(skewed_gmm):
    """The tilting identity at a few queries, against the ratio of mixture expectations
    E[e^{⟨q,x⟩} x] / E[e^{⟨q,x⟩}] computed component by component with the Gaussian MGF
    and its gradient by autograd (not with the closed form)."""
    g = skewed_gmm.to(dtype=F64)
    ab = 0.4
    a, s2 = ab**0.5, g.noise_variance(ab).item()
    q = torch.tensor(
        [[0.3, -1.2, 0.5], [2.0, 0.1, -0.7]], dtype=F64, requires_grad=True
    )
    # log E e^{⟨q,x⟩} with x ~ Σ π_k N(aμ_k, s² I); its gradient is the tilted mean
    log_mgf = torch.logsumexp(
        g.log_weights + a * q @ g.means.T + 0.5 * s2 * (q**2).sum(-1, keepdim=True), -1
    )
    (tilted_mean,) = torch.autograd.grad(log_mgf.sum(), q)
    torch.testing.assert_close(attention_limit(g, ab, q.detach()), tilted_mean)


@pytest.mark.parametrize("alpha_bar", [0.95, 0.5, 0.05])
@pytest.mark.parametrize("sigma0", [0.0, 0.5, 1.5])
def test_layer_limit_of_mean_denoising_weights_is_the_oracle(alpha_bar, sigma0):
    """Exact at any point x, for uniform and non-uniform π, whenever the means have equal
    norms: orthogonal ones, and also 5 non-orthogonal ones in d = 3 (orthogonality is not
    needed at L = ∞). Norms are equalised in float64: float32 rounding alone shows."""
    orth = MultiTokenGMM.orthogonal(4, 8, radius=3.0, seed=2).means.double()
    oblique = torch.randn(5, 3, generator=rng(2), dtype=F64)
    for means in (orth, oblique):
        means = 3 * means / means.norm(dim=1, keepdim=True)
        k, d = means.shape
        x = 3 * torch.randn(50, d, generator=rng(3), dtype=F64)
        for pi in [None, torch.arange(1, k + 1, dtype=F64) / (k * (k + 1) / 2)]:
            g = MultiTokenGMM(means, pi, sigma0)
            weights = mean_denoising_weights(g, alpha_bar)
            torch.testing.assert_close(
                layer_limit(weights, g, alpha_bar, x), oracle_eps(g, x, alpha_bar)
            )


def test_mean_denoising_limit_is_not_the_oracle_for_unequal_norms(gmm):
    g = gmm.to(dtype=F64)
    ab = 0.5
    est, se = limit_excess(mean_denoising_weights(g, ab), g, ab, 20_000, rng(4))
    assert est < 1e-10  # zero up to the float32 rounding of the fixture's mean norms
    means = g.means.clone()
    means[0] *= 1.5
    unequal = MultiTokenGMM(means, sigma0=g.sigma0)
    est, se = limit_excess(
        mean_denoising_weights(unequal, ab), unequal, ab, 20_000, rng(4)
    )
    assert est > 0.05 and est > 20 * se, (est, se)


# ------------------------------------------------------------------ effective sample size


@pytest.mark.parametrize("which", ["gmm", "skewed_gmm"])
def test_ess_fraction_matches_empirical_ess_over_many_keys(which, request):
    g = request.getfixturevalue(which).to(dtype=F64)
    gen, ab = rng(6), 0.7
    q = torch.cat([_queries(g, ab, 3, t, gen) for t in (0.15, 0.3)])
    keys = _marginal(g, ab, 1, 200_000, gen)[0]
    weights = torch.softmax(keys @ q.T, dim=0).T  # (Q, L)
    # Kish's effective sample size of each row, per key
    empirical = weights.sum(-1) ** 2 / (weights**2).sum(-1) / keys.shape[0]
    torch.testing.assert_close(empirical, ess_fraction(g, ab, q), rtol=0.05, atol=0)


def test_ess_fraction_closed_forms(gmm):
    """One component: exactly exp(−s²‖q‖²). W_KQ = cP with a query near cluster k at high
    SNR: about π_k · exp(−c² s² ‖P x‖²) (only cluster k's share π_k of the keys counts)."""
    ab = 0.9
    single = MultiTokenGMM(torch.tensor([[1.0, -2.0, 0.5]], dtype=F64), sigma0=0.4)
    q = torch.randn(5, 3, generator=rng(7), dtype=F64)
    s2 = single.noise_variance(ab).item()
    torch.testing.assert_close(
        ess_fraction(single, ab, q), torch.exp(-s2 * (q**2).sum(-1))
    )
    g = gmm.to(dtype=F64)
    s2 = g.noise_variance(ab).item()
    c = 0.5 / s2
    x0, labels = g.sample(20, 1, generator=rng(8))
    x = add_noise(x0[:, 0], ab, generator=rng(9))[0]
    px2 = ((x @ g.span_projector()) ** 2).sum(-1)
    frac = ess_fraction(g, ab, c * x @ g.span_projector())
    approx = g.weights[labels[:, 0]] * torch.exp(-(c**2) * s2 * px2)
    torch.testing.assert_close(frac, approx, rtol=1e-3, atol=0)
    assert bool(
        (frac <= torch.exp(-(c**2) * s2 * px2)).all()
    )  # the mixture factor is <= 1


# ------------------------------------------------------------- finite-token fluctuations


@pytest.mark.parametrize("which", ["gmm", "skewed_gmm"])
def test_fluctuation_and_bias_match_repeated_key_sets(which, request):
    """Over 6000 independent sets of n = 255 keys: n·E‖A − m‖² (and n·E‖(A − m)V‖² for a
    value map V) against the trace formula, and n·E[A − m] against the bias formula (with
    the query token among the keys and without), within 4 standard errors plus an O(1/n)
    allowance of 3% of the size. Queries at s²‖q‖² = 0.4 (ESS fraction ≳ 0.5)."""
    g = request.getfixturevalue(which).to(dtype=F64)
    gen, ab, n = rng(10), 0.7, 255
    x_q = _marginal(g, ab, 1, 3, gen)[0]
    q = torch.randn(3, g.dim, generator=gen, dtype=F64)
    q = q / q.norm(dim=-1, keepdim=True) * (0.4 / g.noise_variance(ab).item()) ** 0.5
    value_map = torch.randn(g.dim, 2, generator=gen, dtype=F64)
    limit = attention_limit(g, ab, q)
    keys = torch.cat([_marginal(g, ab, 1000, n, gen) for _ in range(6)])  # (R, n, d)
    r = keys.shape[0]
    for with_self in (False, True):
        if with_self:  # the query token prepended to every key set (n + 1 keys)
            with_query = [
                torch.cat([x_q[i].expand(r, 1, -1), keys], 1) for i in range(3)
            ]
            a = torch.cat(
                [_brute_attention(k, q[i : i + 1]) for i, k in enumerate(with_query)], 1
            )
        else:
            a = _brute_attention(keys, q)
        dev = a - limit  # (R, Q, d)
        for vmap, out in [(None, dev), (value_map, dev @ value_map)]:
            trace = attention_fluctuation(g, ab, q, vmap)
            sq = n * (out**2).sum(-1)
            tol = 4 * sq.std(0) / r**0.5 + 0.03 * trace
            assert bool(((sq.mean(0) - trace).abs() < tol).all()), (sq.mean(0), trace)
        beta = attention_bias(g, ab, q, x_q if with_self else None)
        emp, se = n * dev.mean(0), n * dev.std(0) / r**0.5
        tol = 4 * se + 0.03 * beta.norm(dim=-1, keepdim=True)
        assert bool(((emp - beta).abs() < tol).all()), (emp, beta, se)


def _limit_readout(w_kq, g, alpha_bar, gen):
    """The (W_V, W_S) of least L = ∞ excess for this W_KQ, in the symmetric subspace: least
    squares of ε*(x) on the features (m_q(x) E_i, x E_i) over marginal tokens."""
    e = orthonormal_symmetric_basis(SymmetricBasis(g))
    x = _marginal(g, alpha_bar, 1, 100_000, gen)[0]
    m = attention_limit(g, alpha_bar, x @ w_kq)
    feats = torch.cat([torch.einsum("nd,mde->nem", f, e) for f in (m, x)], -1)
    theta = torch.linalg.lstsq(
        feats.reshape(-1, 2 * len(e)),
        oracle_eps(g, x, alpha_bar).reshape(-1, 1),
        driver="gelsd",
    ).solution[:, 0]
    w_v, w_s = (torch.einsum("m,mde->de", part, e) for part in theta.split(len(e)))
    return w_v, w_s


@pytest.fixture(scope="module")
def low_temperature_layer():
    """ᾱ = 0.9, W_KQ = 0.1 (P − J)/s² (ESS fraction ≈ 0.6), best L = ∞ readout."""
    g = MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0).to(dtype=F64)
    ab = 0.9
    basis = SymmetricBasis(g)
    w_kq = 0.1 / g.noise_variance(ab).item() * (basis.P - basis.J)
    return g, ab, (w_kq, *_limit_readout(w_kq, g, ab, rng(11)))


def test_token_expansion_matches_measured_excess_risk(low_temperature_layer):
    """First-order prediction against ``excess_risk`` at L = 64 and 256. Tolerance: 3
    combined standard errors plus 10% of the predicted finite-L part (the dropped 1/L²)."""
    g, ab, weights = low_temperature_layer
    limit, _ = limit_excess(weights, g, ab, 50_000, rng(12))
    for n_tokens in (64, 256):
        expansion = token_expansion(weights, g, ab, 50_000, rng(13))
        pred = expansion.excess(n_tokens).item()
        pred_se = expansion.stderr(n_tokens).item()
        model = AttentionDenoiser.from_weights(*weights).double()
        meas, meas_se = excess_risk(model, g, ab, n_tokens, 65_536 // n_tokens, rng(14))
        tol = 3 * math.hypot(pred_se, meas_se) + 0.1 * (pred - limit)
        assert abs(pred - meas) < tol, (n_tokens, pred, meas, tol)
        # the finite-L part is resolved, not buried in noise
        assert pred - limit > 5 * math.hypot(pred_se, meas_se)


@pytest.mark.parametrize("mask_self", [False, True])
def test_token_expansion_constant_matches_measured_gap(
    low_temperature_layer, mask_self
):
    """(L − 1)·(excess(L) − limit), measured with the limit as control variate, approaches
    the predicted constant: within 10% (+3 s.e.) at L = 256, closer at 64 than at 16."""
    g, ab, weights = low_temperature_layer
    exp = token_expansion(weights, g, ab, 100_000, rng(15), mask_self=mask_self)
    assert exp.kappa < 0.5 and exp.mask_self is mask_self
    err, err_se = {}, {}
    for n_tokens, n_seq in [(16, 2048), (64, 1024), (256, 256)]:
        gap, se = measured_token_gap(
            weights, g, ab, n_tokens, n_seq, rng(16), mask_self
        )
        err[n_tokens] = (n_tokens - 1) * gap - exp.slope
        err_se[n_tokens] = (n_tokens - 1) * math.hypot(se, exp.stderr(n_tokens).item())
    assert abs(err[256]) < 0.1 * abs(exp.slope) + 3 * err_se[256], (
        err,
        err_se,
        exp.slope,
    )
    assert abs(err[64]) < abs(err[16])


def test_oracle_temperature_has_infinite_constant_and_slow_decay(gmm):
    """Mean denoising has κ = 2 (s²‖W_KQ‖ = 1): the 1/L constant is infinite, and the
    measured (L − 1)·gap keeps growing instead of settling."""
    g, ab = gmm.to(dtype=F64), 0.5
    weights = mean_denoising_weights(g, ab)
    assert variance_exponent(weights[0], g, ab) == pytest.approx(2.0)
    exp = token_expansion(weights, g, ab, 1000, rng(17))
    assert exp.slope == math.inf and math.isinf(exp.excess(64).item())
    with pytest.raises(ValueError, match="infinite"):
        exp.tokens_needed(10.0)
    scaled = []
    for n_tokens in (16, 64, 256):
        gap, se = measured_token_gap(weights, g, ab, n_tokens, 256, rng(18))
        scaled.append(((n_tokens - 1) * gap, (n_tokens - 1) * se))
    for (lo, lo_se), (hi, hi_se) in itertools.pairwise(scaled):
        assert hi - lo > 3 * math.hypot(lo_se, hi_se), scaled


def test_tokens_needed_inverts_the_expansion(low_temperature_layer):
    g, ab, weights = low_temperature_layer
    exp = token_expansion(weights, g, ab, 20_000, rng(19))
    target = exp.limit + 0.05
    n = exp.tokens_needed(target)
    assert exp.excess(n).item() <= target < exp.excess(n - 1).item()
    with pytest.raises(ValueError, match="target"):
        exp.tokens_needed(exp.limit / 2)


# ---------------------------------------------------------------- convergence bounds


def test_score_matching_error_is_excess_over_b_squared(skewed_gmm):
    """Per sample, ‖−f/b − ∇log p_t‖² with the score from autograd of the mixture density
    equals ‖f − ε*‖²/b²."""
    g, ab = skewed_gmm.to(dtype=F64), 0.6
    x = _marginal(g, ab, 1, 500, rng(29))[0].requires_grad_(True)
    (score,) = torch.autograd.grad(g.log_prob(x, ab).sum(), x)
    f = 0.3 * x.detach() + 0.1
    b = (1 - ab) ** 0.5
    direct = ((-f / b - score) ** 2).sum(-1).mean()
    excess = ((f - oracle_eps(g, x.detach(), ab)) ** 2).sum(-1).mean()
    torch.testing.assert_close(score_matching_error(excess, ab), direct)
    with pytest.raises(ValueError, match="alpha_bar"):
        score_matching_error(1.0, 1.0)
