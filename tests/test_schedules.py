import math

import pytest
import torch

from mtgmm import NoiseSchedule


@pytest.mark.parametrize("factory", [NoiseSchedule.linear, NoiseSchedule.cosine])
def test_schedule_is_a_valid_decreasing_alpha_bar(factory):
    s = factory(200)
    ab = s.alpha_bar
    assert ab.shape == (200,) and len(s) == 200
    assert bool(((ab > 0) & (ab < 1)).all())
    assert bool((ab[1:] < ab[:-1]).all())
    torch.testing.assert_close(s.a**2 + s.b**2, torch.ones_like(ab))
    torch.testing.assert_close(s.snr, ab / (1 - ab))
    # ᾱ_t is the running product of α_t = 1 − β_t
    torch.testing.assert_close(torch.cumprod(s.alphas, 0), ab)
    torch.testing.assert_close(s.betas, 1 - s.alphas)


def test_linear_schedule_matches_ho_et_al():
    s = NoiseSchedule.linear(1000)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    expected = math.prod(1 - b for b in betas)
    assert s.alpha_bar[-1].item() == pytest.approx(expected, rel=1e-10)
    assert s.alpha_bar[0].item() == pytest.approx(1 - 1e-4)


def test_cosine_schedule_matches_its_closed_form():
    s = NoiseSchedule.cosine(1000, offset=0.008)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 10, 500, 900]:  # β is clipped only near the very end
        assert s.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)


def test_from_alpha_bar_and_timestep_lookup():
    s = NoiseSchedule.from_alpha_bar([0.99, 0.5, 0.1])
    assert s.alpha_bar_at(1).item() == 0.5
    torch.testing.assert_close(
        s.alpha_bar_at(torch.tensor([2, 0])), torch.tensor([0.1, 0.99]).double()
    )


@pytest.mark.parametrize(
    "values, rule",
    [
        ([], "at least one"),
        ([0.5, 0.0], r"\(0, 1\]"),
        ([1.2], r"\(0, 1\]"),
        ([0.1, 0.5], "non-increasing"),
    ],
)
def test_bad_alpha_bar_values_are_rejected(values, rule):
    with pytest.raises(ValueError, match=rule):
        NoiseSchedule.from_alpha_bar(values)


@pytest.mark.parametrize("t", [-1, 3, torch.tensor([0, 5]), 1.5, torch.tensor([0.5])])
def test_out_of_range_timesteps_are_rejected(t):
    s = NoiseSchedule.from_alpha_bar([0.99, 0.5, 0.1])
    with pytest.raises(ValueError, match="timesteps"):
        s.alpha_bar_at(t)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_non_positive_sizes_are_rejected(n):
    with pytest.raises(ValueError, match="n_steps"):
        NoiseSchedule.linear(n)
    with pytest.raises(ValueError, match="n_steps"):
        NoiseSchedule.cosine(n)
