"""Plumbing of lessons 05 (autoencoders) and 06 (gradient projection): what the lessons use but do not teach.

* ``add_to_class`` -- add a method to a class defined in an earlier cell (as in d2l), so that a long class can be
  written in several short cells;
* ``train_epochs`` -- the plain Adam loop over mini-batches of images with a progress bar and per-epoch means of
  every loss part (the loss itself is the lesson's);
* ``with_and_without_outline`` -- each image plain and with its mask outlined (thin defects hide under an outline);
* ``show_rows`` -- a grid of image rows and map rows, every map row on one colour scale with its colour bar.
"""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from .profiles import seed_everything
from .viz import MAP_CMAP, _as_hwc, _np, show_grid


def add_to_class(cls):
    """Decorator: ``@add_to_class(C)`` on a function makes it the method ``C.<function name>``."""
    def register(fn):
        setattr(cls, fn.__name__, fn)
        return fn
    return register


def train_epochs(model: torch.nn.Module, images: torch.Tensor, loss_fn, epochs: int, batch_size: int, lr: float,
                 seed: int = 0, device="cpu", desc: str = "training", progress: bool = True) -> dict:
    """Train ``model`` in place with Adam on shuffled mini-batches of ``images`` [N, C, H, W].

    ``loss_fn(x) -> {"loss": scalar, other parts...}`` (the part ``"loss"`` is minimised). Returns the history
    ``{part: [mean per epoch]}`` plus ``"seconds"`` (the training time).
    """
    seed_everything(seed)
    start = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {}
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        sums, n = {}, 0
        for batch in torch.randperm(len(images)).split(batch_size):
            x = images[batch].to(device)
            parts = loss_fn(x)
            opt.zero_grad()
            parts["loss"].backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch)
            n += len(batch)
        for k, v in sums.items():
            history.setdefault(k, []).append(v / n)
    history["seconds"] = time.perf_counter() - start
    return history


def show_rows(rows: dict, masks=None, col_titles=None, size: float = 1.5, map_label: str = "anomaly map"):
    """A grid with one row per entry of ``rows`` (``{row name: ([N, C, H, W] or [N, H, W], is_map)}``).

    Image rows are drawn in grey (or colour); every map row uses one colour scale (its own minimum to its
    99.9th percentile) with a colour bar at its right, so the maps of one row can be compared by brightness.
    ``masks`` [N, H, W] are outlined on every panel.
    """
    masks = _np(masks)
    n = len(next(iter(rows.values()))[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n + 1.0, size * len(rows)), squeeze=False)
    for r, (name, (values, is_map)) in enumerate(rows.items()):
        values = _np(values)
        if is_map:
            values = values[:, 0] if values.ndim == 4 else values
            vmin, vmax = float(values.min()), float(np.quantile(values, 0.999))
        for k, ax in enumerate(axes[r]):
            if is_map:
                im = ax.imshow(values[k], cmap=MAP_CMAP, vmin=vmin, vmax=max(vmax, vmin + 1e-12))
            else:
                img = _as_hwc(values[k])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if masks is not None and masks[k].any():
                ax.contour(masks[k], levels=[0.5], colors="cyan" if is_map else "red", linewidths=0.8)
            if r == 0 and col_titles is not None:
                ax.set_title(str(col_titles[k]), fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=8)
        if is_map:
            fig.colorbar(im, ax=axes[r].tolist(), fraction=0.02, pad=0.01).set_label(map_label, fontsize=7)
    return fig


def with_and_without_outline(images, masks, titles, ncols: int = 6, size: float = 1.8):
    """Each image twice: plain (a thin defect hides under its outline) and with its mask outlined in red."""
    images, masks = torch.as_tensor(images), torch.as_tensor(masks)
    pairs = torch.stack([images, images], 1).flatten(0, 1)
    pair_masks = torch.stack([torch.zeros_like(masks), masks], 1).flatten(0, 1)
    pair_titles = [t for title in titles for t in (title, "outlined")]
    return show_grid(pairs, pair_masks, pair_titles, ncols=ncols, size=size)
