"""Plumbing of lesson 08 (CFA): argument checks, the validation schedule, tables and plots.

The method itself (descriptor, memory banks, losses, training loop, detector) is written in
``notebooks/08_cfa.ipynb`` and exported to ``anomaly_utils.lessons.cfa``; this module holds what the lesson
does not teach: checking the constructor's arguments, training with a validation check after every epoch and
restoring the epoch chosen there, and printing tables.
"""

from __future__ import annotations

import copy

import numpy as np

from . import argcheck, metrics
from .detector import ms_per_image  # noqa: F401 (the notebooks import it from here)

BANKS = ("coreset", "location_mean", "ema")
INITS = ("identity", "random")


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return value


def check_cfa_args(embedding, bank, gamma_c, gamma_d, K, J, r, learn_r, alpha, beta, init, score_k, epochs, lr,
                   batch_size, sigma, squared_score, seed, progress, on_epoch) -> dict:
    """CFA's constructor arguments, checked: a ``ValueError`` that names the argument and what to give."""
    bank = argcheck.choice("bank", bank, BANKS)
    if gamma_c is None:  # the default: a coreset of 4 T (ours), T features for the paper's and the official bank
        gamma_c = 0.25 if bank == "coreset" else 1
    gamma_c = argcheck.real("gamma_c", gamma_c, low=0, low_open=True,
                            why="the memory bank holds T / gamma_c features, T = patches per image")
    if gamma_c < 1 and bank != "coreset":
        raise ValueError(f"gamma_c={gamma_c:g} < 1 asks for a memory bank larger than one image's T patches; only "
                         f"bank='coreset' can build one (bank={bank!r} summarises T features): use gamma_c >= 1 "
                         "or bank='coreset'.")
    gamma_d = argcheck.whole("gamma_d", gamma_d)
    K, J = argcheck.whole("K", K), argcheck.whole("J", J, minimum=0)
    if r != "auto":
        r = argcheck.real("r", r, low=0, why="the radius of the hyperspheres, or 'auto' for the data's scale")
    alpha = argcheck.real("alpha", alpha, low=0, why="the margin of the repulsion")
    beta = argcheck.real("beta", beta, low=0, high=1, low_open=True, why="the EMA rate of bank='ema'")
    init = argcheck.choice("init", init, INITS)
    if init == "identity" and gamma_d != 1:
        raise ValueError(f"init='identity' needs gamma_d=1 (phi keeps the D channels), got gamma_d={gamma_d}; "
                         "use init='random' to compress the descriptor.")
    if on_epoch is not None and not callable(on_epoch):
        raise ValueError(f"on_epoch must be None or a function on_epoch(epoch, detector), got {on_epoch!r}.")
    if embedding is not None and not hasattr(embedding, "batched"):
        raise ValueError(f"embedding must be a PatchEmbedding (lesson 07) or None, got {type(embedding).__name__}.")
    return dict(embedding=embedding, bank=bank, gamma_c=gamma_c, gamma_d=gamma_d, K=K, J=J, r=r,
                learn_r=_flag("learn_r", learn_r), alpha=alpha, beta=beta, init=init,
                score_k=argcheck.whole("score_k", score_k),
                epochs=argcheck.whole("epochs", epochs, minimum=0),
                lr=argcheck.real("lr", lr, low=0, low_open=True, why="AdamW's learning rate"),
                batch_size=argcheck.whole("batch_size", batch_size),
                sigma=argcheck.real("sigma", sigma, low=0, why="the Gaussian smoothing of the map"),
                squared_score=_flag("squared_score", squared_score), seed=argcheck.whole("seed", seed, minimum=0),
                progress=_flag("progress", progress), on_epoch=on_epoch)


