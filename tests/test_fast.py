"""The fast paths of :mod:`mtgmm.fast` against the reference path: the short-row softmax
against ``torch.softmax`` (values and two derivatives), the hand-written bank gradient
against autograd, the batched bank trainer against the loop of :func:`mtgmm.train`, and
:func:`mtgmm.train` against the same loop written with the per-layer stepper."""

import numpy as np
import pytest
import torch

import mtgmm.fast as fast
from mtgmm import (
    AttentionBank,
    AttentionDenoiser,
    NoiseSchedule,
    bayes_risk,
    excess_risk,
)
from mtgmm.fast import SMALL_SOFTMAX_ROW, row_softmax, train_bank_loop
from mtgmm.objective import ddpm_loss
from mtgmm.training import TrainOptions, _sampler, _start, train, train_bank

from .conftest import rng

F64 = torch.float64


def test_short_row_softmax_equals_torch_to_second_order():
    """The short-row softmax (rows below SMALL_SOFTMAX_ROW on CPU) against torch.softmax:
    values, and first and second derivatives (its backward is written by hand)."""
    gen = rng(13)
    scores = 3 * torch.randn(4, 5, 5, generator=gen, dtype=F64)
    scores.diagonal(dim1=-2, dim2=-1).fill_(
        float("-inf")
    )  # masked entries stay exactly 0
    assert scores.shape[-1] < SMALL_SOFTMAX_ROW
    weights = row_softmax(scores)
    torch.testing.assert_close(
        weights, torch.softmax(scores, -1), rtol=1e-14, atol=1e-15
    )
    assert bool((weights.diagonal(dim1=-2, dim2=-1) == 0).all())
    finite = torch.randn(2, 3, 6, generator=gen, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(row_softmax, (finite,))
    assert torch.autograd.gradgradcheck(row_softmax, (finite,))
    probe = torch.randn(2, 3, 6, generator=gen, dtype=F64)

    def first_and_second(fn):
        (grad,) = torch.autograd.grad(
            (fn(finite) * probe).sum(), finite, create_graph=True
        )
        return grad, torch.autograd.grad((grad**2).sum(), finite)[0]

    ours, reference = (
        first_and_second(row_softmax),
        first_and_second(lambda s: s.softmax(-1)),
    )
    for mine, theirs in zip(ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_train_bank_trains_every_layer_like_the_loop(gmm):
    schedule = NoiseSchedule.from_alpha_bar([0.9, 0.5, 0.05])
    n_tokens, steps = 64, 300
    batched_bank, loop_bank = AttentionBank(3, 8), AttentionBank(3, 8)
    batched = train_bank(
        batched_bank, gmm, schedule, n_tokens, steps, rng(10), progress=False
    )
    loop = train_bank_loop(
        loop_bank, gmm, schedule, n_tokens, steps, rng(11), progress=False
    )
    assert batched.loss[-1] < batched.loss[0]
    for t, alpha_bar in enumerate(schedule.alpha_bar.tolist()):
        risk, _ = bayes_risk(gmm, alpha_bar, 100_000, rng(12 + t))
        zero_model_excess = gmm.dim - risk  # E‖ε*‖²
        assert batched.excess[t] < 0.2 * zero_model_excess
        sigma = np.hypot(batched.excess_stderr[t], loop.excess_stderr[t])
        assert (
            abs(batched.excess[t] - loop.excess[t]) < 3 * sigma + 0.05 * loop.excess[t]
        )
        # the vectorised evaluator against the single-layer one
        layer = batched_bank.layer(t)
        single, single_se = excess_risk(layer, gmm, alpha_bar, n_tokens, 512, rng(t))
        assert abs(single - batched.excess[t]) < 4 * np.hypot(
            single_se, batched.excess_stderr[t]
        )


@pytest.mark.parametrize("mask_self", [False, True])
@pytest.mark.parametrize("n_tokens", [5, 17])  # short-row softmax, then torch's
def test_chunked_bank_loss_and_gradient_equal_autograd(
    monkeypatch, mask_self, n_tokens
):
    """The hand-written value-and-gradient of a bank batch, in chunks of timesteps, against
    autograd through ``AttentionBank.by_timestep`` on the whole batch (float64)."""
    gen = rng(15)
    bank = AttentionBank(5, 3, mask_self=mask_self).double()
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(5, 4, n_tokens, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    params = list(bank.parameters())
    reference = ((bank.by_timestep(x) - eps) ** 2).sum() / (4 * n_tokens)
    expected = torch.autograd.grad(reference, params)
    monkeypatch.setitem(fast.BANK_CHUNK_SCORES, "cpu", 2 * 4 * n_tokens**2)  # 3 chunks
    assert fast.chunk_steps(x) == 2
    loss = fast.BankLoss.apply(*params, x, eps, mask_self)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=0)
    for got, want in zip(torch.autograd.grad(3 * loss, params), expected, strict=True):
        torch.testing.assert_close(got, 3 * want, rtol=1e-10, atol=1e-12)


def test_train_equals_the_per_layer_stepper(gmm):
    """``train`` (torch.optim.SGD, cosine schedule) against the same recipe stepped by
    :class:`mtgmm.fast.Stepper`, the update ``train_bank`` uses: equal weights (float64)."""
    n_tokens, steps, batch = 16, 30, 8
    model = AttentionDenoiser(8).double()
    train(model, gmm, 0.9, n_tokens, steps, rng(30), batch_size=batch, log_every=steps)
    other = AttentionDenoiser(8).double()
    generator = rng(30)
    fast_opts = TrainOptions(batch_size=batch)
    int(torch.randint(2**62, (1,), generator=generator))  # train's evaluation seed
    draw = _sampler(gmm, generator, "cpu", F64)
    params = [other.W_KQ, other.W_V, other.W_S]
    x_t, eps = draw(0.9, batch, n_tokens)
    lr = _start(params, fast_opts, x_t, eps, False)
    stepper = fast.Stepper(params, lr, fast_opts, (0.9, 0.999), 1e-8)

    for k in range(steps):
        x_t, eps = draw(0.9, batch, n_tokens)
        loss = ddpm_loss(other(x_t), eps)
        grads = torch.autograd.grad(loss, params)
        stepper.step(grads, 0.5 * (1 + np.cos(np.pi * k / steps)))
    for mine, theirs in zip(params, model.weights().values(), strict=True):
        torch.testing.assert_close(mine.detach(), theirs, rtol=1e-9, atol=1e-12)
