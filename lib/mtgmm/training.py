"""Training the attention denoiser on the DDPM loss (derived in :doc:`/book/training`).

:func:`train` fits one :class:`~mtgmm.attention.AttentionDenoiser` at one noise level with
autograd and ``torch.optim``: the reference path. :func:`train_bank` fits all T layers of an
:class:`~mtgmm.attention.AttentionBank` in one batched pass per step (``mtgmm.fast``). Every
step draws fresh sequences, so training is minibatch SGD on the population objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from . import fast
from ._checks import alpha_bar_tensor, nonnegative_float, positive_int
from .attention import (
    AttentionBank,
    AttentionDenoiser,
    SymmetricBasis,
    attend,
)
from .mixture import MultiTokenGMM
from .objective import ddpm_loss, excess_risk, noisy_batch
from .schedules import NoiseSchedule

DEFAULT_STEPS = 600
"""Updates :func:`train` takes when ``steps`` is not given."""

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
INITS = ("similarity", "zero", "keep")
ADAM_LR, ADAM_BETAS, ADAM_EPS = 1e-2, (0.9, 0.999), 1e-8
"""Adam's step size when ``lr`` is not given, its moment decay rates and its ε."""
WARM_START_RIDGE = 0.05
"""Ridge on the W_V block of the warm start, in units of its mean feature energy."""


