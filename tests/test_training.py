"""Training and the best-in-class model, against independent computations: the oracle
(excess risk), the Bayes risk (risk decomposition, zero-model excess), autograd on the full
matrices (stationarity) and a separate evaluator."""

import importlib.util
import io
import os
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from mtgmm import (
    AttentionBank,
    AttentionDenoiser,
    MultiTokenGMM,
    NoiseSchedule,
    SymmetricBasis,
    bayes_risk,
    excess_risk,
    noisy_batch,
    oracle_eps,
)
from mtgmm.best import best_in_class
from mtgmm.fast import train_bank_loop
from mtgmm.training import bank_excess_risk, train, train_bank

from .conftest import rng

ACCEPTANCE_BOUND = 0.122  # within 30% of the best attainable 0.094 (ᾱ = 0.9, L = 128)


@pytest.fixture(scope="module")
def best_reference():
    """The best symmetric model at ᾱ = 0.9, L = 128 in the reference setting (shared: ~4 s)."""
    reference = MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0)
    return best_in_class(reference, 0.9, 128, generator=rng(2))


def _cluster_scores(
    model: AttentionDenoiser, gmm: MultiTokenGMM, alpha_bar: float
) -> torch.Tensor:
    """Attention scores between noiseless cluster centres, ``a μ_k W_KQ (a μ_l)ᵀ`` (K × K)."""
    centres = alpha_bar**0.5 * gmm.means
    return centres @ model.W_KQ.detach() @ centres.T


def test_short_training_decreases_excess_and_stays_symmetric(gmm):
    model = AttentionDenoiser(8)
    history = train(
        model, gmm, 0.9, 128, steps=150, generator=rng(0), n_eval_sequences=256
    )
    assert history.step[0] == 0 and history.step[-1] == 150
    assert history.coordinates.shape == (len(history.step), 3, 3)
    assert (
        history.excess[0] > 0.6
    )  # the least-squares start: attention still nearly uniform
    assert history.final_excess < 0.16 < history.excess[0] / 4
    # near the invariant subspace: non-symmetric parts small against the matrices themselves
    norms = torch.stack([w.norm() for w in model.weights().values()]).numpy()
    assert (history.defect[-1] / norms).max() < 0.1
    # mean denoising: each cluster centre scores highest against its own cluster
    scores = _cluster_scores(model, gmm, 0.9)
    off_diagonal = scores[~torch.eye(4, dtype=torch.bool)]
    assert scores.diagonal().min() > off_diagonal.max() + 2.0
    # an independent evaluation on other sequences agrees with the logged excess
    fresh, fresh_se = excess_risk(model, gmm, 0.9, 128, 1024, rng(99))
    assert abs(fresh - history.final_excess) < 4 * np.hypot(
        fresh_se, history.final_stderr
    )
    # risk decomposition: training loss ≈ Bayes risk + excess
    risk, _ = bayes_risk(gmm, 0.9, 100_000, rng(5))
    assert abs(history.loss[-1] - (risk + history.final_excess)) < 0.08


def test_default_training_reaches_and_does_not_beat_best_in_class(gmm, best_reference):
    history = train(AttentionDenoiser(8), gmm, 0.9, 128, generator=rng(1))
    assert history.final_excess <= ACCEPTANCE_BOUND
    best = best_reference
    # the reference value of the science brief (found independently by L-BFGS while planning)
    assert abs(best.excess - 0.094) < 3 * best.stderr + 0.003
    assert abs(best.fit_excess - best.excess) < 5 * best.stderr
    assert best.bayes_risk == pytest.approx(5.539, abs=0.01)
    sigma = np.hypot(best.stderr, history.final_stderr)
    assert history.final_excess >= best.excess - 3 * sigma


def test_best_in_class_is_a_stationary_point_of_the_full_excess(gmm, best_reference):
    """Autograd on the full d × d matrices, on fresh sequences: the symmetric part of the
    gradient of E‖f − ε*‖² is small at the fitted model and not at a perturbed one."""
    best = best_reference
    x_t, _ = noisy_batch(gmm, 0.9, 512, 128, rng(4))
    target = oracle_eps(gmm, x_t, 0.9)
    basis = SymmetricBasis(gmm)

    def symmetric_gradient(model: AttentionDenoiser) -> torch.Tensor:
        loss = ((model(x_t) - target) ** 2).sum(-1).mean()
        grads = torch.autograd.grad(loss, [model.W_KQ, model.W_V, model.W_S])
        return basis.coordinates(torch.stack(grads).double())

    weights = best.model.weights()
    perturbed = AttentionDenoiser.from_weights(
        1.3 * weights["W_KQ"], weights["W_V"], 0.95 * weights["W_S"]
    )
    at_best, at_perturbed = (
        symmetric_gradient(best.model),
        symmetric_gradient(perturbed),
    )
    assert at_best.norm() < 0.05 * at_perturbed.norm()
    # the model's weights are the composed coefficients
    composed = basis.compose(best.coefficients)
    assert torch.allclose(composed[0].float(), weights["W_KQ"], atol=1e-6)


