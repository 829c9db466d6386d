"""Training the attention denoiser with first-order methods (chapter *Training dynamics*).

:func:`train` fits one :class:`~mtgmm.attention.AttentionDenoiser` at one noise level,
:func:`train_bank` fits all T layers of an :class:`~mtgmm.attention.AttentionBank` in one
batched pass per step, and :func:`train_bank_loop` fits them one at a time with :func:`train`'s
loop (the reference the batched version is compared with). Every step draws fresh sequences
(:func:`~mtgmm.objective.noisy_batch`), so training is minibatch SGD on the *population* DDPM
objective; the batch size sets how closely a step follows population gradient descent.

Why the default recipe is what it is (measured at d = 8, K = 4, r = 4, σ0 = 0.5, ᾱ = 0.9,
L = 128, batch 64, 600 steps; best symmetric model 0.095 ± 0.001 by
:func:`mtgmm.best.best_in_class`; excess risks per token, three seeds each):

* **W_KQ = 0 is a saddle.** There attention is a uniform average, and to first order a change
  of W_KQ only adds ``x_i W_KQ Ĉ W_V`` to the output (Ĉ the sequence's token covariance): a
  linear function of x_i that the skip path X W_S already provides. So the W_KQ gradient is
  ``2 E[x_iᵀ r_i] W_Vᵀ Ĉ`` (r the residual) up to the fluctuation of Ĉ: it vanishes once W_S
  fits, and the useful signal is of second order. With W_V, W_S at their least-squares values
  the excess along ``W_KQ = c (P − J)`` is locally maximal at c = 0 (0.85) and falls on both
  sides: to the optimum (c s² ≈ 0.13) for c > 0, and to an *anti-similarity* minimum
  (≈ 0.55, c s² ≈ −0.16: each token attends to the other clusters) for c < 0.
* **From zero, gradient descent takes the wrong side.** While W_V and W_S are still far from
  their least-squares values the residual correlates with the tokens (``E[xᵀ r] ≠ 0``, mostly
  in the P⊥ and J gains of W_S, which converge slowest) and the first-order term above is not
  zero. Measured on 1024 sequences along a zero-start run, its component along c pushes c
  negative (dL/dc ≈ +0.002 to +0.003 over steps 5–40), while with W_V, W_S replaced by their
  least-squares values the same gradient is ≈ 0 (−0.0001). The transient tips W_KQ to c < 0
  and the saddle amplifies it. Plain SGD from zero is nearly deterministic (population GD):
  it stays symmetric (defect ≈ 0.01) and lands in the anti-similarity minimum, excess
  0.554–0.556 for every seed.
* **Noise and momentum randomise the escape.** At the saddle the drift vanishes, so the
  minibatch noise picks the escape direction, and directions that break the permutation
  symmetry are unstable there too. From zero: momentum 0.9 gave 0.546, 0.096, 0.555; batch 8
  gave 0.83 (still on the plateau), 0.556, 0.558; zero W_KQ with least-squares W_V, W_S (the
  saddle itself) gave 0.553, 0.643, 0.555. The ≈ 0.55 solutions with a large invariance
  defect (≈ 0.8) are the anti-similarity minimum *twisted* by a permutation of the clusters
  (``μ_k W_KQ μ_l`` most negative at l = π(k) for a permutation π, not at l = k; W_V permuted
  to match): as bad as the symmetric one, far from the invariant subspace. Population GD from
  an invariant start cannot break the symmetry; noise at a saddle can.
* **Adam stalls for the same reason.** From zero (lr 1e-2) it sits on the plateau and escapes
  into a twisted anti-similarity minimum (0.552, 0.547, 0.550; defect ≈ 0.8): its
  per-coordinate normalisation inflates the tiny, noise-dominated W_KQ gradients at the
  saddle, and it is not equivariant under the rotations that permute the means (a random
  rotation of the e_k), so even its population update leaves the symmetric subspace. From the
  default start Adam reaches 0.094–0.096 like SGD (so does SGD with momentum 0.9): the start,
  not the optimiser, is what matters.
* **The fix is the start.** ``init="similarity"``: ``W_KQ = 2 I / m̂`` (m̂ the mean squared
  token norm of a calibration batch, so a token's score with itself starts at 2: a soft
  similarity kernel, invariant, on the c > 0 side; c s² ≈ 0.04 at ᾱ = 0.9, a third of the
  optimum's, and excess 0.71 after the warm start). Then ``warm_start``: W_V, W_S by least
  squares on the calibration batch, which removes the transient above (E[xᵀ r] = 0 at the
  start), with a small ridge on the ill-determined W_V block. Then plain SGD (equivariant, no
  momentum) with step ``0.3 / λ_max(M̂)`` (M̂ the token second-moment matrix; the loss's
  curvature in W_S is ``2 M̂``; 0.4 / λ_max also works, 0.5 / λ_max diverged within 600
  steps) and a cosine decay, which removes the minibatch noise floor. Result: 0.094–0.096 for
  every seed (see ``benchmarks/train_acceptance.py``), the trajectory staying near the
  invariant subspace (defect ≤ 0.07; ≈ 0.12 with batch 8, which still reaches 0.095–0.096)
  with no projection. Both parts are needed: without the warm start the same init fails at
  ᾱ = 0.3 (0.87, stuck near c = 0; best 0.55), at L = 64, ᾱ = 0.34 (1.07; best 0.77) and at
  L = 32, ᾱ = 0.7 (1.39–1.40, anti-similarity; best 0.78); with ``init_scale=1`` (and the
  warm start) the L = 64, ᾱ = 0.34 runs escaped the plateau by noise, 2 of 4 into a
  symmetry-broken 0.96.
* **Where the default start is not enough.** For L ≥ 32 the default reached the best
  symmetric model at every ᾱ tried (L = 128: ᾱ = 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99; L = 64:
  0.3, 0.34, 0.4, 0.5, 0.9; L = 32: 0.1, 0.5, 0.7, 0.9). For short contexts at intermediate
  SNR uniform attention (c = 0) becomes a *local minimum*, guarded by a barrier near
  c s² ≈ 0.05–0.2, and training from the default start stays there: 0.87–0.90 against 0.70
  at L = 8, ᾱ = 0.9; 1.63 against 1.42 at L = 16, ᾱ = 0.5; one seed in three escaped at
  L = 16, ᾱ = 0.7. A larger ``init_scale`` crosses the barrier (6 gives 0.69–0.70 at L = 8,
  ᾱ = 0.9) but at L = 8, ᾱ = 0.5, where uniform attention is the global optimum (1.68), it
  lands in a positive-temperature local minimum (1.71–1.73): no single start is right for
  every regime; :func:`mtgmm.best.best_in_class` (a global search over the reduced class) is
  the reference.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ._checks import alpha_bar_tensor, nonnegative_float, positive_int
from .attention import (
    WEIGHT_NAMES,
    AttentionBank,
    AttentionDenoiser,
    SymmetricBasis,
    attend,
    masked_scores,
    row_softmax,
)
from .mixture import MultiTokenGMM
from .objective import ddpm_loss, excess_risk, noisy_batch
from .oracle import oracle_eps
from .schedules import NoiseSchedule

DEFAULT_STEPS = 600
"""Updates :func:`train` takes when ``steps`` is not given."""

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
INITS = ("similarity", "zero", "keep")
ADAM_LR = 1e-2
"""Adam's step size when ``lr`` is not given."""

