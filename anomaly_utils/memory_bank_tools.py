"""Plumbing of lesson 07 (memory banks): cached backbone passes, timing, the val-study table, result tables.

Nothing here is what the lesson teaches; the methods are in ``anomaly_utils.lessons.memory_bank``.
"""

from __future__ import annotations

import numpy as np
import torch

from .detector import ms_per_image  # noqa: F401 (the notebooks import it from here)


def stage_outputs(extractor, images: torch.Tensor, batch_size: int = 32) -> dict:
    """``{block: [N, C_b, h_b, w_b]}``: the backbone's stage outputs for ``images``, computed once, on the CPU.

    Several embeddings (pooling, upsampling, blocks) can then be built from one backbone pass per image set.
    """
    device = next(extractor.parameters()).device
    with torch.no_grad():
        outs = [[f.cpu() for f in extractor(images[i:i + batch_size].to(device))]
                for i in range(0, len(images), batch_size)]
    return {b: torch.cat([o[j] for o in outs]) for j, b in enumerate(extractor.blocks)}


def few(dataset, n: int | None):
    """At most ``n`` normal and ``n`` anomalous items of ``dataset`` (the first of each), for quick profiles."""
    if n is None:
        return dataset
    labels = dataset.labels.numpy()
    keep = np.r_[np.flatnonzero(labels == 0)[:n], np.flatnonzero(labels == 1)[:n]]
    return dataset.subset(sorted(keep.tolist()))




def _fmt(v, nd: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"


def print_rows(rows: list) -> None:
    """A Markdown table of ``result_row`` dicts: method, data, image AUROC, pixel AUROC, AUPRO, fit s, ms / image."""
    width = max(len(r["method"]) for r in rows)
    print(f"| {'method':{width}s} | data | image AUROC | pixel AUROC | AUPRO | fit s | ms / image |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']:{width}s} | {r['dataset']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | "
              f"{_fmt(r['aupro'])} | {_fmt(r['train_seconds'], 1)} | {_fmt(r['infer_ms_per_image'], 1)} |")


def criterion(means: dict) -> float:
    """The number settings are chosen by: mean of image AUROC and AUPRO with masks, image AUROC without."""
    return means["image_auroc"] if means.get("aupro") is None else (means["image_auroc"] + means["aupro"]) / 2


def study_table(results: dict, family: str, tolerance: float = 0.005) -> dict:
    """Print the val study of one family and return the chosen candidate per method.

    ``results``: ``{(method, candidate, category): {"image_auroc", "pixel_auroc", "aupro"}}``. Means over the
    categories; the chosen candidate is the first listed (the official variants come first) whose ``criterion``
    is within ``tolerance`` of the best: differences smaller than that are not worth a departure from the paper.
    """
    chosen = {}
    methods = list(dict.fromkeys(m for m, _, _ in results))
    print(f"{family}, validation split, mean over {len({c for _, _, c in results})} categories")
    print(f"| {'method':18s} | {'candidate':40s} | image AUROC | pixel AUROC | AUPRO | criterion | chosen |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        cands = list(dict.fromkeys(c for mm, c, _ in results if mm == m))
        means = {}
        for c in cands:
            vals = [v for (mm, cc, _), v in results.items() if mm == m and cc == c]
            means[c] = {k: (None if vals[0].get(k) is None else float(np.mean([v[k] for v in vals])))
                        for k in ("image_auroc", "pixel_auroc", "aupro")}
        best = max(criterion(v) for v in means.values())
        chosen[m] = next(c for c in cands if criterion(means[c]) >= best - tolerance)
        for c in cands:
            v = means[c]
            print(f"| {m:18s} | {c:40s} | {_fmt(v['image_auroc'])} | {_fmt(v['pixel_auroc'])} | {_fmt(v['aupro'])} | "
                  f"{criterion(v):.3f} | {'✓' if c == chosen[m] else ''} |")
    return chosen


def max_patch_cells(patch_scores: torch.Tensor):
    """``[N, h, w]`` patch scores -> ``(row [N], col [N], on_border [N])`` of each image's highest patch."""
    n, h, w = patch_scores.shape
    flat = patch_scores.reshape(n, -1).argmax(1)
    row, col = flat // w, flat % w
    return row, col, (row == 0) | (col == 0) | (row == h - 1) | (col == w - 1)
