"""The attention layer, its bank and the symmetric basis: autograd gradient checks, the
fused kernel against the explicit formula, per-timestep batching
(gathered, shared and grouped paths), argument checks."""

import itertools

import pytest
import torch

from mtgmm.attention import (
    AttentionBank,
    AttentionDenoiser,
    SymmetricBasis,
    attend,
    attend_explicit,
    attend_fused,
    attention_weights,
    mean_denoising_weights,
    timestep_layers,
)
from mtgmm.mixture import MultiTokenGMM
from mtgmm.objective import excess_risk

from .conftest import rng

F64 = torch.float64


def _layer_output(x, w_kq, w_v, w_s, mask_self):
    model = AttentionDenoiser(x.shape[-1], mask_self=mask_self).double()
    params = {"W_KQ": w_kq, "W_V": w_v, "W_S": w_s}
    return torch.func.functional_call(model, params, (x,))


@pytest.mark.parametrize("mask_self", [False, True])
def test_layer_gradcheck(mask_self):
    """Analytic (autograd through the fused kernel) against finite differences, float64,
    in the tokens and all three matrices."""
    gen = rng(0)
    x = torch.randn(2, 4, 3, generator=gen, dtype=F64, requires_grad=True)
    mats = [
        0.5 * torch.randn(3, 3, generator=gen, dtype=F64).requires_grad_()
        for _ in range(3)
    ]
    assert torch.autograd.gradcheck(
        lambda *args: _layer_output(*args, mask_self=mask_self), (x, *mats)
    )


def test_bank_gradcheck():
    gen = rng(1)
    x = torch.randn(3, 4, 2, generator=gen, dtype=F64, requires_grad=True)
    bank = AttentionBank(3, 2).double()
    params = {
        n: 0.5 * torch.randn(3, 2, 2, generator=gen, dtype=F64)
        for n in ("W_KQ", "W_V", "W_S")
    }
    t = torch.tensor([2, 0, 2])

    def run(x, w_kq, w_v, w_s):
        return torch.func.functional_call(
            bank, {"W_KQ": w_kq, "W_V": w_v, "W_S": w_s}, (x, t)
        )

    inputs = (x, *(p.requires_grad_() for p in params.values()))
    assert torch.autograd.gradcheck(run, inputs)


@pytest.mark.parametrize(
    "n_tokens", [7, 20]
)  # short rows (own softmax) and torch's kernel
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mask_self", [False, True])
def test_fused_attend_equals_explicit(dtype, mask_self, n_tokens):
    gen = rng(2)
    x = torch.randn(5, n_tokens, 4, generator=gen, dtype=dtype)
    tol = (
        {"rtol": 1e-5, "atol": 1e-5}
        if dtype == torch.float32
        else {"rtol": 1e-12, "atol": 1e-12}
    )
    for shape in [(4, 4), (5, 4, 4)]:  # shared weights, then one matrix per sequence
        w_kq = 0.5 * torch.randn(shape, generator=gen, dtype=dtype)
        w_v = torch.randn(shape, generator=gen, dtype=dtype)
        explicit = attend_explicit(x, w_kq, w_v, mask_self)
        torch.testing.assert_close(
            attend_fused(x, w_kq, w_v, mask_self), explicit, **tol
        )
        torch.testing.assert_close(attend(x, w_kq, w_v, mask_self), explicit, **tol)
        # and the explicit formula itself, token by token
        w_kq_i = w_kq.expand(5, 4, 4)
        w_v_i = w_v.expand(5, 4, 4)
        n, i = 3, 2
        scores = torch.stack([x[n, i] @ w_kq_i[n] @ x[n, j] for j in range(n_tokens)])
        if mask_self:
            scores[i] = float("-inf")
        expected = (torch.softmax(scores, 0)[:, None] * (x[n] @ w_v_i[n])).sum(0)
        torch.testing.assert_close(explicit[n, i], expected, **tol)


