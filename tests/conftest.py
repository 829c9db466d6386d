"""Shared fixtures: small mixtures used across the package tests."""

import pytest
import torch

from mtgmm import MultiTokenGMM


@pytest.fixture
def gmm() -> MultiTokenGMM:
    """The book's reference setting: d = 8, K = 4 orthogonal means of norm 4, σ0 = 0.5."""
    return MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0)


@pytest.fixture
def skewed_gmm() -> MultiTokenGMM:
    """General means (not orthogonal, unequal norms) and unequal weights, in d = 3."""
    means = torch.tensor([[1.0, 0.5, 0.0], [-1.5, 0.2, 0.3], [0.2, -1.0, 2.0]])
    return MultiTokenGMM(means, weights=torch.tensor([0.5, 0.3, 0.2]), sigma0=0.7)


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Small tensors run faster on one intra-op thread than on two competing ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
