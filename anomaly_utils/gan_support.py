"""Plumbing of lessons 03 (AnoGAN) and 04 (GANomaly): cached fitting, subsets, tables and a score-by-kind plot.

Nothing here is part of the methods the lessons teach; it keeps the notebooks' cells about the method.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import metrics
from .detector import remember_input
from .profiles import data_fingerprint, load_or_train


def cached_fit(detector, name: str, config: dict, train_set, **fit_kwargs):
    """``detector.fit(train_set)`` once per configuration; later calls load the weights from ``data/cache/``.

    ``detector.model`` (an ``nn.Module``) is what is cached, keyed by ``config``, the exact training images
    (``data_fingerprint``) and the model's source code. ``detector.history`` gets the fit's history, with
    ``train_seconds`` (of the run that trained it), and ``detector.from_cache`` says whether the weights came
    from the cache. A detector loaded from the cache did not run ``fit``, so what ``fit`` records for
    ``predict``'s input check is recorded here too. Returns ``(detector, train_seconds or None)``.
    """

    def train_fn(model):
        start = time.perf_counter()
        history = detector.fit(train_set, **fit_kwargs).history
        return {**history, "train_seconds": time.perf_counter() - start}

    key = {**config, "data": data_fingerprint(train_set.images)}
    detector.model, detector.history, detector.from_cache = load_or_train(detector.model, name, key, train_fn)
    detector.model.eval()
    remember_input(detector, train_set.images)
    return detector, detector.history.get("train_seconds")


def balanced_subset(dataset, n_per_label: int | None, seed: int = 0):
    """At most ``n_per_label`` normal and ``n_per_label`` anomalous items of ``dataset``, drawn at random
    (seeded), in the data set's order; the whole data set for ``None``."""
    if n_per_label is None:
        return dataset
    g = torch.Generator().manual_seed(seed)
    keep = []
    for label in (0, 1):
        idx = torch.nonzero(dataset.labels == label)[:, 0]
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n_per_label]])
    return dataset.subset(torch.cat(keep).sort().values)


def print_table(header, rows, digits: int = 3) -> None:
    """A Markdown table; numbers with ``digits`` decimals, ``None`` as "–", strings as they are."""
    def cell(v):
        return v if isinstance(v, str) else "–" if v is None else f"{v:.{digits}f}"
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(cell(v) for v in r) + " |")


def auroc_against_normal(scores, kinds, normal: str = "good") -> dict:
    """Image AUROC of each kind of item against the ``normal`` items: ``{kind: AUROC}`` (normal left out)."""
    scores, kinds = np.asarray(scores, dtype=float), np.asarray(kinds)
    base = scores[kinds == normal]
    out = {}
    for kind in dict.fromkeys(kinds.tolist()):
        if kind != normal:
            s = scores[kinds == kind]
            out[kind] = metrics.image_auroc(np.r_[np.zeros(len(base)), np.ones(len(s))], np.r_[base, s])
    return out


def plot_scores_by_kind(ax, scores, kinds, order=("good", "p=1/3", "p=2/3", "defective"), title: str = ""):
    """One column of dots per kind of item (e.g. ELPV's defect probabilities), its median as a bar."""
    scores, kinds = np.asarray(scores, dtype=float), np.asarray(kinds)
    rng = np.random.default_rng(0)
    order = [k for k in order if (kinds == k).any()]
    for j, kind in enumerate(order):
        s = scores[kinds == kind]
        ax.plot(j + rng.uniform(-0.2, 0.2, len(s)), s, "o", ms=3, alpha=0.5, color=f"C{j}")
        ax.hlines(np.median(s), j - 0.3, j + 0.3, color="k", lw=2)
    ax.set_xticks(range(len(order)), [f"{k}\n({int((kinds == k).sum())})" for k in order])
    ax.set_xlabel("expert's defect probability (number of cells)")
    ax.set_ylabel("anomaly score")
    ax.set_title(title)
    return ax
