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
    s = _np(scores).ravel().astype(np.float64)
    _check_lengths(y, s, what)
    _check_binary(y.astype(int), what)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each block of tied scores
    return s[last], np.cumsum(y)[last], last + 1, int(y.sum()), int((~y).sum())


def roc_curve(labels, scores):
    """ROC curve of binary ``labels`` against ``scores`` (higher = more anomalous).

    Returns ``(fpr, tpr, thresholds)``; one point per distinct score, from (0, 0) to (1, 1).
    """
    thresholds, tp, predicted, n_anomalous, n_normal = _counts_by_threshold(labels, scores, "roc_curve")
    tpr = np.r_[0.0, tp / n_anomalous]
    fpr = np.r_[0.0, (predicted - tp) / n_normal]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auroc(labels, scores) -> float:
    """Area under the ROC curve (trapezoids; ties count one half, as in scikit-learn)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def image_auroc(labels, pred_scores) -> float:
    """Image-level AUROC: ``labels [N]`` 0/1 against ``pred_scores [N]``."""
    return auroc(labels, pred_scores)


def pixel_auroc(masks, anomaly_maps) -> float:
    """Pixel-level AUROC over every pixel of every image: ``masks [N, H, W]`` against maps ``[N, H, W]``."""
    masks, maps = _np(masks), _np(anomaly_maps)
    if masks.shape != maps.shape:
        raise ValueError(f"pixel_auroc: masks {masks.shape} and anomaly maps {maps.shape} differ in shape; "
                         "upsample the maps to the image size first.")
    return auroc(masks.ravel() > 0.5, maps.ravel().astype(np.float32))


def aupro(masks, anomaly_maps, fpr_limit: float = 0.3, n_thresholds: int = 200) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to [0, 1] (MVTec AD).

    For a threshold t, PRO(t) is the mean over all connected defect regions of the fraction of
    the region's pixels whose score exceeds t; FPR(t) is the fraction of normal pixels above t.
    The curve PRO(FPR) is integrated from FPR 0 to ``fpr_limit`` and divided by ``fpr_limit``.
    Thresholds are ``n_thresholds`` quantiles of the normal pixels' scores over that FPR range.
    """
    masks, maps = _np(masks) > 0.5, _np(anomaly_maps).astype(np.float32)
    if masks.shape != maps.shape:
        raise ValueError(f"aupro: masks {masks.shape} and anomaly maps {maps.shape} differ in shape.")
    if not masks.any() or masks.all():
        raise ValueError("aupro needs images with both defective and normal pixels.")
    # connected components (8-connectivity) of every mask, numbered across the whole set
    regions = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i in range(len(masks)):
        lab, n = scipy.ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    region_sizes = np.bincount(regions.ravel(), minlength=n_regions + 1)[1:]
    normal_scores = np.sort(maps[~masks])
    # thresholds spanning FPR in [0, fpr_limit]: quantiles of the normal pixels' scores
    fprs_wanted = np.linspace(0, fpr_limit, n_thresholds)
    idx = np.clip(np.ceil((1 - fprs_wanted) * len(normal_scores)).astype(int) - 1, 0, len(normal_scores) - 1)
    thresholds = normal_scores[idx]
    thresholds[0] = np.nextafter(normal_scores[-1], np.inf)  # FPR exactly 0
    region_of_pixel = regions[masks]
    score_of_pixel = maps[masks]
    fpr, pro = [], []
    for t in thresholds:
        fpr.append(1 - np.searchsorted(normal_scores, t, side="left") / len(normal_scores))
        hit = np.bincount(region_of_pixel[score_of_pixel >= t], minlength=n_regions + 1)[1:]
        pro.append(np.mean(hit / region_sizes))
    fpr, pro = np.array(fpr), np.array(pro)
    keep = fpr <= fpr_limit + 1e-12
    beyond = np.flatnonzero(~keep)  # fpr rises with the index: the points past fpr_limit come last
    fpr_in, pro_in = fpr[keep], pro[keep]
    if fpr_in[-1] < fpr_limit:  # close the curve at fpr_limit by linear interpolation to the next point
        end = pro_in[-1]
        if len(beyond):  # (with tied normal scores the next point can be far: FPR jumps past the limit)
            j = beyond[0]
            end = pro_in[-1] + (pro[j] - pro_in[-1]) * (fpr_limit - fpr_in[-1]) / (fpr[j] - fpr_in[-1])
        fpr_in, pro_in = np.r_[fpr_in, fpr_limit], np.r_[pro_in, end]
    fpr, pro = fpr_in, pro_in
    return float(np.trapezoid(pro, fpr) / fpr_limit)


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