@pytest.mark.parametrize("mask_self", [False, True])
def test_fused_and_explicit_gradients_agree(mask_self):
    """Forward+backward of both kernels, float64, in the tokens and both matrices."""
    gen = rng(12)
    x = torch.randn(3, 9, 4, generator=gen, dtype=F64, requires_grad=True)
    w_kq, w_v = (
        torch.randn(4, 4, generator=gen, dtype=F64, requires_grad=True) for _ in "ab"
    )
    probe = torch.randn(3, 9, 4, generator=gen, dtype=F64)
    grads = [
        torch.autograd.grad((fn(x, w_kq, w_v, mask_self) * probe).sum(), (x, w_kq, w_v))
        for fn in (attend_fused, attend_explicit)
    ]
    for fused, explicit in zip(*grads, strict=True):
        torch.testing.assert_close(fused, explicit, rtol=1e-10, atol=1e-10)


def test_attention_weights_are_row_stochastic_and_mask_zeroes_the_diagonal():
    x = torch.randn(3, 6, 4, generator=rng(3), dtype=F64)
    w_kq = torch.randn(4, 4, generator=rng(4), dtype=F64)
    for mask_self in (False, True):
        a = attention_weights(x, w_kq, mask_self)
        assert a.shape == (3, 6, 6) and bool((a >= 0).all())
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 6, dtype=F64))
        diag = torch.diagonal(a, dim1=-2, dim2=-1)
        assert bool((diag == 0).all()) if mask_self else bool((diag > 0).all())
        torch.testing.assert_close(
            a @ x, attend(x, w_kq, torch.eye(4, dtype=F64), mask_self)
        )


@pytest.mark.parametrize("mask_self", [False, True])
def test_bank_forward_equals_looping_its_layers(mask_self):
    gen = rng(5)
    bank = AttentionBank(4, 3, mask_self=mask_self)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    x = torch.randn(6, 5, 3, generator=gen)
    t = torch.tensor([3, 0, 1, 3, 2, 0])
    looped = torch.stack([bank.layer(int(t[n]))(x[n]) for n in range(6)])
    torch.testing.assert_close(bank(x, t), looped)
    torch.testing.assert_close(bank(x, 2), bank.layer(2)(x))  # one int for the batch
    assert bank.layer(1).mask_self is mask_self


@pytest.mark.parametrize("mask_self", [False, True])
def test_grouped_fast_path_equals_the_gather_path(mask_self):
    """``by_timestep`` (one matrix product per timestep) against ``bank(x, t)`` with one
    gathered matrix per sequence, and the shared-timestep path against the layer itself."""
    gen = rng(14)
    bank = AttentionBank(6, 3, mask_self=mask_self).double()
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=F64))
    x = torch.randn(
        4, 5, 7, 3, generator=gen, dtype=F64
    )  # timesteps 2..5, 5 sequences each
    t = torch.arange(2, 6).repeat_interleave(5)
    gathered = bank(x.flatten(0, 1), t)
    torch.testing.assert_close(bank.by_timestep(x, first=2).flatten(0, 1), gathered)
    mixed = t.flip(0)  # not grouped: the gather path, sequence by sequence
    looped = torch.stack(
        [
            bank.layer(int(k)).double()(s)
            for k, s in zip(mixed, x.flatten(0, 1), strict=True)
        ]
    )
    torch.testing.assert_close(bank(x.flatten(0, 1), mixed), looped)
    same = torch.full((5,), 4)  # one timestep for all: the layer's own matrices
    torch.testing.assert_close(bank(x[0], same), bank.layer(4).double()(x[0]))
    weights = [getattr(bank, name)[2:6] for name in ("W_KQ", "W_V", "W_S")]
    torch.testing.assert_close(
        timestep_layers(x, *weights, mask_self), bank.by_timestep(x, 2)
    )


def test_load_layer_round_trip():
    gen = rng(6)
    bank = AttentionBank(3, 4)
    mats = [torch.randn(4, 4, generator=gen) for _ in range(3)]
    layer = AttentionDenoiser.from_weights(*mats)
    bank.load_layer(1, layer)
    for name, value in bank.layer(1).weights().items():
        torch.testing.assert_close(value, layer.weights()[name])
    for t in (0, 2):  # the other timesteps are untouched
        assert all(bool((w == 0).all()) for w in bank.layer(t).weights().values())
    x = torch.randn(2, 5, 4, generator=gen)
    torch.testing.assert_close(bank(x, torch.tensor([1, 1])), layer(x))


