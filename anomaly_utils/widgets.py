"""An interactive explorer of anomaly maps: pick a sample, slide the threshold, toggle overlay and mask.

::

    explorer(test.images, ev.anomaly_maps, test.masks, ev.pred_scores, ev.labels)   # last line of a cell

Shows, for the chosen sample, the image, the heatmap overlay (with the ground-truth outline) and the
prediction ``anomaly_map >= threshold``. Where no widget frontend is available -- ``ipywidgets``
missing, ``AD_STATIC_WIDGETS=1`` or the ``smoke`` profile (CI, nbval, nbconvert) -- it draws a static
figure of a few telling samples instead (best and worst detections), so a notebook's saved output
still means something.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from . import metrics
from .viz import _show, best_and_worst


def _np(x, what: str) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"explorer: {what} must be numbers (a tensor or array), got dtype {x.dtype}.")
    return x


def _prepare(images, anomaly_maps, masks, scores, labels, titles):
    """Validate and convert the inputs: images ``[N, C, H, W]``, maps and masks ``[N, H, W]`` at image size."""
    images, maps = _np(images, "images"), _np(anomaly_maps, "anomaly_maps")
    masks, scores, labels = _np(masks, "masks"), _np(scores, "scores"), _np(labels, "labels")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"explorer: images must be [N, C, H, W] (C = 1 or 3) or [N, H, W], got {images.shape}.")
    n, _, h, w = images.shape
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or len(maps) != n:
        raise ValueError(f"explorer: anomaly_maps must be [N, H, W] with N = {n} (one per image), "
                         f"got {maps.shape}.")
    if maps.shape[1:] != (h, w):  # e.g. a feature-resolution map: upsample as evaluate() does
        maps = F.interpolate(torch.from_numpy(maps.astype(np.float32))[:, None], size=(h, w), mode="bilinear",
                             align_corners=False)[:, 0].numpy()
    maps = maps.astype(np.float32)
    if masks is not None and masks.shape != (n, h, w):
        raise ValueError(f"explorer: masks must be [N, H, W] = {(n, h, w)} like the images, got {masks.shape}.")
    if scores is None:
        scores = maps.reshape(n, -1).max(1)  # the usual pred_score of a map
    scores = scores.reshape(-1)
    if len(scores) != n:
        raise ValueError(f"explorer: {len(scores)} scores for {n} images.")
    if labels is not None:
        labels = labels.reshape(-1).astype(int)
        if len(labels) != n:
            raise ValueError(f"explorer: {len(labels)} labels for {n} images.")
    if titles is not None:
        titles = [str(t) for t in titles]
        if len(titles) != n:
            raise ValueError(f"explorer: {len(titles)} titles for {n} images.")
    return images, maps, masks, scores, labels, titles


def default_threshold(maps: np.ndarray, masks: np.ndarray | None = None, max_pixels: int = 1_000_000) -> float:
    """A sensible starting threshold: the pixel-F1-optimal one if masks are given, else the 99th percentile.

    On more than ``max_pixels`` pixels a fixed random subsample is used (a starting point for the
    slider, not a result: choose a reported threshold on a validation split).
    """
    flat = maps.reshape(-1)
    flat_masks = None if masks is None else masks.reshape(-1) > 0.5
    if flat.size > max_pixels:
        idx = np.random.default_rng(0).choice(flat.size, max_pixels, replace=False)
        flat = flat[idx]
        flat_masks = None if flat_masks is None else flat_masks[idx]
    if flat_masks is not None and 0 < flat_masks.sum() < flat_masks.size:
        return metrics.f1_optimal_threshold(flat_masks, flat)[0]
    return float(np.quantile(flat, 0.99))


def _draw_sample(axes, image, amap, mask, threshold, vmin, vmax, overlay=True, contour=True, title=""):
    """Three panels: the image, the heatmap overlay, the prediction ``amap >= threshold``."""
    _show(axes[0], image, title)
    _show(axes[1], image, "anomaly map" if overlay else "image")
    if overlay:
        axes[1].imshow(amap, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
    pred = amap >= threshold
    _show(axes[2], image)
    red = np.zeros((*pred.shape, 4), dtype=np.float32)
    red[pred] = (1.0, 0.0, 0.0, 0.45)
    axes[2].imshow(red)
    info = f"map >= {threshold:.3g}: {100 * pred.mean():.1f}% px"
    if mask is not None:
        gt = mask > 0.5
        if gt.any():
            inter, union = (pred & gt).sum(), (pred | gt).sum()
            info += f", IoU {inter / union:.2f}"
            if contour:
                for ax in axes[1:]:
                    ax.contour(gt.astype(np.float32), levels=[0.5], colors="lime", linewidths=0.9)
    axes[2].set_title(info)


def _caption(i, scores, labels, titles):
    parts = [f"#{i}"] + ([titles[i]] if titles is not None else [])
    parts.append(f"score {scores[i]:.3g}")
    if labels is not None:
        parts.append("anomalous" if labels[i] else "normal")
    return "  ".join(parts)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def static_requested() -> bool:
    """True when widgets would not be seen: ``AD_STATIC_WIDGETS=1`` or the ``smoke`` profile (CI)."""
    return (os.environ.get("AD_STATIC_WIDGETS", "") == "1"
            or os.environ.get("AD_PROFILE", "").strip().lower() == "smoke")


def _static_indices(scores, labels, k: int):
    """A few telling samples: best and worst detections (by labels), else the highest and lowest scores."""
    if labels is not None and len(np.unique(labels)) == 2:
        best, worst = best_and_worst(labels, scores, k=1)
        norm = np.flatnonzero(labels == 0)
        lowest_normal = norm[np.argsort(scores[norm])[:1]]
        picks = [(int(i), r) for i, r in zip(best, ["best anomaly"])]
        picks += [(int(i), r) for i, r in zip(worst, ["worst anomaly", "worst normal"])]
        picks += [(int(i), "best normal") for i in lowest_normal]
    else:
        order = np.argsort(-scores, kind="mergesort")
        picks = [(int(i), "highest score") for i in order[: (k + 1) // 2]]
        picks += [(int(i), "lowest score") for i in order[::-1][: k // 2]]
    seen, out = set(), []
    for i, reason in picks:
        if i not in seen:
            seen.add(i)
            out.append((i, reason))
    return out[:k]


class Explorer:
    """What :func:`explorer` returns; it displays itself when it is the last expression of a cell.

    Attributes: ``static`` (bool), ``widget`` (the ipywidgets box, interactive mode), ``figure``
    (the matplotlib figure: the static gallery, or the current sample's panels), ``threshold``,
    ``indices`` (the samples in the static figure) and ``render(i, threshold, overlay, contour)``.
    """

    def __init__(self, images, maps, masks, scores, labels, titles, threshold, static, n_static):
        self.images, self.maps, self.masks = images, maps, masks
        self.scores, self.labels, self.titles = scores, labels, titles
        self.threshold = float(threshold)
        self.vmin, self.vmax = float(maps.min()), float(np.quantile(maps, 0.999))
        if self.vmax <= self.vmin:
            self.vmax = self.vmin + 1e-6
        self.static, self.widget, self.indices = static, None, []
        if static:
            self.figure = self._gallery(n_static)
        else:
            self.figure = None
            self.widget = self._build_widget()

    # -- static
    def _gallery(self, k: int) -> Figure:
        picks = _static_indices(self.scores, self.labels, k)
        self.indices = [i for i, _ in picks]
        fig = Figure(figsize=(7.5, 2.6 * len(picks)), dpi=72)
        axes = fig.subplots(len(picks), 3, squeeze=False)
        for row, (i, reason) in zip(axes, picks):
            _draw_sample(row, self.images[i], self.maps[i], None if self.masks is None else self.masks[i],
                         self.threshold, self.vmin, self.vmax,
                         title=f"{reason}: {_caption(i, self.scores, self.labels, self.titles)}")
        fig.suptitle("anomaly map explorer, static view (interactive in Jupyter outside the smoke profile)",
                     fontsize=9)
        fig.tight_layout()
        return fig

    # -- interactive
    def render(self, i: int, threshold: float | None = None, overlay: bool = True, contour: bool = True) -> bytes:
        """The PNG of sample ``i``'s three panels (also kept as ``self.figure``)."""
        t = self.threshold if threshold is None else float(threshold)
        fig = Figure(figsize=(9, 3.2), dpi=72)
        axes = fig.subplots(1, 3)
        _draw_sample(axes, self.images[i], self.maps[i], None if self.masks is None else self.masks[i], t,
                     self.vmin, self.vmax, overlay, contour, _caption(i, self.scores, self.labels, self.titles))
        fig.tight_layout()
        self.figure = fig
        return _png(fig)

    def _build_widget(self):
        import ipywidgets as W

        n = len(self.images)
        lo, hi = float(self.maps.min()), float(self.maps.max())
        step = (hi - lo) / 200 if hi > lo else 1e-3
        self.sample = W.IntSlider(value=int(np.argmax(self.scores)), min=0, max=n - 1, description="sample",
                                  continuous_update=False)
        self.slider = W.FloatSlider(value=min(max(self.threshold, lo), hi if hi > lo else lo + step), min=lo,
                                    max=hi if hi > lo else lo + step, step=step, description="threshold",
                                    readout_format=".3g", continuous_update=False)
        self.overlay = W.Checkbox(value=True, description="heatmap overlay")
        self.contour = W.Checkbox(value=self.masks is not None, description="ground-truth mask",
                                  disabled=self.masks is None)
        self.image = W.Image(format="png")

        def update(_=None):
            self.image.value = self.render(self.sample.value, self.slider.value, self.overlay.value,
                                           self.contour.value)

        for control in (self.sample, self.slider, self.overlay, self.contour):
            control.observe(update, names="value")
        update()
        return W.VBox([W.HBox([self.sample, self.slider]), W.HBox([self.overlay, self.contour]), self.image])

    def _ipython_display_(self):
        from IPython.display import Image, display

        if self.widget is not None:
            display(self.widget)
        else:
            display(Image(data=_png(self.figure)))

    def __repr__(self):
        mode = "static" if self.static else "interactive"
        return f"Explorer({len(self.images)} samples, {mode}, threshold={self.threshold:.3g})"


def explorer(images, anomaly_maps, masks=None, scores=None, labels=None, titles=None, threshold=None,
             static: bool | None = None, n_static: int = 4) -> Explorer:
    """Explore anomaly maps: pick a sample, slide a pixel threshold, toggle overlay and mask outline.

    Args:
        images: ``[N, C, H, W]`` (or ``[N, H, W]``) in [0, 1], tensor or array.
        anomaly_maps: ``[N, H, W]`` (or ``[N, 1, h, w]``; upsampled to the image size if smaller).
        masks: ``[N, H, W]`` ground truth, outlined in green.
        scores: ``[N]`` pred_score per image (default: the map's maximum).
        labels: ``[N]`` 0 normal / 1 anomalous; used to pick the static figure's best/worst cases.
        titles: one string per sample (e.g. the data set's ``kinds``).
        threshold: the slider's start (default: pixel-F1-optimal with masks, else the maps' 99th percentile).
        static: force (True) or forbid (False) the static figure; ``None``: static when
            ``AD_STATIC_WIDGETS=1``, in the ``smoke`` profile, or when ipywidgets is missing.
        n_static: how many samples the static figure shows.
    Returns:
        an :class:`Explorer`; as the last expression of a cell it displays the widget (or figure).
    """
    images, maps, masks, scores, labels, titles = _prepare(images, anomaly_maps, masks, scores, labels, titles)
    if static is None:
        static = static_requested()
        if not static:
            try:
                import ipywidgets  # noqa: F401
            except ImportError:
                print("ipywidgets is not installed: showing a static figure (pip install ipywidgets).")
                static = True
    t = default_threshold(maps, masks) if threshold is None else float(threshold)
    return Explorer(images, maps, masks, scores, labels, titles, t, bool(static), n_static)
