"""An interactive explorer of anomaly maps: pick a sample, slide the threshold, toggle overlay and mask.

::

    explorer(test.images, ev.anomaly_maps, test.masks, ev.pred_scores, ev.labels)   # last line of a cell

Shows, for the chosen sample, the image, the heatmap overlay (with the ground-truth outline) and the
prediction ``anomaly_map >= threshold``. Where no widget frontend is available -- ``ipywidgets``
missing, ``AD_STATIC_WIDGETS=1`` or the ``smoke`` profile (CI, nbval, nbconvert) -- it draws a static
figure of a few telling samples instead (best and worst detections), so a notebook's saved output
still means something.

The explorer never guesses silently: maps of another aspect ratio than the images (e.g. transposed) and
NaN or infinite maps or scores are errors that say what to do; images in 0-255 are divided by 255 (it says
so); its ``threshold`` attribute and the slider always agree (set either one, the other follows).
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from . import metrics
from .viz import _show, best_and_worst, overlay


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


def _unit_range(images: np.ndarray) -> np.ndarray:
    """Images as floats in [0, 1]: uint8 and other 0-255 images are divided by 255 (said aloud); anything else
    outside [0, 1] is an error."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise ValueError(f"explorer: images hold {int((~np.isfinite(images)).sum())} NaN or infinite values: "
                         "pass the images the detector saw, in [0, 1].")
    lo, hi = float(images.min()), float(images.max())
    if lo >= -1e-3 and hi <= 1 + 1e-3:
        return images
    if lo >= 0 and 2 < hi <= 255:
        print(f"explorer: the images hold values up to {hi:g}, so they look like 0-255 images: shown divided "
              "by 255.")
        return images / 255
    raise ValueError(f"explorer: images must be in [0, 1] (or 0-255), got values from {lo:.3g} to {hi:.3g}; if "
                     "they are normalised (ImageNet mean and std), pass the images before normalisation.")


