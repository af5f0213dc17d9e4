"""Synthetic anomalies.

Two families, kept apart on purpose:

* **Test defects** (``TEST_FAMILIES``): what ``load_textures`` puts into its test crops --
  ``scratch``, ``hole``, ``stain``, ``thread``, ``cutpaste``. Modelled on MVTec AD's texture defects
  (cuts, holes, contamination and colour spots, threads, foreign material): small, but plain to see
  for a person at the size the lessons show them. Each returns the defective image and its exact mask.
* **Training anomalies** (``confetti_noise``, ``smooth_blobs``, ``local_shuffle``): what a
  method may use as pseudo-anomalies in training (FCDD's outlier exposure, for example). None of
  them is a test family, so a method cannot score well by having learned the test defects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TEST_FAMILIES = ("scratch", "hole", "stain", "thread", "cutpaste")
TRAIN_FAMILIES = ("confetti", "blobs", "shuffle")


def _grid(size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(size: int, rng, scale: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: bicubic upsampling of a coarse random grid."""
    cells = max(2, int(size / scale))
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()


def _blend(image: torch.Tensor, target, alpha: np.ndarray) -> torch.Tensor:
    """``image`` where ``alpha`` = 0, ``target`` where ``alpha`` = 1 (``target``: a number or an image)."""
    a = torch.from_numpy(alpha.astype(np.float32))
    return (image * (1 - a) + target * a).clamp(0, 1)


def _curve_distance(points: np.ndarray, size: int) -> np.ndarray:
    """Distance of every pixel of a ``size`` x ``size`` image to a polyline given by ``points [K, 2]``."""
    yy, xx = _grid(size)
    dist = np.full((size, size), np.inf, dtype=np.float32)
    for y, x in points:
        dist = np.minimum(dist, np.hypot(yy - y, xx - x))
    return dist


def _line_mask(dist: np.ndarray, half_width: float):
    """Anti-aliased line profile in [0, 1] and its mask (pixels at least half covered)."""
    profile = np.clip(half_width + 0.5 - dist, 0, 1)
    return profile, profile >= 0.5


def _stroke(curve: np.ndarray, size: int, rng):
    """A line along ``curve``, 14-18 px wide at 128 px: its distance map, half-width, profile and mask."""
    dist, half_width = _curve_distance(curve[::2], size), max(0.5, size / 128 * rng.uniform(7.0, 9.0))
    return (dist, half_width, *_line_mask(dist, half_width))


def _rounded(dist: np.ndarray, half_width: float, shade: float = 0.5) -> torch.Tensor:
    """Shading across a line, as on a round fibre or groove: 1 on its centre line, ``1 - shade`` at its edge."""
    return torch.from_numpy((1 - shade * np.clip(dist / half_width, 0, 1) ** 2).astype(np.float32))


def scratch(image: torch.Tensor, rng, photo=None):
    """A cut: a short, slightly bent groove, much darker (or lighter) than the texture, 14-18 px wide at 128 px."""
    s = image.shape[-1]
    p0 = rng.uniform(0.2 * s, 0.8 * s, 2)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.4, 0.7) * s
    p2 = np.clip(p0 + length * np.array([np.sin(angle), np.cos(angle)]), 1, s - 2)
    p1 = (p0 + p2) / 2 + rng.normal(0, 0.06 * s, 2)  # control point bends the line
    t = np.linspace(0, 1, 4 * s)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier
    dist, half_width, profile, mask = _stroke(curve, s, rng)
    target = image * 0.2 if rng.random() < 0.7 else 0.7 + 0.3 * image  # darker or lighter, grain kept
    target = target * _rounded(dist, half_width)  # shaded like a groove: darker towards its edges
    return _blend(image, target, 0.9 * profile), torch.from_numpy(mask.astype(np.float32))


def hole(image: torch.Tensor, rng, photo=None):
    """A hole: an irregular, nearly black pit with a light rim, about 36-51 px across at 128 px."""
    s = image.shape[-1]
    yy, xx = _grid(s)
    cy, cx = rng.uniform(0.2 * s, 0.8 * s, 2)
    radius = rng.uniform(0.14, 0.2) * s
    r = np.hypot(yy - cy, xx - cx) / radius + 0.25 * _smooth_noise(s, rng, scale=max(2.0, radius))
    inside = np.clip((1.0 - r) / 0.15 + 0.5, 0, 1)
    rim = np.clip(1 - np.abs(r - 1.15) / 0.15, 0, 1) * (1 - inside)
    out = _blend(image, image * 0.25, inside)  # dark inside, the grain kept
    out = _blend(out, 0.85, 0.6 * rim)
    return out, torch.from_numpy((inside > 0.5).astype(np.float32))


