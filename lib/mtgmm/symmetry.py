"""Coordinates in the symmetric matrices ``α P + β P⊥ + γ J`` and the isometries that
permute the means (derived in :doc:`/book/training`; used in :doc:`/book/convergence`).

Layer: after :mod:`mtgmm.theory`, before :mod:`mtgmm.bounds`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .attention import SymmetricBasis
from .mixture import MultiTokenGMM
from .theory import WeightsLike, as_weights


def reduced_coordinates(weights: WeightsLike, basis: SymmetricBasis) -> Tensor:
    """(…, 3, 3) coordinates of the symmetric parts: rows W_KQ, W_V, W_S; columns (α, β, γ)
    of ``α P + β P⊥ + γ J`` (:doc:`/book/training`).
    """
    return basis.coordinates(torch.stack(as_weights(weights), -3))


def weights_from_coordinates(
    coordinates: Tensor, basis: SymmetricBasis
) -> tuple[Tensor, Tensor, Tensor]:
    """``(W_KQ, W_V, W_S)`` from (…, 3, 3) coordinates; inverse of :func:`reduced_coordinates`."""
    c = torch.as_tensor(coordinates, dtype=torch.float64)
    if c.ndim < 2 or c.shape[-2:] != (3, 3):
        raise ValueError(
            f"coordinates must have shape (..., 3, 3), got {tuple(c.shape)}"
        )
    mats = basis.compose(c)
    return mats[..., 0, :, :], mats[..., 1, :, :], mats[..., 2, :, :]


def invariance_defect(weights: WeightsLike, basis: SymmetricBasis) -> Tensor:
    """Frobenius norm of ``W − project(W)`` per matrix, shape (…, 3) in the order W_KQ, W_V,
    W_S (:doc:`/book/training`).
    """
    w = torch.stack(as_weights(weights), -3)
    return torch.linalg.matrix_norm(w - basis.project(w))


def permutation_isometry(
    gmm: MultiTokenGMM, permutation: Sequence[int], complement: Tensor | None = None
) -> Tensor:
    """Orthogonal Q (row convention x ↦ xQ) with ``μ_k Q = μ_{σ(k)}``: ``M⁺ M_σ`` on the span of
    the means, ``complement`` (identity if None) on the rest (:doc:`/book/training`).

    Raises:
        ValueError: if the Gram matrix of the means is not σ-invariant (checked to 1e-6).
    """
    means = gmm.means.to(torch.float64)
    perm = torch.as_tensor(list(permutation), dtype=torch.long)
    if sorted(perm.tolist()) != list(range(gmm.n_clusters)):
        raise ValueError(
            f"permutation must reorder 0 … {gmm.n_clusters - 1}, got {perm}"
        )
    span = gmm.span_basis().to(torch.float64)  # (m, d)
    eye = torch.eye(gmm.dim, dtype=torch.float64)
    rest = (
        torch.linalg.svd(span, full_matrices=True)[2][span.shape[0] :]
        if len(span)
        else eye
    )
    if complement is None:
        complement = torch.eye(rest.shape[0], dtype=torch.float64)
    complement = torch.as_tensor(complement, dtype=torch.float64)
    if complement.shape != (rest.shape[0],) * 2:
        raise ValueError(f"complement must be ({rest.shape[0]}, {rest.shape[0]})")
    q = torch.linalg.pinv(means) @ means[perm] + rest.T @ complement @ rest
    # checked to 1e-6 (relative), so that means rounded to float32 still qualify
    tol = 1e-6 * max(1.0, means.abs().max().item())
    orthogonal = torch.allclose(q @ q.T, eye, atol=1e-6)
    if not (orthogonal and torch.allclose(means @ q, means[perm], atol=tol)):
        raise ValueError(
            "no orthogonal map permutes these means this way (their Gram matrix is not "
            "invariant under the permutation), or complement is not orthogonal"
        )
    return q


def orthonormal_symmetric_basis(basis: SymmetricBasis) -> Tensor:
    """(m, d, d): J, (P − J)/‖P − J‖_F, P⊥/‖P⊥‖_F, Frobenius-orthonormal, zero matrices left
    out (:doc:`/book/convergence`, *Convexity in the readout*).
    """
    mats = torch.stack([basis.J, basis.P - basis.J, basis.P_perp])
    norms = torch.linalg.matrix_norm(mats)
    keep = norms > 1e-9
    return mats[keep] / norms[keep][:, None, None]
