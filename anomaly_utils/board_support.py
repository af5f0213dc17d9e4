"""Plumbing of lesson 10 (the leaderboard): seeded and cached fitting, the run over every method, data set and
seed, and its timing. Nothing here is a method; the registry and the statistics are built in the notebook.

The GANs of lessons 03 and 04 are cached by those notebooks (``gan_support.cached_fit``) under a name and a key of
their own; :func:`lesson_cache` gives the leaderboard the same name and key, so that with the lessons' caches
present it loads their seed-0 models instead of training them again. The autoencoders (lesson 05) and the
distilled students (lesson 09) cache themselves inside ``fit``. Every cache key holds the seed.
"""

from __future__ import annotations

import time

import numpy as np

from .detector import evaluate, predict_batched
from .gan_support import cached_fit
from .profiles import seed_everything
from .results import result_row

_GAN_KEYS = ("isize", "nz", "ngf", "ndf", "epochs", "batch_size")


def lesson_cache(method: str, dataset: str, settings: dict, seed: int):
    """``(name, config)`` under which lesson 03 or 04 caches this GAN (``cached_fit`` adds the training images'
    fingerprint and, for GANomaly, the caller adds ``n_train``), or None for a method not cached that way.

    Lesson 04 (``train_ganomaly_cached``): ``ganomaly_mnist<c>``, ``ganomaly_<texture>`` or ``ganomaly_elpv_<cell>``,
    keyed by the constructor's settings and seed, ``n_train``, ``init`` and ``d_loss``. Lesson 03: ``anogan_mnist``
    with the normal class in the key (``trained_gan``) and ``anogan_elpv_<cell>`` (``elpv_anogan``); the search
    settings (``n_iter``, ``search_lr``, ``lam``) are not in its key: they do not change the trained networks.
    """
    head, which = dataset.split("/")[0], dataset.split("/")[-1]
    if method == "GANomaly":
        name = {"mnist": f"ganomaly_mnist{which}", "textures": f"ganomaly_{which}",
                "elpv": f"ganomaly_elpv_{which}"}.get(head, f"ganomaly_{head}_{which}")
        keep = _GAN_KEYS + ("lr", "w_adv", "w_con", "w_enc")
        return name, {**{k: settings[k] for k in keep}, "seed": seed, "init": "dcgan", "d_loss": "half"}
    if method == "AnoGAN":
        key = {k: settings[k] for k in _GAN_KEYS}
        if head == "mnist":
            return "anogan_mnist", {**key, "normal_class": int(which), "init": "dcgan"}
        return f"anogan_{head}_{which}", {**key, "init": "dcgan"}
    return None


def fit_seeded(spec, dataset: str, fam: str, seed: int, train, base=None):
    """A fresh detector of ``spec`` for ``dataset`` (family ``fam``), fitted on ``train`` from ``seed``.

    ``seed_everything(seed)`` runs first and the detector is built with ``seed``. ``base``: an autoencoder already
    fitted on the same images (a gradient projection wraps it instead of training its own). Returns
    ``(detector, fit_seconds, train_seconds, from_cache)``: the wall time of this fit, and the model's training time
    (that of the cached training when its weights were loaded).
    """
    seed_everything(seed)
    if base is not None:  # lesson 06: the projection around lesson 05's fitted autoencoder
        det = spec.make(dataset, seed)
        det.detector = spec.detector(base.detector, **spec.settings(fam))
    else:
        det = spec.make(dataset, seed)
    inner = base.detector if base is not None else det.detector
    shared = None if base is not None else lesson_cache(spec.name, dataset, spec.settings(fam), seed)
    start = time.perf_counter()
    if shared is None:
        det.fit(train)
    else:
        name, config = shared
        extra = {"n_train": len(train)} if spec.name == "GANomaly" else {}
        det.fit(train, fit=lambda prepared: cached_fit(inner, name, {**config, **extra}, prepared))
    fit_s = time.perf_counter() - start
    history = getattr(inner, "history", None) or {}
    from_cache = bool(getattr(inner, "from_cache", False))
    trained = getattr(inner, "train_seconds", None) or history.get("train_seconds") or history.get("seconds")
    return det, fit_s, (trained if from_cache and trained else fit_s), from_cache


def auroc_doubtful(ev_test, doubtful_scores) -> float:
    """AUROC of the doubtful cells' scores against the test split's normal cells (those of ``ev_test``)."""
    from .metrics import image_auroc

    normal = ev_test.pred_scores[ev_test.labels == 0]
    doubtful = np.asarray(doubtful_scores)
    return image_auroc(np.r_[np.zeros(len(normal)), np.ones(len(doubtful))], np.r_[normal, doubtful])


