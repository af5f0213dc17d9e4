"""Metrics: image AUROC, pixel AUROC, AUPRO (to FPR 0.3) and the F1-optimal threshold.

All take NumPy arrays or torch tensors. Pixel metrics work on millions of pixels without Python
lists: one sort of the flattened scores, then cumulative sums.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()  # bfloat16 (mixed precision) and float8 have no NumPy type; float32 holds them exactly
        x = x.numpy()
    return np.asarray(x)


def _labels(labels, what: str) -> np.ndarray:
    """``labels`` as a bool array (True = anomalous); a clear error for anything but 0/1 (or True/False)."""
    y = _np(labels).ravel()
    if y.dtype == bool:
        return y
    if not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{what}: labels must be numbers 0 (normal) / 1 (anomalous), got dtype {y.dtype}.")
    values = np.unique(y)  # NaN sorts last
    if set(values.tolist()) <= {0, 1}:
        return y == 1
    if set(values.tolist()) <= {-1, 1}:
        raise ValueError(f"{what}: labels are -1 / +1 (scikit-learn's outlier convention: -1 = outlier, +1 = "
                         "inlier); this course uses 0 = normal, 1 = anomalous. Convert them with "
                         "labels = (y == -1).astype(int) (or (y == 1) if +1 marks your anomalies), and remember that "
                         "scikit-learn's score_samples is higher for normal items: pass -score_samples(X) as scores.")
    bad = [v for v in values.tolist() if v not in (0, 1)]
    shown = ", ".join(f"{v:g}" for v in bad[:5])
    raise ValueError(f"{what}: labels must be exactly 0 (normal) or 1 (anomalous), got {shown}"
                     f"{' ...' if len(bad) > 5 else ''} ({int((~np.isin(y, [0, 1])).sum())} of {y.size} labels)."
                     " Convert them first: class indices with (y != normal_class).astype(int), soft labels with "
                     "(y >= 0.5).astype(int); drop unlabelled (NaN) items.")


def _check_finite(s: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(s)
    if bad.any():
        first = np.unravel_index(np.flatnonzero(bad)[0], s.shape)
        raise ValueError(f"{what}: {int(bad.sum())} of {s.size} scores are NaN or infinite (the first at index "
                         f"{tuple(int(i) for i in first)}); every item needs a finite score. Check the model "
                         "(a diverged loss?) before computing metrics.")


def _check_lengths(y: np.ndarray, s: np.ndarray, what: str) -> None:
    if y.shape != s.shape:
        raise ValueError(f"{what}: {y.size} labels but {s.size} scores; give exactly one score per label.")


def _check_binary(labels: np.ndarray, what: str) -> None:
    present = np.unique(labels)
    if not (len(present) == 2 and set(present.tolist()) <= {0, 1}):
        raise ValueError(f"{what}: AUROC needs both normal (0) and anomalous (1) ground truth; "
                         f"got values {present.tolist()}. Evaluate on a split that holds both.")


def _counts_by_threshold(labels, scores, what: str):
    """Sort by score (descending) and count true positives at each distinct score.

    Returns ``(thresholds, tp, predicted, n_anomalous, n_normal)``: predicting anomalous for
    ``score >= thresholds[i]`` flags ``predicted[i]`` items, ``tp[i]`` of them anomalous.
    """
    y = _labels(labels, what)
    s = _np(scores).ravel().astype(np.float64)  # float64 holds every float32 and float16 value exactly
    _check_lengths(y, s, what)
    _check_finite(s, what)
    _check_binary(y.astype(int), what)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each block of tied scores
    return s[last], np.cumsum(y)[last], last + 1, int(y.sum()), int((~y).sum())


def _roc(labels, scores, what: str):
    thresholds, tp, predicted, n_anomalous, n_normal = _counts_by_threshold(labels, scores, what)
    tpr = np.r_[0.0, tp / n_anomalous]
    fpr = np.r_[0.0, (predicted - tp) / n_normal]
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_curve(labels, scores):
    """ROC curve of binary ``labels`` against ``scores`` (higher = more anomalous).

    Returns ``(fpr, tpr, thresholds)``; one point per distinct score, from (0, 0) to (1, 1).
    """
    return _roc(labels, scores, "roc_curve")


def auroc(labels, scores, what: str = "auroc") -> float:
    """Area under the ROC curve (trapezoids; ties count one half, as in scikit-learn)."""
    fpr, tpr, _ = _roc(labels, scores, what)
    return float(np.trapezoid(tpr, fpr))


def image_auroc(labels, pred_scores) -> float:
    """Image-level AUROC: ``labels [N]`` 0/1 against ``pred_scores [N]``."""
    return auroc(labels, pred_scores, "image_auroc")


def _masks_and_maps(masks, anomaly_maps, what: str):
    """``(masks [N, H, W] bool, maps [N, H, W])``: one ``[H, W]`` pair is one image, ``[N, 1, H, W]`` is squeezed.

    Mask pixels above 0.5 are defective; NaN in a mask is an error (it would silently count as normal).
    """
    masks, maps = _np(masks), _np(anomaly_maps)
    if masks.shape != maps.shape:
        raise ValueError(f"{what}: masks {masks.shape} and anomaly maps {maps.shape} differ in shape; "
                         "upsample the maps to the image size first.")
    if masks.ndim == 2:  # one image
        masks, maps = masks[None], maps[None]
    elif masks.ndim == 4 and masks.shape[1] == 1:
        masks, maps = masks[:, 0], maps[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"{what}: masks and maps must be [N, H, W] (or [H, W] for one image, [N, 1, H, W]), got "
                         f"shape {tuple(_np(masks).shape)}.")
    if masks.dtype != bool and np.issubdtype(masks.dtype, np.floating) and np.isnan(masks).any():
        raise ValueError(f"{what}: {int(np.isnan(masks).sum())} mask pixels are NaN; masks must be 0 (normal) or "
                         "1 (defective).")
    return masks > 0.5, maps


def pixel_auroc(masks, anomaly_maps) -> float:
    """Pixel-level AUROC over every pixel of every image: ``masks [N, H, W]`` against maps ``[N, H, W]``.

    One image may be given as ``[H, W]`` (as for :func:`aupro`).
    """
    masks, maps = _masks_and_maps(masks, anomaly_maps, "pixel_auroc")
    return auroc(masks.ravel(), maps.ravel(), "pixel_auroc")  # no cast: ranks in float64


def aupro(masks, anomaly_maps, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1] (MVTec AD).

    For a threshold t, PRO(t) is the mean over all connected defect regions (8-connectivity) of the
    fraction of the region's pixels scoring >= t; FPR(t) is the fraction of normal pixels >= t.
    Every distinct score is a threshold, so the curve is exact (no sampling of thresholds). Like
    MVTec's reference code, the curve starts at (0, 0) and is integrated with trapezoids up to
    ``fpr_limit`` (interpolating linearly at the limit), then divided by ``fpr_limit``. A
    threshold that flags defect pixels only adds a vertical step at FPR 0, so the curve effectively
    starts at the PRO of the highest threshold with FPR 0. ``masks`` and maps are ``[N, H, W]`` (or ``[H, W]``
    for one image).
    """
    masks, maps = _masks_and_maps(masks, anomaly_maps, "aupro")
    maps = maps.astype(np.float64)  # float64: no ties added
    if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, (int, float, np.number)) or not 0 < fpr_limit <= 1:
        raise ValueError(f"aupro: fpr_limit must be a number in (0, 1] (MVTec AD's protocol uses 0.3), got "
                         f"{fpr_limit!r}.")
    _check_finite(maps, "aupro")
    if not masks.any() or masks.all():
        raise ValueError("aupro needs images with both defective and normal pixels.")
    # connected components (8-connectivity) of every mask, numbered across the whole set
    regions = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i in range(len(masks)):
        lab, n = scipy.ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    regions, scores = regions.ravel(), maps.ravel()
    region_sizes = np.bincount(regions, minlength=n_regions + 1)
    # each defect pixel adds 1 / (its region's size * number of regions) to PRO once its score is
    # reached; each normal pixel adds one count to the false positives
    pro_weight = np.where(regions > 0, 1.0 / (region_sizes[regions] * n_regions), 0.0)
    is_normal = regions == 0
    order = np.argsort(-scores, kind="stable")
    last = np.r_[np.flatnonzero(np.diff(scores[order])), len(order) - 1]  # ends of blocks of tied scores
    pro = np.r_[0.0, np.cumsum(pro_weight[order])[last]]
    fpr = np.r_[0.0, np.cumsum(is_normal[order])[last] / is_normal.sum()]
    pro = np.clip(pro, 0.0, 1.0)  # rounding in the sum must not push PRO above 1
    # keep the points up to fpr_limit; close the curve at fpr_limit by linear interpolation
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    fpr_in, pro_in = fpr[:inside], pro[:inside]
    if fpr_in[-1] < fpr_limit:  # the next point lies beyond the limit (the last point has FPR 1)
        a, b = inside - 1, inside
        end = pro[a] + (pro[b] - pro[a]) * (fpr_limit - fpr[a]) / (fpr[b] - fpr[a])
        fpr_in, pro_in = np.r_[fpr_in, fpr_limit], np.r_[pro_in, end]
    return float(np.trapezoid(pro_in, fpr_in) / fpr_limit)