ADAM_BETAS = (0.9, 0.999)
"""Adam's moment decay rates."""

ADAM_EPS = 1e-8
WARM_START_RIDGE = 0.05
# Attention scores (B·L² per timestep) per forward/backward chunk of a bank's timesteps. On
# CPU 2^20 (4 MiB of float32: 8 timesteps at L = 128, B = 8) keeps a chunk's L × L tensors
# in cache and below glibc's 32 MiB mmap threshold, past which every allocation page-faults
# afresh (benchmarks/README.md): at T = 100, L = 128, B = 8, chunks of 2^18 to 2^20 scores
# ran 2-4× faster than all timesteps at once. On GPUs the chunk only bounds memory.
BANK_CHUNK_SCORES = {"cpu": 2**20}
BANK_CHUNK_SCORES_DEFAULT = 2**27


@dataclass(frozen=True)
class TrainOptions:
    """The options of :func:`train` and :func:`train_bank` (pass them as keywords).

    Attributes:
        optimizer: ``"sgd"`` (default: plain stochastic gradient descent, with heavy-ball
            ``momentum`` if > 0) or ``"adam"`` (for comparison; see the module docstring).
        lr: step size; ``None`` picks ``lr_scale / λ_max(M̂)`` for SGD (per timestep in a
            bank), where M̂ is the second-moment matrix of the noisy tokens of a calibration
            batch (``2 M̂`` is the Hessian of the loss in W_S), and :data:`ADAM_LR` for Adam.
        lr_scale: the default SGD step in units of ``1 / λ_max(M̂)``.
        momentum: heavy-ball momentum of SGD (Adam uses :data:`ADAM_BETAS`).
        schedule: ``"cosine"`` (step ``η (1 + cos(π k / steps)) / 2``) or ``"constant"``.
        batch_size: fresh sequences per step (per timestep in a bank).
        init: ``"similarity"`` (``W_KQ = init_scale · I / m̂``, m̂ the mean squared token norm
            of the calibration batch, and ``W_V = W_S = 0``), ``"zero"`` (all three zero) or
            ``"keep"`` (start from the weights the model holds; pass ``warm_start=False`` too
            to continue training unchanged).
        init_scale: the initial score of a token with itself under ``"similarity"``.
        warm_start: after ``init``, set W_V and W_S to their least-squares values given the
            initial W_KQ (a linear regression of ε on ``[X, A X]`` over the calibration batch).
        log_every: steps between log points (default ``max(1, steps // 20)``).
        n_eval_sequences: held-out sequences for the excess risk at each log point (the same
            sequences every time: common random numbers, so differences along the trajectory
            are not blurred by evaluation noise).
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
    """What :func:`train` logged, one entry per log point (``n_log`` of them).

    Attributes:
        step: updates done at each log point (0 first, ``steps`` last).
        loss: training minibatch loss, averaged over the steps since the previous log point
            (at step 0: the loss of a fresh minibatch at the initial weights).
        excess, excess_stderr: excess risk over the oracle on held-out sequences, with its
            standard error (:func:`~mtgmm.objective.excess_risk`).
        coordinates: ``(n_log, 3, 3)``: rows ``W_KQ, W_V, W_S``, columns the coordinates
            ``(α, β, γ)`` of their symmetric parts ``α P + β P⊥ + γ J``.
        defect: ``(n_log, 3)``: Frobenius norm of each matrix's non-symmetric part
            ``W − project(W)`` (the invariance defect).
        lr: the step size used (before the schedule).
        wall_time: seconds, evaluation included.
        device: where it ran.
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
    """What :func:`train_bank` (or :func:`train_bank_loop`) logged.

    Attributes:
        step: updates done at each log point.
        loss: training minibatch loss averaged over timesteps (and over the steps since the
            previous log point), shape ``(n_log,)``.
        excess, excess_stderr: final per-timestep excess risk and standard error, ``(T,)``
            (:func:`bank_excess_risk`).
        lr: the per-timestep step sizes, ``(T,)``.
        wall_time: seconds, final evaluation included.
        device: where it ran.
    """

    step: np.ndarray
    loss: np.ndarray
    excess: np.ndarray
    excess_stderr: np.ndarray
    lr: np.ndarray
    wall_time: float
    device: str


