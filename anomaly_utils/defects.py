"""Synthetic anomalies.

Two families, kept apart on purpose:

* **Test defects** (``TEST_FAMILIES``): what ``load_textures`` puts into its test crops --
  ``scratch``, ``stain``, ``hole``, ``cutpaste``. Subtle, as MVTec AD's are: thin, low contrast,
  the texture's own grey levels, various sizes. Each returns the defective image and its exact mask.
* **Training anomalies** (``confetti_noise``, ``smooth_blobs``, ``local_shuffle``): what a
  method may use as pseudo-anomalies in training (FCDD's outlier exposure, for example). None of
  them is a test family, so a method cannot score well by having learned the test defects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TEST_FAMILIES = ("scratch", "stain", "hole", "cutpaste")
TRAIN_FAMILIES = ("confetti", "blobs", "shuffle")


def _grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(size: int, rng, scale: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: bilinear upsampling of a coarse random grid."""
    cells = max(2, int(size / scale))
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()


def scratch(image: torch.Tensor, rng, photo=None):
    """A thin curved line, slightly lighter or darker than the texture under it."""
    s = image.shape[-1]
    yy, xx = _grid(s)
    p0 = rng.uniform(0.15 * s, 0.85 * s, 2)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.25, 0.6) * s
    p2 = np.clip(p0 + length * np.array([np.sin(angle), np.cos(angle)]), 0, s - 1)
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.12 * s, 2)  # control point bends the line
    t = np.linspace(0, 1, 4 * s)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
    dist = np.full((s, s), np.inf, dtype=np.float32)
    for y, x in curve[::2]:
        dist = np.minimum(dist, np.hypot(yy - y, xx - x))
    width = max(0.6, s / 128 * rng.uniform(0.8, 1.6))
    profile = np.clip(1.2 - dist / width, 0, 1)  # anti-aliased line of half-width ~ width
    delta = rng.choice([-1, 1]) * rng.uniform(0.1, 0.2)
    out = image + torch.from_numpy(delta * profile).float()
    return out.clamp(0, 1), torch.from_numpy((profile > 0.5).astype(np.float32))


def stain(image: torch.Tensor, rng, photo=None):
    """A soft, irregular blob that darkens or lightens the texture a little (like oil or dust)."""
    s = image.shape[-1]
    yy, xx = _grid(s)
    cy, cx = rng.uniform(0.2 * s, 0.8 * s, 2)
    ry, rx = rng.uniform(0.05, 0.14, 2) * s
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
    v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
    r = np.sqrt(u**2 + v**2) + 0.25 * _smooth_noise(s, rng, scale=max(ry, rx))  # ragged edge
    alpha = 1 / (1 + np.exp((r - 1) / 0.12))  # soft inside-ness in [0, 1]
    strength = rng.uniform(0.12, 0.25)
    if rng.random() < 0.5:
        out = image * (1 - strength * torch.from_numpy(alpha).float())
    else:
        out = image + strength * torch.from_numpy(alpha).float() * (1 - image)
    return out.clamp(0, 1), torch.from_numpy((alpha > 0.5).astype(np.float32))


def hole(image: torch.Tensor, rng, photo=None):
    """A small irregular pit: darker inside, a faint rim, the texture's grain kept."""
    s = image.shape[-1]
    yy, xx = _grid(s)
    cy, cx = rng.uniform(0.2 * s, 0.8 * s, 2)
    radius = rng.uniform(0.03, 0.07) * s
    r = np.hypot(yy - cy, xx - cx) / radius + 0.3 * _smooth_noise(s, rng, scale=max(2.0, radius))
    inside = np.clip((1.0 - r) / 0.15 + 0.5, 0, 1)
    depth = rng.uniform(0.25, 0.45)
    dark = image * (1 - depth)  # keep the grain, only darker
    out = image * (1 - torch.from_numpy(inside).float()) + dark * torch.from_numpy(inside).float()
    return out.clamp(0, 1), torch.from_numpy((inside > 0.5).astype(np.float32))