def f1_optimal_threshold(labels, scores):
    """The threshold on ``scores`` that maximises F1 on these labels (choose it on a validation split).

    Returns ``(threshold, f1)``; predict anomalous when ``score >= threshold``.
    """
    thresholds, tp, predicted, n_anomalous, _ = _counts_by_threshold(labels, scores, "f1_optimal_threshold")
    f1 = 2 * tp / (predicted + n_anomalous)  # 2 TP / (2 TP + FP + FN)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])


def confusion_at(labels, scores, threshold: float) -> dict:
    """Counts of misses and false alarms when predicting anomalous for ``score >= threshold``."""
    y = _labels(labels, "confusion_at")
    s = _np(scores).ravel().astype(np.float64)
    _check_lengths(y, s, "confusion_at")
    _check_finite(s, "confusion_at")
    if isinstance(threshold, (bool, np.bool_)) or np.ndim(threshold) != 0 or np.isnan(float(_np(threshold))):
        raise ValueError(f"confusion_at: threshold must be one number (e.g. from f1_optimal_threshold on the val "
                         f"split), got {threshold!r}.")
    p = s >= float(_np(threshold))
    return {"true_positives": int((p & y).sum()), "false_positives": int((p & ~y).sum()),
            "false_negatives": int((~p & y).sum()), "true_negatives": int((~p & ~y).sum())}
