"""The best one-layer attention denoiser in the symmetric class ``W = α P + β P⊥ + γ J``
(derived in `A map of the gap <../gap.html#the-best-model-in-the-symmetric-class>`__).

For fixed ``W_KQ`` the layer is linear in the readout coordinates θ, ``f = Σ_m θ_m F_m``
with features ``X B_m`` and ``A X B_m``, so

    θ = G⁻¹ h,  ℓ(κ) = E‖ε*‖² − hᵀ G⁻¹ h,  G_mn = E⟨F_m, F_n⟩, h_m = E⟨F_m, ε*⟩,

and ℓ, a function of the coordinates κ of ``W_KQ``, is minimised by L-BFGS on a fixed
sample; the minimiser is scored on fresh sequences.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np
import torch
from scipy import optimize
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._checks import alpha_bar_tensor, positive_int
from .attention import AttentionDenoiser, SymmetricBasis, attend
from .mixture import MultiTokenGMM
from .objective import excess_risk, noisy_batch
from .oracle import bayes_risk, oracle_eps
from .runtime import pick_device

TOKEN_BUDGET = 2**17
"""Default size of the fitting sample in tokens (``n_sequences = max(64, TOKEN_BUDGET // L)``)."""

START_TEMPERATURES = (-0.2, 0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
"""Values of ``c s²`` tried as starts ``W_KQ = c (P − J)``; L-BFGS starts from the best."""


@dataclass(frozen=True)
class BestInClass:
    """The best symmetric one-layer model at one noise level.

    Attributes:
        model: the fitted :class:`~mtgmm.attention.AttentionDenoiser`.
        coefficients: (3, 3) coordinates (α, β, γ), rows W_KQ, W_V, W_S.
        excess, stderr: excess risk on fresh sequences and its standard error.
        fit_excess: the profile objective on the fitting sample (optimistic).
        bayes_risk, bayes_risk_stderr: R*_t for scale.
        n_sequences: size of the fitting sample.
    """

    model: AttentionDenoiser
    coefficients: Tensor
    excess: float
    stderr: float
    fit_excess: float
    bayes_risk: float
    bayes_risk_stderr: float
    n_sequences: int


def invariant_matrices(gmm: MultiTokenGMM, include_j: bool) -> tuple[Tensor, list[int]]:
    """The non-zero matrices among (P, P⊥, J) (J only if ``include_j``) and their columns."""
    sym = SymmetricBasis(gmm)
    candidates = [sym.P, sym.P_perp, sym.J][: 3 if include_j else 2]
    keep = [i for i, b in enumerate(candidates) if b.abs().max() > 0]
    return torch.stack([candidates[i] for i in keep]), keep


PROFILE_CHUNK_SCORES = 2**25
"""Attention scores per chunk of sequences in the profile (128 MiB in float32). Each chunk is
checkpointed, so that L-BFGS at long contexts (L = 4096 in the full preset) keeps only one
chunk's L × L tensors alive instead of the whole sample's."""


def _attend_chunked(x: Tensor, w_kq: Tensor, eye: Tensor, mask_self: bool) -> Tensor:
    """``attend(x, w_kq, eye)`` in chunks of sequences, recomputed in the backward pass."""
    per_chunk = max(1, PROFILE_CHUNK_SCORES // x.shape[1] ** 2)
    if x.shape[0] <= per_chunk:
        return attend(x, w_kq, eye, mask_self)
    parts = [
        checkpoint(
            attend, x[i : i + per_chunk], w_kq, eye, mask_self, use_reentrant=False
        )
        for i in range(0, x.shape[0], per_chunk)
    ]
    return torch.cat(parts)


def readout_profile(x: Tensor, target: Tensor, basis: Tensor, mask_self: bool):
    """``κ ↦ (ℓ(κ), θ)`` on the fixed sample ``x`` (n, L, d) with ``target`` = ε*(x); ℓ is a
    float64 scalar carrying the graph back to κ.
    """
    n_tokens = x.shape[0] * x.shape[1]
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    flat_target = target.flatten()
    skip = (x.unsqueeze(0) @ basis.to(x).unsqueeze(1)).flatten(1).double()  # X B_m
    g_skip, h_skip = skip @ skip.T, skip @ flat_target
    total = flat_target @ flat_target

    def evaluate(kappa: Tensor) -> tuple[Tensor, Tensor]:
        # κ lives on the CPU (L-BFGS); the sample on the device
        kappa = kappa.to(x.device)
        w_kq = torch.einsum("m,mij->ij", kappa, basis.to(kappa))
        attended = _attend_chunked(x, w_kq.to(x), eye, mask_self)  # A X
        value = (attended.unsqueeze(0) @ basis.to(x).unsqueeze(1)).flatten(1).double()
        cross = skip @ value.T
        gram = torch.cat(
            [torch.cat([g_skip, cross], 1), torch.cat([cross.T, value @ value.T], 1)]
        )
        h = torch.cat([h_skip, value @ flat_target])
        theta = torch.linalg.solve(gram, h)
        return ((total - h @ theta) / n_tokens).cpu(), theta.cpu()

    return evaluate


def _device(device: torch.device | str | None) -> torch.device:
    """The device of the profile: ``device``, else the best one; MPS has no float64, so the
    CPU instead."""
    device = pick_device() if device is None else torch.device(device)
    return torch.device("cpu") if device.type == "mps" else device


def _score(model, gmm, alpha_bar, n_tokens, n_sequences, generator, device):
    """:func:`excess_risk` of ``model`` on fresh sequences drawn on the CPU (the same
    sample on every device), evaluated on ``device`` by a copy of the model."""
    gmm32 = gmm.to(device="cpu", dtype=torch.float32)
    args = (alpha_bar, n_tokens, n_sequences, generator)
    return excess_risk(deepcopy(model).to(device), gmm32, *args, device=device)


def _profile_on(device, x: Tensor, target: Tensor, basis: Tensor, mask_self: bool):
    """:func:`readout_profile` with the fixed sample moved to ``device``."""
    return readout_profile(
        x.float().to(device), target.to(device), basis.to(device), mask_self
    )


def _fit(evaluate, starts: Tensor) -> tuple[np.ndarray, float]:
    """L-BFGS on the profile from the best of the ``starts`` (rows of κ)."""
    with torch.no_grad():
        values = [evaluate(k)[0].item() for k in starts]
    best = starts[int(np.argmin(values))].numpy()

    def fun(k: np.ndarray) -> tuple[float, np.ndarray]:
        kappa = torch.tensor(k, dtype=torch.float64, requires_grad=True)
        value, _ = evaluate(kappa)
        value.backward()
        return value.item(), kappa.grad.numpy().copy()

    result = optimize.minimize(
        fun, best, jac=True, method="L-BFGS-B", options={"ftol": 1e-6}
    )
    return result.x, float(result.fun)


def best_in_class(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    n_sequences: int | None = None,
    generator: torch.Generator | None = None,
    include_j: bool = True,
    mask_self: bool = False,
    n_eval_sequences: int = 2048,
    bayes_samples: int = 200_000,
    device: torch.device | str | None = None,
) -> BestInClass:
    """The best model with each of ``W_KQ, W_V, W_S`` of the form ``α P + β P⊥ (+ γ J)``:
    ``W_V, W_S`` profiled out by least squares, L-BFGS on the coordinates of ``W_KQ`` from the
    best start ``W_KQ = c (P − J)`` over :data:`START_TEMPERATURES`.

    Args:
        gmm, alpha_bar, n_tokens: the mixture, ᾱ and L.
        n_sequences: fixed fitting sample; default ``max(64, 2^17 // L)``.
        generator: seeds the fitting, evaluation and Bayes-risk samples.
        include_j: keep the J (mean-direction) terms.
        mask_self: the variant in which a token does not attend to itself.
        n_eval_sequences, bayes_samples: sizes of the evaluation and Bayes-risk samples.
        device: where the profile runs (default :func:`~mtgmm.runtime.pick_device`); the
            samples are drawn on the CPU, so every device fits the same numbers.
    """
    n_tokens = positive_int(n_tokens, "n_tokens")
    n_eval_sequences = positive_int(n_eval_sequences, "n_eval_sequences")
    if n_sequences is None:
        n_sequences = max(64, TOKEN_BUDGET // n_tokens)
    n_sequences = positive_int(n_sequences, "n_sequences")
    ab = alpha_bar_tensor(alpha_bar).to(torch.float64)
    if ab.numel() != 1:
        raise ValueError(
            f"alpha_bar must be a single value, got shape {tuple(ab.shape)}"
        )
    s2 = gmm.noise_variance(ab).item()
    if s2 == 0:
        raise ValueError(
            "best_in_class needs s² = a²σ0² + b² > 0 (not σ0 = 0 with ᾱ = 1)"
        )
    if mask_self and n_tokens < 2:
        raise ValueError(
            "mask_self needs at least 2 tokens per sequence (n_tokens >= 2)"
        )
    ab = ab.item()
    seeds = torch.randint(2**62, (3,), generator=generator).tolist()
    streams = [torch.Generator().manual_seed(s) for s in seeds]

    gmm64 = gmm.to(device="cpu", dtype=torch.float64)
    x, _ = noisy_batch(gmm64, ab, n_sequences, n_tokens, streams[0])
    basis, columns = invariant_matrices(gmm64, include_j)
    device = _device(device)
    evaluate = _profile_on(device, x, oracle_eps(gmm64, x, ab), basis, mask_self)

    direction = torch.tensor(
        [1.0, 0.0, -1.0 if include_j else 0.0], dtype=torch.float64
    )
    starts = torch.stack([(c / s2) * direction[columns] for c in START_TEMPERATURES])
    kappa, fit = _fit(evaluate, starts)

    with torch.no_grad():
        _, theta = evaluate(torch.tensor(kappa, dtype=torch.float64))
    m = len(columns)
    coefficients = torch.zeros(3, 3, dtype=torch.float64)
    coefficients[0, columns] = torch.tensor(kappa, dtype=torch.float64)
    coefficients[2, columns] = theta[:m]  # skip: X B_m
    coefficients[1, columns] = theta[m:]  # value: A X B_m
    sym = SymmetricBasis(gmm64)
    model = AttentionDenoiser(gmm.dim, mask_self)
    model.set_weights(*sym.compose(coefficients))
    excess, stderr = _score(
        model, gmm, ab, n_tokens, n_eval_sequences, streams[1], device
    )
    risk, risk_se = bayes_risk(gmm64, ab, bayes_samples, streams[2])
    return BestInClass(
        model, coefficients, excess, stderr, fit, risk, risk_se, n_sequences
    )


def readout_fit(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    n_tokens: int,
    w_kq_coordinates: Tensor,
    n_sequences: int | None = None,
    generator: torch.Generator | None = None,
    mask_self: bool = False,
    n_eval_sequences: int = 1024,
    device: torch.device | str | None = None,
) -> tuple[AttentionDenoiser, float, float]:
    """The best readout for a fixed ``W_KQ`` with coordinates ``w_kq_coordinates`` (α, β, γ),
    by least squares; returns the model, its excess on fresh sequences and the standard error
    (:doc:`/book/attention`, *The bias–variance trade-off*). ``device`` as in
    :func:`best_in_class`.
    """
    n_tokens = positive_int(n_tokens, "n_tokens")
    n_sequences = positive_int(
        n_sequences or max(64, TOKEN_BUDGET // n_tokens), "n_sequences"
    )
    ab = float(alpha_bar_tensor(alpha_bar).reshape(()))
    fit_stream, eval_stream = (
        torch.Generator().manual_seed(s)
        for s in torch.randint(2**62, (2,), generator=generator).tolist()
    )
    gmm64 = gmm.to(device="cpu", dtype=torch.float64)
    x, _ = noisy_batch(gmm64, ab, n_sequences, n_tokens, fit_stream)
    basis, columns = invariant_matrices(gmm64, include_j=True)
    device = _device(device)
    evaluate = _profile_on(device, x, oracle_eps(gmm64, x, ab), basis, mask_self)
    kappa = torch.as_tensor(w_kq_coordinates, dtype=torch.float64)[columns]
    with torch.no_grad():
        _, theta = evaluate(kappa)
    m = len(columns)
    coefficients = torch.zeros(3, 3, dtype=torch.float64)
    coefficients[0, columns], coefficients[2, columns], coefficients[1, columns] = (
        kappa,
        theta[:m],
        theta[m:],
    )
    model = AttentionDenoiser(gmm.dim, mask_self)
    model.set_weights(*SymmetricBasis(gmm64).compose(coefficients))
    excess, stderr = _score(
        model, gmm, ab, n_tokens, n_eval_sequences, eval_stream, device
    )
    return model, excess, stderr
