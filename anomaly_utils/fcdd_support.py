"""Plumbing for lesson 02 (FCDD): argument checks, outlier-exposure images, progress, map figures.

The method itself (network, loss, upsampling, detector) is built in ``notebooks/02_fcdd.ipynb`` and exported
to ``anomaly_utils.lessons.fcdd``; what is here is not being taught.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ANOMALIES = ("confetti", "simple-confetti", None)
CONFETTI_SIGNS = ("darken", "brighten", "both")
PIXEL_LOSSES = ("paper", "per-cell")
UPSAMPLING = ("gaussian", "bilinear")
BASE_BLOCKS = tuple(range(8))  # EfficientNet-Lite0 blocks whose layers FCDDNet knows (stride 4 to 16)


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _positive_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")


def check_fcdd_arguments(det):
    """A clear ``ValueError`` (naming the argument and the fix) for every bad ``FCDD(...)`` argument."""
    base_block, head_channels, head_layers = det.base_block, det.head_channels, det.head_layers
    epochs, lr, weight_decay, batch_size = det.epochs, det.lr, det.weight_decay, det.batch_size
    anomalies, n_confetti, outlier_images = det.anomalies, det.n_confetti, det.outlier_images
    labelled_images, labelled_masks, pixel_loss = det.labelled_images, det.labelled_masks, det.pixel_loss
    upsample, sigma = det.upsample, det.sigma
    if isinstance(base_block, bool) or base_block not in BASE_BLOCKS:
        raise ValueError(f"base_block must be one of {BASE_BLOCKS} (EfficientNet-Lite0's first blocks; 2 = stride 4, "
                         f"4 = stride 8), got {base_block!r}.")
    _positive_int("head_channels", head_channels)
    _positive_int("head_layers", head_layers, minimum=0)
    _positive_int("epochs", epochs)
    _positive_int("batch_size", batch_size)
    _positive_float("lr", lr)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")
    if anomalies not in ANOMALIES:
        raise ValueError(f"anomalies must be 'confetti', 'simple-confetti' or None (normal images only, or "
                         f"outlier_images alone), got {anomalies!r}.")
    if det.confetti_sign not in CONFETTI_SIGNS:
        raise ValueError(f"confetti_sign must be 'darken' (the official recipe), 'brighten' or 'both', "
                         f"got {det.confetti_sign!r}.")
    if anomalies is not None:
        _positive_int("n_confetti", n_confetti)
    if pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"pixel_loss must be 'paper' or 'per-cell', got {pixel_loss!r}.")
    if upsample not in UPSAMPLING:
        raise ValueError(f"upsample must be 'gaussian' or 'bilinear', got {upsample!r}.")
    if sigma is not None:
        _positive_float("sigma", sigma)
    if outlier_images is not None:
        _check_images("outlier_images", outlier_images)
    if (labelled_images is None) != (labelled_masks is None):
        raise ValueError("labelled_images and labelled_masks go together: give both (real defects [N, C, H, W] "
                         "and their masks [N, H, W]) for the semi-supervised variant, or neither.")
    if labelled_images is not None:
        _check_images("labelled_images", labelled_images)
        m = torch.as_tensor(labelled_masks)
        if m.ndim == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.ndim != 3 or m.shape[0] != labelled_images.shape[0] or m.shape[1:] != labelled_images.shape[2:]:
            raise ValueError(f"labelled_masks must be [N, H, W] with one mask per labelled image "
                             f"{list(labelled_images.shape)}, got {list(m.shape)}.")
        if not (m.flatten(1).amax(1) > 0).all():
            raise ValueError("every labelled image needs a non-empty mask (its defect); drop the normal ones, e.g. "
                             "labelled_images=val.images[val.labels == 1].")


def _check_images(name, images):
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0 \
            or images.shape[1] not in (1, 3) or not images.is_floating_point():
        shape = list(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"{name} must be a float tensor [N, 1 or 3, H, W] with N >= 1, got {shape}.")


def check_extra_images(name, images, train_shape):
    """``outlier_images`` / ``labelled_images`` must look like the training images ``(C, H, W)``."""
    if tuple(images.shape[1:]) != tuple(train_shape):
        c, h, w = train_shape
        raise ValueError(f"{name} are {list(images.shape[1:])} per image but the training images are [{c}, {h}, {w}]; "
                         f"give {name} the training images' channels and size (resize them, or "
                         "anomaly_utils.to_rgb for grey ones).")


def check_train_images(images):
    """The training images as a float ``[N, C, H, W]`` tensor, or a clear error."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"FCDD.fit needs a data set of images [N, C, H, W] with N >= 1, got {list(images.shape)}.")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"FCDD needs grey (1) or RGB (3) channels, got {images.shape[1]}.")
    return images if images.is_floating_point() else images.float()


def progress_range(n, desc, enabled=True):
    """``range(n)`` with a text progress bar when ``enabled`` (no widget: saved outputs stay readable)."""
    if not enabled:
        return range(n)
    from tqdm.std import tqdm

    return tqdm(range(n), desc=desc, leave=False)


def natural_image_crops(n, size=64, crop=128, seed=0):
    """Outlier-exposure images: ``n`` grey crops of scikit-image's natural photos (no texture among them).

    A small offline stand-in for the paper's ImageNet-22k outliers: ``[n, 1, size, size]`` in [0, 1]
    (``size`` an int or ``(height, width)``).
    """
    import skimage.data
    from skimage.color import rgb2gray

    names = ["camera", "coins", "moon", "page", "text", "clock", "astronaut", "coffee", "chelsea", "rocket"]
    rng = np.random.default_rng(seed)
    photos = []
    for name in names:
        im = getattr(skimage.data, name)()
        im = rgb2gray(im) if im.ndim == 3 else im / 255.0
        photos.append(im.astype(np.float32))
    crops = []
    for i in range(n):
        im = photos[i % len(photos)]
        c = min(crop, *im.shape)
        y, x = rng.integers(0, im.shape[0] - c + 1), rng.integers(0, im.shape[1] - c + 1)
        crops.append(torch.from_numpy(np.ascontiguousarray(im[y:y + c, x:x + c]))[None, None])
    size = (size, size) if isinstance(size, int) else tuple(size)
    out = torch.cat([F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
                     for t in crops])
    return out.clamp(0, 1)


def show_maps(images, maps, masks, titles, size=1.7, label="A'"):
    """Columns of (image with its mask outline in cyan, anomaly map with its own colour bar).

    Each map keeps its own colour scale (0 .. its maximum), so that a weak map is not hidden by a strong
    one and maps on different scales (Gaussian vs bilinear, FCDD vs z-score) can stand side by side.
    """
    import matplotlib.pyplot as plt

    from .viz import LABEL_PT, TITLE_PT, _show, show_map

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(size * n + 0.6, 2 * size + 0.6), squeeze=False)
    for k in range(n):
        _show(axes[0, k], np.asarray(images[k]))
        m = np.asarray(maps[k])
        show_map(axes[1, k], m, vmin=0, vmax=max(float(m.max()), 1e-12), label=label)
        if np.asarray(masks[k]).any():
            for ax in axes[:, k]:
                ax.contour(np.asarray(masks[k]), levels=[0.5], colors="cyan", linewidths=0.8)
        axes[0, k].set_title(titles[k], fontsize=TITLE_PT)
    axes[0, 0].set_ylabel("image + mask", fontsize=LABEL_PT)
    axes[1, 0].set_ylabel("map (own scale)", fontsize=LABEL_PT)
    fig.tight_layout()
    return fig
