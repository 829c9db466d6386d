"""One figure style for the whole book (the Okabe–Ito palette), and the figures the
chapters share; each takes the data a chapter computed and an optional matplotlib ``Axes``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from .mixture import MultiTokenGMM

OKABE_ITO = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
    "#000000",  # black
)

# Sized for the book's column (about 670 px at 1280 px): a 6.4-inch figure saved at 150 dpi
# is shown at about 0.7 of its size, so 10-point text renders at about 14 px. No text is set
# below 9 points (tests/site checks the rendered size).
BOOK_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "legend.frameon": False,
    "mathtext.fontset": "dejavusans",
    "image.cmap": "viridis",
}


def use_book_style() -> None:
    """Apply the book's matplotlib style to every later figure."""
    mpl.rcParams.update(BOOK_STYLE)


def cluster_colors(n_clusters: int) -> list[str]:
    """One colour per cluster (cycling through the palette)."""
    return [OKABE_ITO[k % len(OKABE_ITO)] for k in range(n_clusters)]


def mean_plane(gmm: MultiTokenGMM) -> Tensor:
    """A (2, d) orthonormal basis of the plane of ``Σ_k cos(2πk/K) μ_k`` and ``Σ_k sin(2πk/K) μ_k``
    (a regular K-gon for K ≥ 3 symmetric means), else the top principal directions.
    """
    means = gmm.means.to(torch.float64)
    k = gmm.n_clusters
    rows = torch.eye(gmm.dim, dtype=torch.float64) * 1e-9  # two directions exist
    if k >= 3:
        angle = 2 * torch.pi * torch.arange(k, dtype=torch.float64) / k
        rows = torch.cat([torch.stack([angle.cos(), angle.sin()]) @ means, rows])
        q, r = torch.linalg.qr(rows[:2].T)
        if bool((r.diagonal().abs() > 1e-6 * means.norm()).all()):
            return q.T * torch.sign(r.diagonal())[:, None]
    _, _, vh = torch.linalg.svd(torch.cat([means, rows]), full_matrices=False)
    return vh[:2]


def plot_tokens(
    x: Tensor,
    labels: Tensor,
    gmm: MultiTokenGMM,
    ax: plt.Axes | None = None,
    scale: float = 1.0,
    title: str | None = None,
    marker_size: float = 6.0,
) -> plt.Axes:
    """Scatter tokens ``x`` (…, d) projected on :func:`mean_plane`, coloured by cluster, with
    the (scaled) means as crosses."""
    ax = ax or plt.gca()
    plane = mean_plane(gmm)
    xy = (x.reshape(-1, gmm.dim).to(torch.float64) @ plane.T).numpy()
    colors = np.array(cluster_colors(gmm.n_clusters))[labels.reshape(-1).numpy()]
    ax.scatter(xy[:, 0], xy[:, 1], s=marker_size, c=colors, alpha=0.6, linewidths=0)
    means = (scale * gmm.means.to(torch.float64) @ plane.T).numpy()
    ax.scatter(means[:, 0], means[:, 1], marker="x", s=60, c="black", linewidths=1.5)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def plot_with_band(
    ax: plt.Axes,
    x: Sequence[float] | Tensor,
    y: Sequence[float] | Tensor,
    err: Sequence[float] | Tensor,
    label: str | None = None,
    n_sigma: float = 2.0,
    **kwargs,
) -> None:
    """A line with a shaded ± ``n_sigma`` standard-error band."""
    x, y, err = (
        np.asarray(torch.as_tensor(v, dtype=torch.float64)) for v in (x, y, err)
    )
    (line,) = ax.plot(x, y, label=label, **kwargs)
    ax.fill_between(
        x, y - n_sigma * err, y + n_sigma * err, color=line.get_color(), alpha=0.25
    )
