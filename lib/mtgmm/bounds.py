"""Bounds behind the convergence theorem (chapter *The convergence theorem*; used again in
chapter *Tokens per data point*).

**The token bound.** For a fixed layer W the excess risk at L tokens has the first-order
expansion of :class:`mtgmm.theory.TokenExpansion` (asymptotic, L → ∞, needs κ < 1):

    excess_L(W) ≈ limit(W) + (variance(W) + bias(W)) / (L − 1).

Fix ``W_KQ = c (P − J)`` (the shape of the best models; the temperature is ``c s²``) and let
the readout be ``W_V = Σ_m θ_{V,m} E_m``, ``W_S = Σ_m θ_{S,m} E_m`` over the
Frobenius-orthonormal symmetric matrices E_m (:func:`mtgmm.theory.orthonormal_symmetric_basis`).
Each of the three terms is then a polynomial of degree two in θ = (θ_S, θ_V): with
per-token features ``F = [x E_m ; m_q E_m]`` (m_q the attention limit of the query
``q = x W_KQ``), the oracle ε*, the fluctuation matrix ``V_ab = tr(E_aᵀ Σ_q E_b)`` and the
bias vectors ``β E_m`` of :func:`mtgmm.theory.attention_bias`,

    limit    = θᵀ G θ − 2 hᵀ θ + E‖ε*‖²,        G = E FFᵀ, h = E F ε*,
    variance = θ_Vᵀ S θ_V,                       S = E V,
    bias     = 2 θᵀ C θ_V − 2 uᵀ θ_V,           C = E F (β E)ᵀ, u = E ε* · β E.

So for n = L − 1 keys the first-order excess is a quadratic in θ. The readout of ``W(c, L)``
minimises its positive part, ``limit + variance/n = θᵀ (G + Ŝ/n) θ − 2 hᵀ θ + E‖ε*‖²`` (Ŝ:
S placed in the value block), a strictly convex quadratic with minimiser
``θ*(c, L) = (G + Ŝ/n)⁻¹ h``; the bias term, indefinite and heavy-tailed, is evaluated but
not optimised (minimising through it exploits the expansion's own errors). Each ``W(c, L)`` is
one member of the symmetric class, so the best symmetric model at L has excess at most
``excess_L(W(c, L))`` for every c, and

    bound(L) = min_c [ limit(W(c, L)) + slope(W(c, L)) / (L − 1) ]

bounds the best symmetric model's excess *to first order in 1/L*: asymptotic, not rigorous at
small L, where the dropped 1/L² terms matter. They are small once the number of keys that
carry the weight, ``(L − 1)`` times the effective-sample-size fraction of
:func:`mtgmm.theory.ess_fraction`, is large; a temperature enters the minimum at L only when
``(L − 1) · ESS ≥ min_keys`` (ESS averaged over query tokens), which keeps out the hot
temperatures whose large self-attention bias would otherwise extrapolate to a negative excess
at short contexts. The variance penalty is what makes the readout well defined: at L = ∞ the
value feature along P⊥ is identically zero and the others are nearly collinear with the skip
features at low temperature, so the readout that is optimal at L = ∞ has huge value weights
whose fluctuation dominates at any finite L.

The moments are estimated by Monte Carlo on one sample of marginal tokens, common to every
temperature (common random numbers), and the reported excess and its standard error are
computed on a second, independent sample, so the estimate is unbiased for the chosen weights
(the minimum over the temperature grid adds a small downward selection bias). The grid is
restricted to κ = 2 (c s²)² < 1, where the 1/L constant exists. Its Monte Carlo estimate is
another matter: the variance term has a finite variance only for κ < 1/2 (c s² < 1/2;
:func:`mtgmm.theory.variance_exponent`), and the self-attention part of the bias term (the
query's own key, unless the diagonal is masked) only for c s² < 1 − 1/√2 ≈ 0.29: with
``x = a μ + s z`` its weight ``e^{⟨q, x⟩}/E e^{⟨q, x⟩}`` grows like
``exp((τ − τ²/2) ‖z'‖²)``, τ = c s², z' the part of z in the span of P − J, and
``E exp(2 (τ − τ²/2) χ²)`` is finite iff ``τ − τ²/2 < 1/4``. Beyond that the estimates are
erratic (at ᾱ = 0.9 a grid point at c s² = 0.48 returned a *negative* first-order excess), so
the default grid stops at 0.28. As L → ∞ the bound tends to the smallest L = ∞ excess on the
grid, which is positive: below that floor the bound says nothing, because hotter temperatures
(and, beyond κ = 1, the oracle's) have either unreliable or no 1/L constant.

**The temperature landscape and the iteration count.** :class:`Profile` is the profile excess
ℓ(τ) along the temperature line (readout solved exactly, one fixed sample of sequences), with
its derivative by automatic differentiation; :func:`sign_changes` lists the stationary points a
grid resolves, and :func:`temperature_iterations` the number of gradient steps on ℓ that the
lemma on the temperature landscape guarantees. The readout's own count is
:func:`mtgmm.theory.gd_iterations`.

Layer: after :mod:`mtgmm.best` (whose profiled least squares :class:`Profile` reuses), before
:mod:`mtgmm.training`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy import optimize
from torch import Tensor

from ._checks import nonnegative_float, positive_int, single_level
from .attention import SymmetricBasis, attend
from .best import invariant_matrices, readout_profile
from .mixture import MultiTokenGMM
from .objective import noisy_batch
from .oracle import oracle_eps
from .stats import mean_stderr
from .theory import (
    _marginal_tokens,
    _tilted_terms,
    attention_bias,
    orthonormal_symmetric_basis,
)

DEFAULT_TEMPERATURES = tuple(round(0.04 * i, 2) for i in range(8))
"""Default grid of temperatures ``c s²``: 0 to 0.28, where every Monte Carlo term of the
expansion has a finite variance (see the module docstring)."""

DEFAULT_SAMPLES = 2**14
"""Default marginal tokens in each of the two Monte Carlo samples (fit and evaluation)."""

MAX_TOKENS = 2**24
"""Largest L that :func:`tokens_needed` searches; beyond it the answer is ``inf``."""

MIN_KEYS = 4.0
"""Default ``min_keys``: effective keys a temperature needs before its expansion is used."""


def _level(
    gmm: MultiTokenGMM, alpha_bar: float, what: str
) -> tuple[float, MultiTokenGMM, float]:
    """Validate one noise level; return ``(ᾱ, the mixture in float64 on the CPU, s²)``."""
    ab = single_level(alpha_bar)
    gmm64 = gmm.to(device="cpu", dtype=torch.float64)
    s2 = gmm64.noise_variance(ab).item()
    if s2 == 0:
        raise ValueError(f"{what} needs s² = a²σ0² + b² > 0 (not σ0 = 0 with ᾱ = 1)")
    return ab, gmm64, s2


@dataclass(frozen=True)
class TokenBound:
    """The first-order token bound at several L (see the module docstring).

    Attributes:
        n_tokens: (M,) the L values.
        excess: (M,) first-order bound on the best symmetric model's excess at L
            (``inf`` where no temperature of the grid gives a bounded quadratic).
        stderr: (M,) its Monte Carlo standard error.
        temperature: (M,) the ``c s²`` that attains the minimum at each L.
        limit: (M,) the L = ∞ part of the bound, ``limit(W(c*, L))``.
        slope: (M,) its 1/(L − 1) coefficient, ``variance + bias`` of ``W(c*, L)``.
        coefficients: (M, 3, 3) reduced coordinates of ``W(c*, L)``: rows W_KQ, W_V, W_S,
            columns (α, β, γ) of ``α P + β P⊥ + γ J`` (as in :class:`mtgmm.best.BestInClass`).
        temperatures: (C,) the grid of ``c s²``.
        grid_excess: (C, M) the first-order excess of ``W(c, L)`` for every grid point
            (``inf`` where ``(L − 1) · ESS < min_keys``).
        ess: (C,) the mean effective-sample-size fraction of each grid temperature.
    """

    n_tokens: Tensor
    excess: Tensor
    stderr: Tensor
    temperature: Tensor
    limit: Tensor
    slope: Tensor
    coefficients: Tensor
    temperatures: Tensor
    grid_excess: Tensor
    ess: Tensor


@dataclass(frozen=True)
class _Moments:
    """Monte Carlo moments of one sample, stacked over the C temperatures (see the module
    docstring): ``gram`` G (C, 2m, 2m), ``target`` h (C, 2m), ``total`` E‖ε*‖², ``fluct`` S
    (C, m, m), ``cross`` C (C, 2m, m), ``bias_target`` u (C, m), ``ess`` the mean ESS
    fraction (C,)."""

    gram: Tensor
    target: Tensor
    total: Tensor
    fluct: Tensor
    cross: Tensor
    bias_target: Tensor
    ess: Tensor


class _Problem:
    """The quadratic first-order problems of one mixture, level and temperature grid, on a
    fitting and an evaluation sample (common to all temperatures)."""

    def __init__(
        self,
        gmm: MultiTokenGMM,
        alpha_bar: float,
        temperatures: Sequence[float] | None,
        n_samples: int,
        generator: torch.Generator | None,
        mask_self: bool,
        min_keys: float,
    ) -> None:
        self.min_keys = nonnegative_float(min_keys, "min_keys")
        n_samples = positive_int(n_samples, "n_samples")
        self.alpha_bar, self.gmm, self.s2 = _level(gmm, alpha_bar, "the token bound")
        self.temperatures = _temperature_grid(temperatures)
        self.mask_self = bool(mask_self)
        self.sym = SymmetricBasis(self.gmm)
        self.basis = orthonormal_symmetric_basis(self.sym)  # (m, d, d)
        seeds = torch.randint(2**62, (2,), generator=generator).tolist()
        samples = [
            _marginal_tokens(
                self.gmm, self.alpha_bar, n_samples, torch.Generator().manual_seed(s)
            )
            for s in seeds
        ]
        self.eval_tokens = samples[1]
        self._eval_features: dict[float, tuple[Tensor, ...]] = {}
        self.fit, self.eval = (self._moments(x) for x in samples)

    def w_kq(self, temperature: float) -> Tensor:
        """``W_KQ = c (P − J)`` with ``c s² = temperature``."""
        return (temperature / self.s2) * (self.sym.P - self.sym.J)

    def _features(self, x: Tensor, temperature: float):
        """Per token: features F (N, 2m, d), ε* (N, d), fluctuation V (N, m, m), the bias
        vectors β E_m (N, m, d) and the ESS fraction (N,) of :func:`mtgmm.theory.ess_fraction`.
        With ``Σ_q = Σ_k ρ_k [s² I + δ_k δ_kᵀ]`` (:func:`mtgmm.theory.attention_fluctuation`)
        and orthonormal E_m,
        ``V_ab = Σ_k ρ_k [s² 1{a = b} + (δ_k E_a)·(δ_k E_b)]``."""
        q = x @ self.w_kq(temperature)
        limit, rho, delta, _, s2 = _tilted_terms(self.gmm, self.alpha_bar, q)
        feats = torch.einsum("nd,mde->nme", torch.cat([x, limit]), self.basis)
        # (x B, m_q B) for each E_m: skip features first, value features second
        feats = torch.cat(feats.split(x.shape[0]), 1)
        moved = torch.einsum("nkd,mde->nkme", delta, self.basis)
        fluct = torch.einsum("nk,nkae,nkbe->nab", rho, moved, moved)
        fluct = fluct + (s2 * rho.sum(-1, keepdim=True))[..., None] * torch.eye(
            self.basis.shape[0], dtype=x.dtype
        )
        beta = attention_bias(
            self.gmm, self.alpha_bar, q, None if self.mask_self else x
        )
        beta = torch.einsum("nd,mde->nme", beta, self.basis)
        eps = oracle_eps(self.gmm, x, self.alpha_bar)
        return feats, eps, fluct, beta, 1 / rho.sum(-1)  # Σ_k ρ_k = 1 / ess_fraction

    def _moments(self, x: Tensor) -> _Moments:
        parts = []
        for temperature in self.temperatures.tolist():
            feats, eps, fluct, beta, ess = self._features(x, temperature)
            parts.append(
                (
                    torch.einsum("nad,nbd->ab", feats, feats),
                    torch.einsum("nad,nd->a", feats, eps),
                    fluct.sum(0),
                    torch.einsum("nad,nbd->ab", feats, beta),
                    torch.einsum("nd,nbd->b", eps, beta),
                    ess.sum(),
                )
            )
        stacked = [torch.stack(p) / x.shape[0] for p in zip(*parts, strict=True)]
        total = (oracle_eps(self.gmm, x, self.alpha_bar) ** 2).sum(-1).mean()
        return _Moments(stacked[0], stacked[1], total, *stacked[2:])

    def _quadratic(
        self, mom: _Moments, n_keys: Tensor, bias: bool
    ) -> tuple[Tensor, Tensor]:
        """M_n (C, M, 2m, 2m) and b_n (C, M, 2m) for n = ``n_keys`` (M,); without the bias
        terms (``bias=False``) M_n = G + Ŝ/n and b_n = h."""
        m = self.basis.shape[0]
        extra = torch.zeros_like(mom.gram)
        lin = torch.zeros_like(mom.target)
        if bias:
            extra[:, :, m:] += mom.cross
            extra = extra + extra.transpose(-1, -2)
            lin[:, m:] = mom.bias_target
        extra[:, m:, m:] += mom.fluct
        inv_n = (1 / n_keys)[None, :, None]
        mat = mom.gram[:, None] + inv_n[..., None] * extra[:, None]
        return mat, mom.target[:, None] + inv_n * lin[:, None]

    def evaluate(self, n_tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """θ*(c, L) (C, M, 2m), fitted on the fitting sample by minimising limit + variance/n,
        and its limit and full first-order excess (C, M) on the evaluation sample."""
        mat, vec = self._quadratic(self.fit, n_tokens - 1, bias=False)
        theta = torch.linalg.solve(mat, vec)
        mom = self.eval
        mat, vec = self._quadratic(mom, n_tokens - 1, bias=True)
        limit = (
            _quad(mom.gram[:, None].expand_as(mat), mom.target[:, None], theta)
            + mom.total
        )
        excess = _quad(mat, vec, theta) + mom.total
        trusted = (n_tokens - 1)[None, :] * self.fit.ess[:, None] >= self.min_keys
        return theta, limit, torch.where(trusted, excess, torch.inf)

    def stderr(self, temperature: float, theta: Tensor, n_tokens: int) -> float:
        """Standard error of the first-order excess of θ (2m,) over the evaluation tokens."""
        if temperature not in self._eval_features:
            self._eval_features[temperature] = self._features(
                self.eval_tokens, temperature
            )
        feats, eps, fluct, beta, _ = self._eval_features[temperature]
        m = self.basis.shape[0]
        gap = feats.transpose(1, 2) @ theta - eps  # (N, d)
        beta_w = torch.einsum("nmd,m->nd", beta, theta[m:])
        per_token = (gap**2).sum(-1) + (
            torch.einsum("a,nab,b->n", theta[m:], fluct, theta[m:])
            + 2 * (gap * beta_w).sum(-1)
        ) / (n_tokens - 1)
        return mean_stderr(per_token)[1]

    def coefficients(self, temperature: float, theta: Tensor) -> Tensor:
        """(3, 3) reduced coordinates of ``W(c, L)``: rows W_KQ, W_V, W_S."""
        m = self.basis.shape[0]
        w_s = torch.einsum("m,mij->ij", theta[:m], self.basis)
        w_v = torch.einsum("m,mij->ij", theta[m:], self.basis)
        return self.sym.coordinates(torch.stack([self.w_kq(temperature), w_v, w_s]))


def _quad(mat: Tensor, vec: Tensor, theta: Tensor) -> Tensor:
    """``θᵀ M θ − 2 bᵀ θ`` over leading dims."""
    return torch.einsum("...a,...ab,...b->...", theta, mat, theta) - 2 * (
        vec * theta
    ).sum(-1)


def _temperature_grid(temperatures: Sequence[float] | None) -> Tensor:
    grid = torch.as_tensor(
        DEFAULT_TEMPERATURES if temperatures is None else temperatures,
        dtype=torch.float64,
    ).reshape(-1)
    if grid.numel() == 0 or not bool(torch.isfinite(grid).all()):
        raise ValueError(
            "temperatures must be a non-empty sequence of finite values c s²"
        )
    if bool((2 * grid**2 >= 1).any()):
        raise ValueError(
            "temperatures must satisfy κ = 2 (c s²)² < 1, i.e. |c s²| < 1/√2 ≈ 0.707, where the "
            f"1/L constant exists; got {grid.tolist()}"
        )
    return grid


def _token_counts(token_counts) -> Tensor:
    counts = torch.as_tensor(token_counts).reshape(-1)
    if (
        counts.numel() == 0
        or counts.is_floating_point()
        and bool((counts != counts.round()).any())
    ):
        raise ValueError(
            f"token_counts must be a non-empty sequence of integers, got {counts}"
        )
    counts = counts.to(torch.float64)
    if bool((counts < 2).any()):
        raise ValueError(
            "token_counts must be >= 2 (the expansion is in the L − 1 other keys)"
        )
    return counts


def token_bound(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    token_counts,
    temperatures: Sequence[float] | None = None,
    n_samples: int = DEFAULT_SAMPLES,
    generator: torch.Generator | None = None,
    mask_self: bool = False,
    min_keys: float = MIN_KEYS,
) -> TokenBound:
    """First-order bound on the best symmetric model's excess risk at each L of
    ``token_counts`` (integers ≥ 2): ``min_c`` over ``temperatures`` (values of ``c s²``,
    default :data:`DEFAULT_TEMPERATURES`, each with ``2 (c s²)² < 1``) of the first-order
    excess of ``W(c, L)``: ``W_KQ = c (P − J)`` with the readout that minimises that
    first-order excess (derivation and caveats in the module docstring; asymptotic in L).

    ``n_samples`` marginal tokens in each of two samples (fit and evaluation), common to every
    temperature and L; ``generator`` seeds both. ``mask_self`` selects the variant in which a
    token does not attend to itself. A temperature is used at L only if
    ``(L − 1) · ESS ≥ min_keys``; at an L where none is, the bound is ``inf``. Chapter *The
    convergence theorem*.
    """
    counts = _token_counts(token_counts)
    problem = _Problem(
        gmm, alpha_bar, temperatures, n_samples, generator, mask_self, min_keys
    )
    theta, limit, excess = problem.evaluate(counts)
    best = excess.argmin(0)  # (M,)
    cols = torch.arange(counts.numel())
    chosen = theta[best, cols]
    temps = problem.temperatures[best]
    finite = torch.isfinite(excess[best, cols])
    stderr = torch.tensor(
        [
            problem.stderr(t, th, int(n)) if ok else math.inf
            for t, th, n, ok in zip(
                temps.tolist(), chosen, counts.tolist(), finite, strict=True
            )
        ],
        dtype=torch.float64,
    )
    coefficients = torch.stack(
        [
            problem.coefficients(t, th)
            for t, th in zip(temps.tolist(), chosen, strict=True)
        ]
    )
    bound = excess[best, cols]
    lim = limit[best, cols]
    return TokenBound(
        n_tokens=counts.long(),
        excess=bound,
        stderr=stderr,
        temperature=torch.where(finite, temps, torch.nan),
        limit=torch.where(finite, lim, torch.nan),
        slope=torch.where(finite, (bound - lim) * (counts - 1), torch.nan),
        coefficients=torch.where(finite[:, None, None], coefficients, torch.nan),
        temperatures=problem.temperatures,
        grid_excess=excess,
        ess=problem.fit.ess,
    )


def tokens_needed(
    gmm: MultiTokenGMM,
    alpha_bar: float,
    target: float,
    temperatures: Sequence[float] | None = None,
    n_samples: int = DEFAULT_SAMPLES,
    generator: torch.Generator | None = None,
    mask_self: bool = False,
    min_keys: float = MIN_KEYS,
) -> float:
    """The smallest L (≥ 2) whose :func:`token_bound` is at most ``target``: the first
    crossing of a geometric scan of L, refined by bisection, so that
    ``bound(L) ≤ target < bound(L − 1)``. ``inf`` if the bound stays above ``target`` up to
    :data:`MAX_TOKENS` (e.g. below the floor of the module docstring). Same arguments, same
    samples and so the same bound as :func:`token_bound` with the same ``generator`` state.
    Asymptotic in L, like the bound."""
    if not (isinstance(target, int | float) and math.isfinite(target) and target > 0):
        raise ValueError(f"target must be a finite number > 0, got {target!r}")
    problem = _Problem(
        gmm, alpha_bar, temperatures, n_samples, generator, mask_self, min_keys
    )

    def bound(n: Tensor) -> Tensor:
        return problem.evaluate(n.to(torch.float64))[2].min(0).values

    scan = torch.unique(
        torch.logspace(math.log10(2), math.log10(MAX_TOKENS), 97).round()
    )
    below = (bound(scan) <= target).nonzero()
    if below.numel() == 0:
        return math.inf
    first = int(below[0])
    if first == 0:
        return 2.0
    lo, hi = int(scan[first - 1]), int(scan[first])  # bound(lo) > target >= bound(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if bound(torch.tensor([mid]))[0] <= target:
            hi = mid
        else:
            lo = mid
    return float(hi)


# ------------------------------------------------------------ the temperature landscape


class Profile:
    """The profile excess along the temperature line, on one fixed sample of sequences:

        ℓ(τ) = min over (W_V, W_S) symmetric of  mean ‖f(X) − ε*(X)‖²,   W_KQ = (τ/s²)(P − J),

    τ = c s² the temperature. The readout is solved exactly by least squares for every τ
    (:mod:`mtgmm.best` profiles it out the same way), so ℓ is a smooth deterministic function
    of τ (sample average approximation: the same sequences at every τ, common random
    numbers). Gradient descent on ℓ is the temperature half of the two-timescale scheme of
    chapter *The convergence theorem*; by the envelope theorem ``ℓ'(τ)`` is the partial
    derivative of the loss in τ at the optimal readout.

    Args:
        gmm, alpha_bar: the mixture and the noise level.
        n_tokens: L.
        n_sequences: size of the fixed sample (default ``max(64, 2^15 // L)``).
        generator: seeds the sample.
        mask_self: the masked variant.
    """

    def __init__(
        self,
        gmm: MultiTokenGMM,
        alpha_bar: float,
        n_tokens: int,
        n_sequences: int | None = None,
        generator: torch.Generator | None = None,
        mask_self: bool = False,
    ) -> None:
        self.n_tokens = positive_int(n_tokens, "n_tokens")
        n_sequences = positive_int(
            n_sequences or max(64, 2**15 // n_tokens), "n_sequences"
        )
        self.alpha_bar, self.gmm, self.s2 = _level(gmm, alpha_bar, "the profile")
        self.mask_self = bool(mask_self)
        self.x, _ = noisy_batch(
            self.gmm, self.alpha_bar, n_sequences, n_tokens, generator
        )
        self.target = oracle_eps(self.gmm, self.x, self.alpha_bar)
        basis, self._columns = invariant_matrices(self.gmm, include_j=True)
        self._evaluate = readout_profile(self.x, self.target, basis, self.mask_self)
        direction = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
        self._direction = direction[self._columns] / self.s2

    def _at(self, tau: float, grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.tensor(float(tau), dtype=torch.float64, requires_grad=grad)
        value, theta = self._evaluate(t * self._direction)
        return t, value, theta

    def value(self, tau: float) -> float:
        """ℓ(τ)."""
        with torch.no_grad():
            return self._at(tau, False)[1].item()

    def derivative(self, tau: float) -> tuple[float, float]:
        """(ℓ(τ), ℓ'(τ)), the derivative by automatic differentiation."""
        t, value, _ = self._at(tau, True)
        (grad,) = torch.autograd.grad(value, t)
        return value.item(), grad.item()

    def coefficients(self, tau: float) -> Tensor:
        """(3, 3) reduced coordinates of the profile's model at τ (rows W_KQ, W_V, W_S)."""
        with torch.no_grad():
            _, _, theta = self._at(tau, False)
        m = len(self._columns)
        coefficients = torch.zeros(3, 3, dtype=torch.float64)
        coefficients[0, self._columns] = float(tau) * self._direction
        coefficients[2, self._columns] = theta[:m]
        coefficients[1, self._columns] = theta[m:]
        return coefficients

    def per_sequence(self, tau: float) -> Tensor:
        """Per-sequence excess of the profile's model at τ on the sample (n,): its mean is
        ℓ(τ), its standard deviation / √n the standard error of ℓ(τ) at a fixed τ."""
        weights = SymmetricBasis(self.gmm).compose(self.coefficients(tau))
        with torch.no_grad():
            out = self.x @ weights[2] + attend(
                self.x, weights[0], weights[1], self.mask_self
            )
        return ((out - self.target) ** 2).sum(-1).mean(-1)

    def scan(self, temperatures: Sequence[float]) -> tuple[Tensor, Tensor]:
        """ℓ and ℓ' at each of ``temperatures`` (two tensors of their length)."""
        pairs = [self.derivative(t) for t in temperatures]
        return tuple(
            torch.tensor(v, dtype=torch.float64) for v in zip(*pairs, strict=True)
        )

    def minimum(self, temperatures: Sequence[float]) -> tuple[float, float]:
        """(τ*, ℓ(τ*)): the best point of the (sorted) grid ``temperatures``, refined by a
        bounded Brent search between its neighbours. Global on the grid's range as far as the
        grid resolves ℓ."""
        grid = sorted(float(t) for t in temperatures)
        values = [self.value(t) for t in grid]
        i = min(range(len(grid)), key=values.__getitem__)
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        if lo == hi:
            return grid[i], values[i]
        result = optimize.minimize_scalar(
            self.value, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7}
        )
        if result.fun > values[i]:
            return grid[i], values[i]
        return float(result.x), float(result.fun)

    def descent_constants(
        self, tau0: float, tau_star: float, n_grid: int = 33
    ) -> tuple[float, float]:
        """(S, m) on the segment between τ0 and τ*, from ℓ' on a uniform grid of ``n_grid``
        points: the smoothness ``S = max |ℓ''|`` (difference quotients of ℓ') and the secant
        constant ``m = min ℓ'(τ)/(τ − τ*)`` (at τ* itself the difference quotient of ℓ'
        there). The constants of :func:`temperature_iterations`; grid estimates of a sup and
        an inf, so refine ``n_grid`` until they settle."""
        n_grid = positive_int(n_grid, "n_grid")
        if n_grid < 3 or tau0 == tau_star:
            raise ValueError("need n_grid >= 3 and tau0 != tau_star")
        grid = torch.linspace(tau0, tau_star, n_grid, dtype=torch.float64).tolist()
        slopes = torch.tensor(
            [self.derivative(t)[1] for t in grid], dtype=torch.float64
        )
        taus = torch.tensor(grid, dtype=torch.float64)
        curvature = (slopes[1:] - slopes[:-1]) / (taus[1:] - taus[:-1])
        secants = torch.cat([slopes[:-1] / (taus[:-1] - tau_star), curvature[-1:]])
        return curvature.abs().max().item(), secants.min().item()


def sign_changes(temperatures: Sequence[float], slopes: Sequence[float]) -> list[float]:
    """The stationary points that a grid resolves: where ``slopes`` (ℓ' at the sorted
    ``temperatures``) changes sign, located by linear interpolation of ℓ'."""
    grid = [float(t) for t in temperatures]
    slopes = [float(g) for g in slopes]
    if len(grid) != len(slopes) or grid != sorted(grid):
        raise ValueError("temperatures must be sorted and match slopes in length")
    points = []
    for i in range(len(grid) - 1):
        (t0, t1), (g0, g1) = grid[i : i + 2], slopes[i : i + 2]
        if g0 == 0 or g0 * g1 < 0:
            points.append(t0 + (t1 - t0) * g0 / (g0 - g1))
    return points


def temperature_iterations(
    distance0: float, target: float, smoothness: float, secant: float, step: float
) -> int:
    """Gradient steps on the profile that guarantee ``ℓ(τ_k) − ℓ(τ*) ≤ target`` from
    ``|τ0 − τ*| = distance0`` (rigorous given the constants; chapter *The convergence
    theorem*, lemma on the temperature landscape).

    If ℓ' has the sign of τ − τ* on the segment between τ0 and τ* (no other stationary
    point there), ``|ℓ''| ≤ S`` (``smoothness``) and ``ℓ'(τ)/(τ − τ*) ≥ m`` (``secant``) on it,
    then for ``0 < step ≤ 1/S`` each step contracts ``τ − τ*`` by a factor in
    ``[0, 1 − step·m]`` without crossing τ*, and ``ℓ − ℓ* ≤ (S/2)(τ − τ*)²``, so

        k = ⌈ log(S · distance0² / (2 target)) / (−2 log(1 − step · m)) ⌉.
    """
    if not (distance0 >= 0 and target > 0):
        raise ValueError("distance0 must be >= 0 and target > 0")
    if not 0 < secant <= smoothness:
        raise ValueError(f"need 0 < secant <= smoothness, got {secant}, {smoothness}")
    if not 0 < step <= 1 / smoothness:
        raise ValueError(f"step must satisfy 0 < step <= 1/smoothness, got {step}")
    start = smoothness * distance0**2 / 2
    if start <= target:
        return 0
    if step * secant >= 1:
        return 1
    return math.ceil(math.log(start / target) / (-2 * math.log1p(-step * secant)))