def test_mean_denoising_excess_shrinks_with_L(gmm):
    """At ᾱ = 0.5 the construction's excess risk falls with L, beyond 5 standard errors at
    each step (it falls slowly: at the oracle temperature the ESS is tiny)."""
    ab = 0.5
    model = AttentionDenoiser.from_weights(*mean_denoising_weights(gmm, ab))
    results = [excess_risk(model, gmm, ab, n, 256, rng(7)) for n in (16, 64, 256)]
    for (hi, hi_se), (lo, lo_se) in itertools.pairwise(results):
        assert hi - lo > 5 * (hi_se**2 + lo_se**2) ** 0.5, results


def _mean_permutation(gmm: MultiTokenGMM, perm, seed: int) -> torch.Tensor:
    """Orthogonal Q (x ↦ xQ) with μ_k Q = μ_perm[k] and a random rotation on the complement
    of the span, built from an orthonormal basis: the means' directions, then the rest."""
    u = gmm.means.double() / gmm.means.double().norm(dim=1, keepdim=True)  # (K, d)
    basis, _ = torch.linalg.qr(torch.cat([u, torch.eye(gmm.dim, dtype=F64)]).T)
    rest = basis[:, gmm.n_clusters :].T  # orthonormal complement (d − K, d)
    rot, _ = torch.linalg.qr(
        torch.randn(len(rest), len(rest), generator=rng(seed), dtype=F64)
    )
    return u.T @ u[list(perm)] + rest.T @ rot @ rest


def test_symmetric_basis_round_trip_and_commutation(gmm):
    basis = SymmetricBasis(gmm)
    coeffs = torch.randn(5, 3, generator=rng(8), dtype=F64)
    w = basis.compose(coeffs)
    torch.testing.assert_close(basis.coordinates(w), coeffs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(basis.project(w), w, rtol=1e-6, atol=1e-6)
    identity = basis.compose(torch.tensor([1.0, 1.0, 0.0], dtype=F64))  # P + P⊥
    torch.testing.assert_close(identity, torch.eye(8, dtype=F64), atol=1e-6, rtol=0)
    for perm, seed in [((1, 2, 3, 0), 9), ((1, 0, 2, 3), 10)]:
        q = _mean_permutation(gmm, perm, seed)
        torch.testing.assert_close(q @ q.T, torch.eye(8, dtype=F64), atol=1e-6, rtol=0)
        means = gmm.means.double()
        torch.testing.assert_close(means @ q, means[list(perm)], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            q @ w, w @ q, atol=1e-5, rtol=0
        )  # symmetric: commute
        generic = torch.randn(8, 8, generator=rng(seed), dtype=F64)
        assert (
            q @ generic - generic @ q
        ).abs().max() > 0.1  # a generic matrix does not
        # so the layer is equivariant: f(XQ) = f(X) Q for symmetric weights
        layer = AttentionDenoiser.from_weights(*basis.compose(coeffs[:3])).double()
        x = torch.randn(2, 5, 8, generator=rng(seed), dtype=F64)
        torch.testing.assert_close(layer(x @ q), layer(x) @ q, atol=1e-5, rtol=1e-5)


def test_invalid_arguments_raise():
    layer = AttentionDenoiser(3)
    with pytest.raises(ValueError, match="last dimension"):
        layer(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="x_t"):
        layer(torch.zeros(3))
    with pytest.raises(ValueError, match="mask_self"):
        AttentionDenoiser(3, mask_self=True)(torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="W_V"):
        layer.set_weights(torch.zeros(3, 3), torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="dim"):
        AttentionDenoiser(0)
    bank = AttentionBank(4, 3)
    x = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="0 … 3"):
        bank(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="0 … 3"):
        bank(x, -1)
    with pytest.raises(ValueError, match="integer"):
        bank(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        bank(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(n, L, d\)"):
        bank(torch.zeros(5, 3), 0)
    with pytest.raises(ValueError, match="0 … 3"):
        bank.layer(4)
    with pytest.raises(ValueError, match="n_steps"):
        AttentionBank(0, 3)
    with pytest.raises(ValueError, match=r"\(m, n, L, d\)"):
        bank.by_timestep(x)
    with pytest.raises(ValueError, match="at most T"):
        bank.by_timestep(torch.zeros(3, 2, 5, 3), first=2)
    with pytest.raises(ValueError, match="first"):
        bank.by_timestep(torch.zeros(1, 2, 5, 3), first=-1)
