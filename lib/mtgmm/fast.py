"""Faster equivalents of the reference code, used only where CPU speed matters.

Nothing here changes what is computed: a short-row softmax, the bank's loss with a
hand-written gradient, SGD or Adam with one step size per layer, and the slow per-layer loop
:func:`mtgmm.train_bank` is checked against (``tests/test_fast.py``). A reader never needs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

if TYPE_CHECKING:
    from .attention import AttentionBank
    from .mixture import MultiTokenGMM
    from .schedules import NoiseSchedule
    from .training import BankHistory

SMALL_SOFTMAX_ROW = 16
"""Rows shorter than this use :class:`ShortRowSoftmax` on CPU: below it torch's CPU kernel
falls back to a scalar path (``benchmarks/README.md``)."""

FUSED_MIN_TOKENS_CPU = 8192
"""From this many tokens the CPU uses the fused kernel too (it never stores the L × L
scores); below it the explicit formula is faster there. GPUs always use the fused kernel."""

BANK_CHUNK_SCORES = {"cpu": 2**20}
"""Attention scores (B·L² per timestep) per chunk of a bank's timesteps: on CPU 2^20 keeps a
chunk's L × L tensors in cache and below glibc's mmap threshold (``benchmarks/README.md``).
On GPUs the chunk (:data:`BANK_CHUNK_SCORES_DEFAULT`) only bounds memory."""

BANK_CHUNK_SCORES_DEFAULT = 2**27


class ShortRowSoftmax(torch.autograd.Function):
    """Row softmax ``exp(s − max s) / Σ exp(s − max s)`` with the backward
    ``a ⊙ (g − Σ_j g_ij a_ij)`` in differentiable operations (derivatives of every order)."""

    @staticmethod
    def forward(ctx, scores: Tensor) -> Tensor:
        weights = (scores - scores.amax(-1, keepdim=True)).exp_()
        weights /= weights.sum(-1, keepdim=True)
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (weights,) = ctx.saved_tensors
        return weights * (grad - (grad * weights).sum(-1, keepdim=True))


def row_softmax(scores: Tensor) -> Tensor:
    """``torch.softmax(scores, -1)``, or :class:`ShortRowSoftmax` for CPU rows shorter than
    :data:`SMALL_SOFTMAX_ROW` (equal to rounding, faster there)."""
    if scores.device.type != "cpu" or scores.shape[-1] >= SMALL_SOFTMAX_ROW:
        return torch.softmax(scores, dim=-1)
    return ShortRowSoftmax.apply(scores)


def uses_fused(x: Tensor) -> bool:
    """Whether :func:`mtgmm.attend` takes the fused kernel for tokens ``x`` (…, L, d)."""
    return x.device.type != "cpu" or x.shape[-2] >= FUSED_MIN_TOKENS_CPU


def masked_scores(query: Tensor, keys: Tensor, mask_self: bool) -> Tensor:
    """The scores Q Kᵀ (…, L, L), with −∞ on the diagonal if ``mask_self``."""
    scores = query @ keys.transpose(-1, -2)
    if mask_self:
        eye = torch.eye(keys.shape[-2], dtype=torch.bool, device=keys.device)
        scores = scores.masked_fill(eye, float("-inf"))
    return scores


def chunk_steps(x: Tensor) -> int:
    """Timesteps per chunk for a grouped batch ``x`` (m, B, L, d): as many as fit in
    :data:`BANK_CHUNK_SCORES` attention scores (at least one)."""
    budget = BANK_CHUNK_SCORES.get(x.device.type, BANK_CHUNK_SCORES_DEFAULT)
    return max(1, budget // (x.shape[1] * x.shape[2] ** 2))


def bank_prediction(bank, x: Tensor, first: int) -> Tensor:
    """``bank.by_timestep(x, first)`` evaluated in chunks of :func:`chunk_steps` timesteps."""
    size = chunk_steps(x)
    parts = [
        bank.by_timestep(x[i : i + size], first + i) for i in range(0, len(x), size)
    ]
    return torch.cat(parts)


def loss_and_gradients(
    x: Tensor, eps: Tensor, weights: tuple[Tensor, Tensor, Tensor], mask_self: bool
) -> tuple[Tensor, list[Tensor]]:
    """``ℓ = Σ_i (1 / (n L)) ‖X_i W_S[i] + A_i X_i W_V[i] − ε_i‖²`` for a chunk ``x, eps``
    (m, n, L, d) grouped by timestep, ``A = softmax(X W_KQ Xᵀ)``, and its gradient in the
    three weight banks (m, d, d), by hand. With ``H = A X``, ``G = 2 (f − ε) / (n L)`` and
    ``D = G W_Vᵀ``: ``∂W_S = Xᵀ G``, ``∂W_V = Hᵀ G``, ``∂S = A ⊙ (D Xᵀ − rowsum(D ⊙ H))``
    and ``∂W_KQ = Xᵀ (∂S X)``."""
    w_kq, w_v, w_s = weights
    m, n, n_tokens, d = x.shape
    flat, seqs = x.reshape(m, n * n_tokens, d), x.reshape(m * n, n_tokens, d)
    query = (flat @ w_kq).view(seqs.shape)
    attention = row_softmax(masked_scores(query, seqs, mask_self))
    attended = (attention @ seqs).view(flat.shape)
    residual = torch.baddbmm(flat @ w_s, attended, w_v).sub_(eps.reshape(flat.shape))
    loss = residual.pow(2).sum() / (n * n_tokens)
    grad_out = residual.mul_(2 / (n * n_tokens))
    grad_attended = grad_out @ w_v.transpose(-1, -2)
    row_sums = (grad_attended * attended).sum(-1).view(m * n, n_tokens, 1)
    grad_scores = grad_attended.view(seqs.shape) @ seqs.transpose(-1, -2)
    grad_scores.sub_(row_sums).mul_(attention)
    grad_query = (grad_scores @ seqs).view(flat.shape)
    transposed = flat.transpose(-1, -2)
    return loss, [
        transposed @ grad_query,
        attended.transpose(-1, -2) @ grad_out,
        transposed @ grad_out,
    ]


class BankLoss(torch.autograd.Function):
    """``Σ_t (1 / (B L)) Σ_{b,l} ‖f_t(X_{t,b})_l − ε_{t,b,l}‖²`` for a bank's weight banks
    (T, d, d) on ``x, eps`` (T, B, L, d) grouped by timestep, with its gradient computed in
    the same pass (:func:`loss_and_gradients`), chunk by chunk (:func:`chunk_steps`). The
    layers share no parameters, so each chunk's gradient is exact. Not differentiable in
    ``x`` or ``eps``."""

    @staticmethod
    def forward(ctx, w_kq, w_v, w_s, x: Tensor, eps: Tensor, mask_self: bool) -> Tensor:
        weights = (w_kq, w_v, w_s)
        grads = [torch.empty_like(w) for w in weights]
        total = x.new_zeros(())
        size = chunk_steps(x)
        for first in range(0, len(x), size):
            steps = slice(first, first + size)
            chunk = tuple(w[steps] for w in weights)
            loss, parts = loss_and_gradients(x[steps], eps[steps], chunk, mask_self)
            for grad, part in zip(grads, parts, strict=True):
                grad[steps] = part
            total = total + loss
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return *(grad_output * g for g in ctx.saved_tensors), None, None, None


class Stepper:
    """SGD (``v ← μ v + g``, ``W ← W − η_k v``) or Adam with one step size per layer
    (``lr`` broadcasts against each parameter: ``(T, 1, 1)`` for a bank), which
    ``torch.optim`` cannot express for one (T, d, d) parameter."""

    def __init__(self, params: list[Tensor], lr: Tensor, options, betas, eps) -> None:
        self.params, self.lr, self.options = params, lr, options
        self.betas, self.eps = betas, eps
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params]
        self.count = 0

    @torch.no_grad()
    def step(self, grads: tuple[Tensor, ...], factor: float) -> None:
        self.count += 1
        adam = self.options.optimizer == "adam"
        beta1 = self.betas[0] if adam else self.options.momentum
        for p, g, m, v in zip(self.params, grads, self.first, self.second, strict=True):
            if adam:
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(self.betas[1]).addcmul_(g, g, value=1 - self.betas[1])
                m_hat = m / (1 - beta1**self.count)
                v_hat = v / (1 - self.betas[1] ** self.count)
                update = m_hat / (v_hat.sqrt() + self.eps)
            else:
                update = m.mul_(beta1).add_(g)
            p.sub_(factor * self.lr.to(p) * update)


def optimise(
    stepper: Stepper,
    batch_loss: Callable[[], Tensor],
    steps: int,
    factor: Callable[[int], float],
    log_every: int,
    log: Callable[[int, float], None],
    description: str,
    progress: bool,
) -> None:
    """``steps`` updates of ``stepper`` on fresh minibatches; ``log(step, mean loss)``
    every ``log_every`` steps and at the end."""
    running, count = 0.0, 0
    for k in tqdm(range(steps), desc=description, disable=not progress, leave=False):
        loss = batch_loss()
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(
                f"training diverged at step {k} (loss {value}); lower the step"
            )
        stepper.step(torch.autograd.grad(loss, stepper.params), factor(k))
        running, count = running + value, count + 1
        if (k + 1) % log_every == 0 or k + 1 == steps:
            log(k + 1, running / count)
            running, count = 0.0, 0


def train_bank_loop(
    bank,
    gmm,
    schedule,
    n_tokens: int,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    **options,
):
    """:func:`mtgmm.train_bank`'s recipe one layer at a time by :func:`mtgmm.train`: the slow
    reference; returns a :class:`mtgmm.training.BankHistory`.
    """
    from . import training

    opts = training.TrainOptions(progress=False, **options)
    n_tokens = training._check_model(bank.dim, bank.mask_self, gmm, n_tokens, "bank")
    training._check_schedule(bank, schedule)
    steps = training._check_steps(steps)
    start = training.time.perf_counter()
    eval_seed = training._seed(generator)
    losses: dict[int, list[float]] = {}
    rates = []
    fields = dict(vars(opts), log_every=steps, n_eval_sequences=1)
    for t in tqdm(range(bank.n_steps), desc="train layers", disable=not progress):
        layer = bank.layer(t).to(bank.W_KQ.device)
        ab = schedule.alpha_bar[t].item()
        history = training.train(layer, gmm, ab, n_tokens, steps, generator, **fields)
        for k, loss in zip(history.step, history.loss, strict=True):
            losses.setdefault(int(k), []).append(float(loss))
        rates.append(history.lr)
        bank.load_layer(t, layer)
    records = [(k, sum(v) / len(v)) for k, v in sorted(losses.items())]
    return bank_history(
        bank,
        gmm,
        schedule,
        n_tokens,
        records,
        torch.tensor(rates),
        opts,
        eval_seed,
        start,
    )


@torch.no_grad()
def bank_excess_risk(
    bank: AttentionBank,
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    n_tokens: int,
    n_sequences: int = 512,
    generator: torch.Generator | None = None,
    max_tokens: int = 2**20,
) -> tuple[Tensor, Tensor]:
    """The vectorised evaluator behind :func:`mtgmm.training.bank_excess_risk`."""
    from .oracle import oracle_eps
    from .training import _check_model, _check_schedule, _sampler, positive_int

    n_tokens = _check_model(bank.dim, bank.mask_self, gmm, n_tokens, "bank")
    n_sequences = positive_int(n_sequences, "n_sequences")
    _check_schedule(bank, schedule)
    param = bank.W_KQ
    draw = _sampler(gmm, generator, param.device, param.dtype)
    local = gmm.to(param.device, param.dtype)
    per_chunk = max(1, max_tokens // (n_sequences * n_tokens))
    means, errors = [], []
    for first in range(0, bank.n_steps, per_chunk):
        t = torch.arange(
            first, min(first + per_chunk, bank.n_steps), device=param.device
        )
        t = t.repeat_interleave(n_sequences)
        ab = schedule.alpha_bar.to(param.device)[t][:, None]
        x_t, _ = draw(ab, t.numel(), n_tokens)
        target = oracle_eps(local, x_t, ab.to(param.dtype))
        grouped = x_t.view(-1, n_sequences, n_tokens, bank.dim)
        prediction = bank_prediction(bank, grouped, first).flatten(0, 1)
        gap = (
            ((prediction - target) ** 2).sum(-1).mean(-1).double().view(-1, n_sequences)
        )
        means.append(gap.mean(1))
        errors.append(gap.std(1) / n_sequences**0.5)
    return torch.cat(means).cpu(), torch.cat(errors).cpu()


def train_bank(
    bank: AttentionBank,
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    n_tokens: int,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    **options,
) -> BankHistory:
    """The batched trainer behind :func:`mtgmm.training.train_bank`."""
    from . import training as tr

    opts = tr.TrainOptions(progress=progress, **options)
    n_tokens = tr._check_model(bank.dim, bank.mask_self, gmm, n_tokens, "bank")
    tr._check_schedule(bank, schedule)
    steps = tr._check_steps(steps)
    start = tr.time.perf_counter()
    params = [getattr(bank, name) for name in ("W_KQ", "W_V", "W_S")]
    device, dtype = params[0].device, params[0].dtype
    draw = tr._sampler(gmm, generator, device, dtype)
    eval_seed = tr._seed(generator)
    batch = opts.batch_size
    t = torch.arange(bank.n_steps, device=device).repeat_interleave(batch)
    ab = schedule.alpha_bar.to(device)[t][:, None]
    by_timestep = (bank.n_steps, batch, n_tokens, bank.dim)

    def summed_loss(x_t: Tensor, eps: Tensor) -> Tensor:
        """Σ_t (mean loss of timestep t's sequences), with its gradient."""
        x_t, eps = x_t.view(by_timestep), eps.view(by_timestep)
        return BankLoss.apply(*params, x_t, eps, bank.mask_self)

    x_cal, eps_cal = draw(ab, t.numel(), n_tokens)
    x_cal, eps_cal = x_cal.view(by_timestep), eps_cal.view(by_timestep)
    lr = tr._start(params, opts, x_cal, eps_cal, bank.mask_self)
    records: list[tuple[int, float]] = []
    with torch.no_grad():
        loss = BankLoss.apply(*params, x_cal, eps_cal, bank.mask_self)
        records.append((0, loss.item() / bank.n_steps))
    optimise(
        Stepper(params, lr[:, None, None], opts, tr.ADAM_BETAS, tr.ADAM_EPS),
        lambda: summed_loss(*draw(ab, t.numel(), n_tokens)),
        steps,
        lambda k: tr._schedule_factor(opts.schedule, k, steps),
        opts.log_every or max(1, steps // 20),
        lambda k, loss: records.append((k, loss / bank.n_steps)),
        f"train bank T={bank.n_steps}",
        opts.progress,
    )
    return bank_history(
        bank, gmm, schedule, n_tokens, records, lr, opts, eval_seed, start
    )


def bank_history(bank, gmm, schedule, n_tokens, records, lr, opts, eval_seed, start):
    """Evaluate the bank on held-out sequences and package a :class:`BankHistory`."""
    from .training import BankHistory

    device = bank.W_KQ.device
    evaluation = torch.Generator(device=device).manual_seed(eval_seed)
    excess, stderr = bank_excess_risk(
        bank, gmm, schedule, n_tokens, opts.n_eval_sequences, evaluation
    )
    steps, losses = zip(*records, strict=True)
    return BankHistory(
        step=np.array(steps),
        loss=np.array(losses),
        excess=excess.numpy(),
        excess_stderr=stderr.numpy(),
        lr=np.asarray(lr.cpu(), dtype=float).reshape(-1),
        wall_time=__import__("time").perf_counter() - start,
        device=str(device),
    )