def check_bank_size(det, n: int, h: int, w: int) -> int:
    """The memory bank's size M = T / gamma_c for ``n`` training images of ``h x w`` patches, or a clear error.

    The losses need the K + J nearest memorised features of every patch (fewer give a NaN repulsion loss); a coreset
    cannot keep more features than there are training patches; the paper's bank starts as k-means of one image's T.
    """
    T = h * w
    M = max(1, round(T / det.gamma_c))
    if M < max(det.K + det.J, det.score_k):
        raise ValueError(f"CFA needs the K + J = {det.K} + {det.J} = {det.K + det.J} nearest memorised features of every "
                         f"patch, but its memory bank holds only M = T / gamma_c = {h} x {w} / {det.gamma_c:g} = {M}; "
                         "lower K or J, lower gamma_c, or use larger images (more patches T).")
    if det.bank == "coreset" and M > n * T:
        raise ValueError(f"gamma_c={det.gamma_c:g} asks for a coreset of M = {M} features, but the {n} training images "
                         f"have only {n * T} patches; use gamma_c >= {T / (n * T):g} or more training images.")
    if det.bank == "ema" and M > T:
        raise ValueError(f"bank='ema' starts as k-means of one image's T = {T} patches, so it cannot hold M = {M}; "
                         "use gamma_c >= 1.")
    return M


def balanced_subset(dataset, n: int | None):
    """At most ``n`` normal and ``n`` anomalous items of ``dataset`` (the first ones); ``None`` keeps all."""
    if n is None:
        return dataset
    labels = dataset.labels
    idx = np.r_[np.flatnonzero(labels == 0)[:n], np.flatnonzero(labels == 1)[:n]]
    return dataset.subset(sorted(idx.tolist()))


def val_criterion(dataset, scores, maps) -> tuple[float, float | None]:
    """(image AUROC, pixel AUROC or None) of one validation check."""
    ia = metrics.image_auroc(dataset.labels, scores)
    pa = metrics.pixel_auroc(dataset.masks, maps) if dataset.has_masks and maps is not None else None
    return ia, pa


def fit_with_val_curve(make_cfa, train_dataset, val_dataset, max_epochs: int):
    """Train ``make_cfa(epochs=max_epochs, on_epoch=...)`` and check the validation split after every epoch.

    Returns ``(detector, curve)``; ``curve[e]`` = ``{"epoch", "image_auroc", "pixel_auroc", "state"}`` for
    e = 0 (the untrained phi) ... ``max_epochs``; ``state`` is what ``restore_epoch`` puts back.
    The detector is left at ``max_epochs``.
    """
    curve, p_val = [], {}

    def check(epoch, det):
        if "p" not in p_val:
            p_val["p"] = det.embed(val_dataset.images)
        scores, maps = det.predict_embedding(p_val["p"], val_dataset.image_size)
        ia, pa = val_criterion(val_dataset, scores, maps)
        curve.append(dict(epoch=epoch, image_auroc=ia, pixel_auroc=pa,
                          state=(copy.deepcopy(det.descriptor.state_dict()), det.radius.detach().clone())))

    det = make_cfa(epochs=max_epochs, on_epoch=check).fit(train_dataset)  # fit calls on_epoch(0, det) first
    return det, curve


def restore_epoch(det, curve, epoch: int):
    """Put the detector back to the state it had after ``epoch`` epochs (``curve`` of ``fit_with_val_curve``)."""
    state, radius = curve[epoch]["state"]
    det.descriptor.load_state_dict(state)
    det.radius.data.copy_(radius)
    det.epochs_used = epoch
    return det


def mean_criterion(entry) -> float:
    """The validation criterion of one epoch: mean of image and pixel AUROC (image AUROC alone without masks)."""
    vals = [v for v in (entry["image_auroc"], entry["pixel_auroc"]) if v is not None]
    return float(np.mean(vals))


def choose_epoch(curves) -> int:
    """The epoch count with the best criterion averaged over a family's categories (``curves``: a list of curves).

    Ties go to the fewer epochs (less adaptation, less time).
    """
    n = min(len(c) for c in curves)
    means = [np.mean([mean_criterion(c[e]) for c in curves]) for e in range(n)]
    return int(np.argmax(np.round(means, 4)))


def val_study(variants: dict, splits: dict, max_epochs: int, baselines: dict | None = None) -> dict:
    """The validation study of one data family.

    ``variants``: name -> ``make(**kw) -> CFA``; each is fitted with ``fit_with_val_curve`` on every category of
    ``splits`` (category -> ``(train, val)``). ``baselines``: name -> ``make() -> detector`` (fitted and checked once).
    Returns ``{"curves": {(name, cat): curve}, "detectors": {(name, cat): CFA at max_epochs},
    "baselines": {(name, cat): entry}, "seconds": {(name, cat): fit seconds with the checks}}``.
    """
    import time

    study = {"curves": {}, "detectors": {}, "baselines": {}, "seconds": {}}
    for cat, (train, val) in splits.items():
        for name, make in (baselines or {}).items():
            det = make().fit(train)
            scores, maps = predict_all(det, val.images)
            ia, pa = val_criterion(val, scores, maps)
            study["baselines"][name, cat] = dict(epoch=None, image_auroc=ia, pixel_auroc=pa)
        for name, make in variants.items():
            start = time.perf_counter()
            det, curve = fit_with_val_curve(make, train, val, max_epochs)
            study["seconds"][name, cat] = time.perf_counter() - start
            study["curves"][name, cat], study["detectors"][name, cat] = curve, det
    return study


