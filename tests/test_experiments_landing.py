"""The landing-page experiment at tiny sizes: shapes, a valid attention map, honest ordering."""

import pytest
import torch

from mtgmm import MultiTokenGMM
from mtgmm.experiments.landing import main_result


@pytest.fixture(scope="module")
def result():
    gmm = MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0)
    return main_result(gmm, alpha_bar=0.9, token_counts=(16, 32), map_tokens=16)


def test_shapes_and_attention_rows(result):
    assert result.n_tokens.tolist() == [16, 32]
    assert (
        result.trained.shape
        == result.uniform.shape
        == result.construction.shape
        == (2,)
    )
    assert result.attention.shape == (16, 16)
    torch.testing.assert_close(result.attention.sum(-1), torch.ones(16))
    assert torch.all(result.labels[1:] >= result.labels[:-1])  # ordered by cluster


def test_training_beats_both_references(result):
    # at ᾱ = 0.9 the trained layer is far below uniform attention and the oracle construction
    assert (result.trained + 3 * result.trained_stderr < result.uniform).all()
    assert (result.uniform < result.construction).all()
    assert 5.0 < result.bayes_risk < 6.0


def test_map_tokens_must_be_trained():
    gmm = MultiTokenGMM.orthogonal(2, 4, radius=2.0, sigma0=0.5, seed=0)
    with pytest.raises(ValueError, match="map_tokens"):
        main_result(gmm, token_counts=(8,), map_tokens=16)
