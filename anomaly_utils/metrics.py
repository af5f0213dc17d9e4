"""Metrics: image AUROC, pixel AUROC, AUPRO (to FPR 0.3) and the F1-optimal threshold.

All take NumPy arrays or torch tensors. Pixel metrics work on millions of pixels without Python
lists: one sort of the flattened scores, then cumulative sums.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


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
    y = _np(labels).ravel().astype(bool)
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


def pixel_auroc(masks, anomaly_maps) -> float:
    """Pixel-level AUROC over every pixel of every image: ``masks [N, H, W]`` against maps ``[N, H, W]``."""
    masks, maps = _np(masks), _np(anomaly_maps)
    if masks.shape != maps.shape:
        raise ValueError(f"pixel_auroc: masks {masks.shape} and anomaly maps {maps.shape} differ in shape; "
                         "upsample the maps to the image size first.")
    return auroc(masks.ravel() > 0.5, maps.ravel(), "pixel_auroc")  # no cast: ranks in float64


def aupro(masks, anomaly_maps, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1] (MVTec AD).

    For a threshold t, PRO(t) is the mean over all connected defect regions (8-connectivity) of the
    fraction of the region's pixels scoring >= t; FPR(t) is the fraction of normal pixels >= t.
    Every distinct score is a threshold, so the curve is exact (no sampling of thresholds). Like
    MVTec's reference code, the curve starts at (0, 0) and is integrated with trapezoids up to
    ``fpr_limit`` (interpolating linearly at the limit), then divided by ``fpr_limit``. A
    threshold that flags defect pixels only adds a vertical step at FPR 0, so the curve effectively
    starts at the PRO of the highest threshold with FPR 0.
    """
    masks, maps = _np(masks) > 0.5, _np(anomaly_maps).astype(np.float64)  # float64: no ties added
    if masks.shape != maps.shape:
        raise ValueError(f"aupro: masks {masks.shape} and anomaly maps {maps.shape} differ in shape.")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}.")
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
    y = _np(labels).ravel().astype(bool)
    p = _np(scores).ravel() >= threshold
    return {"true_positives": int((p & y).sum()), "false_positives": int((p & ~y).sum()),
            "false_negatives": int((~p & y).sum()), "true_negatives": int((~p & ~y).sum())}
