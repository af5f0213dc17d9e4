"""One small detector interface that every lesson's method implements.

A detector is any object with::

    fit(train_dataset) -> self                      # normal images only
    predict(images [N, C, H, W]) -> (pred_score [N], anomaly_map [N, H, W] or None)

Higher scores mean "more anomalous". ``evaluate`` runs a fitted detector over a test split and
returns the metrics and timings; ``fit_timed`` times the fit. That is the whole protocol: the
leaderboard and a practitioner's own data use nothing else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics


@runtime_checkable
class Detector(Protocol):
    def fit(self, train_dataset) -> "Detector": ...

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]: ...


@dataclass
class Evaluation:
    """What ``evaluate`` returns: metrics, timings and the raw outputs (for plots)."""

    image_auroc: float
    pixel_auroc: Optional[float]
    aupro: Optional[float]
    infer_ms_per_image: float
    pred_scores: np.ndarray  # [N]
    labels: np.ndarray  # [N]
    anomaly_maps: Optional[np.ndarray] = None  # [N, H, W] at image size
    extra: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        """The numbers, rounded, for a table or ``save_result``."""
        def r(v):
            return None if v is None else round(float(v), 4)
        return {"image_auroc": r(self.image_auroc), "pixel_auroc": r(self.pixel_auroc), "aupro": r(self.aupro),
                "infer_ms_per_image": round(self.infer_ms_per_image, 3)}

    def __repr__(self) -> str:
        m = self.metrics()
        return ("Evaluation(" + ", ".join(f"{k}={v}" for k, v in m.items() if v is not None) + ")")


def remember_input(detector, images: torch.Tensor) -> None:
    """Record in ``detector.fit_input_shape`` what ``fit`` saw: ``(C, H, W)`` of the training images.

    Call it at the end of ``fit``; ``check_input`` at the start of ``predict`` compares against it.
    """
    detector.fit_input_shape = tuple(int(v) for v in images.shape[1:])


def _reject_split_pair(data, call: str, split: str, example: str) -> None:
    """A clear error when ``call`` (``fit``, ``evaluate``) is given the ``(train, test)`` pair a loader returns."""
    if isinstance(data, tuple) and len(data) == 2:
        raise TypeError(f"{call} got a (train, test) pair: the loaders return two splits; pass the {split} split, "
                        f"e.g. train, test = load_piped(...); {example}.")


def training_images(train_dataset, normal_only: bool = False) -> torch.Tensor:
    """The images ``[N, C, H, W]`` of the data set ``fit`` was given (its normal ones with ``normal_only``).

    ``fit`` takes an ``AnomalyDataset`` (the train split a loader returns); a bare tensor or a list of images gets
    an error that says how to wrap it, instead of an ``AttributeError`` from inside ``fit``.
    """
    _reject_split_pair(train_dataset, "fit", "training", "detector.fit(train)")
    images = getattr(train_dataset, "images", None)
    if not isinstance(images, torch.Tensor):
        got = (f"a tensor of shape {list(train_dataset.shape)}" if isinstance(train_dataset, torch.Tensor)
               else f"a {type(train_dataset).__name__}")
        raise TypeError(f"fit takes a data set (an AnomalyDataset, such as the train split a loader returns), got {got}; "
                        "wrap your own normal images: fit(AnomalyDataset(images, labels=torch.zeros(len(images)))).")
    return train_dataset.normal().images if normal_only and hasattr(train_dataset, "normal") else images


def check_input(detector, images, same_size: bool = True) -> torch.Tensor:
    """``images`` as a float ``[N, C, H, W]`` tensor, or a clear error that says what to do.

    Errors: ``predict`` called before ``fit``; images not ``[N, C, H, W]``; another channel count than
    ``fit`` saw (grey vs RGB); with ``same_size``, another height or width than ``fit`` saw.
    """
    name = type(detector).__name__
    shape = getattr(detector, "fit_input_shape", None)
    if shape is None:
        raise RuntimeError(f"{name}.predict was called before fit: call {name}(...).fit(train) first.")
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"{name}.predict needs images [N, C, H, W], got shape {list(images.shape)} "
                         "(add a batch dimension with images[None] for one image).")
    if not images.is_floating_point():
        images = images.float()
    c, h, w = images.shape[1:]
    if c != shape[0]:
        fix = "anomaly_utils.to_rgb(images)" if c == 1 else "images.mean(1, keepdim=True)"
        raise ValueError(f"{name} was fitted on {shape[0]}-channel images but predict got {c} channels; give it "
                         f"images like the training ones (e.g. {fix}).")
    if same_size and (h, w) != tuple(shape[1:]):
        raise ValueError(f"{name} was fitted on {shape[1]} x {shape[2]} images but predict got {h} x {w}; resize "
                         f"them to the training size (e.g. torch.nn.functional.interpolate(images, size={tuple(shape[1:])})) "
                         "or fit on images of this size.")
    return images


def fit_timed(detector, train_dataset) -> float:
    """Fit and return the seconds it took."""
    start = time.perf_counter()
    detector.fit(train_dataset)
    return time.perf_counter() - start


def _as_float(x) -> torch.Tensor:
    """A CPU tensor; floating point kept at its precision (float64 maps stay float64)."""
    x = torch.as_tensor(x).detach().cpu()
    if x.is_floating_point() and x.dtype in (torch.float16, torch.float32, torch.float64):
        return x
    return x.float()  # integers, bool, and bfloat16 / float8 (mixed precision: no NumPy type)


def _sync(device) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _scaled_by_integer(h: int, w: int, height: int, width: int) -> bool:
    """Whether an ``h x w`` map is the ``height x width`` image shrunk or enlarged by one integer factor k
    (the same for height and width; a shrunk side may be rounded, as strided convolutions do)."""
    (sh, sw), (bh, bw) = sorted([(h, w), (height, width)])  # the smaller and the bigger shape
    if min(sh, sw) < 1:
        return False
    k = round(bh / sh)
    return k >= 1 and round(bw / sw) == k and abs(bh / k - sh) < 1 and abs(bw / k - sw) < 1


def _check_maps(m: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``predict``'s maps as ``[B, h, w]``; an error unless they fit ``images [B, C, H, W]``.

    A map may differ from the image size by one integer factor (e.g. a feature map with stride 8,
    or a detector that works on images resized to twice the size): it is then resized to the image.
    """
    b, _, height, width = images.shape
    expected = f"[{b}, {height}, {width}] or [{b}, 1, {height}, {width}] (or scaled by an integer factor)"
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or m.shape[0] != b:
        raise ValueError(f"predict returned anomaly maps of shape {list(m.shape)} for {b} images; expected "
                         f"{expected}: one single-channel map per image (average the channels if there are several).")
    h, w = m.shape[1:]
    if not _scaled_by_integer(h, w, height, width):
        hint = " (height and width swapped?)" if (h, w) == (width, height) else ""
        raise ValueError(f"predict returned anomaly maps of shape {list(m.shape)}{hint} for images of "
                         f"{height} x {width} pixels; expected {expected}, with the image's aspect ratio.")
    if not torch.isfinite(m).all():
        raise ValueError(f"predict returned anomaly maps with {int((~torch.isfinite(m)).sum())} NaN or infinite "
                         "pixels; check the model's training (a diverged loss?).")
    return m


