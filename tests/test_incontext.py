import pytest
import torch

from mtgmm import AttentionDenoiser, MultiTokenGMM, add_noise, oracle_eps, train
from mtgmm.incontext import (
    RotatedGMM,
    frame_eps,
    frame_posterior_eps,
    haar_orthogonal,
    known_means_eps,
)

from .conftest import rng


@pytest.fixture
def rotated() -> RotatedGMM:
    return RotatedGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0)


def test_haar_moments():
    q = haar_orthogonal(20000, 4, rng(0), torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(
        q @ q.transpose(-1, -2), eye.expand_as(q), atol=1e-10, rtol=0
    )
    # E Q = 0, E Q_ij^2 = 1/d, E Q_11^4 = 3/(d(d+2)); both determinant signs
    assert q.mean(0).abs().max() < 0.03
    assert (q**2).mean(0).sub(0.25).abs().max() < 0.01
    assert (q[:, 0, 0] ** 4).mean().item() == pytest.approx(3 / 24, abs=0.006)
    assert torch.linalg.det(q).gt(0).double().mean().item() == pytest.approx(
        0.5, abs=0.02
    )


def test_sample_frames_shapes_and_law(rotated):
    x0, labels, frames = rotated.sample_frames(500, 6, rng(1))
    assert (
        x0.shape == (500, 6, 8)
        and labels.shape == (500, 6)
        and frames.shape == (500, 4, 8)
    )
    gram = frames @ frames.transpose(-1, -2)
    torch.testing.assert_close(
        gram, 16 * torch.eye(4).expand_as(gram), atol=1e-3, rtol=0
    )
    centre = torch.gather(frames, 1, labels[..., None].expand(500, 6, 8))
    assert (x0 - centre).std().item() == pytest.approx(0.5, rel=0.03)
    # frames are isotropic: E F_k = 0
    assert frames.mean(0).abs().max() < 0.5
    x, lab = rotated.sample(3, 5, rng(2))
    assert x.shape == (3, 5, 8) and lab.shape == (3, 5)


def test_sign_group_flips_means(rotated):
    signs = RotatedGMM(rotated.means, sigma0=0.5, group="sign")
    frames = signs.draw_frames(400, rng(3))
    ratio = (frames * rotated.means).sum(-1) / 16
    assert set(ratio.round().unique().tolist()) == {-1.0, 1.0}


def test_known_means_oracle_equals_fixed_means_oracle(rotated):
    x0, _, frames = rotated.sample_frames(5, 7, rng(4))
    x_t, _ = add_noise(x0, 0.6, rng(5))
    ours = known_means_eps(rotated, x_t, frames, 0.6)
    for i in range(5):
        fixed = MultiTokenGMM(frames[i], sigma0=0.5)
        torch.testing.assert_close(
            ours[i], oracle_eps(fixed, x_t[i], 0.6), atol=1e-5, rtol=1e-5
        )


def test_sign_group_exact_posterior_by_enumeration(rotated):
    signs = RotatedGMM(rotated.means, sigma0=0.5, group="sign")
    x0, _, frames = signs.sample_frames(3, 4, rng(9))
    x_t, _ = add_noise(x0, 0.3, rng(10))
    patterns = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0])] * 4)  # (16, 4)
    candidates = patterns[..., None] * rotated.means
    eps, w = frame_posterior_eps(signs, x_t, candidates, 0.3)
    assert w.shape == (3, 16)
    # brute force: the token-level oracle of each frame, weighted by the sequence likelihood
    for i in range(3):
        loglik = torch.stack(
            [
                MultiTokenGMM(f, sigma0=0.5).log_prob(x_t[i], 0.3).sum()
                for f in candidates
            ]
        )
        weights = torch.softmax(loglik, 0)
        mix = sum(
            wj * oracle_eps(MultiTokenGMM(f, sigma0=0.5), x_t[i], 0.3)
            for wj, f in zip(weights, candidates, strict=True)
        )
        torch.testing.assert_close(eps[i], mix, atol=1e-4, rtol=1e-4)


def test_train_accepts_the_rotated_mixture(rotated):
    model = AttentionDenoiser(8)
    history = train(
        model, rotated, 0.5, 8, steps=5, generator=rng(13), n_eval_sequences=8
    )
    assert history.step[-1] == 5


def test_bad_input_names_the_argument(rotated):
    with pytest.raises(ValueError, match="group"):
        RotatedGMM(rotated.means, group="rotation")
    with pytest.raises(ValueError, match="frames"):
        known_means_eps(rotated, torch.zeros(2, 3, 8), torch.zeros(2, 3, 8), 0.5)
    with pytest.raises(ValueError, match="alpha_bar"):
        known_means_eps(
            rotated, torch.zeros(2, 3, 8), torch.zeros(2, 4, 8), torch.ones(2)
        )
    with pytest.raises(ValueError, match="n"):
        haar_orthogonal(0, 3)


def test_frame_eps_is_the_oracle_of_each_frame(rotated):
    """frame_eps per frame equals oracle_eps of the mixture with those means, and its
    log-likelihood is the mixture's log-density summed over tokens, up to a constant of
    the sequence (the same for every frame)."""
    x0, _, frames = rotated.sample_frames(3, 4, rng(20))
    x_t, _ = add_noise(x0, 0.4, rng(21))
    eps, loglik = frame_eps(rotated, frames.expand(3, 3, 4, 8), x_t, 0.4)
    for i in range(3):
        shifts = []
        for j in range(3):
            fixed = MultiTokenGMM(frames[j], sigma0=0.5)
            torch.testing.assert_close(eps[i, j], oracle_eps(fixed, x_t[i], 0.4))
            shifts.append(fixed.log_prob(x_t[i], 0.4).sum() - loglik[i, j])
        torch.testing.assert_close(shifts[1], shifts[0], atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(shifts[2], shifts[0], atol=1e-3, rtol=1e-5)