def cutpaste(image: torch.Tensor, rng, photo=None):
    """A patch cut from elsewhere in the photo (or another texture), rotated, grey levels matched.

    ``photo`` is the full photo ``[H, W]`` the crop came from; without it the patch comes from the
    image itself.
    """
    from .data import TEXTURE_CATEGORIES, texture_photo

    s = image.shape[-1]
    ph = rng.integers(max(3, int(0.1 * s)), max(4, int(0.25 * s)) + 1)
    pw = rng.integers(max(3, int(0.1 * s)), max(4, int(0.25 * s)) + 1)
    source = photo
    if rng.random() < 0.3:  # a patch of another texture
        source = texture_photo(TEXTURE_CATEGORIES[rng.integers(len(TEXTURE_CATEGORIES))])
    if source is None:
        source = image.numpy()
        patch = source[rng.integers(0, s - ph + 1):, rng.integers(0, s - pw + 1):][:ph, :pw]
    else:
        # cut at about the crops' scale (load_textures' default crop of 128 px, resized to s)
        scale = max(1, round(128 / s))
        sy, sx = rng.integers(0, source.shape[0] - ph * scale), rng.integers(0, source.shape[1] - pw * scale)
        patch = source[sy:sy + ph * scale:scale, sx:sx + pw * scale:scale]
    patch = torch.from_numpy(np.ascontiguousarray(np.rot90(patch, rng.integers(1, 4)))).float()
    ph, pw = patch.shape
    y, x = rng.integers(0, s - ph + 1), rng.integers(0, s - pw + 1)
    target = image[y:y + ph, x:x + pw]
    patch = (patch - patch.mean()) / (patch.std() + 1e-6) * target.std() + target.mean()  # same grey levels
    out = image.clone()
    out[y:y + ph, x:x + pw] = patch
    mask = torch.zeros(s, s)
    mask[y:y + ph, x:x + pw] = 1
    return out.clamp(0, 1), mask


_TEST = {"scratch": scratch, "stain": stain, "hole": hole, "cutpaste": cutpaste}


def apply_defect(family: str, image: torch.Tensor, photo=None, rng=None):
    """Put one defect of ``family`` into a grey image ``[H, W]``; returns ``(image, mask)``."""
    if family not in _TEST:
        raise ValueError(f"unknown defect family {family!r}; the test families are {TEST_FAMILIES}.")
    rng = rng if rng is not None else np.random.default_rng()
    return _TEST[family](image, rng, photo)


# --------------------------------------------------------------------------- training anomalies

def confetti_noise(images: torch.Tensor, n_blobs: int = 12, size_range=(0.03, 0.12),
                   strength_range=(0.15, 0.6), generator: torch.Generator | None = None):
    """A simple confetti variant: ``n_blobs`` small axis-aligned rectangles of random grey value, added
    to or subtracted from the images, not blurred. *Not* the official FCDD recipe (see
    ``fcdd_confetti_noise``); kept as a weaker, more local pseudo-anomaly to compare with.

    Args:
        images: ``[N, C, H, W]`` in [0, 1].
    Returns:
        ``(noisy_images, masks)`` with masks ``[N, H, W]`` marking the blobs.
    """
    n, c, h, w = images.shape
    out, masks = images.clone(), torch.zeros(n, h, w)
    g = generator
    for i in range(n):
        for _ in range(n_blobs):
            bh = max(1, int(h * torch.empty(1).uniform_(*size_range, generator=g)))
            bw = max(1, int(w * torch.empty(1).uniform_(*size_range, generator=g)))
            y = int(torch.randint(0, h - bh + 1, (1,), generator=g))
            x = int(torch.randint(0, w - bw + 1, (1,), generator=g))
            value = torch.empty(c, 1, 1).uniform_(*strength_range, generator=g)
            sign = 1.0 if torch.rand(1, generator=g) < 0.5 else -1.0
            out[i, :, y:y + bh, x:x + bw] += sign * value
            masks[i, y:y + bh, x:x + bw] = 1
    return out.clamp(0, 1), masks