def _fit_maps(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Maps ``[N, h', w']`` at the images' ``h x w``: upsampled when they have the same aspect ratio (e.g. a
    feature-resolution map, as ``evaluate`` does), an error otherwise (never stretched)."""
    mh, mw = maps.shape[1:]
    if (mh, mw) == (h, w):
        return maps
    if (mh, mw) == (w, h):
        raise ValueError(f"explorer: the anomaly maps are {mh} x {mw} (height x width) but the images are "
                         f"{h} x {w}: the maps look transposed. Pass anomaly_maps.transpose(-1, -2) "
                         "(the explorer does not stretch maps to fit).")
    if abs((mh / mw) / (h / w) - 1) > 0.1:
        raise ValueError(f"explorer: the anomaly maps are {mh} x {mw} (height x width), the images {h} x {w}: "
                         "another aspect ratio, so upsampling would stretch them. Pass maps at the images' size "
                         "(or of the same shape at a lower resolution).")
    return F.interpolate(torch.from_numpy(maps.astype(np.float32))[:, None], size=(h, w), mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def _all_finite(x: np.ndarray, what: str) -> None:
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise ValueError(f"explorer: {what} hold {bad} NaN or infinite values (of {x.size}): the detector produced "
                         "them, so a threshold or colour scale would mean nothing. Find out why (e.g. a division "
                         f"by zero), or look at the rest with np.nan_to_num({what}, nan=..., posinf=...).")


def _prepare(images, anomaly_maps, masks, scores, labels, titles):
    """Validate and convert the inputs: images ``[N, C, H, W]`` in [0, 1], maps and masks ``[N, H, W]`` at
    image size."""
    images, maps = _np(images, "images"), _np(anomaly_maps, "anomaly_maps")
    masks, scores, labels = _np(masks, "masks"), _np(scores, "scores"), _np(labels, "labels")
    if images is None or maps is None:
        raise ValueError("explorer: images and anomaly_maps are required (a detector without maps has nothing to "
                         "explore here).")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"explorer: images must be [N, C, H, W] (C = 1 or 3) or [N, H, W], got {images.shape}.")
    images = _unit_range(images)
    n, _, h, w = images.shape
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or len(maps) != n:
        raise ValueError(f"explorer: anomaly_maps must be [N, H, W] with N = {n} (one per image), "
                         f"got {maps.shape}.")
    _all_finite(maps, "anomaly_maps")
    maps = _fit_maps(maps, h, w).astype(np.float32)
    if masks is not None and masks.shape != (n, h, w):
        raise ValueError(f"explorer: masks must be [N, H, W] = {(n, h, w)} like the images, got {masks.shape}.")
    if scores is None:
        scores = maps.reshape(n, -1).max(1)  # the usual pred_score of a map
    scores = scores.reshape(-1)
    if len(scores) != n:
        raise ValueError(f"explorer: {len(scores)} scores for {n} images.")
    _all_finite(scores, "scores")
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


def _draw_sample(fig, axes, image, amap, mask, threshold, vmin, vmax, overlay_on=True, contour=True):
    """Three panels: the image (with the mask's outline), the map over it (``viz.overlay``, with a colour bar)
    and the prediction ``amap >= threshold`` in red."""
    gt = None if mask is None else mask > 0.5
    outline = contour and gt is not None and gt.any()
    _show(axes[0], image, "image + mask outline" if outline else "image")
    if overlay_on:
        mappable = overlay(axes[1], image, amap, vmin, vmax)
        axes[1].set_title("anomaly map")
        fig.colorbar(mappable, ax=axes[1], fraction=0.046, pad=0.03).set_label("anomaly score", fontsize=8)
    else:
        _show(axes[1], image, "image (overlay off)")
    pred = amap >= threshold
    _show(axes[2], image)
    red = np.zeros((*pred.shape, 4), dtype=np.float32)
    red[pred] = (1.0, 0.0, 0.0, 0.45)
    axes[2].imshow(red)
    info = f"map ≥ {threshold:.3g}: {100 * pred.mean():.1f}% px"
    if gt is not None and gt.any():
        inter, union = (pred & gt).sum(), (pred | gt).sum()
        info += f", IoU {inter / union:.2f}"
    axes[2].set_title(info)
    if outline:
        for ax in axes:
            ax.contour(gt.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.9)


def _finite_threshold(value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"explorer: threshold must be a finite number, got {value}.")
    return value


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
        self._threshold = _finite_threshold(threshold)
        self.vmin, self.vmax = float(maps.min()), float(np.quantile(maps, 0.999))
        if self.vmax <= self.vmin:
            self.vmax = self.vmin + 1e-6
        self.static, self.widget, self.indices, self.n_static = static, None, [], n_static
        if static:
            self.figure = self._gallery(n_static)
        else:
            self.figure = None
            self.widget = self._build_widget()

    @property
    def threshold(self) -> float:
        """The pixel threshold shown: the slider's value in the widget (set it, and the slider follows)."""
        return float(self.slider.value) if self.widget is not None else self._threshold

    @threshold.setter
    def threshold(self, value) -> None:
        value = _finite_threshold(value)
        self._threshold = value
        if self.widget is not None:
            self.slider.min, self.slider.max = min(self.slider.min, value), max(self.slider.max, value)
            self.slider.value = value  # redraws through the slider's observer
        elif self.static:
            self.figure = self._gallery(self.n_static)

    # -- static
    def _gallery(self, k: int) -> Figure:
        picks = _static_indices(self.scores, self.labels, k)
        self.indices = [i for i, _ in picks]
        fig = Figure(figsize=(9.5, 0.6 + 3.1 * len(picks)), dpi=72, layout="constrained")
        fig.suptitle("anomaly map explorer, static view (interactive in Jupyter outside the smoke profile)",
                     fontsize=10)
        for sub, (i, reason) in zip(np.atleast_1d(fig.subfigures(len(picks), 1)), picks):
            sub.suptitle(f"{reason}: {_caption(i, self.scores, self.labels, self.titles)}", fontsize=9,
                         fontweight="bold")
            _draw_sample(sub, sub.subplots(1, 3), self.images[i], self.maps[i],
                         None if self.masks is None else self.masks[i], self._threshold, self.vmin, self.vmax)
        return fig

    # -- interactive
    def render(self, i: int, threshold: float | None = None, overlay: bool = True, contour: bool = True) -> bytes:
        """The PNG of sample ``i``'s three panels (also kept as ``self.figure``)."""
        t = self.threshold if threshold is None else float(threshold)
        fig = Figure(figsize=(9.5, 3.4), dpi=72, layout="constrained")
        fig.suptitle(_caption(i, self.scores, self.labels, self.titles), fontsize=9, fontweight="bold")
        _draw_sample(fig, fig.subplots(1, 3), self.images[i], self.maps[i],
                     None if self.masks is None else self.masks[i], t, self.vmin, self.vmax, overlay, contour)
        self.figure = fig
        return _png(fig)

    def _build_widget(self):
        import ipywidgets as W

        n = len(self.images)
        lo, hi = float(self.maps.min()), float(self.maps.max())
        if hi <= lo:
            hi = lo + 1e-3
        step = (hi - lo) / 200
        t = self._threshold
        self.sample = W.IntSlider(value=int(np.argmax(self.scores)), min=0, max=n - 1, description="sample",
                                  continuous_update=False)
        self.slider = W.FloatSlider(value=t, min=min(lo, t), max=max(hi, t), step=step, description="threshold",
                                    readout_format=".3g", continuous_update=False)
        self.overlay = W.Checkbox(value=True, description="heatmap overlay")
        self.contour = W.Checkbox(value=self.masks is not None, description="ground-truth mask",
                                  disabled=self.masks is None)
        self.image = W.Image(format="png")

        def update(_=None):
            self._threshold = float(self.slider.value)
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