def test_mean_direction_terms_matter_at_low_snr(gmm):
    with_j = best_in_class(gmm, 0.1, 128, generator=rng(6))
    without_j = best_in_class(gmm, 0.1, 128, generator=rng(7), include_j=False)
    assert without_j.coefficients[:, 2].abs().max() == 0
    assert without_j.excess > with_j.excess + 5 * np.hypot(
        with_j.stderr, without_j.stderr
    )
    assert with_j.excess == pytest.approx(0.095, abs=3 * with_j.stderr + 0.003)
    assert without_j.excess == pytest.approx(0.167, abs=3 * without_j.stderr + 0.005)


def test_zero_start_lands_in_the_anti_similarity_minimum(gmm):
    """The documented failure mode: plain SGD from W = 0 (no warm start) stays symmetric and
    escapes the saddle to negative temperature."""
    model = AttentionDenoiser(8)
    history = train(
        model,
        gmm,
        0.9,
        128,
        generator=rng(8),
        init="zero",
        warm_start=False,
        n_eval_sequences=256,
    )
    assert history.final_excess > 0.4
    assert (
        history.coordinates[-1, 0, 0] < -0.2
    )  # W_KQ's P coefficient: negative temperature
    assert history.defect[-1].max() < 0.05
    scores = _cluster_scores(model, gmm, 0.9)
    assert scores.diagonal().max() < scores[~torch.eye(4, dtype=torch.bool)].min()


def test_bank_excess_risk_of_the_zero_bank_is_the_oracle_energy(gmm):
    schedule = NoiseSchedule.from_alpha_bar([0.9, 0.3])
    excess, stderr = bank_excess_risk(
        AttentionBank(2, 8), gmm, schedule, 16, 2048, rng(20)
    )
    for t, alpha_bar in enumerate(schedule.alpha_bar.tolist()):
        risk, risk_se = bayes_risk(gmm, alpha_bar, 200_000, rng(21))
        assert abs(excess[t].item() - (gmm.dim - risk)) < 4 * np.hypot(
            stderr[t].item(), risk_se
        )


@pytest.mark.parametrize(
    "call",
    [
        lambda g: train(AttentionDenoiser(8), g, 0.9, 16, steps=0),
        lambda g: train(AttentionDenoiser(8), g, 0.9, 0, steps=5),
        lambda g: train(AttentionDenoiser(8), g, 0.9, 16, steps=5, batch_size=0),
        lambda g: train(AttentionDenoiser(8), g, 0.0, 16, steps=5),
        lambda g: train(AttentionDenoiser(8), g, 1.5, 16, steps=5),
        lambda g: train(AttentionDenoiser(6), g, 0.9, 16, steps=5),
        lambda g: train(AttentionDenoiser(8), g, 0.9, 16, steps=5, optimizer="lbfgs"),
        lambda g: train(AttentionDenoiser(8), g, 0.9, 16, steps=5, lr=-1.0),
        lambda g: train(AttentionDenoiser(8), g, 0.9, 16, steps=5, momentum=1.0),
        lambda g: train(AttentionDenoiser(8, mask_self=True), g, 0.9, 1, steps=5),
        lambda g: train_bank(AttentionBank(2, 6), g, NoiseSchedule.linear(2), 16, 5),
        lambda g: train_bank(AttentionBank(3, 8), g, NoiseSchedule.linear(2), 16, 5),
        lambda g: train_bank(AttentionBank(2, 8), g, NoiseSchedule.linear(2), 16, 0),
        lambda g: train_bank_loop(
            AttentionBank(3, 8), g, NoiseSchedule.linear(2), 16, 5
        ),
        lambda g: bank_excess_risk(AttentionBank(2, 8), g, NoiseSchedule.linear(2), 0),
        lambda g: best_in_class(g, 0.9, 0),
        lambda g: best_in_class(g, 1.2, 16),
        lambda g: best_in_class(g, 0.9, 16, n_sequences=0),
    ],
)
def test_invalid_arguments_raise(gmm, call):
    with pytest.raises(ValueError):
        call(gmm)


def test_divergence_is_reported(gmm):
    with pytest.raises(RuntimeError, match="diverged"):
        train(AttentionDenoiser(8), gmm, 0.9, 16, steps=50, lr=50.0, n_eval_sequences=8)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("MTGMM_SLOW"), reason="slow: set MTGMM_SLOW=1 to run"
)
@pytest.mark.parametrize("seed", range(5))
def test_acceptance_default_training_within_30_percent_of_best(gmm, seed):
    """The acceptance run: defaults, zero-initialised model, ᾱ = 0.9, L = 128, under 2 min."""
    history = train(AttentionDenoiser(8), gmm, 0.9, 128, generator=rng(100 + seed))
    assert history.final_excess <= ACCEPTANCE_BOUND
    assert history.wall_time < 120


def test_benchmark_smoke_run(monkeypatch):
    """``benchmarks/bench.py --quick`` runs and prints every table (timings not checked)."""
    path = Path(__file__).parents[1] / "benchmarks" / "bench.py"
    spec = importlib.util.spec_from_file_location("bench", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = io.StringIO()
    with redirect_stdout(out):
        assert bench.main(["--quick", "--device", "cpu"]) == 0
    text = out.getvalue()
    for heading in (
        "Bank training",
        "**loop / batched**",
        "fused vs explicit",
        "`bayes_risk`",
    ):
        assert heading in text