def _check_evaluate_args(test_dataset, batch_size) -> None:
    """Clear errors for the arguments of ``evaluate`` that would otherwise fail deep inside it."""
    _reject_split_pair(test_dataset, "evaluate", "evaluation", "evaluate(detector, test)")
    if not all(hasattr(test_dataset, a) for a in ("images", "labels", "masks", "has_masks", "check_test_split")):
        raise TypeError(f"evaluate needs an AnomalyDataset (from anomaly_utils' loaders), got "
                        f"{type(test_dataset).__name__}; wrap your tensors: AnomalyDataset(images, labels, masks).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (images per predict call), got {batch_size!r}.")


def _check_masks_usable(test_dataset) -> None:
    """Masks with no defective pixel at all (or only defective ones) make the pixel metrics undefined."""
    masks = test_dataset.masks
    defective = int((masks > 0.5).sum())
    if defective == 0:
        n_anomalous = int(test_dataset.labels.sum())
        raise ValueError(f"{test_dataset.name}: its {n_anomalous} anomalous image(s) are labelled anomalous but every "
                         "mask is empty (no defective pixel), so pixel AUROC and AUPRO are undefined. The masks were "
                         "lost or never drawn (wrong mask files, inverted masks, a resize that dropped small defects?): "
                         "check test_dataset.masks, or pass pixel_metrics=False for image-level metrics only.")
    if defective == masks.numel():
        raise ValueError(f"{test_dataset.name}: every pixel of every mask is marked defective, so pixel AUROC and "
                         "AUPRO are undefined. Are the masks inverted (defects drawn in black)? Fix them, or pass "
                         "pixel_metrics=False.")