@dataclass(frozen=True)
class TrainOptions:
    """The options of :func:`train` and :func:`train_bank` (pass them as keywords).

    Attributes:
        optimizer: ``"sgd"`` (heavy-ball ``momentum`` if > 0) or ``"adam"``.
        lr: step size; ``None`` gives ``lr_scale / λ_max(M̂)`` for SGD (M̂ the tokens'
            second-moment matrix, per timestep in a bank) and :data:`ADAM_LR` for Adam.
        lr_scale, momentum: see ``lr`` and ``optimizer``.
        schedule: ``"cosine"`` (step ``η (1 + cos(π k / steps)) / 2``) or ``"constant"``.
        batch_size: fresh sequences per step (per timestep in a bank).
        init: ``"similarity"`` (``W_KQ = init_scale · I / m̂``, m̂ the mean squared token
            norm, ``W_V = W_S = 0``), ``"zero"`` or ``"keep"``.
        init_scale: see ``init``.
        warm_start: then set W_V, W_S to their least-squares values given W_KQ.
        log_every: steps between log points (default ``max(1, steps // 20)``).
        n_eval_sequences: fixed held-out sequences for the excess risk at each log point.
        progress: show a tqdm progress bar.
    """

    optimizer: str = "sgd"
    lr: float | None = None
    lr_scale: float = 0.3
    momentum: float = 0.0
    schedule: str = "cosine"
    batch_size: int = 64
    init: str = "similarity"
    init_scale: float = 2.0
    warm_start: bool = True
    log_every: int | None = None
    n_eval_sequences: int = 1024
    progress: bool = False

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("init", self.init, INITS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.lr is not None and not nonnegative_float(self.lr, "lr") > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not nonnegative_float(self.lr_scale, "lr_scale") > 0:
            raise ValueError(f"lr_scale must be > 0, got {self.lr_scale!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        positive_int(self.batch_size, "batch_size")
        nonnegative_float(self.init_scale, "init_scale")
        if self.log_every is not None:
            positive_int(self.log_every, "log_every")
        positive_int(self.n_eval_sequences, "n_eval_sequences")


@dataclass(frozen=True)
class TrainingHistory:
    """What :func:`train` logged, one entry per log point.

    Attributes:
        step, loss: updates done, and the mean minibatch loss since the previous log point.
        excess, excess_stderr: excess risk on held-out sequences and its standard error.
        coordinates: (n_log, 3, 3) symmetric coordinates, rows W_KQ, W_V, W_S.
        defect: (n_log, 3) invariance defect ``‖W − project(W)‖_F`` of each matrix.
        lr, wall_time, device: step size, seconds, where it ran.
    """

    step: np.ndarray
    loss: np.ndarray
    excess: np.ndarray
    excess_stderr: np.ndarray
    coordinates: np.ndarray
    defect: np.ndarray
    lr: float
    wall_time: float
    device: str

    @property
    def final_excess(self) -> float:
        """Excess risk at the end of training."""
        return float(self.excess[-1])

    @property
    def final_stderr(self) -> float:
        """Standard error of :attr:`final_excess`."""
        return float(self.excess_stderr[-1])


@dataclass(frozen=True)
class BankHistory:
    """What :func:`train_bank` logged.

    Attributes:
        step, loss: updates done and the mean minibatch loss, (n_log,).
        excess, excess_stderr: final per-timestep excess risk and standard error, (T,).
        lr, wall_time, device: per-timestep step sizes (T,), seconds, where it ran.
    """

    step: np.ndarray
    loss: np.ndarray
    excess: np.ndarray
    excess_stderr: np.ndarray
    lr: np.ndarray
    wall_time: float
    device: str


def _schedule_factor(schedule: str, k: int, steps: int) -> float:
    """Multiplier of the step size at update k of ``steps``."""
    return 0.5 * (1 + math.cos(math.pi * k / steps)) if schedule == "cosine" else 1.0


def _second_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean squared norm m̂ and λ_max of ``M̂ = mean x xᵀ`` for ``x`` (..., n, L, d)."""
    flat = x.double().flatten(-3, -2)  # (..., nL, d)
    moments = flat.transpose(-1, -2) @ flat / flat.shape[-2]
    trace = torch.diagonal(moments, dim1=-2, dim2=-1).sum(-1)
    return trace, torch.linalg.eigvalsh(moments)[..., -1]


def _initialise(
    params: list[Tensor], options: TrainOptions, mean_sq_norm: Tensor
) -> None:
    """Apply ``options.init`` to ``(W_KQ, W_V, W_S)`` (single or banked, shape (..., d, d))."""
    if options.init == "keep":
        return
    with torch.no_grad():
        for p in params:
            p.zero_()
        if options.init == "similarity":
            w_kq = params[0]
            eye = torch.eye(w_kq.shape[-1], dtype=w_kq.dtype, device=w_kq.device)
            scale = (options.init_scale / mean_sq_norm).to(w_kq)
            w_kq.copy_(scale[..., None, None] * eye)


@torch.no_grad()
def _warm_start(
    params: list[Tensor], x_t: Tensor, eps: Tensor, mask_self: bool
) -> None:
    """Set ``W_S, W_V`` to the least-squares fit of ε on ``[X, A X]`` over the batch, with a
    ridge of :data:`WARM_START_RIDGE` times the mean feature energy on the W_V block.
    """
    w_kq, w_v, w_s = params
    d = x_t.shape[-1]
    eye = torch.eye(d, dtype=x_t.dtype, device=x_t.device)
    attended = attend(x_t, w_kq[..., None, :, :], eye, mask_self)
    features = torch.cat([x_t, attended], -1).double().flatten(-3, -2)  # (..., nL, 2d)
    gram = features.transpose(-1, -2) @ features
    energy = torch.diagonal(gram[..., d:, d:], dim1=-2, dim2=-1).mean(-1)
    on_value = torch.cat([torch.zeros(d), torch.ones(d)]).to(gram)
    gram = gram + WARM_START_RIDGE * energy[..., None, None] * torch.diag(on_value)
    target = features.transpose(-1, -2) @ eps.double().flatten(-3, -2)
    coefficients = torch.linalg.solve(gram, target)  # (..., 2d, d)
    w_s.copy_(coefficients[..., :d, :])
    w_v.copy_(coefficients[..., d:, :])


def _step_size(options: TrainOptions, top_eigenvalue: Tensor) -> Tensor:
    """The step size per layer (see :class:`TrainOptions`), float64, shape of the eigenvalues."""
    if options.lr is not None:
        return torch.full_like(top_eigenvalue, options.lr)
    if options.optimizer == "adam":
        return torch.full_like(top_eigenvalue, ADAM_LR)
    return options.lr_scale / top_eigenvalue


def _sampler(gmm: MultiTokenGMM, generator: torch.Generator | None, device, dtype):
    """``draw(alpha_bar, n, L)`` → fresh ``(x_t, ε)`` on ``device``."""
    source = generator.device if generator is not None else device
    local = gmm.to(device=source, dtype=dtype)

    def draw(alpha_bar: float | Tensor, n: int, n_tokens: int) -> tuple[Tensor, Tensor]:
        if isinstance(alpha_bar, Tensor):
            alpha_bar = alpha_bar.to(device=source, dtype=dtype)
        x_t, eps = noisy_batch(local, alpha_bar, n, n_tokens, generator)
        return x_t.to(device), eps.to(device)

    return draw


def _seed(generator: torch.Generator | None) -> int:
    """A seed for an independent stream (the held-out evaluation sequences)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(2**62, (1,), generator=generator, device=device))


def _check_level(alpha_bar: float) -> float:
    ab = alpha_bar_tensor(alpha_bar)
    if ab.numel() != 1:
        raise ValueError(
            f"alpha_bar must be a single value, got shape {tuple(ab.shape)}"
        )
    return ab.item()


def _check_steps(steps: int | None) -> int:
    return DEFAULT_STEPS if steps is None else positive_int(steps, "steps")


def _check_model(
    dim: int, mask_self: bool, gmm: MultiTokenGMM, n_tokens: int, name: str
) -> int:
    if dim != gmm.dim:
        raise ValueError(
            f"{name} dimension {dim} must equal the mixture's dimension {gmm.dim}"
        )
    n_tokens = positive_int(n_tokens, "n_tokens")
    if mask_self and n_tokens < 2:
        raise ValueError(
            "mask_self needs at least 2 tokens per sequence (n_tokens >= 2)"
        )
    return n_tokens


def _start(params, opts, x_cal, eps_cal, mask_self) -> Tensor:
    """Initialise the weights from a calibration batch; return the step size per layer."""
    mean_sq_norm, top = _second_moments(x_cal)
    _initialise(params, opts, mean_sq_norm)
    if opts.warm_start:
        _warm_start(params, x_cal, eps_cal, mask_self)
    return _step_size(opts, top)


def _optimizer(params: list[Tensor], lr: float, opts) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (heavy-ball ``momentum``) or ``torch.optim.Adam``."""
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    return torch.optim.SGD(params, lr=lr, momentum=opts.momentum)


def _check_finite(loss: Tensor, k: int) -> float:
    """The loss as a float; raises if it is not finite (a diverged run)."""
    value = loss.item()
    if not math.isfinite(value):
        raise RuntimeError(
            f"training diverged at step {k} (loss {value}); lower the step"
        )
    return value


def train(
    model: AttentionDenoiser,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> TrainingHistory:
    """Train ``model`` in place on the DDPM loss at ``alpha_bar`` with L = ``n_tokens``:
    ``steps`` ``torch.optim`` updates on the mean of ``‖f(X_t) − ε‖²`` over fresh minibatches,
    gradient by autograd. ``options`` are the fields of :class:`TrainOptions`
    (:doc:`/book/training`).
    """
    opts = TrainOptions(**options)
    n_tokens = _check_model(model.dim, model.mask_self, gmm, n_tokens, "model")
    ab, steps = _check_level(alpha_bar), _check_steps(steps)
    log = _Recorder(model, gmm, ab, n_tokens, opts.n_eval_sequences, _seed(generator))
    draw = _sampler(gmm, generator, model.W_KQ.device, model.W_KQ.dtype)
    params = [model.W_KQ, model.W_V, model.W_S]
    x_t, eps = draw(ab, opts.batch_size, n_tokens)  # the calibration batch
    lr = _start(params, opts, x_t, eps, model.mask_self).item()
    optimizer = _optimizer(params, lr, opts)
    log(0, [ddpm_loss(model(x_t), eps).item()])
    every, losses = opts.log_every or max(1, steps // 20), []
    for k in tqdm(range(steps), disable=not opts.progress, leave=False):
        optimizer.param_groups[0]["lr"] = lr * _schedule_factor(opts.schedule, k, steps)
        x_t, eps = draw(ab, opts.batch_size, n_tokens)  # fresh sequences every step
        loss = ddpm_loss(model(x_t), eps)
        losses.append(_check_finite(loss, k))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (k + 1) % every == 0 or k + 1 == steps:
            log(k + 1, losses)
            losses = []
    return log.history(lr)


class _Recorder:
    """The log of :func:`train`: loss, held-out excess and reduced coordinates."""

    def __init__(self, model, gmm, alpha_bar, n_tokens, n_eval, eval_seed) -> None:
        self.model, self.alpha_bar, self.n_tokens = model, alpha_bar, n_tokens
        self.n_eval = n_eval
        self.device = model.W_KQ.device
        self.gmm = gmm.to(device=self.device, dtype=model.W_KQ.dtype)
        self.seed, self.basis = eval_seed, SymmetricBasis(gmm)
        self.records: list[tuple] = []
        self.start = time.perf_counter()

    @torch.no_grad()
    def __call__(self, step: int, losses: list[float]) -> None:
        evaluation = torch.Generator(device=self.device).manual_seed(self.seed)
        excess = excess_risk(
            self.model, self.gmm, self.alpha_bar, self.n_tokens, self.n_eval, evaluation
        )
        weights = torch.stack([w.double().cpu() for w in self.model.weights().values()])
        defect = (weights - self.basis.project(weights)).flatten(1).norm(dim=1)
        coordinates = self.basis.coordinates(weights).numpy()
        mean_loss = sum(losses) / len(losses)
        self.records.append((step, mean_loss, *excess, coordinates, defect.numpy()))

    def history(self, lr: float) -> TrainingHistory:
        columns = list(zip(*self.records, strict=True))
        return TrainingHistory(
            step=np.array(columns[0]),
            loss=np.array(columns[1]),
            excess=np.array(columns[2]),
            excess_stderr=np.array(columns[3]),
            coordinates=np.stack(columns[4]),
            defect=np.stack(columns[5]),
            lr=lr,
            wall_time=time.perf_counter() - self.start,
            device=str(self.device),
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
    """Per-timestep excess risk ``E‖f_t(X_t) − ε*(x_t)‖²`` and its standard error, (T,) each,
    over ``n_sequences`` fresh sequences per timestep.
    """
    return fast.bank_excess_risk(
        bank, gmm, schedule, n_tokens, n_sequences, generator, max_tokens
    )


def _check_schedule(bank: AttentionBank, schedule: NoiseSchedule) -> None:
    if schedule.n_steps != bank.n_steps:
        raise ValueError(
            f"schedule has {schedule.n_steps} timesteps but the bank has n_steps = {bank.n_steps}"
        )


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
    """Train every layer of ``bank`` in place, minimising the sum over timesteps of the mean
    loss in one batched pass per step (``mtgmm.fast.BankLoss``); layer t receives the gradient
    :func:`train` would give it, with its own step size (:doc:`/book/sampling`).
    """
    return fast.train_bank(
        bank, gmm, schedule, n_tokens, steps, generator, progress, **options
    )