def stain(image: torch.Tensor, rng, photo=None):
    """Contamination: a ragged, flat blob that hides the texture under a lighter or darker colour."""
    s = image.shape[-1]
    yy, xx = _grid(s)
    cy, cx = rng.uniform(0.25 * s, 0.75 * s, 2)
    ry, rx = rng.uniform(0.12, 0.2, 2) * s
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
    v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
    r = np.sqrt(u**2 + v**2) + 0.3 * _smooth_noise(s, rng, scale=max(ry, rx))  # ragged edge
    alpha = np.clip((1 - r) / 0.2 + 0.5, 0, 1)
    level = float(image.mean()) + rng.choice([-1, 1]) * rng.uniform(0.3, 0.4)
    out = _blend(image, float(np.clip(level, 0.05, 0.95)), 0.9 * alpha)
    return out, torch.from_numpy((alpha > 0.5).astype(np.float32))


def thread(image: torch.Tensor, rng, photo=None):
    """A loose thread: a long, wavy, round fibre across the crop, 14-18 px wide at 128 px, lighter or darker than the texture."""
    s = image.shape[-1]
    centre = rng.uniform(0.35 * s, 0.65 * s, 2)  # the thread crosses the middle of the crop
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.6, 0.9) * s
    t = np.linspace(-length / 2, length / 2, 4 * s)
    direction, normal = np.array([np.sin(angle), np.cos(angle)]), np.array([np.cos(angle), -np.sin(angle)])
    wave = rng.uniform(0.05, 0.1) * s * np.sin(2 * np.pi * t / (rng.uniform(0.2, 0.4) * s) + rng.uniform(0, 6))
    curve = centre + t[:, None] * direction + wave[:, None] * normal
    curve = curve[(curve >= 0).all(1) & (curve <= s - 1).all(1)]
    dist, half_width, profile, mask = _stroke(curve, s, rng)
    level = float(np.clip(float(image.mean()) + rng.choice([-1, 1]) * 0.35, 0.05, 0.95))
    target = level * _rounded(dist, half_width)  # a round fibre: darker towards its edges
    return _blend(image, target, 0.9 * profile), torch.from_numpy(mask.astype(np.float32))


def cutpaste(image: torch.Tensor, rng, photo=None):
    """Foreign material: a patch of *another* texture photo, rotated, with this crop's mean grey level and contrast.

    Only its structure differs from the texture around it: per-pixel grey-level statistics cannot see it.

    ``photo`` is the photo the crop came from; the patch is cut from a texture of another kind.
    """
    from .data import texture_photo

    s = image.shape[-1]
    ph = rng.integers(max(3, int(0.3 * s)), max(4, int(0.45 * s)) + 1)
    pw = rng.integers(max(3, int(0.3 * s)), max(4, int(0.45 * s)) + 1)
    # brick's regular courses in grass or gravel; grass or gravel in brick (or in an unknown photo)
    host_is_brick = photo is None or np.array_equal(photo, texture_photo("brick"))
    source = texture_photo(str(rng.choice(["grass", "gravel"])) if host_is_brick else "brick")
    scale = max(1, round(128 / s))  # cut at about the crops' scale (a 128-px crop resized to s)
    sy, sx = rng.integers(0, source.shape[0] - ph * scale), rng.integers(0, source.shape[1] - pw * scale)
    patch = source[sy:sy + ph * scale:scale, sx:sx + pw * scale:scale]
    patch = torch.from_numpy(np.ascontiguousarray(np.rot90(patch, rng.integers(1, 4)))).float()
    ph, pw = patch.shape
    y, x = rng.integers(0, s - ph + 1), rng.integers(0, s - pw + 1)
    target = image[y:y + ph, x:x + pw]
    patch = (patch - patch.mean()) / patch.std().clamp(min=1e-6) * target.std() + target.mean()  # same mean and std
    out = image.clone()
    out[y:y + ph, x:x + pw] = patch
    mask = torch.zeros(s, s)
    mask[y:y + ph, x:x + pw] = 1
    return out.clamp(0, 1), mask


_TEST = {"scratch": scratch, "hole": hole, "stain": stain, "thread": thread, "cutpaste": cutpaste}


def apply_defect(family: str, image: torch.Tensor, photo=None, rng=None):
    """Put one defect of ``family`` into a grey image ``[H, W]``; returns ``(image, mask)``."""
    if family not in _TEST:
        raise ValueError(f"unknown defect family {family!r}; the test families are {TEST_FAMILIES}.")
    image = torch.as_tensor(image)
    if image.ndim != 2 or not image.is_floating_point():
        raise ValueError(f"apply_defect needs one grey float image [H, W] in [0, 1], got {image.dtype} of shape "
                         f"{list(image.shape)}" + (" (use image[0] for a [1, H, W] image)." if image.ndim == 3 else "."))
    rng = rng if rng is not None else np.random.default_rng()
    return _TEST[family](image, rng, photo)


