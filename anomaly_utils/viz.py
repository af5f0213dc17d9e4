"""Figures the lessons share: image grids with masks, heatmap overlays, ROC curves, score histograms.

Everything takes torch tensors or NumPy arrays; images are ``[N, C, H, W]`` or ``[N, H, W]`` in [0, 1].
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from . import metrics

plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72, "axes.titlesize": 9})


def _np(x):
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_hwc(image) -> np.ndarray:
    """``[C, H, W]`` or ``[H, W]`` -> something ``imshow`` takes."""
    image = _np(image)
    if image.ndim == 3:
        image = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    return np.clip(image, 0, 1)


def _show(ax, image, title=None):
    img = _as_hwc(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])
    if title is not None:
        ax.set_title(title)


def show_grid(images, masks=None, titles=None, ncols: int = 8, size: float = 1.6):
    """A grid of images; with ``masks``, each mask's outline is drawn in red on its image."""
    images, masks = _np(images), _np(masks)
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        _show(ax, images[k], None if titles is None else titles[k])
        if masks is not None and masks[k].any():
            ax.contour(masks[k], levels=[0.5], colors="red", linewidths=0.8)
    fig.tight_layout()
    return fig


MAP_CMAP = "inferno"  # black -> red -> yellow: the hottest pixels are the brightest, on any image


def overlay(ax, image, anomaly_map, vmin: float, vmax: float, cmap: str = MAP_CMAP):
    """Draw ``image`` in grey and ``anomaly_map`` over it; returns the mappable for a colour bar.

    The map's opacity grows with its value (transparent at ``vmin``, nearly opaque at ``vmax``), so a hot
    spot reads as hot even on a dark defect, and cold regions leave the image visible.
    """
    img = _as_hwc(image)
    grey = img if img.ndim == 2 else img.mean(2)
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    m = _np(anomaly_map).astype(float)
    t = np.clip((m - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    rgba = plt.get_cmap(cmap)(t)
    rgba[..., 3] = 0.15 + 0.8 * t
    ax.imshow(rgba)
    ax.set_xticks([]), ax.set_yticks([])
    return plt.cm.ScalarMappable(norm=plt.Normalize(vmin, vmax), cmap=cmap)


def show_map(ax, anomaly_map, vmin=None, vmax=None, cmap: str = MAP_CMAP, colorbar: bool = True, label: str = "score"):
    """One anomaly map on its own axes, with a colour bar (``label`` names its unit) unless ``colorbar=False``."""
    m = _np(anomaly_map)
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks([]), ax.set_yticks([])
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label(label, fontsize=7)
    return im


# galleries are wide (one 1.8-inch column per image) and a notebook shrinks them to its width: titles and labels
# at 9 pt stay readable when it does
TITLE_PT, LABEL_PT = 9, 9


def show_heatmaps(images, anomaly_maps, masks=None, titles=None, n: int | None = None, vmax=None, vmin=None,
                  label: str = "anomaly score"):
    """Rows of (image with mask outline, heatmap overlay) pairs; one shared colour scale with a colour bar.

    The scale runs from the smallest map value to the 99.9th percentile (or ``vmin`` / ``vmax``), the same for
    every column, so brightness can be compared across images (not across detectors: their scores differ).
    """
    images, maps, masks = _np(images), _np(anomaly_maps), _np(masks)
    n = len(images) if n is None else min(n, len(images))
    vmax = float(np.quantile(maps[:n], 0.999)) if vmax is None else vmax
    vmin = float(np.min(maps[:n])) if vmin is None else vmin
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n + 0.8, 4.0), squeeze=False)
    for k in range(n):
        _show(axes[0, k], images[k])
        if titles is not None:
            axes[0, k].set_title(str(titles[k]), fontsize=TITLE_PT)
        mappable = overlay(axes[1, k], images[k], maps[k], vmin, vmax)
        if masks is not None and masks[k].any():
            for ax in axes[:, k]:
                ax.contour(masks[k], levels=[0.5], colors="cyan", linewidths=0.8)
    axes[0, 0].set_ylabel("image + mask", fontsize=LABEL_PT)
    axes[1, 0].set_ylabel("anomaly map", fontsize=LABEL_PT)
    fig.tight_layout()
    fig.colorbar(mappable, ax=axes[1, :].tolist(), fraction=0.03, pad=0.01).set_label(label, fontsize=LABEL_PT)
    return fig


def show_maps(images, anomaly_maps, masks=None, titles=None, vmax=None, vmin=None, label: str = "anomaly score"):
    """Three rows per column: the image plain, with its mask outline (red), and under its heatmap (``overlay``).

    One colour scale for all heatmaps (from the lowest value to the 99.9 % quantile of the maps shown, or
    ``vmin`` / ``vmax``), with a colour bar. Lessons 07 and 08 draw their galleries with it.
    """
    images, maps, masks = _np(images), _np(anomaly_maps), _np(masks)
    n = len(images)
    vmax = float(np.quantile(maps, 0.999)) if vmax is None else vmax
    vmin = float(maps.min()) if vmin is None else vmin
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n + 0.8, 5.6), squeeze=False)
    for k in range(n):
        _show(axes[0, k], images[k])
        _show(axes[1, k], images[k])
        mappable = overlay(axes[2, k], images[k], maps[k], vmin, vmax)
        if masks is not None and masks[k].any():
            for row in (1, 2):
                axes[row, k].contour(masks[k], levels=[0.5], colors="red" if row == 1 else "cyan", linewidths=0.8)
        if titles is not None:
            axes[0, k].set_title(str(titles[k]), fontsize=TITLE_PT)
    axes[0, 0].set_ylabel("input", fontsize=LABEL_PT), axes[1, 0].set_ylabel("with mask", fontsize=LABEL_PT)
    axes[2, 0].set_ylabel("anomaly map", fontsize=LABEL_PT)
    fig.colorbar(mappable, ax=axes[2, :].tolist(), shrink=0.8, pad=0.01).set_label(label, fontsize=LABEL_PT)
    return fig


def plot_roc(curves: dict, ax=None, title: str = "ROC"):
    """ROC curves of several methods: ``{name: (labels, scores)}``; AUROC in the legend."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} ({np.trapezoid(tpr, fpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_score_hist(labels, scores, ax=None, title: str = "anomaly scores", threshold=None, bins: int = 30):
    """Histograms of the scores of normal and anomalous items (optionally a threshold line)."""
    labels, scores = _np(labels).astype(bool), _np(scores)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    edges = np.histogram_bin_edges(scores, bins=bins)
    ax.hist(scores[~labels], bins=edges, alpha=0.6, label="normal", density=True)
    ax.hist(scores[labels], bins=edges, alpha=0.6, label="anomalous", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_title(title)
    ax.set_xlabel("pred_score")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return ax


def plot_losses(history: dict, ax=None, title: str = "training", logy: bool = False):
    """Loss curves: ``{name: [value per epoch or step]}``."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    for name, values in history.items():
        ax.plot(values, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return ax


def best_and_worst(labels, scores, k: int = 3):
    """Indices of the most convincing and the most misleading items: for a heatmap gallery.

    Returns ``(best, worst)``: best = highest-scored anomalies; worst = lowest-scored anomalies
    followed by the highest-scored normal items.
    """
    labels, scores = _np(labels).astype(bool), _np(scores)
    anom, norm = np.flatnonzero(labels), np.flatnonzero(~labels)
    best = anom[np.argsort(-scores[anom])[:k]]
    worst = np.r_[anom[np.argsort(scores[anom])[:k]], norm[np.argsort(-scores[norm])[:k]]]
    return best, worst
