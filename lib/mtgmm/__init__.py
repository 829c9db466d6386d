"""mtgmm: transformers, DDPM and multi-token Gaussian mixtures.

The code behind the book *Transformers learn the optimal DDPM denoiser*. Layers, each
importing only the ones before it: ``schedules`` → ``mixture`` → ``oracle`` → … →
``plotting``. The experiments live in the chapters; the package holds their building blocks.
"""

from . import bounds, descent, incontext, interval, metrics, symmetry, theory
from .attention import (
    AttentionBank,
    AttentionDenoiser,
    SymmetricBasis,
    attend,
    attend_explicit,
    attend_fused,
    attention_weights,
    mean_denoising_weights,
)
from .best import best_in_class
from .mixture import MultiTokenGMM, add_noise
from .objective import ddpm_loss, excess_risk, noisy_batch
from .oracle import (
    RiskEstimates,
    bayes_risk,
    bayes_risk_estimates,
    oracle_eps,
    oracle_x0,
    posterior_weights,
)
from .runtime import by_preset, describe, pick_device, preset, set_preset
from .sampling import ddpm_sample, oracle_eps_fn
from .schedules import NoiseSchedule
from .training import train, train_bank

__version__ = "0.1.0"

__all__ = [
    "bounds",
    "descent",
    "interval",
    "incontext",
    "AttentionBank",
    "AttentionDenoiser",
    "SymmetricBasis",
    "attend",
    "attend_explicit",
    "attend_fused",
    "attention_weights",
    "ddpm_loss",
    "ddpm_sample",
    "excess_risk",
    "mean_denoising_weights",
    "metrics",
    "noisy_batch",
    "MultiTokenGMM",
    "NoiseSchedule",
    "RiskEstimates",
    "add_noise",
    "bayes_risk",
    "bayes_risk_estimates",
    "best_in_class",
    "by_preset",
    "describe",
    "oracle_eps",
    "oracle_eps_fn",
    "oracle_x0",
    "pick_device",
    "posterior_weights",
    "preset",
    "set_preset",
    "symmetry",
    "theory",
    "train",
    "train_bank",
]
