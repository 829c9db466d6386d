"""mtgmm.symmetry against independent computations: the projection as an explicit group
average, exact isometries, and the equivariance of measured training gradients."""

import itertools

import pytest
import torch

from mtgmm.attention import AttentionDenoiser, SymmetricBasis
from mtgmm.mixture import MultiTokenGMM
from mtgmm.objective import ddpm_loss, noisy_batch
from mtgmm.symmetry import (
    invariance_defect,
    permutation_isometry,
    reduced_coordinates,
    weights_from_coordinates,
)
from mtgmm.theory import as_weights

from .conftest import rng

F64 = torch.float64


def _exact_gmm() -> MultiTokenGMM:
    """Orthogonal equal-norm means (K = 4, d = 8, r = 4) exact in float64 (the fixture's are
    rounded to float32), for identities checked to float64 precision."""
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=rng(40), dtype=F64))
    return MultiTokenGMM(4 * q[:, :4].T, sigma0=0.5)


def _random_weights(d: int, seed: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(3, d, d, generator=rng(seed), dtype=F64).unbind(0))


def test_project_and_coordinates_round_trip():
    basis = SymmetricBasis(_exact_gmm())
    w = _random_weights(8, 20)
    sym = tuple(basis.project(m) for m in w)
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


def test_project_is_the_average_over_the_symmetry_group():
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