class _Stepper:
    """The update rule, with a step size per layer (``lr`` broadcasts against each parameter:
    a scalar, or ``(T, 1, 1)`` for a bank).

    SGD: ``v ← μ v + g``, ``W ← W − η_k v`` (plain SGD when μ = 0). Adam: the usual bias-corrected
    moments, ``W ← W − η_k m̂ / (√v̂ + ε)``.
    """

    def __init__(self, params: list[Tensor], lr: Tensor, options: TrainOptions) -> None:
        self.params, self.lr, self.options = params, lr, options
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params]
        self.count = 0

    @torch.no_grad()
    def step(self, grads: tuple[Tensor, ...], factor: float) -> None:
        self.count += 1
        adam = self.options.optimizer == "adam"
        beta1 = ADAM_BETAS[0] if adam else self.options.momentum
        for p, g, m, v in zip(self.params, grads, self.first, self.second, strict=True):
            if adam:
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(ADAM_BETAS[1]).addcmul_(g, g, value=1 - ADAM_BETAS[1])
                m_hat = m / (1 - beta1**self.count)
                v_hat = v / (1 - ADAM_BETAS[1] ** self.count)
                update = m_hat / (v_hat.sqrt() + ADAM_EPS)
            else:
                update = m.mul_(beta1).add_(g)
            p.sub_(factor * self.lr.to(p) * update)


