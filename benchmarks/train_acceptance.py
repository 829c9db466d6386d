"""Acceptance run for :func:`mtgmm.training.train`: five seeds of the default recipe.

The reference setting (d = 8, K = 4, r = 4, σ0 = 0.5), ᾱ = 0.9, L = 128, a zero-initialised
:class:`~mtgmm.attention.AttentionDenoiser`, default options. Each run must end within 30% of
the best attainable excess (≤ 0.122 per token against 0.094) in under two minutes. Prints the
final excess ± standard error and the wall time of every seed, then the best-in-class model
(:func:`mtgmm.best.best_in_class`) for comparison.

Usage: ``PYTHONPATH=lib python benchmarks/train_acceptance.py [--seeds 5]``
"""

from __future__ import annotations

import argparse

import torch

from mtgmm import AttentionDenoiser, MultiTokenGMM, describe
from mtgmm.best import best_in_class
from mtgmm.training import DEFAULT_STEPS, train

BOUND = 0.122
TIME_LIMIT = 120.0
ALPHA_BAR, N_TOKENS = 0.9, 128


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(describe())
    gmm = MultiTokenGMM.orthogonal(4, 8, radius=4.0, sigma0=0.5, seed=0)
    print(f"train defaults: {DEFAULT_STEPS} steps; ᾱ = {ALPHA_BAR}, L = {N_TOKENS}")
    failures = 0
    for seed in range(args.seeds):
        history = train(
            AttentionDenoiser(gmm.dim),
            gmm,
            ALPHA_BAR,
            N_TOKENS,
            generator=torch.Generator().manual_seed(seed),
        )
        ok = history.final_excess <= BOUND and history.wall_time < TIME_LIMIT
        failures += not ok
        print(
            f"seed {seed}: excess {history.final_excess:.4f} ± {history.final_stderr:.4f}  "
            f"invariance defect {history.defect[-1].max():.3f}  "
            f"wall {history.wall_time:.1f} s  {'ok' if ok else 'FAIL'}"
        )
    best = best_in_class(
        gmm, ALPHA_BAR, N_TOKENS, generator=torch.Generator().manual_seed(0)
    )
    print(
        f"best in class: excess {best.excess:.4f} ± {best.stderr:.4f} (bound {BOUND})"
    )
    return int(failures > 0)


if __name__ == "__main__":
    raise SystemExit(main())
