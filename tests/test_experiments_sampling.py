"""The experiments of chapter *From denoiser to sampler*, at tiny sizes."""

import pytest
import torch

from mtgmm import (
    AttentionBank,
    MultiTokenGMM,
    NoiseSchedule,
    SymmetricBasis,
    mean_denoising_weights,
    set_preset,
)
from mtgmm.experiments import sampling as exp
from mtgmm.sampling import reverse_coefficients

from .conftest import rng


@pytest.fixture(scope="module")
def setting():
    """The reference mixture, a 4-step schedule and one briefly trained bank at L = 16."""
    gmm = MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0)
    schedule = NoiseSchedule.cosine(4)
    (trained,) = exp.train_banks(
        gmm, schedule, token_counts=(16,), device="cpu", steps=20, batch_size=8
    )
    return gmm, schedule, trained


def _symmetric_bank(gmm, schedule) -> AttentionBank:
    """A bank whose every layer is the mean-denoising construction (symmetric matrices)."""
    bank = AttentionBank(schedule.n_steps, gmm.dim).double()
    with torch.no_grad():
        for t, alpha_bar in enumerate(schedule.alpha_bar.tolist()):
            w_kq, w_v, w_s = mean_denoising_weights(gmm, alpha_bar)
            bank.W_KQ[t], bank.W_V[t], bank.W_S[t] = w_kq, w_v, w_s
    return bank


def test_kl_weights_match_the_closed_forms():
    schedule = NoiseSchedule.cosine(30)
    beta = exp.kl_weights(schedule, "beta")
    alphas, betas, b2 = schedule.alphas, schedule.betas, 1 - schedule.alpha_bar
    assert beta[0] == 0
    torch.testing.assert_close(beta[1:], (betas / (2 * alphas * b2))[1:])
    posterior = exp.kl_weights(schedule, "posterior")[1:]
    snr = schedule.snr
    torch.testing.assert_close(posterior, 0.5 * (snr[:-1] / snr[1:] - 1))


def test_discretisation_sweep_orders_the_two_variances(setting):
    gmm, _, _ = setting
    sweep = exp.discretisation_sweep(gmm, n_steps=(5, 50), n_sequences=256)
    assert sweep.spread.shape == (2, 2) and sweep.n_tokens == 256 * 8
    assert torch.isfinite(sweep.spread_stderr).all()
    # at T = 5 the β_t sampler over-disperses and the posterior one under-disperses
    assert sweep.spread[0, 0] > sweep.reference_spread > sweep.spread[1, 0]


def test_train_banks_and_risk_profile(setting):
    gmm, schedule, trained = setting
    assert trained.n_tokens == 16 and trained.steps == 20 and trained.batch_size == 8
    assert trained.history.excess.shape == (schedule.n_steps,)
    profile = exp.risk_profile(gmm, schedule, [trained], n_samples=2000)
    assert profile.excess.shape == (1, schedule.n_steps)
    assert (profile.bayes > 0).all() and (profile.bayes <= gmm.dim + 1e-9).all()
    expected = (profile.weights * profile.excess[0]).sum()
    torch.testing.assert_close(profile.kl[0], expected)
    assert profile.final_shift[0] >= 0


def test_dispersion_is_one_for_independent_tokens_and_large_for_clumps(setting):
    gmm, _, _ = setting
    x, _ = gmm.sample(400, 16, generator=rng(0))
    independent = exp.dispersion(x, gmm)
    assert abs(independent.value - 1) < 4 * independent.stderr + 0.05
    labels = torch.randint(4, (400, 1), generator=rng(1)).expand(400, 16)
    clumped = gmm.means[labels] + 0.1 * torch.randn(400, 16, 8, generator=rng(2))
    assert exp.dispersion(clumped, gmm).value > 10


def test_sequence_shape_sees_placement_not_shape(setting):
    gmm, _, _ = setting
    x, _ = gmm.sample(32, 64, generator=rng(3))
    shape = exp.sequence_shape(x, gmm)
    assert abs(shape.centre_norm[0] - 4) < 0.2
    assert abs(shape.centre_distance[0] - 4 * 2**0.5) < 0.3
    assert abs(shape.spread[0] - 0.5) < 0.05
    assert shape.offset[0] < 0.5 and shape.centroid[0] < 1.0
    rotated = exp.sequence_shape(exp.rotate_sequences(x, gmm, seed=4), gmm)
    assert abs(rotated.centre_distance[0] - shape.centre_distance[0]) < 1e-4
    assert rotated.offset[0] > 1.0
    assert (
        abs(rotated.centroid[0] - shape.centroid[0]) < 1e-4
    )  # the rotations fix Σ μ_k


