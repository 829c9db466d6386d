"""Graded questions of the attention chapter (book/attention.md), for
tools/build_assignments.py. See assignments/ddpm.py for the form of the tests."""

from __future__ import annotations


def shape_and_zero_query(my_attention_limit):
    """shape (n, d); the query q = 0 gives a_t times the weighted mean of the means"""
    import torch

    means = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0]], dtype=torch.float64)
    weights = torch.tensor([0.25, 0.75], dtype=torch.float64)
    q = torch.zeros(4, 3, dtype=torch.float64)
    out = my_attention_limit(q, means, weights, 0.5, 0.64)
    assert isinstance(out, torch.Tensor), "return a torch tensor"
    assert out.shape == q.shape, f"shape {tuple(out.shape)}, expected {tuple(q.shape)}"
    torch.testing.assert_close(out, (0.8 * weights @ means).expand(4, 3))


def relabelling_and_one_cluster(my_attention_limit):
    """the same under a relabelling of the clusters; K = 1 gives s^2 q + a mu"""
    import torch

    gen = torch.Generator().manual_seed(31)
    means = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    weights = torch.softmax(torch.randn(3, generator=gen, dtype=torch.float64), 0)
    q = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    out = my_attention_limit(q, means, weights, 0.3, 0.5)
    perm = torch.tensor([1, 2, 0])
    torch.testing.assert_close(
        my_attention_limit(q, means[perm], weights[perm], 0.3, 0.5), out
    )
    one = torch.ones(1, dtype=torch.float64)
    s2 = 0.5 * 0.3**2 + 0.5
    torch.testing.assert_close(
        my_attention_limit(q, means[:1], one, 0.3, 0.5), s2 * q + 0.5**0.5 * means[0]
    )


def selective_limit(my_attention_limit):
    """a long query along one mean selects that mean: s^2 q + a mu_k"""
    import torch

    means = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0]], dtype=torch.float64)
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    q = torch.tensor([[40.0, 0.0], [0.0, 40.0]], dtype=torch.float64)
    out = my_attention_limit(q, means, weights, 0.5, 0.81)
    s2 = 0.81 * 0.25 + 0.19
    torch.testing.assert_close(out, s2 * q + 0.9 * means[:2])


def values(my_attention_limit):
    """stored values at fixed inputs"""
    import torch

    gen = torch.Generator().manual_seed(33)
    means = 2 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    q = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    return [my_attention_limit(q, means, weights, 0.5, ab) for ab in (0.9, 0.4)]


QUESTIONS = {
    "ex-attention-code": dict(
        function="my_attention_limit",
        tests=[
            ("visible", 1, shape_and_zero_query),
            ("hidden", 1, relabelling_and_one_cluster),
            ("hidden", 1, selective_limit),
            ("stored", 2, values),
        ],
        # the chapter's finite-L experiment measures the distance to this limit: in the
        # student notebook it uses the student's function
        package=["attention_limit"],
        route=(
            "lambda gmm, alpha_bar, q: my_attention_limit("
            "q, gmm.means, gmm.weights, gmm.sigma0, alpha_bar)"
        ),
        forbid=["mtgmm", "attention_limit", "theory"],
        wrong=("s2 * q + a * omega @ means", "s2 * q - a * omega @ means"),
    ),
}
