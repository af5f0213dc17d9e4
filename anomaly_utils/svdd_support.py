"""Plumbing of lesson 01 (Deep SVDD): figures and the small table helpers it uses; the method is in the notebook.

- ``pca_view``: the test embeddings phi(x) - c on the first two principal axes of the normal ones;
- ``normal_rank``: scores as the fraction of normal reference images scored lower (one scale for every method);
- ``plot_scores_by_kind``: where each kind of image (e.g. ELPV's ``good``, ``p=1/3``, ``p=2/3``, ``defective``)
  scores, per method, on that common scale.
"""

from __future__ import annotations

import numpy as np
import torch


def pca_view(det, images, labels, ax, title, lim=None, normal_label="normal", anomalous_label="anomalous"):
    """Scatter ``phi(x) - c`` of ``images`` on the first two principal axes of the normal ones (``labels == 0``).

    ``det`` is a fitted ``DeepSVDD`` (its ``embed`` and ``c``); returns the largest absolute coordinate shown, so
    that other views can use the same axis limits (``lim``).
    """
    labels = torch.as_tensor(labels)
    z = (det.embed(images) - det.c.detach()).cpu()
    _, _, V = torch.pca_lowrank(z[labels == 0], q=2, center=True)
    xy = (z @ V).numpy()
    ax.scatter(*xy[(labels == 1).numpy()].T, s=4, alpha=0.4, color="C3", label=anomalous_label)
    ax.scatter(*xy[(labels == 0).numpy()].T, s=6, alpha=0.8, color="C0", label=normal_label)
    ax.plot(0, 0, "k+", ms=14, mew=2, label="c")
    if lim is not None:
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("PC 1 of phi(x) - c"), ax.set_ylabel("PC 2")
    return float(np.abs(xy).max())


def normal_rank(scores, normal_scores) -> np.ndarray:
    """For each score, the fraction of ``normal_scores`` strictly below it (ties count one half): 0.5 is a typical
    normal image, 1.0 is above every normal one. A common scale for detectors whose raw scores differ."""
    scores, ref = np.asarray(scores, dtype=float), np.sort(np.asarray(normal_scores, dtype=float))
    if ref.size == 0:
        raise ValueError("normal_rank needs at least one normal reference score.")
    below = np.searchsorted(ref, scores, side="left")
    ties = np.searchsorted(ref, scores, side="right") - below
    return (below + 0.5 * ties) / ref.size


def plot_scores_by_kind(ax, per_method: dict, kinds_order, title=""):
    """Grouped box plots: for each kind (x axis) one box per method of its images' ``normal_rank``.

    ``per_method``: ``{method: (ranks [N], kinds [N])}``; ``kinds_order``: the kinds to show, left to right.
    """
    n_methods = len(per_method)
    width = 0.8 / n_methods
    for m, (name, (ranks, kinds)) in enumerate(per_method.items()):
        kinds = np.asarray(kinds)
        data = [np.asarray(ranks)[kinds == k] for k in kinds_order]
        pos = np.arange(len(kinds_order)) + (m - (n_methods - 1) / 2) * width
        box = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for patch in box["boxes"]:
            patch.set(facecolor=f"C{m}", alpha=0.6)
        ax.plot([], [], "s", color=f"C{m}", alpha=0.6, label=name)  # legend handle
    ax.set_xticks(range(len(kinds_order)), kinds_order)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("expert label of the cell")
    ax.set_ylabel("fraction of normal test cells\nscored lower")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_title(title)
    return ax