def test_symmetry_rotations_commute_with_the_symmetric_matrices(setting):
    gmm, _, _ = setting
    g = exp.symmetry_rotations(gmm, 5, rng(5))
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(g @ g.transpose(1, 2), eye.expand(5, 8, 8))
    for m in SymmetricBasis(gmm):
        torch.testing.assert_close(g @ m, m @ g)


def test_symmetric_bank_is_equivariant_and_has_no_defect(setting):
    gmm, schedule, _ = setting
    g64 = gmm.to(dtype=torch.float64)
    bank = _symmetric_bank(g64, schedule)
    assert exp.symmetry_defect(bank, g64).abs().max() < 1e-12
    g = exp.symmetry_rotations(g64, 1, rng(6))[0]
    x = torch.randn(3, 16, 8, generator=rng(7), dtype=torch.float64)
    t = torch.tensor([0, 2, 3])
    torch.testing.assert_close(bank(x @ g, t), bank(x, t) @ g)


def test_hybrid_predictor_switches_between_bank_and_oracle(setting):
    gmm, schedule, trained = setting
    x = torch.randn(2, 16, 8, generator=rng(8))
    t = torch.full((2,), 1)
    only_oracle = exp.HybridPredictor(
        trained.bank, gmm, schedule, torch.zeros(4, dtype=torch.bool)
    )
    only_bank = exp.HybridPredictor(
        trained.bank, gmm, schedule, torch.ones(4, dtype=torch.bool)
    )
    torch.testing.assert_close(only_bank(x, t), trained.bank(x, t))
    torch.testing.assert_close(only_oracle(x, t), only_oracle.oracle(x, t))
    with pytest.raises(ValueError):
        only_bank(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        exp.HybridPredictor(
            trained.bank, gmm, schedule, torch.ones(3, dtype=torch.bool)
        )


def test_compare_samplers_window_ablation_path_and_trajectories(setting):
    gmm, schedule, trained = setting
    results = exp.compare_samplers(
        gmm, schedule, [trained], n_total=256, n_projections=8
    )
    assert [r.name for r in results] == ["exact", "oracle", "bank L=16"]
    assert all(r.samples.shape == (16, 16, 8) for r in results)
    assert results[0].summary.sliced.floor > 0
    ablation = exp.window_ablation(gmm, schedule, trained, n_windows=2, n_total=256)
    assert len(ablation.names) == 4 and ablation.windows == ((0, 1), (2, 3))
    assert ablation.spread.shape == (4,) and len(ablation.shape) == 4
    path = exp.path_excess(gmm, schedule, trained, n_total=128)
    assert path.on_own_path.shape == path.on_oracle_path.shape == (4,)
    assert (path.on_own_path >= 0).all()
    traj = exp.reverse_trajectories(
        gmm,
        schedule,
        {"bank": trained.bank, "bank again": trained.bank},
        16,
        n_frames=3,
    )
    assert traj.states.shape[:2] == (2, 3) and traj.steps.tolist() == [4, 2, 0]
    torch.testing.assert_close(
        traj.states[0], traj.states[1]
    )  # same seed, same predictor


def test_sizes_follow_the_preset():
    try:
        set_preset("quick")
        assert exp.bank_recipe(8) == (300, 64) and exp.bank_recipe(128) == (100, 8)
        assert exp.chapter_schedule().n_steps == 50 and exp.sample_budget() == 8192
        set_preset("full")
        assert exp.bank_recipe(128) == (600, 64)
        assert exp.chapter_schedule().n_steps == 1000 and exp.sample_budget() == 65536
    finally:
        set_preset(None)


def test_reverse_coefficients_agree_with_the_weights():
    schedule = NoiseSchedule.linear(20)
    inv_sqrt_alpha, eps_coef, sigma = reverse_coefficients(schedule)
    weights = exp.kl_weights(schedule)
    torch.testing.assert_close(
        weights[1:], ((inv_sqrt_alpha * eps_coef) ** 2 / (2 * sigma**2))[1:]
    )
