"""The theory toolkit against independent computations: brute-force attention over huge key
sets, repeated finite-L draws, measured excess risk, autograd and explicit group averages."""

import itertools
import math

import numpy as np
import pytest
import torch

from mtgmm.attention import (
    AttentionDenoiser,
    SymmetricBasis,
    attention_weights,
    mean_denoising_weights,
)
from mtgmm.mixture import MultiTokenGMM, add_noise
from mtgmm.objective import ddpm_loss, excess_risk, noisy_batch
from mtgmm.oracle import oracle_eps
from mtgmm.theory import (
    as_weights,
    attention_bias,
    attention_fluctuation,
    attention_limit,
    effective_sample_size,
    ess_fraction,
    gd_iterations,
    invariance_defect,
    layer_limit,
    limit_excess,
    measured_token_gap,
    orthonormal_symmetric_basis,
    permutation_isometry,
    predicted_excess,
    readout_hessian,
    reduced_coordinates,
    score_matching_error,
    symmetrize,
    token_expansion,
    variance_exponent,
    weights_from_coordinates,
)

from .conftest import rng

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


def test_effective_sample_size_of_attention_rows(gmm):
    x = _marginal(gmm.to(dtype=F64), 0.5, 3, 10, rng(5))
    uniform = torch.full((3, 10, 10), 0.1, dtype=F64)
    torch.testing.assert_close(
        effective_sample_size(uniform), torch.full((3, 10), 10.0, dtype=F64)
    )
    torch.testing.assert_close(
        effective_sample_size(torch.eye(10, dtype=F64)), torch.ones(10, dtype=F64)
    )
    attn = attention_weights(x, 0.2 * torch.eye(8, dtype=F64))
    torch.testing.assert_close(effective_sample_size(attn), 1 / (attn**2).sum(-1))
    with pytest.raises(ValueError, match="attn"):
        effective_sample_size(torch.tensor(1.0))


@pytest.mark.parametrize("which", ["gmm", "skewed_gmm"])
def test_ess_fraction_matches_empirical_ess_over_many_keys(which, request):
    g = request.getfixturevalue(which).to(dtype=F64)
    gen, ab = rng(6), 0.7
    q = torch.cat([_queries(g, ab, 3, t, gen) for t in (0.15, 0.3)])
    keys = _marginal(g, ab, 1, 200_000, gen)[0]
    weights = torch.softmax(keys @ q.T, dim=0).T  # (Q, L)
    empirical = effective_sample_size(weights) / keys.shape[0]
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


def test_predicted_excess_matches_measured_excess_risk(low_temperature_layer):
    """First-order prediction against ``excess_risk`` at L = 64 and 256. Tolerance: 3
    combined standard errors plus 10% of the predicted finite-L part (the dropped 1/L²)."""
    g, ab, weights = low_temperature_layer
    limit, _ = limit_excess(weights, g, ab, 50_000, rng(12))
    for n_tokens in (64, 256):
        pred, pred_se = predicted_excess(weights, g, ab, n_tokens, 50_000, rng(13))
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


# -------------------------------------------------------------- the invariant subspace