def _schedule_factor(schedule: str, k: int, steps: int) -> float:
    """Multiplier of the step size at update k of ``steps``."""
    return 0.5 * (1 + math.cos(math.pi * k / steps)) if schedule == "cosine" else 1.0


def _second_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """For tokens ``x`` (..., n, L, d): mean squared norm m̂ and top eigenvalue of
    ``M̂ = mean x xᵀ``, with the leading dims kept (one value per timestep in a bank)."""
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
    """Set ``W_S, W_V`` to the least-squares fit of ε on ``[X, A X]`` (A the attention at the
    current W_KQ) over the calibration batch ``x_t, eps`` of shape (..., n, L, d), with a
    ridge of :data:`WARM_START_RIDGE` times the mean feature energy on the W_V block only.

    At small W_KQ the attention output is nearly the sequence mean, so the W_V block is
    ill-determined (plain least squares gives it a large, noisy, non-symmetric part); the
    ridge sets that part to zero, while W_S stays the exact least-squares fit given W_V.
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


def _optimise(
    params: list[Tensor],
    batch_loss: Callable[[], Tensor],
    lr: Tensor,
    steps: int,
    options: TrainOptions,
    log: Callable[[int, float], None],
    description: str,
) -> None:
    """Run ``steps`` updates on fresh minibatches; call ``log(step, mean loss)`` at log
    points (every ``log_every`` steps and at the end)."""
    stepper = _Stepper(params, lr, options)
    log_every = options.log_every or max(1, steps // 20)
    running, count = 0.0, 0
    bar = tqdm(
        range(steps), desc=description, disable=not options.progress, leave=False
    )
    for k in bar:
        loss = batch_loss()
        value = loss.item()
        if not math.isfinite(value):
            raise RuntimeError(
                f"training diverged at step {k} (loss {value}); lower the step"
            )
        grads = torch.autograd.grad(loss, params)
        stepper.step(grads, _schedule_factor(options.schedule, k, steps))
        running, count = running + value, count + 1
        if (k + 1) % log_every == 0 or k + 1 == steps:
            log(k + 1, running / count)
            bar.set_postfix(loss=f"{running / count:.4f}")
            running, count = 0.0, 0


def _sampler(gmm: MultiTokenGMM, generator: torch.Generator | None, device, dtype):
    """``draw(alpha_bar, n, L)`` → fresh ``(x_t, ε)`` on ``device``; sampled on the
    generator's device (``device`` if there is no generator)."""
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