def _predict(detector, images):
    """``detector.predict(images)`` as ``(scores, maps or None)``; a clear error for another return value."""
    out = detector.predict(images)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"{type(detector).__name__}.predict must return (pred_score [N], anomaly_map [N, H, W] or "
                        f"None), got {type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else "")
                        + ". For a detector without maps return (scores, None).")
    return out


def evaluate(detector, test_dataset, batch_size: int = 32, pixel_metrics: bool = True,
             keep_maps: bool = True) -> Evaluation:
    """Score ``test_dataset`` with a fitted detector and compute the course's metrics.

    Image AUROC always; pixel AUROC and AUPRO when the data set has masks and the detector returns
    anomaly maps (resized bilinearly to the image size; maps must be [N, H, W] or [N, 1, H, W],
    possibly scaled by one integer factor, and finite). Inference time is measured
    per image over the whole split (a first batch is run once to warm up).
    """
    _check_evaluate_args(test_dataset, batch_size)
    test_dataset.check_test_split()
    images = test_dataset.images
    n = len(images)
    with torch.no_grad():
        _predict(detector, images[: min(batch_size, n)])  # warm-up (lazy init, caches, JIT)
    scores, maps = [], []
    _sync(None)
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        s, m = _predict(detector, images[i:i + batch_size])
        scores.append(_as_float(s).reshape(-1))
        if m is not None:
            m = _check_maps(_as_float(m), images[i:i + batch_size])
            if m.shape[-2:] != images.shape[-2:]:
                m = F.interpolate(m[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            maps.append(m)
    _sync(None)
    elapsed = time.perf_counter() - start
    pred = torch.cat(scores).numpy()
    if len(pred) != n:
        raise ValueError(f"predict returned {len(pred)} scores for {n} images; it must return one per image.")
    if not np.isfinite(pred).all():
        raise ValueError(f"predict returned {int((~np.isfinite(pred)).sum())} NaN or infinite scores for {n} images; "
                         "check the model's training (a diverged loss?).")
    if maps and sum(len(m) for m in maps) != n:
        raise ValueError(f"predict returned anomaly maps for {sum(len(m) for m in maps)} of {n} images (None for some "
                         "batches); return a map for every image or None for every batch.")
    labels = test_dataset.labels.numpy()
    anomaly_maps = torch.cat(maps).numpy() if maps else None
    pix = pro = None
    if pixel_metrics and anomaly_maps is not None and test_dataset.has_masks:
        _check_masks_usable(test_dataset)
        masks = test_dataset.masks.numpy()
        pix = metrics.pixel_auroc(masks, anomaly_maps)
        pro = metrics.aupro(masks, anomaly_maps)
    return Evaluation(metrics.image_auroc(labels, pred), pix, pro, 1000 * elapsed / n, pred, labels,
                      anomaly_maps if keep_maps else None)


def predict_batched(detector, images: torch.Tensor, batch_size: int = 32):
    """``detector.predict`` over ``images`` in batches; returns ``(scores [N], maps [N, H, W] or None)``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1 (images per predict call), got {batch_size!r}.")
    scores, maps = [], []
    for i in range(0, len(images), batch_size):
        s, m = detector.predict(images[i:i + batch_size])
        scores.append(torch.as_tensor(s).detach().cpu().reshape(-1))
        if m is not None:
            maps.append(torch.as_tensor(m).detach().cpu())
    return torch.cat(scores), (torch.cat(maps) if maps else None)


def ms_per_image(fn, images: torch.Tensor, batch_size: int = 16, repeats: int = 2) -> float:
    """Milliseconds per image of ``fn(batch)`` over ``images`` in batches: the best of ``repeats`` passes after a
    warm-up pass on the first batch (no gradients)."""
    with torch.no_grad():
        fn(images[:batch_size])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                fn(images[i:i + batch_size])
            best = min(best, time.perf_counter() - start)
    return 1000 * best / len(images)