# --------------------------------------------------------------------------- training anomalies

def _check_batch(images, what: str) -> None:
    """A clear error unless ``images`` is a float tensor ``[N, C, H, W]`` (the pseudo-anomaly generators' input)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        shape = list(images.shape) if hasattr(images, "shape") else type(images).__name__
        hint = " (add a batch dimension: images[None])" if getattr(images, "ndim", 0) == 3 else ""
        raise ValueError(f"{what} needs a float tensor [N, C, H, W] in [0, 1], got {shape}{hint}.")


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
    _check_batch(images, "confetti_noise")
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
                        blur_sigma: float = 5 / 224, invert_threshold: float = 0.025, darken: bool = True):
    """Confetti noise following the recipe of FCDD's official code (noise mode ``"confetti"``), for [0, 1] images.

    Per image, two layers of square blobs: *coloured* ones (one random colour per blob; a random grey on
    1-channel images) and *white* ones (value 1). The number of blobs of each layer is Poisson with mean
    ``blobs_per_image`` (the official per-pixel rates 1.8e-5 and 1.2e-5 times 224^2), redrawn while 0, so
    an image gets about 1.5 + 1.3 blobs. A blob's side is uniform in ``size_range`` times the image side
    (8..54 px at 224 px), it is rotated by an angle uniform in +-``rotation`` degrees, its centre is
    uniform over the image. The two layers are summed, blurred by a Gaussian of std ``blur_sigma`` times
    the side (5 px at 224 px) and *subtracted* from the image, clamped to [0, 1]: as in the official code
    (colour range -256..-1 and fill -255 on the 0-255 scale), confetti *darkens*. If darkening changes an
    image by less than ``invert_threshold`` grey levels **on the 0-255 scale** on average (an image that is
    already black where the blobs fall) and brightening changes it more, the noise is added instead (the
    official code's inversion rule, ``OnlineSupervisor.invert_threshold = 0.025``).

    ``darken=False`` flips the sign: the course's earlier variant brightened, and compared 0.025 with images
    in [0, 1]; ``darken=False, invert_threshold=0.025 * 255`` reproduces it exactly, for comparison only.

    Args:
        images: ``[N, C, H, W]`` in [0, 1].
    Returns:
        ``(noisy_images, masks)``: masks ``[N, H, W]`` mark the pixels changed by more than 1/255.
    """
    _check_batch(images, "fcdd_confetti_noise")
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
    noise = _gaussian_blur(noise, blur_sigma * side) * (-1.0 if darken else 1.0)  # official: negative noise
    first, flipped = (images + noise).clamp(0, 1), (images - noise).clamp(0, 1)
    d_first = (first - images).abs().flatten(1).mean(1) * 255  # mean change in grey levels (0-255 scale)
    d_flipped = (flipped - images).abs().flatten(1).mean(1) * 255
    invert = (d_first < invert_threshold) & (d_flipped > d_first)
    out = torch.where(invert.view(n, 1, 1, 1), flipped, first)
    masks = ((out - images).abs().amax(1) > 1 / 255).float()
    return out, masks


def smooth_blobs(images: torch.Tensor, strength: float = 0.4, generator: torch.Generator | None = None):
    """Large smooth intensity bumps (a second, different pseudo-anomaly). Returns ``(images, masks)``."""
    _check_batch(images, "smooth_blobs")
    n, c, h, w = images.shape
    coarse = torch.randn(n, 1, 4, 4, generator=generator)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    masks = (field > 1.0).float()
    out = images + strength * torch.tanh(field - 1.0).clamp(min=0).unsqueeze(1)
    return out.clamp(0, 1), masks


def local_shuffle(images: torch.Tensor, patch: int = 8, p: float = 0.1,
                  generator: torch.Generator | None = None):
    """Shuffle the pixels inside a few random ``patch`` x ``patch`` cells. Returns ``(images, masks)``."""
    _check_batch(images, "local_shuffle")
    n, c, h, w = images.shape
    if isinstance(patch, bool) or not isinstance(patch, int) or not 1 <= patch <= min(h, w):
        raise ValueError(f"local_shuffle: patch must be a whole number from 1 to the image side ({min(h, w)}), got "
                         f"{patch!r}: no cell of that size fits, nothing would be shuffled.")
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