def balanced(dataset, n_per_label):
    """At most ``n_per_label`` images of each label, drawn with a fixed seed (the whole set for None)."""
    from .gan_support import balanced_subset

    return balanced_subset(dataset, n_per_label, seed=0)


def run_board(methods: dict, datasets: list, seeds: list, load, family, keep_maps: set = frozenset(),
              keep_fitted=lambda method, dataset: False, log=print, seed_families=None) -> dict:
    """Fit and evaluate every method of ``methods`` on every data set of its families, with each seed.

    ``load(dataset, split, size, n_train) -> (train, eval)`` and ``family(dataset)`` come from the notebook;
    methods that do not train (``spec.trains`` False) run once, with seed 0, and so do all methods on a family not in
    ``seed_families`` (``None``: every family runs every seed). ELPV data sets are also scored on
    their ``"uncertain"`` split (a row ``elpv/<cell>/uncertain``: the doubtful cells against the test normals).
    ``keep_maps``: data sets whose seed-0 anomaly maps are kept whole (others keep the first two defective
    images' maps); ``keep_fitted(method, dataset)``: whether to keep that seed-0 fitted detector. Returns a dict with
    ``rows`` (one per method, data set and seed), ``evals`` ({(method, data set, seed): Evaluation}),
    ``fitted`` ({(method, data set): detector}), ``kept`` ({(method, data set): (indices, maps)}) and the run's
    ``wall_s`` and ``cpu_s``.
    """
    out = {"rows": [], "evals": {}, "fitted": {}, "kept": {}}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for dataset in datasets:
        fam, t0 = family(dataset), time.perf_counter()
        data, n_runs, n_cached = {}, 0, 0
        for name, spec in methods.items():
            if fam not in spec.families:
                continue
            args = (spec.base or spec).data_args.get(fam, {})
            size = spec.size(fam) if fam in ("real", "elpv") else None
            key = (size, args.get("n_train"))
            if key not in data:  # the training images at the method's size; the masks at the family's own size
                train, test = load(dataset, "test", size, args.get("n_train"))
                if fam == "real" and size is not None:
                    test = load(dataset, "test", None, None)[1]
                unc = load(dataset, "uncertain", size, args.get("n_train"))[1] if fam == "elpv" else None
                data[key] = (train, test, None if unc is None else unc.subset(unc.labels == 1))  # the doubtful cells
            train, test, unc = data[key]
            if fam in spec.eval_subset:  # a method too slow for the whole split: a fixed, balanced subset
                n = spec.eval_subset[fam]
                test, unc = balanced(test, n), (None if unc is None else balanced(unc, n))
            all_seeds = spec.trains and (seed_families is None or fam in seed_families)
            for seed in (seeds if all_seeds else seeds[:1]):
                base = out["fitted"].get((spec.base.name, dataset, seed)) if spec.base is not None else None
                det, fit_s, train_s, cached = fit_seeded(spec, dataset, fam, seed, train, base)
                ev = evaluate(det, test)
                lesson = spec.lesson[:2]
                out["rows"].append(result_row(name, dataset, image_auroc=ev.image_auroc, pixel_auroc=ev.pixel_auroc,
                                              aupro=ev.aupro, train_seconds=train_s,
                                              infer_ms_per_image=ev.infer_ms_per_image, lesson=lesson, seed=seed,
                                              fit_seconds=round(fit_s, 2), from_cache=cached))
                if unc is not None:  # the doubtful cells (p = 1/3, 2/3) against the test split's normal cells
                    out["rows"].append(result_row(name, f"{dataset}/uncertain", lesson=lesson, seed=seed,
                                                  image_auroc=auroc_doubtful(ev, predict_batched(det, unc.images)[0])))
                if ev.anomaly_maps is not None and seed == seeds[0]:
                    idx = np.flatnonzero(ev.labels == 1)[:2]
                    out["kept"][name, dataset] = (idx, np.array(ev.anomaly_maps[idx]))
                if dataset not in keep_maps or seed != seeds[0]:
                    ev.anomaly_maps = None
                out["evals"][name, dataset, seed] = ev
                if spec.trains and any(s.base is spec for s in methods.values()):
                    out["fitted"][name, dataset, seed] = det  # the projections wrap it
                if keep_fitted(name, dataset) and seed == seeds[0]:
                    out["fitted"][name, dataset] = det
                n_runs, n_cached = n_runs + 1, n_cached + cached
        log(f"{dataset}: {n_runs} runs ({n_cached} models from the cache) in {time.perf_counter() - t0:.0f} s")
    out["wall_s"], out["cpu_s"] = time.perf_counter() - wall0, time.process_time() - cpu0
    return out