def predict_all(det, images, batch_size: int = 32):
    """``det.predict`` in batches: ``(scores [N], maps [N, H, W] or None)``."""
    import torch

    outs = [det.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    maps = None if outs[0][1] is None else torch.cat([m for _, m in outs])
    return torch.cat([s for s, _ in outs]), maps


def choose(study: dict, names) -> dict:
    """name -> the epoch count chosen on the family's validation split (``choose_epoch`` over its categories)."""
    cats = sorted({c for (_, c) in study["curves"]})
    return {m: choose_epoch([study["curves"][m, c] for c in cats]) for m in names}


def family_mean(entries) -> tuple:
    """Means of (image AUROC, pixel AUROC or None, criterion) over a family's categories."""
    ia = float(np.mean([e["image_auroc"] for e in entries]))
    pas = [e["pixel_auroc"] for e in entries if e["pixel_auroc"] is not None]
    pa = float(np.mean(pas)) if pas else None
    return ia, pa, float(np.mean([mean_criterion(e) for e in entries]))


def best_variant(study: dict, chosen: dict, names) -> str:
    """Of ``names``, the variant with the best family criterion at its chosen epoch (ties: the first)."""
    cats = sorted({c for (_, c) in study["curves"]})
    crit = {m: round(family_mean([study["curves"][m, c][chosen[m]] for c in cats])[2], 4) for m in names}
    return max(names, key=lambda m: (crit[m], -list(names).index(m)))


def val_table(study: dict, chosen: dict, title: str, width: int = 36):
    """The validation table of one family: each baseline, each CFA variant at epoch 0 and at its chosen epoch."""
    cats = sorted({c for (_, c) in study["curves"]})
    print(f"{title}: validation split, mean over {len(cats)} categories ({', '.join(cats)})")
    print(f"| {'method':{width}s} | epochs | image AUROC | pixel AUROC | criterion |")
    print("|---|---|---|---|---|")
    for name in dict.fromkeys(m for (m, _) in study["baselines"]):
        ia, pa, crit = family_mean([study["baselines"][name, c] for c in cats])
        print(f"| {name:{width}s} | {'–':>6s} | {ia:.3f} | {fmt(pa)} | {crit:.3f} |")
    for name, epoch in chosen.items():
        for e in dict.fromkeys([0, epoch]):
            ia, pa, crit = family_mean([study["curves"][name, c][e] for c in cats])
            mark = " (chosen)" if e == epoch else " (untrained)"
            print(f"| {name + mark:{width}s} | {e:6d} | {ia:.3f} | {fmt(pa)} | {crit:.3f} |")


def fmt(v, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def print_table(rows, width: int = 44):
    """Rows of ``result_row`` as a markdown table (method, data, epochs, metrics, fit s, ms / image)."""
    print(f"| {'method':{width}s} | data               | epochs | image AUROC | pixel AUROC | AUPRO | fit s | ms / image |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']:{width}s} | {r['dataset']:18s} | {r.get('epochs', '–')!s:>6s} | {fmt(r['image_auroc'])} | "
              f"{fmt(r.get('pixel_auroc'))} | {fmt(r.get('aupro'))} | {fmt(r['train_seconds'], 1)} | "
              f"{fmt(r['infer_ms_per_image'], 1)} |")


def print_means(rows, methods, keys=("image_auroc", "pixel_auroc", "aupro")):
    """Per method, the mean of each metric over the rows of that method."""
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        parts = []
        for k in keys:
            vals = [r[k] for r in sel if r.get(k) is not None]
            if vals:
                parts.append(f"{k.replace('_', ' ')} {np.mean(vals):.3f}")
        print(f"  mean over {len(sel)}: {m:{max(len(x) for x in methods)}s}  " + "  ".join(parts))