def _exact_gmm() -> MultiTokenGMM:
    """Orthogonal equal-norm means (K = 4, d = 8, r = 4) exact in float64 (the fixture's are
    rounded to float32), for identities checked to float64 precision."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=rng(40), dtype=F64))
    return MultiTokenGMM(4 * q[:, :4].T, sigma0=0.5)


def _random_weights(d: int, seed: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(3, d, d, generator=rng(seed), dtype=F64).unbind(0))


def test_symmetrize_and_coordinates_round_trip():
    basis = SymmetricBasis(_exact_gmm())
    w = _random_weights(8, 20)
    sym = symmetrize(w, basis)
    coords = reduced_coordinates(w, basis)
    assert coords.shape == (3, 3)
    for a, b in zip(weights_from_coordinates(coords, basis), sym, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(reduced_coordinates(sym, basis), coords)
    assert float(invariance_defect(sym, basis).max()) < 1e-12
    defect = invariance_defect(w, basis)
    # orthogonal projection: ‖W‖² = ‖sym W‖² + defect²
    for i in range(3):
        total = (w[i] ** 2).sum() - (sym[i] ** 2).sum()
        torch.testing.assert_close(defect[i] ** 2, total)
    # a model, a mapping and a bank (leading T axis) are all accepted
    model = AttentionDenoiser.from_weights(*w)
    for form in (model, model.weights()):  # float32 copies
        torch.testing.assert_close(
            reduced_coordinates(form, basis), coords, rtol=1e-6, atol=1e-6
        )
    stacked = reduced_coordinates(tuple(torch.stack([m, m]) for m in w), basis)
    assert stacked.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="three"):
        as_weights(w[:2])
    with pytest.raises(ValueError, match="coordinates"):
        weights_from_coordinates(torch.zeros(3), basis)


def test_symmetrize_is_the_average_over_the_symmetry_group():
    """Exact average of Qᵀ W Q over Q = (permutation of the 4 means) × (signed permutation
    of a basis of the 4-dim complement), 24 × 384 maps: the symmetric projection."""
    gmm = _exact_gmm()
    basis = SymmetricBasis(gmm)
    w = torch.randn(8, 8, generator=rng(21), dtype=F64)
    signed = [
        torch.diag(torch.tensor(signs, dtype=F64))[list(p)]
        for p in itertools.permutations(range(4))
        for signs in itertools.product([1.0, -1.0], repeat=4)
    ]
    total = torch.zeros(8, 8, dtype=F64)
    for perm in itertools.permutations(range(4)):
        for comp in signed:
            q = permutation_isometry(gmm, perm, comp)
            total += q.T @ w @ q
    torch.testing.assert_close(total / (24 * len(signed)), basis.project(w))


def test_permutation_isometry(gmm, skewed_gmm):
    perm = [2, 0, 3, 1]
    comp = torch.linalg.qr(torch.randn(4, 4, generator=rng(22), dtype=F64))[0]
    exact = _exact_gmm()
    q = permutation_isometry(exact, perm, comp)
    torch.testing.assert_close(q @ q.T, torch.eye(8, dtype=F64))
    torch.testing.assert_close(exact.means @ q, exact.means[perm])
    # on the complement Q acts as comp: Q restricted there is similar to comp
    p_perp = torch.eye(8, dtype=F64) - exact.span_projector()
    torch.testing.assert_close(torch.trace(p_perp @ q), torch.trace(comp))
    q32 = permutation_isometry(
        gmm, perm
    )  # float32-rounded means are accepted (to 1e-6)
    torch.testing.assert_close(
        gmm.means.double() @ q32, gmm.means.double()[perm], atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="orthogonal map"):
        permutation_isometry(skewed_gmm, [1, 0, 2])
    with pytest.raises(ValueError, match="permutation"):
        permutation_isometry(gmm, [0, 0, 1, 2])
    with pytest.raises(ValueError, match="complement"):
        permutation_isometry(gmm, perm, torch.eye(3))


def _chunk_gradients(g, weights, alpha_bar, gen, n_chunks=24, n_seq=32, n_tokens=16):
    """Gradients (C, 3, d, d) of the DDPM loss on C independent batches."""
    model = AttentionDenoiser.from_weights(*weights).double()
    grads = []
    for _ in range(n_chunks):
        x_t, eps = noisy_batch(g, alpha_bar, n_seq, n_tokens, gen)
        model.zero_grad()
        ddpm_loss(model(x_t), eps).backward()
        grads.append(torch.stack([model.W_KQ.grad, model.W_V.grad, model.W_S.grad]))
    return torch.stack(grads)


def _noise_ratio(values: torch.Tensor) -> float:
    """‖mean‖² over its expectation under a zero mean, Σ Var / C: about 1 for pure noise."""
    return (
        (values.mean(0) ** 2).sum() / (values.var(0).sum() / values.shape[0])
    ).item()


def test_population_gradient_at_an_invariant_point_is_invariant(gmm):
    """At W_KQ = 0.3(P − J), W_V = −0.2P, W_S = 0.5(I + P) the non-symmetric part of the
    gradient is pure Monte Carlo noise (ratio ~ 1; about 11 effective degrees of freedom,
    so < 3 is a ~1e-3 test), the symmetric part is far above its noise. Control: with one
    mean 1.5× longer (symmetry broken) the non-symmetric part is clearly nonzero."""
    ab = 0.5
    eye = torch.eye(8, dtype=F64)
    for scale, invariant in [(1.0, True), (1.5, False)]:
        means = gmm.means.double().clone()
        means[3] *= scale
        g = MultiTokenGMM(means, sigma0=gmm.sigma0)
        basis = SymmetricBasis(g)
        p, j = basis.P, basis.J
        grads = _chunk_gradients(
            g, (0.3 * (p - j), -0.2 * p, 0.5 * (eye + p)), ab, rng(23)
        )
        sym = basis.project(grads)
        ratio = _noise_ratio(grads - sym)
        if invariant:
            assert ratio < 3, ratio
            assert _noise_ratio(sym) > 1000
        else:
            assert ratio > 30, ratio


@pytest.mark.parametrize("kind", ["permutation", "rotation"])
def test_gradient_is_equivariant(gmm, kind):
    """For a mixture transformed by an orthogonal Q (means μQ), the population gradient at
    QᵀWQ is Qᵀ ∇L(W) Q: compared on independent samples, the difference is pure noise,
    while the untransformed gradient is not (the test has power)."""
    g, ab = gmm.to(dtype=F64), 0.5
    comp = torch.linalg.qr(torch.randn(4, 4, generator=rng(24), dtype=F64))[0]
    if kind == "permutation":
        q = permutation_isometry(g, [1, 2, 3, 0], comp)
    else:
        q = torch.linalg.qr(torch.randn(8, 8, generator=rng(25), dtype=F64))[0]
    moved = MultiTokenGMM(g.means @ q, sigma0=g.sigma0)
    w = tuple(0.15 * m for m in _random_weights(8, 26))
    grads = _chunk_gradients(g, w, ab, rng(27))
    grads_moved = _chunk_gradients(moved, tuple(q.T @ m @ q for m in w), ab, rng(28))
    assert _noise_ratio(q.T @ grads @ q - grads_moved) < 3
    assert _noise_ratio(grads - grads_moved) > 30


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


_MODELS = {
    mask: AttentionDenoiser(8, mask_self=mask).double() for mask in (False, True)
}


def _loss_at(w_kq, w_v, w_s, x_t, eps, mask_self=False):
    """The DDPM loss as a function of the three matrices (for autograd in the readout)."""
    params = {"W_KQ": w_kq, "W_V": w_v, "W_S": w_s}
    return ddpm_loss(
        torch.func.functional_call(_MODELS[mask_self], params, (x_t,)), eps
    )


def _readout_loss(theta, e, w_kq, x_t, eps, mask_self=False):
    """The loss in the orthonormal symmetric coordinates θ = (W_V's, W_S's)."""
    w_v, w_s = (torch.einsum("m,mde->de", part, e) for part in theta.split(len(e)))
    return _loss_at(w_kq, w_v, w_s, x_t, eps, mask_self)


@pytest.mark.parametrize("mask_self", [False, True])
def test_readout_hessian_matches_autograd(gmm, mask_self):
    g, ab = gmm.to(dtype=F64), 0.7
    basis = SymmetricBasis(g)
    x_t, eps = noisy_batch(g, ab, 6, 5, rng(30))
    w_kq = 0.2 * torch.randn(8, 8, generator=rng(31), dtype=F64)
    e = orthonormal_symmetric_basis(basis)
    theta = torch.randn(2 * len(e), generator=rng(32), dtype=F64)
    h = torch.autograd.functional.hessian(
        lambda t: _readout_loss(t, e, w_kq, x_t, eps, mask_self), theta
    )
    torch.testing.assert_close(readout_hessian(w_kq, x_t, basis, mask_self), h)
    h_full = torch.autograd.functional.hessian(
        lambda v: _loss_at(
            w_kq, v[:64].view(8, 8), v[64:].view(8, 8), x_t, eps, mask_self
        ),
        torch.zeros(128, dtype=F64),
    )
    block = readout_hessian(w_kq, x_t, mask_self=mask_self)
    torch.testing.assert_close(torch.kron(block, torch.eye(8, dtype=F64)), h_full)


def test_readout_hessian_checks_arguments():
    with pytest.raises(ValueError, match="x_t"):
        readout_hessian(torch.eye(3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="w_kq"):
        readout_hessian(torch.eye(2), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="mask_self"):
        readout_hessian(torch.eye(3), torch.zeros(2, 1, 3), mask_self=True)


def test_gd_iterations_bounds_gradient_descent_on_the_readout_quadratic(gmm):
    """GD (gradients by autograd) on the empirical readout loss, in the orthonormal symmetric
    coordinates with W_KQ fixed, from θ = 0 with step 1/ℓ: it reaches the target within the
    quadratic bound, which lies within the general one; μ, ℓ from ``readout_hessian``."""
    g, ab = gmm.to(dtype=F64), 0.7
    basis = SymmetricBasis(g)
    e = orthonormal_symmetric_basis(basis)
    w_kq = 0.2 / g.noise_variance(ab).item() * (basis.P - basis.J)
    x_t, eps = noisy_batch(g, ab, 32, 16, rng(33))
    model = AttentionDenoiser.from_weights(
        w_kq, torch.eye(8), torch.zeros(8, 8)
    ).double()
    with torch.no_grad():
        attn_out = model(x_t)  # the attention output A (W_V = I, W_S = 0)
    feats = torch.stack(
        [torch.einsum("nld,mde->nlme", f, e) for f in (attn_out, x_t)], -3
    )
    feats = feats.flatten(-3, -2)  # (n, L, 2m, d)

    def loss(theta):
        return ((torch.einsum("nlad,a->nld", feats, theta) - eps) ** 2).sum(-1).mean()

    hess = readout_hessian(w_kq, x_t, basis)
    mu, ell = torch.linalg.eigvalsh(hess)[[0, -1]].tolist()
    theta = torch.zeros(2 * len(e), dtype=F64, requires_grad=True)
    (grad0,) = torch.autograd.grad(loss(theta), theta)
    f_star = loss(torch.linalg.solve(hess, -grad0)).item()
    excess0, target = loss(theta).item() - f_star, 1e-6
    k = 0
    while loss(theta).item() - f_star > target:
        (grad,) = torch.autograd.grad(loss(theta), theta)
        theta = (theta - grad / ell).detach().requires_grad_(True)
        k += 1
    quad = gd_iterations(excess0, target, ell, mu, 1 / ell, quadratic=True)
    general = gd_iterations(excess0, target, ell, mu, 1 / ell)
    assert k <= quad <= general, (k, quad, general)


def test_gd_iterations_is_tight_on_the_slowest_direction():
    """GD on f(θ) = (μθ₁² + ℓθ₂²)/2 started on the flattest eigenvector θ_0 = (1, 0): the
    quadratic bound is exactly the iteration count."""
    mu, ell, step, target = 0.1, 2.0, 0.5, 1e-4
    theta, k = [1.0, 0.0], 0
    f = lambda t: 0.5 * (mu * t[0] ** 2 + ell * t[1] ** 2)  # noqa: E731
    excess0 = f(theta)
    while f(theta) > target:
        theta = [theta[0] - step * mu * theta[0], theta[1] - step * ell * theta[1]]
        k += 1
    assert gd_iterations(excess0, target, ell, mu, step, quadratic=True) == k
    assert gd_iterations(1.0, 2.0, ell, mu, step) == 0
    with pytest.raises(ValueError, match="step"):
        gd_iterations(1.0, 0.1, ell, mu, 0.6)  # > 1/ℓ for the general bound
    with pytest.raises(ValueError, match="step"):
        gd_iterations(1.0, 0.1, ell, mu, 1.0, quadratic=True)  # = 2/ℓ
    with pytest.raises(ValueError, match="strong_convexity"):
        gd_iterations(1.0, 0.1, ell, 3.0, 0.1)
    with pytest.raises(ValueError, match="excess0"):
        gd_iterations(0.0, 0.1, ell, mu, 0.1)