def values_by_method(rows: list, datasets: list, key: str) -> dict:
    """``{method: array [categories, seeds]}`` of ``key`` over ``datasets`` (in that order), for every method with a
    value on each of them (the seeds they all share)."""
    per: dict = {}
    for r in rows:
        if r["dataset"] in datasets and r.get(key) is not None:
            per.setdefault(r["method"], {}).setdefault(r["dataset"], {})[r.get("seed", 0)] = r[key]
    out = {}
    for method, by_data in per.items():
        if set(by_data) != set(datasets):
            continue
        seeds = sorted(set.intersection(*(set(v) for v in by_data.values())))
        out[method] = np.array([[by_data[d][s] for s in seeds] for d in datasets])
    return out


def mean_of(rows: list, datasets: list, method: str, key: str):
    """The plain mean of ``key`` over the rows of ``method`` on ``datasets`` (None if there is none)."""
    vals = [r[key] for r in rows if r["method"] == method and r["dataset"] in datasets and r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def fmt_interval(m, lo, hi, digits: int = 3) -> str:
    """``0.930 [0.901, 0.955]``."""
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


HEADS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO", "uncertain": "doubtful cells"}


def interval_table(stats: dict, keys: list, lessons: dict, extra: dict | None = None, leaders: dict | None = None) -> str:
    """A markdown table, one row per method of ``stats`` ({method: {key: (mean, low, high)}}), in that order.

    ``leaders`` ({key: [methods]}): the best method of a column and those tied with it, in bold. ``extra``:
    ``{column: {method: text}}`` appended on the right (fit seconds, ms per image).
    """
    extra, leaders = extra or {}, leaders or {}
    lines = ["| method | lesson | " + " | ".join(f"{HEADS.get(k, k)} [95 % interval]" for k in keys)
             + "".join(f" | {c}" for c in extra) + " |",
             "|---|---|" + "---|" * (len(keys) + len(extra))]
    for m, s in stats.items():
        cells = []
        for k in keys:
            text = fmt_interval(*s[k]) if s.get(k) else "–"
            cells.append(f"**{text}**" if m in leaders.get(k, []) else text)
        lines.append(f"| {m} | {lessons.get(m, '')} | " + " | ".join(cells)
                     + "".join(f" | {col.get(m, '–')}" for col in extra.values()) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- figures (plumbing: no method here)
STYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
MARKERS = "os^Dv<>PX*hp"


def method_style(names: list) -> dict:
    """One (colour, marker) per method name, stable across the notebook's figures."""
    import matplotlib.pyplot as plt

    tab20 = plt.get_cmap("tab20").colors
    colours = tab20[0::2] + tab20[1::2]  # the ten strong colours first, then their light partners
    return {n: (colours[i % 20], MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}


def plot_intervals(ax, stats: dict, key: str, title: str, style: dict, xlabel: str) -> None:
    """Horizontal 95 % intervals (bars) and means (points) of ``stats`` ({method: {key: (m, lo, hi)}}), best on top."""
    items = sorted(((m, s[key]) for m, s in stats.items() if s.get(key)), key=lambda t: t[1][0])
    for y, (m, (mean, lo, hi)) in enumerate(items):
        colour, marker = style[m]
        ax.errorbar(mean, y, xerr=[[mean - lo], [hi - mean]], fmt=marker, color=colour, capsize=3, ms=5)
    ax.set_yticks(range(len(items)), [m for m, _ in items], fontsize=8)
    lo_all = min(s[1] for _, s in items)
    ax.set_xlim(max(0.0, lo_all - 0.05), 1.0)
    ax.axvline(0.5, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def plot_rocs(ax, curves: dict, title: str, style: dict) -> None:
    """ROC curves ``{method: (labels, scores)}`` with their AUROC in the legend (below the panel)."""
    from .metrics import image_auroc, roc_curve

    for i, (m, (labels, scores)) in enumerate(curves.items()):
        fpr, tpr = roc_curve(labels, scores)[:2]
        ax.plot(fpr, tpr, linestyle=STYLES[i % len(STYLES)], color=style[m][0], lw=1.6, clip_on=False, zorder=3,
                label=f"{m} ({image_auroc(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    # a little room around [0, 1]: a perfect curve (AUROC 1.000) runs along x = 0 and y = 1, not hidden by the frame
    ax.set(xlim=(-0.03, 1.0), ylim=(0, 1.03), aspect="equal", xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, frameon=False)


def plot_speed(ax, stats: dict, ms: dict, key: str, title: str, style: dict, ylabel: str) -> None:
    """Mean ``key`` with its 95 % interval (vertical bars) against inference ms per image (log scale)."""
    for m, s in stats.items():
        if not s.get(key) or ms.get(m) is None:
            continue
        mean, lo, hi = s[key]
        colour, marker = style[m]
        ax.errorbar(ms[m], mean, yerr=[[mean - lo], [hi - mean]], fmt=marker, color=colour, capsize=3, ms=6,
                    label=m, clip_on=False)
    ax.set_xscale("log")
    lows = [s[key][1] for m, s in stats.items() if s.get(key) and ms.get(m) is not None]
    ax.set_ylim(max(0.0, min(lows) - 0.03), 1.0)
    ax.set_xlabel("inference ms per image (log scale)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def lineage_grid(picks: list, rows: dict, title: str):
    """Images (``picks``: [(image [C,H,W], mask [H,W], title)]) and one row of maps per method (``rows``:
    ``{row label: [map per pick]}``). Each row has its own colour scale (its 1st to 99th percentile over the row)
    and colour bar: the methods' scores live on unrelated scales, compare where a map is bright, not how bright."""
    import matplotlib.pyplot as plt

    from . import viz

    n_rows, n_cols = 1 + len(rows), len(picks)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.55 * n_cols + 2.6, 1.55 * n_rows + 0.4), squeeze=False)
    for c, (image, mask, name) in enumerate(picks):
        img = np.asarray(image).transpose(1, 2, 0).squeeze()
        axes[0, c].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[0, c].contour(mask, levels=[0.5], colors="cyan", linewidths=0.7)
        axes[0, c].set_title(name, fontsize=7)
    for r, (label, maps) in enumerate(rows.items(), start=1):
        lo, hi = np.percentile(np.stack([np.asarray(m) for m in maps]), [1, 99])
        for c, (image, mask, _) in enumerate(picks):
            mappable = viz.overlay(axes[r, c], image, maps[c], lo, hi)
            axes[r, c].contour(mask, levels=[0.5], colors="cyan", linewidths=0.5)
        fig.colorbar(mappable, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01).set_label("score", fontsize=7)
    for r, label in enumerate(["input + mask"] + list(rows)):
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return fig


def registry_table(methods: dict, families: tuple, native: dict | None = None) -> str:
    """The registry as a markdown table: lesson, families (a borrowed family's choice marked "<- source"), the
    image side per family (``native``: the side of a family whose images keep their own size) and whether the
    method trains (several seeds)."""
    lines = ["| method | lesson | " + " | ".join(families) + " | trains |", "|---|---|" + "---|" * (len(families) + 1)]
    for name, spec in methods.items():
        cells = []
        for fam in families:
            if fam not in spec.families:
                cells.append("–")
                continue
            size = spec.size(fam) or (native or {}).get(fam)
            cell = f"{size} px" if size else "as loaded"
            cells.append(cell + (f" (← {spec.borrow[fam]})" if fam in spec.borrow else ""))
        lines.append(f"| {name} | {spec.lesson} | " + " | ".join(cells) + f" | {'yes' if spec.trains else 'no'} |")
    return "\n".join(lines)


def summary_result_rows(fam_stats: dict, lessons: dict, rows: list, sets: dict) -> list:
    """The summary rows the README's table is made from: per family and method, the means with their 95 %
    intervals (``<key>_ci``), the mean fit seconds and ms per image, ``"summary": family``."""
    out = []
    for fam, (stats, _draws, *_rest) in fam_stats.items():
        data = sets.get(fam) or [f"{d}/uncertain" for d in sets["elpv"]]
        label = f"{data[0].split('/')[0]} (mean of {len(data)})"
        for m, s in stats.items():
            values = {k: v[0] for k, v in s.items()}
            cis = {f"{k}_ci": [round(v[1], 4), round(v[2], 4)] for k, v in s.items()}
            n_seeds = len({r.get("seed", 0) for r in rows if r["method"] == m and r["dataset"] in data})
            out.append(result_row(m, label, **values, train_seconds=mean_of(rows, data, m, "train_seconds"),
                                  infer_ms_per_image=mean_of(rows, data, m, "infer_ms_per_image"), **cis,
                                  lesson=lessons.get(m, ""), summary=fam, n_categories=len(data), n_seeds=n_seeds))
    return out