def train(
    model: AttentionDenoiser,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> TrainingHistory:
    """Train ``model`` in place on the DDPM loss at level ``alpha_bar`` with L = ``n_tokens``.

    Each of the ``steps`` updates (default :data:`DEFAULT_STEPS`) draws ``batch_size`` fresh
    sequences and takes a step on their mean per-token loss ``‖f(X_t) − ε‖²``: minibatch SGD
    on the population objective. ``options`` are the fields of :class:`TrainOptions`; the
    defaults are the recipe explained in the module docstring. The model trains on its own
    device and dtype; ``generator`` seeds the minibatches and, through one seed drawn from it,
    the held-out evaluation sequences.
    """
    opts = TrainOptions(**options)
    n_tokens = _check_model(model.dim, model.mask_self, gmm, n_tokens, "model")
    ab, steps = _check_level(alpha_bar), _check_steps(steps)
    start = time.perf_counter()
    device, dtype = model.W_KQ.device, model.W_KQ.dtype
    eval_gmm, eval_seed = gmm.to(device=device, dtype=dtype), _seed(generator)
    basis = SymmetricBasis(gmm)
    records: list[tuple] = []

    def log(step: int, loss: float) -> None:
        evaluation = torch.Generator(device=device).manual_seed(eval_seed)
        excess = excess_risk(
            model, eval_gmm, ab, n_tokens, opts.n_eval_sequences, evaluation
        )
        weights = torch.stack([w.double().cpu() for w in model.weights().values()])
        defect = (weights - basis.project(weights)).flatten(1).norm(dim=1)
        records.append(
            (step, loss, *excess, basis.coordinates(weights).numpy(), defect.numpy())
        )

    lr = _train_layer(model, gmm, ab, n_tokens, steps, generator, opts, log)
    columns = list(zip(*records, strict=True))
    return TrainingHistory(
        step=np.array(columns[0]),
        loss=np.array(columns[1]),
        excess=np.array(columns[2]),
        excess_stderr=np.array(columns[3]),
        coordinates=np.stack(columns[4]),
        defect=np.stack(columns[5]),
        lr=lr,
        wall_time=time.perf_counter() - start,
        device=str(device),
    )


def _train_layer(
    model: AttentionDenoiser,
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    steps: int,
    generator: torch.Generator | None,
    opts: TrainOptions,
    log: Callable[[int, float], None],
) -> float:
    """Calibrate, initialise and optimise one layer; ``log(step, loss)`` at step 0 and at the
    log points. Returns the step size."""
    params = [getattr(model, name) for name in WEIGHT_NAMES]
    draw = _sampler(gmm, generator, params[0].device, params[0].dtype)
    x_cal, eps_cal = draw(alpha_bar, opts.batch_size, n_tokens)
    mean_sq_norm, top = _second_moments(x_cal)
    _initialise(params, opts, mean_sq_norm)
    if opts.warm_start:
        _warm_start(params, x_cal, eps_cal, model.mask_self)
    lr = _step_size(opts, top)
    with torch.no_grad():
        log(0, ddpm_loss(model(x_cal), eps_cal).item())

    def batch_loss() -> Tensor:
        x_t, eps = draw(alpha_bar, opts.batch_size, n_tokens)
        return ddpm_loss(model(x_t), eps)

    _optimise(params, batch_loss, lr, steps, opts, log, f"train ᾱ={alpha_bar:.3g}")
    return lr.item()


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
    """Per-timestep excess risk ``E‖f_t(X_t) − ε*(x_t)‖²`` of every layer, with standard errors.

    ``n_sequences`` fresh sequences per timestep, all timesteps in one vectorised pass (in
    chunks of at most ``max_tokens`` tokens); sequences are the independent units, as in
    :func:`~mtgmm.objective.excess_risk`. Returns two float64 tensors of shape ``(T,)``.
    """
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
        prediction = _bank_prediction(bank, grouped, first).flatten(0, 1)
        gap = (
            ((prediction - target) ** 2).sum(-1).mean(-1).double().view(-1, n_sequences)
        )
        means.append(gap.mean(1))
        errors.append(gap.std(1) / n_sequences**0.5)
    return torch.cat(means).cpu(), torch.cat(errors).cpu()


def _chunk_steps(x: Tensor) -> int:
    """Timesteps per chunk for a grouped batch ``x`` (m, B, L, d): as many as fit in
    :data:`BANK_CHUNK_SCORES` attention scores (at least one)."""
    budget = BANK_CHUNK_SCORES.get(x.device.type, BANK_CHUNK_SCORES_DEFAULT)
    return max(1, budget // (x.shape[1] * x.shape[2] ** 2))


def _bank_prediction(bank: AttentionBank, x: Tensor, first: int) -> Tensor:
    """``bank.by_timestep(x, first)`` evaluated in chunks of :func:`_chunk_steps` timesteps."""
    size = _chunk_steps(x)
    parts = [
        bank.by_timestep(x[i : i + size], first + i) for i in range(0, len(x), size)
    ]
    return torch.cat(parts)


def _loss_and_gradients(
    x: Tensor, eps: Tensor, weights: tuple[Tensor, Tensor, Tensor], mask_self: bool
) -> tuple[Tensor, list[Tensor]]:
    """The summed loss ``ℓ = Σ_i (1 / (n L)) ‖X_i W_S[i] + A_i X_i W_V[i] − ε_i‖²`` of a chunk
    ``x, eps`` (m, n, L, d) grouped by timestep, ``A = softmax(X W_KQ Xᵀ)`` (the forward of
    :func:`~mtgmm.attention.timestep_layers`), and its gradient in the three weight banks
    (m, d, d), by hand. With ``H = A X``, ``G = 2 (f − ε) / (n L)`` and ``D = G W_Vᵀ``:

    ``∂W_S = Xᵀ G``, ``∂W_V = Hᵀ G``, ``∂S = A ⊙ (D Xᵀ − rowsum(D ⊙ H))`` (the softmax
    backward; ``Σ_j A_ij (D Xᵀ)_ij = D_i · H_i`` needs no L × L product) and
    ``∂W_KQ = Xᵀ (∂S X)``, summed over each timestep's sequences; in place where possible.
    Checked against autograd through ``timestep_layers`` in the tests."""
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


class _BankLoss(torch.autograd.Function):
    """``Σ_t (1 / (B L)) Σ_{b,l} ‖f_t(X_{t,b})_l − ε_{t,b,l}‖²`` for a bank's three weight
    banks (T, d, d) on a batch ``x, eps`` of shape (T, B, L, d) grouped by timestep, with its
    gradient in the weights computed in the same pass (:func:`_loss_and_gradients`), chunk
    by chunk over timesteps (:func:`_chunk_steps`), so that each chunk's L × L tensors are
    still in cache for its backward. The layers share no parameters, so each chunk's
    gradient is exactly that of the summed loss in its timesteps' weights. Not
    differentiable in ``x`` or ``eps``."""

    @staticmethod
    def forward(
        ctx,
        w_kq: Tensor,
        w_v: Tensor,
        w_s: Tensor,
        x: Tensor,
        eps: Tensor,
        mask_self: bool,
    ) -> Tensor:
        weights = (w_kq, w_v, w_s)
        grads = [torch.empty_like(w) for w in weights]
        total = x.new_zeros(())
        size = _chunk_steps(x)
        for first in range(0, len(x), size):
            steps = slice(first, first + size)
            chunk = tuple(w[steps] for w in weights)
            loss, parts = _loss_and_gradients(x[steps], eps[steps], chunk, mask_self)
            for grad, part in zip(grads, parts, strict=True):
                grad[steps] = part
            total = total + loss
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return *(grad_output * g for g in ctx.saved_tensors), None, None, None


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
    """Train every layer of ``bank`` (in place) in one batched pass per step.

    Each step draws ``batch_size`` fresh sequences for every timestep, ``(T·B, L, d)`` in
    all, runs them grouped by timestep through the bank (:func:`~mtgmm.attention.timestep_layers`,
    in chunks of timesteps, each chunk's loss and gradient in one pass: ``_BankLoss``)
    and minimises the sum over timesteps of the per-timestep mean loss. The layers share no
    parameters, so layer t receives exactly the gradient of its own mean loss, the gradient
    :func:`train` would give it. The step size is per timestep (``lr_scale / λ_max(M̂_t)``
    by default): the curvature of the loss in W_S is ``2 M_t = 2 E[x_t x_tᵀ]``, whose top
    eigenvalue runs from about ``ᾱ r²/K + s_t²`` at small t to 1 at pure noise, so one step
    size for all layers would be unstable at some timesteps or slow at others. Options as in
    :class:`TrainOptions` (``n_eval_sequences`` sets the final per-timestep evaluation).
    """
    opts = TrainOptions(progress=progress, **options)
    n_tokens = _check_model(bank.dim, bank.mask_self, gmm, n_tokens, "bank")
    _check_schedule(bank, schedule)
    steps = _check_steps(steps)
    start = time.perf_counter()
    params = [getattr(bank, name) for name in WEIGHT_NAMES]
    device, dtype = params[0].device, params[0].dtype
    draw = _sampler(gmm, generator, device, dtype)
    eval_seed = _seed(generator)
    batch = opts.batch_size
    t = torch.arange(bank.n_steps, device=device).repeat_interleave(batch)
    ab = schedule.alpha_bar.to(device)[t][:, None]
    by_timestep = (bank.n_steps, batch, n_tokens, bank.dim)

    def summed_loss(x_t: Tensor, eps: Tensor) -> Tensor:
        """Σ_t (mean loss of timestep t's sequences), with its gradient (``_BankLoss``)."""
        x_t, eps = x_t.view(by_timestep), eps.view(by_timestep)
        return _BankLoss.apply(*params, x_t, eps, bank.mask_self)

    x_cal, eps_cal = draw(ab, t.numel(), n_tokens)
    mean_sq_norm, top = _second_moments(x_cal.view(by_timestep))
    _initialise(params, opts, mean_sq_norm)
    if opts.warm_start:
        _warm_start(
            params, x_cal.view(by_timestep), eps_cal.view(by_timestep), bank.mask_self
        )
    lr = _step_size(opts, top)
    records: list[tuple[int, float]] = []
    with torch.no_grad():
        records.append((0, summed_loss(x_cal, eps_cal).item() / bank.n_steps))
    _optimise(
        params,
        lambda: summed_loss(*draw(ab, t.numel(), n_tokens)),
        lr[:, None, None],
        steps,
        opts,
        lambda k, loss: records.append((k, loss / bank.n_steps)),
        f"train bank T={bank.n_steps}",
    )
    return _bank_history(
        bank, gmm, schedule, n_tokens, records, lr, opts, eval_seed, start
    )


def _bank_history(bank, gmm, schedule, n_tokens, records, lr, opts, eval_seed, start):
    """Evaluate the bank on held-out sequences and package a :class:`BankHistory`."""
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
        wall_time=time.perf_counter() - start,
        device=str(device),
    )


def train_bank_loop(
    bank: AttentionBank,
    gmm: MultiTokenGMM,
    schedule: NoiseSchedule,
    n_tokens: int,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    **options,
) -> BankHistory:
    """The same recipe as :func:`train_bank`, one timestep at a time (a Python loop over
    layers, each trained alone with ``batch_size`` sequences per step). Slower; it is the
    reference the batched version is checked and benchmarked against."""
    opts = TrainOptions(progress=False, **options)
    n_tokens = _check_model(bank.dim, bank.mask_self, gmm, n_tokens, "bank")
    _check_schedule(bank, schedule)
    steps = _check_steps(steps)
    start = time.perf_counter()
    device = bank.W_KQ.device
    eval_seed = _seed(generator)
    losses: dict[int, list[float]] = {}
    rates = []
    for t in tqdm(range(bank.n_steps), desc="train layers", disable=not progress):
        layer = bank.layer(t).to(device)
        ab = schedule.alpha_bar[t].item()

        def log(k: int, loss: float) -> None:
            losses.setdefault(k, []).append(loss)

        rates.append(
            _train_layer(layer, gmm, ab, n_tokens, steps, generator, opts, log)
        )
        bank.load_layer(t, layer)
    records = [(k, float(np.mean(v))) for k, v in sorted(losses.items())]
    lr = torch.tensor(rates)
    return _bank_history(
        bank, gmm, schedule, n_tokens, records, lr, opts, eval_seed, start
    )
