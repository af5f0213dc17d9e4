"""Plumbing of lesson 09 (knowledge distillation): what the lesson uses but does not teach.

* ``penalty_images``: the stand-in for ImageNet in EfficientAD's penalty, crops of scikit-image's example photos
  (never its brick / grass / gravel photos, which are the course's texture data);
* ``map_contrast``: the mean anomaly map on defect pixels over the mean on the pixels of normal images;
* ``choose_step``: one training length per data family from the validation curves of its categories;
* ``ms_per_image``: inference time, best of a few passes;
* ``print_table`` and ``family_means``: the lesson's results tables;
* ``plot_val_curves``: validation metrics against training steps;
* ``Distiller``: what the lesson's detectors share that is not the method (argument checks, training through the
  checkpoint cache, weights kept at chosen steps), ``add_to_class`` (a class written over several cells, as in
  d2l), and ``teacher_features``, ``match_size``, ``random_crops``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .detector import ms_per_image as _ms_per_image
from .profiles import data_fingerprint, load_or_train

# scikit-image's example photos that are not the textures' photos (brick, grass, gravel): natural images
# (a person, a cat, a cup, a rocket, a camera man, coins, the moon, a galaxy field, a stained tissue, printed
# text, a clock) for EfficientAD's penalty, which in the paper uses ImageNet.
PENALTY_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "hubble_deep_field",
                  "immunohistochemistry", "page", "clock", "text")


def penalty_images(n: int, size, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """``n`` random crops of scikit-image's example photos, resized to ``size``: ``[n, channels, H, W]`` in [0, 1].

    ``size`` is an int or ``(H, W)``. Each crop is a random window with the target's aspect ratio and between 1/4
    and all of the photo's height, resized with antialiasing; ``channels=1`` gives the grey mean of the colours.
    The photos are ``PENALTY_PHOTOS``: never brick, grass or gravel (the texture data).
    """
    import skimage.data

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}.")
    height, width = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    rng = np.random.default_rng(seed)
    photos = []
    for name in PENALTY_PHOTOS:
        p = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
        photos.append(np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p[..., :3])
    out = torch.empty(n, channels, height, width)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        h = int(rng.integers(max(8, p.shape[0] // 4), p.shape[0] + 1))
        w = min(p.shape[1], max(1, round(h * width / height)))
        y, x = rng.integers(0, p.shape[0] - h + 1), rng.integers(0, p.shape[1] - w + 1)
        crop = torch.from_numpy(np.ascontiguousarray(p[y:y + h, x:x + w])).permute(2, 0, 1)[None]
        crop = F.interpolate(crop, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]
        out[i] = crop.mean(0, keepdim=True) if channels == 1 else crop
    return out.clamp(0, 1)


def map_contrast(anomaly_maps, masks, labels) -> float:
    """Mean of the maps on defect pixels divided by their mean on the pixels of normal images (> 1: defects hotter)."""
    maps, masks = torch.as_tensor(anomaly_maps).float(), torch.as_tensor(masks).bool()
    normal = torch.as_tensor(labels) == 0
    if not masks.any() or not normal.any():
        raise ValueError("map_contrast needs defect pixels (masks) and at least one normal image (label 0).")
    return float(maps[masks].mean() / maps[normal].mean())


def choose_step(curves: dict) -> tuple[int, dict]:
    """One training length for a data family, chosen on the validation split.

    ``curves``: ``{category: [(step, image_auroc, pixel_auroc or None), ...]}`` with the same steps for every
    category. The criterion per step is the mean over categories of (image AUROC + pixel AUROC) / 2 (image AUROC
    alone where there are no masks); ties go to the shorter training. Returns ``(step, {step: criterion})``.
    """
    if not curves:
        raise ValueError("choose_step needs the validation curve of at least one category.")
    steps = [c[0] for c in next(iter(curves.values()))]
    score = {}
    for k, step in enumerate(steps):
        vals = []
        for name, curve in curves.items():
            if len(curve) != len(steps) or curve[k][0] != step:
                raise ValueError(f"category {name!r} was checked at other steps than the others; use one schedule.")
            _, ia, pa = curve[k]
            vals.append(ia if pa is None else (ia + pa) / 2)
        score[step] = float(np.mean(vals))
    best = max(steps, key=lambda s: (round(score[s], 6), -s))
    return best, score


def ms_per_image(fn, images: torch.Tensor, batch_size: int = 32, repeats: int = 2) -> float:
    """:func:`anomaly_utils.detector.ms_per_image` with batches of 32."""
    return _ms_per_image(fn, images, batch_size, repeats)


def _fmt(v, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def print_table(rows: list[dict], extra: str | None = None) -> None:
    """A markdown table of ``result_row`` dicts (``extra``: the name of one more column, e.g. ``"steps"``)."""
    head = f"| {'method':22s} | {'data':24s} | image AUROC | pixel AUROC | AUPRO | fit s | ms / image |"
    print(head + (f" {extra} |" if extra else ""))
    print("|---" * (7 + bool(extra)) + "|")
    for r in rows:
        line = (f"| {r['method']:22s} | {r['dataset']:24s} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | "
                f"{_fmt(r['aupro'])} | {_fmt(r['train_seconds'], 1)} | {_fmt(r['infer_ms_per_image'], 1)} |")
        print(line + (f" {r.get(extra, '–')} |" if extra else ""))


def family_means(rows: list[dict], prefix: str, methods, keys=("image_auroc", "pixel_auroc", "aupro")) -> dict:
    """``{method: {key: mean over the rows whose dataset starts with prefix}}`` (None where a key is missing)."""
    out = {}
    for m in methods:
        sel = [r for r in rows if r["method"] == m and r["dataset"].startswith(prefix)]
        out[m] = {k: (float(np.mean([r[k] for r in sel])) if sel and all(r[k] is not None for r in sel) else None)
                  for k in keys}
    return out


def plot_val_curves(ax, curves: dict, key: int = 2, label: str = "pixel AUROC (val)", chosen=None):
    """Validation curves ``{name: [(step, image_auroc, pixel_auroc), ...]}`` against the training step."""
    for name, curve in curves.items():
        ax.plot([c[0] for c in curve], [c[key] for c in curve], "o-", ms=3, label=name)
    if chosen is not None:
        ax.axvline(chosen, color="k", ls=":", lw=1, label="chosen on val")
    ax.set_xlabel("training step")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    return ax


# --------------------------------------------------------------------------- shared by the lesson's detectors

def add_to_class(cls):
    """Decorator that adds a function to ``cls`` as a method: a class can be written over several cells (d2l's idea)."""
    def add(fn):
        setattr(cls, fn.__name__, fn)
        return fn
    return add


def match_size(x: torch.Tensor, size) -> torch.Tensor:
    """``x [N, C, h, w]`` resized (bilinear) to ``size`` unless it has that size already.

    Strided layers round odd sizes differently (EfficientNet-Lite0's fixed padding rounds down, a padded
    stride-2 convolution rounds up), so a student's grid can be one cell off the teacher's.
    """
    size = tuple(int(v) for v in size)
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def random_crops(x: torch.Tensor, crop, generator: torch.Generator) -> torch.Tensor:
    """One random ``crop`` x ``crop`` window of each image of ``x [N, C, H, W]`` (``x`` itself when ``crop`` is None
    or not smaller than the images; a side shorter than ``crop`` is kept whole)."""
    n, _, h, w = x.shape
    if crop is None or (crop >= h and crop >= w):
        return x
    ch, cw = min(crop, h), min(crop, w)
    ys = torch.randint(0, h - ch + 1, (n,), generator=generator).tolist()
    xs = torch.randint(0, w - cw + 1, (n,), generator=generator).tolist()
    return torch.stack([x[i, :, y:y + ch, x0:x0 + cw] for i, (y, x0) in enumerate(zip(ys, xs))])


@torch.no_grad()
def teacher_features(teacher, images: torch.Tensor, batch_size: int = 32) -> list:
    """The frozen teacher's outputs for many images, in batches: a list (one per stage) of ``[N, C, h, w]`` on the CPU."""
    device = next(teacher.parameters()).device
    batches = [[f.cpu() for f in teacher(images[i:i + batch_size].to(device))] for i in range(0, len(images), batch_size)]
    return [torch.cat(f) for f in zip(*batches)]


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


class Distiller:
    """Plumbing of the lesson's detectors (not the method): argument checks, cached training, snapshots.

    A subclass sets ``trained`` (the attribute that holds the trained ``nn.Module``), calls ``check_args`` in its
    ``__init__`` and ``fit_cached`` in its ``fit``, and calls ``keep_snapshot`` after every training step.
    """

    trained = "model"

    def check_args(self, steps, batch_size, lr, snapshots=(), crop=None, **positive) -> None:
        """Clear errors for bad arguments (``positive``: more names that must be positive integers)."""
        _positive_int("steps", steps)
        _positive_int("batch_size", batch_size)
        for name, value in positive.items():
            _positive_int(name, value)
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive learning rate, got {lr!r}.")
        bad = [s for s in snapshots if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= steps]
        if bad:
            raise ValueError(f"snapshots must be training steps between 1 and steps={steps}; got {bad}.")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 32):
            raise ValueError(f"crop must be None (whole images) or a side of at least 32 pixels, got {crop!r}.")

    def fit_cached(self, model, name: str, config: dict, train_fn, images: torch.Tensor):
        """Train ``model`` with ``train_fn(model) -> history`` unless the checkpoint cache has this ``config`` on
        these ``images`` (``load_or_train``); sets ``history``, ``from_cache`` and ``train_seconds``."""
        config = {**config, "data": data_fingerprint(images)}
        model, self.history, self.from_cache = load_or_train(model, name, config, train_fn,
                                                             use_cache=getattr(self, "use_cache", True))
        self.train_seconds = self.history.get("seconds")
        if self.steps in self.snapshots:  # the last step's weights are the model's (not stored twice in the cache)
            self.history.setdefault("snapshots", {})[self.steps] = copy.deepcopy(model.state_dict())
        return model

    def keep_snapshot(self, history: dict, step: int, model) -> None:
        """Keep a copy of ``model``'s weights in ``history["snapshots"]`` if ``step`` is one of ``self.snapshots``
        (the last step's are the trained model's own: ``fit_cached`` adds them)."""
        if step in self.snapshots and step != self.steps:
            history.setdefault("snapshots", {})[step] = copy.deepcopy(model.state_dict())

    def restore(self, step: int):
        """Load the weights kept at training step ``step`` (one of ``snapshots``) into the trained module."""
        kept = getattr(self, "history", None) or {}
        if step not in kept.get("snapshots", {}):
            raise ValueError(f"no weights kept at step {step}: the snapshots are {sorted(kept.get('snapshots', {}))} "
                             f"(pass snapshots=({step}, ...) to the constructor, then fit).")
        getattr(self, self.trained).load_state_dict(kept["snapshots"][step])
        return self