def _poisson_at_least_one(rate: float, generator):
    """A Poisson(rate) count, redrawn while it is 0 (FCDD's ``ensureblob``: every noisy image has a blob).

    After 100 zeros (a tiny rate) it returns 1, the limit of the conditioned count as rate -> 0.
    """
    for _ in range(100):
        k = int(torch.poisson(torch.tensor([float(rate)]), generator=generator).item())
        if k > 0:
            return k
    return 1


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` (kernel radius 2.5 sigma, zero padding)."""
    if sigma <= 0:
        return x
    r = max(1, int(round(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), padding=(r, 0), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), padding=(0, r), groups=c)


def fcdd_confetti_noise(images: torch.Tensor, generator: torch.Generator | None = None,
                        blobs_per_image=(0.9, 0.6), size_range=(8 / 224, 54 / 224), rotation: float = 45.0,
                        blur_sigma: float = 5 / 224, invert_threshold: float = 0.025):
    """Confetti noise following the recipe of FCDD's official code (noise mode ``"confetti"``), for [0, 1] images.

    Per image, two layers of square blobs: *coloured* ones (one random colour per blob; a random grey on
    1-channel images) and *white* ones (value 1). The number of blobs of each layer is Poisson with mean
    ``blobs_per_image`` (the official per-pixel rates 1.8e-5 and 1.2e-5 times 224^2), redrawn while 0, so
    an image gets about 1.5 + 1.3 blobs. A blob's side is uniform in ``size_range`` times the image side
    (8..54 px at 224 px), it is rotated by an angle uniform in +-``rotation`` degrees, its centre is
    uniform over the image. The two layers are summed, blurred by a Gaussian of std ``blur_sigma`` times
    the side (5 px at 224 px) and *added* to the image, clamped to [0, 1]. If adding changes an image
    by less than ``invert_threshold`` on average (a bright image that saturates) and subtracting changes
    it more, the noise is subtracted instead (the official code's inversion rule).

    Args:
        images: ``[N, C, H, W]`` in [0, 1].
    Returns:
        ``(noisy_images, masks)``: masks ``[N, H, W]`` mark the pixels changed by more than 1/255.
    """
    n, c, h, w = images.shape
    g = generator
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    side = min(h, w)
    noise = torch.zeros(n, c, h, w)
    for i in range(n):
        for layer, rate in enumerate(blobs_per_image):
            for _ in range(_poisson_at_least_one(rate, g)):
                a = side * float(torch.empty(1).uniform_(*size_range, generator=g))  # side of the square
                cy = float(torch.rand(1, generator=g)) * h
                cx = float(torch.rand(1, generator=g)) * w
                theta = np.deg2rad(float(torch.empty(1).uniform_(-rotation, rotation, generator=g)))
                u = (yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)  # rotated coordinates
                v = -(yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
                square = ((u.abs() <= a / 2) & (v.abs() <= a / 2)).float()
                if layer == 0:  # coloured: one colour per blob (grey when C == 1)
                    colour = torch.rand(c if c == 3 else 1, generator=g).expand(c)
                else:  # white
                    colour = torch.ones(c)
                noise[i] += colour.view(c, 1, 1) * square
    noise = _gaussian_blur(noise, blur_sigma * side)
    up, down = (images + noise).clamp(0, 1), (images - noise).clamp(0, 1)
    d_up = (up - images).flatten(1).mean(1)
    d_down = (images - down).flatten(1).mean(1)
    invert = (d_up < invert_threshold) & (d_down > d_up)
    out = torch.where(invert.view(n, 1, 1, 1), down, up)
    masks = ((out - images).abs().amax(1) > 1 / 255).float()
    return out, masks


def smooth_blobs(images: torch.Tensor, strength: float = 0.4, generator: torch.Generator | None = None):
    """Large smooth intensity bumps (a second, different pseudo-anomaly). Returns ``(images, masks)``."""
    n, c, h, w = images.shape
    coarse = torch.randn(n, 1, 4, 4, generator=generator)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    masks = (field > 1.0).float()
    out = images + strength * torch.tanh(field - 1.0).clamp(min=0).unsqueeze(1)
    return out.clamp(0, 1), masks


def local_shuffle(images: torch.Tensor, patch: int = 8, p: float = 0.1,
                  generator: torch.Generator | None = None):
    """Shuffle the pixels inside a few random ``patch`` x ``patch`` cells. Returns ``(images, masks)``."""
    n, c, h, w = images.shape
    out, masks = images.clone(), torch.zeros(n, h, w)
    for i in range(n):
        for y in range(0, h - patch + 1, patch):
            for x in range(0, w - patch + 1, patch):
                if torch.rand(1, generator=generator) < p:
                    cell = out[i, :, y:y + patch, x:x + patch].reshape(c, -1)
                    perm = torch.randperm(cell.shape[1], generator=generator)
                    out[i, :, y:y + patch, x:x + patch] = cell[:, perm].reshape(c, patch, patch)
                    masks[i, y:y + patch, x:x + patch] = 1
    return out, masks
