"""Where and how big: the compute device and the quick/full experiment presets.

Every chapter prints :func:`describe` so the reader sees the device and preset it ran on.
The preset is one switch, the environment variable ``MTGMM_PRESET`` (``quick``, the
default, sized for a 2-core CPU; or ``full``, sized for a GPU), or :func:`set_preset`.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

PRESETS = ("quick", "full")
_override: str | None = None
T = TypeVar("T")


def pick_device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU.

    ``MTGMM_DEVICE`` (e.g. ``cpu``) overrides the choice.
    """
    forced = os.environ.get("MTGMM_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def preset() -> str:
    """The active preset: :func:`set_preset`'s value, else ``$MTGMM_PRESET``, else ``quick``."""
    name = _override or os.environ.get("MTGMM_PRESET", "quick")
    if name not in PRESETS:
        raise ValueError(f"MTGMM_PRESET must be one of {PRESETS}, got {name!r}")
    return name


def set_preset(name: str | None) -> None:
    """Choose the preset for this process (``None`` returns to the environment's choice)."""
    global _override
    if name is not None and name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    _override = name


def by_preset(quick: T, full: T) -> T:
    """Return ``quick`` or ``full`` according to the active preset."""
    return full if preset() == "full" else quick


def describe() -> str:
    """One line naming the device, the preset and the torch version."""
    return (
        f"device: {pick_device().type} | preset: {preset()} | torch {torch.__version__}"
    )
