"""Which real images with masks the lessons use: one switch, ``AD_DATA``.

``AD_DATA=piped`` (the default) uses the data the course ships (``anomaly_utils.data.load_piped``);
``AD_DATA=mvtec`` uses MVTec AD, downloaded once with ``make mvtec`` into
``data/downloads/mvtec_anomaly_detection`` (or the folder in ``AD_MVTEC_ROOT``); ``AD_DATA=visa`` uses VisA,
downloaded once with ``make visa`` into ``data/downloads/visa`` (or the folder in ``AD_VISA_ROOT``)::

    from anomaly_utils.sources import load_real, real_categories, real_data_name
    for category in real_categories():
        train, val = load_real(category, size=128, split="val")

MVTec AD and VisA's one-class split have no validation split. Here their official test set is cut in two,
reproducibly for a ``seed``: a val part (one third of the normal and one third of the anomalous test images,
stratified by defect kind) and a test part (the rest). So on MVTec AD and VisA the numbers on our test part are
**not comparable** to papers', which report the full official test set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SOURCES = ("piped", "mvtec", "visa")
SPLITS = ("val", "test")


def real_data_name() -> str:
    """``$AD_DATA`` (``"piped"`` if unset): ``"piped"``, ``"mvtec"`` or ``"visa"``; a clear error otherwise."""
    name = os.environ.get("AD_DATA", "piped").strip().lower() or "piped"
    if name not in SOURCES:
        raise ValueError(f"AD_DATA={os.environ.get('AD_DATA')!r} is not a data source; use AD_DATA=piped "
                         "(the course's own images, the default), AD_DATA=mvtec (MVTec AD, after `make mvtec`) or "
                         "AD_DATA=visa (VisA, after `make visa`).")
    return name


def visa_root() -> Path:
    """The VisA folder: ``$AD_VISA_ROOT``, else ``data/downloads/visa``."""
    from .download import DOWNLOADS, VISA_DIRNAME

    env = os.environ.get("AD_VISA_ROOT")
    return Path(env).expanduser() if env else DOWNLOADS / VISA_DIRNAME


def _visa_categories(root: Path) -> list[str]:
    """The categories of VisA's split file whose folders are unpacked in ``root``."""
    from .loaders import _visa_rows

    rows = _visa_rows(root) if (root / "split_csv" / "1cls.csv").is_file() else []
    found = sorted(c for c in {r["object"] for r in rows} if (root / c / "Data").is_dir())
    if not found:
        raise FileNotFoundError(
            f"AD_DATA=visa, but {str(root)!r} holds no VisA categories (split_csv/1cls.csv and <category>/Data). "
            "Run `make visa` (all 12 categories, about 1.9 GB to download) or `make visa CATEGORIES=\"candle pcb1\"` "
            "to unpack only some, set AD_VISA_ROOT to the folder where you unpacked VisA, or unset AD_DATA to use "
            "the course's own images.")
    return found


def mvtec_root() -> Path:
    """The MVTec AD folder: ``$AD_MVTEC_ROOT``, else ``data/downloads/mvtec_anomaly_detection``."""
    from .download import DOWNLOADS, MVTEC_DIRNAME

    env = os.environ.get("AD_MVTEC_ROOT")
    return Path(env).expanduser() if env else DOWNLOADS / MVTEC_DIRNAME


def _mvtec_categories(root: Path) -> list[str]:
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir()) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"AD_DATA=mvtec, but {str(root)!r} holds no MVTec AD categories (<category>/train/good). Run "
            "`make mvtec` (all categories, about 5 GB) or `make mvtec CATEGORIES=\"bottle carpet\"` to download "
            "them, set AD_MVTEC_ROOT to the folder where you unpacked MVTec AD, or unset AD_DATA to use the "
            "course's own images.")
    return found


def real_categories() -> list[str]:
    """The categories of the active source: piped's categories, or the MVTec AD / VisA folders present."""
    name = real_data_name()
    if name == "piped":
        from . import data

        return list(data.piped_categories())
    return _visa_categories(visa_root()) if name == "visa" else _mvtec_categories(mvtec_root())


def split_val_test(test, seed: int = 0):
    """``(val, test)`` cut from ``test``: a third of each kind (``"good"`` and every defect) goes to val.

    Exactly ``round(n / 3)`` of the normal and of the anomalous items go to val; within each, every kind
    gives ``floor(n_kind / 3)`` and the rest is handed out by largest remainder (ties: a ``seed``-ed order).
    Which items of a kind go to val is drawn with ``seed``. Both parts keep the original order.
    """
    from .data import check_seed

    rng = np.random.default_rng(check_seed(seed))
    kinds = np.asarray(test.kinds, dtype=object)
    labels = test.labels.numpy()
    val = []
    for label in (0, 1):
        names = sorted({k for k, y in zip(test.kinds, labels.tolist()) if y == label})
        sizes = np.array([int(np.sum((kinds == k) & (labels == label))) for k in names], dtype=int)
        if not len(names):
            continue
        quota = sizes // 3
        rest = int(round(sizes.sum() / 3)) - int(quota.sum())
        tiebreak = rng.permutation(len(names))
        order = sorted(range(len(names)), key=lambda i: (-(sizes[i] / 3 - quota[i]), tiebreak[i]))
        for i in order[:max(rest, 0)]:
            quota[i] += 1
        for k, q in zip(names, quota):
            idx = np.flatnonzero((kinds == k) & (labels == label))
            val.extend(rng.permutation(idx)[:q].tolist())
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[val] = True
    val_part = test.subset(np.flatnonzero(is_val).tolist())
    test_part = test.subset(np.flatnonzero(~is_val).tolist())
    val_part.name, test_part.name = f"{test.name}/val", f"{test.name}/test"
    return val_part, test_part


def load_real(category: str, size: int = 128, split: str = "test", seed: int = 0):
    """``(train, eval)`` of ``category`` from the active source; ``eval`` is the ``split`` (``"val"``/``"test"``).

    piped: ``anomaly_utils.data.load_piped(category, size=size, split=split, seed=seed)``.
    mvtec: ``load_mvtec(root, category, size=size)``; its official test set is cut into val and test parts
    (see :func:`split_val_test`). On MVTec AD the val part is cut from the official test set, so numbers on
    either part are not comparable to papers', which use the whole official test set.
    visa: ``load_visa(root, category, size=size, split=split, seed=seed)``: train is the official one-class
    split's training images, its test split is cut into val and test parts in the same way.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}.")
    name = real_data_name()
    if name == "piped":
        from . import data

        return data.load_piped(category, size=size, split=split, seed=seed)
    if name == "visa":
        from .loaders import load_visa

        root = visa_root()
        categories = _visa_categories(root)
        if category not in categories:
            raise FileNotFoundError(f"VisA category {category!r} is not in {str(root)!r} (found: "
                                    f"{', '.join(categories)}). Unpack it with `make visa CATEGORIES={category}`.")
        return load_visa(root, category, size=size, split=split, seed=seed)
    from .loaders import load_mvtec

    root = mvtec_root()
    categories = _mvtec_categories(root)
    if category not in categories:
        raise FileNotFoundError(f"MVTec AD category {category!r} is not in {str(root)!r} (found: "
                                f"{', '.join(categories)}). Download it with `make mvtec CATEGORIES={category}`.")
    train, test = load_mvtec(root, category, size=size)
    val_part, test_part = split_val_test(test, seed=seed)
    return train, (val_part if split == "val" else test_part)
