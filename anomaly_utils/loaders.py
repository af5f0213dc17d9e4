"""Loaders for a practitioner's own data: MVTec AD, a generic folder layout, torchvision sets.

Every loader returns ``(train, test)`` as :class:`~anomaly_utils.data.AnomalyDataset` s, the same
item type as the embedded sets (``Sample(image [C, H, W] in [0, 1], label 0/1, mask [H, W])``), so
every lesson's detector runs on them unchanged::

    train, test = load_mvtec("~/data/mvtec_anomaly_detection", "carpet", size=256)
    train, test = load_folder("my_parts/good", "my_parts/defective", mask_dir="my_parts/masks")
    train, test = load_torchvision("CIFAR10", "~/data/torchvision", normal_class=3)

Nothing is ever downloaded. Problems with the files (a missing path, an empty folder, an unreadable
image, a mask that does not fit its image, a missing mask) raise ``FileNotFoundError`` or
``ValueError`` with a message that names the file and says what to do; there is no silent fallback
to other data.

Channels: an all-grey source gives 1-channel images; if any image is in colour, every image is
loaded as RGB (grey ones repeated to 3 channels), so a data set never mixes channel counts.
``grey=True`` converts everything to 1 channel (ITU-R 601 luma).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import AnomalyDataset, _one_vs_rest

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


# --------------------------------------------------------------------------- files

def _as_path(path, what: str) -> Path:
    if path is None:
        raise ValueError(f"{what}: no path given.")
    return Path(path).expanduser()


def _require_dir(path, what: str) -> Path:
    """``path`` as a ``Path``; a clear error if it does not exist or is not a folder."""
    path = _as_path(path, what)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist. Check the path (a relative path is "
                                f"taken from the current folder, {str(Path.cwd())!r}).")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} is a file, not a folder; give the folder that holds "
                                 "the images.")
    return path


def _is_image_file(p: Path) -> bool:
    # skip hidden files such as macOS' "._name.png" resource forks
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _list_images(folder: Path, what: str, exclude=None) -> list[Path]:
    """The image files directly inside ``folder`` (sorted by name); an error if there are none."""
    folder = _require_dir(folder, what)
    files = sorted(p for p in folder.iterdir() if _is_image_file(p) and not (exclude and exclude(p)))
    if not files:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir())
        others = sorted(p.name for p in folder.iterdir() if p.is_file())
        hint = ""
        if subdirs:
            hint += (f" It has subfolders ({_few(subdirs)}); images are looked for directly in the folder, "
                     "not in subfolders: point at the subfolder that holds them.")
        if others:
            hint += f" Files found there: {_few(others)}."
        raise ValueError(f"{what} {str(folder)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})."
                         + hint)
    return files


def _few(names: Sequence[str], k: int = 5) -> str:
    names = [str(n) for n in names]
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


# --------------------------------------------------------------------------- decoding

def _open(path: Path, what: str):
    """Open and fully decode an image with PIL; a ``ValueError`` naming the file if it cannot."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            try:
                im = ImageOps.exif_transpose(im)  # photos taken rotated: use the orientation people see
            except Exception:  # a broken EXIF block is no reason to reject the pixels
                pass
            return im.copy()
    except Exception as err:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ValueError, ...
        raise ValueError(f"cannot read {what} {str(path)!r} ({type(err).__name__}: {err}). The file is not a "
                         "valid image or is corrupt: replace it or remove it from the folder.") from None


def _scale_high_bit_depth(a: np.ndarray) -> np.ndarray:
    """16-bit or float pixels to [0, 1]: divide by the largest value their bit depth allows."""
    a = a.astype(np.float32)
    top = a.max() if a.size else 0.0
    scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0
    return np.clip(a / scale, 0.0, 1.0)


def _read_image(path: Path, grey: bool) -> np.ndarray:
    """Decode ``path`` to float32 in [0, 1]: ``[H, W]`` for grey images, ``[H, W, 3]`` for colour."""
    im = _open(path, "image")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _scale_high_bit_depth(np.asarray(im))
    if im.mode in _GREY_MODES:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    if grey:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if im.mode == "P" and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0]  # a palette image whose palette is grey
    return rgb


def _read_mask(path: Path, image_path: Path, image_hw: tuple[int, int]) -> np.ndarray:
    """A binary mask ``[H, W]`` (bool); any channel above half its range counts as defective."""
    im = _open(path, "mask")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im).astype(np.float32)
        top = 65535.0 if a.max() > 255 else 255.0
    elif im.mode in _GREY_MODES:
        a, top = np.asarray(im.convert("L")), 255.0
    else:  # a colour mask (e.g. drawn in red): the brightest channel decides
        a, top = np.asarray(im.convert("RGB")).max(axis=-1), 255.0
    if a.shape != tuple(image_hw):
        raise ValueError(f"mask {str(path)!r} is {a.shape[1]} x {a.shape[0]} pixels but its image "
                         f"{str(image_path)!r} is {image_hw[1]} x {image_hw[0]} (width x height). A mask must "
                         "have exactly its image's size: check that it belongs to this image.")
    # masks stored as 0/1 label images are binary already; 0/255 (or anti-aliased) masks cut at half
    return a > 0 if a.max() <= 1 else a > top / 2


def _resize_image(a: np.ndarray, size) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # [C, H, W]
    if size is not None and tuple(t.shape[1:]) != size:
        t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return t.clamp(0, 1)


def _resize_mask(m: np.ndarray, size) -> torch.Tensor:
    t = torch.from_numpy(m.astype(np.float32))
    if size is not None and tuple(t.shape) != size:
        t = F.interpolate(t[None, None], size=size, mode="nearest-exact")[0, 0]
    return (t > 0.5).float()


def _check_size(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive int (square images), (height, width) or None, got {size}.")
    return size


class _Item(NamedTuple):
    path: Path
    label: int
    kind: str
    mask: Path | None  # None: no mask file (normal items, or a set without masks)


def _build(train_items: list[_Item], test_items: list[_Item], size, grey: bool, name: str,
           has_masks: bool) -> tuple[AnomalyDataset, AnomalyDataset]:
    """Decode, resize and stack every item; one channel count for the whole set."""
    from tqdm.auto import tqdm

    size = _check_size(size)
    images, masks = [], []
    items = train_items + test_items
    for item in tqdm(items, desc=f"loading {name}", disable=len(items) < 100, leave=False):
        a = _read_image(item.path, grey)
        hw = a.shape[:2]
        images.append(_resize_image(a, size))
        if has_masks:
            m = _read_mask(item.mask, item.path, hw) if item.mask is not None else np.zeros(hw, dtype=bool)
            masks.append(_resize_mask(m, size))
    if size is None:
        shapes = {tuple(t.shape[1:]) for t in images}
        if len(shapes) > 1:
            raise ValueError(f"{name}: the images have different sizes ({_few(sorted(shapes), 4)}); pass "
                             "size=... to resize them all to one size.")
    if not grey and any(t.shape[0] == 3 for t in images):
        images = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in images]
    n = len(train_items)
    stacked = torch.stack(images)
    mask_t = torch.stack(masks) if has_masks else None

    def split(lo, hi, items, suffix):
        return AnomalyDataset(stacked[lo:hi].contiguous(), [it.label for it in items],
                              None if mask_t is None else mask_t[lo:hi], [it.kind for it in items],
                              f"{name}/{suffix}")

    train = split(0, n, train_items, "train")
    test = split(n, len(images), test_items, "test")
    test.check_test_split()
    return train, test


# --------------------------------------------------------------------------- MVTec AD

def load_mvtec(root, category: str, size=256, grey: bool = False) -> tuple[AnomalyDataset, AnomalyDataset]:
    """A category of MVTec AD in its own folder layout (download it yourself: the course never does)::

        root/<category>/train/good/*.png                       normal training images
        root/<category>/test/good/*.png                        normal test images
        root/<category>/test/<defect_type>/*.png               defective test images
        root/<category>/ground_truth/<defect_type>/<stem>_mask.png

    Images are resized to ``size`` x ``size`` (bilinear, antialiased), masks with nearest neighbour
    and binarised. ``kinds`` are ``"good"`` or the defect type. Grey categories (grid, screw, zipper)
    give 1-channel images, the others RGB; ``grey=True`` makes every category 1-channel.

    Returns ``(train, test)``.
    """
    root = _require_dir(root, "MVTec AD root folder")
    base = root / category
    if not base.is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
        raise FileNotFoundError(
            f"MVTec AD category {category!r} not found: {str(base)!r} does not exist. "
            + (f"Categories found in {str(root)!r}: {_few(found, 15)}." if found else
               f"{str(root)!r} holds no category folders (<category>/train/good); get MVTec AD from "
               f"{MVTEC_URL} and extract it there."))
    train_paths = _list_images(base / "train" / "good", "MVTec AD training folder")
    test_dir = _require_dir(base / "test", "MVTec AD test folder")
    kinds = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    if not kinds:
        raise ValueError(f"MVTec AD test folder {str(test_dir)!r} has no subfolders; expected 'good' and one "
                         "folder per defect type.")
    kinds = (["good"] if "good" in kinds else []) + [k for k in kinds if k != "good"]
    test_items, missing = [], []
    for kind in kinds:
        for p in _list_images(test_dir / kind, f"MVTec AD test folder ({kind})"):
            mask = None
            if kind != "good":
                mask = base / "ground_truth" / kind / f"{p.stem}_mask.png"
                if not mask.is_file():
                    missing.append(f"{kind}/{p.name}")
            test_items.append(_Item(p, int(kind != "good"), kind, mask))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} defective MVTec AD test image(s) have no ground-truth mask: {_few(missing)}. "
            f"Expected {str(base / 'ground_truth')!r}/<defect_type>/<stem>_mask.png; is the category "
            "extracted completely?")
    train_items = [_Item(p, 0, "good", None) for p in train_paths]
    return _build(train_items, test_items, size, grey, f"mvtec/{category}", has_masks=True)


# --------------------------------------------------------------------------- generic folders

def _pattern_regex(mask_pattern: str) -> re.Pattern:
    parts = re.split(r"(\{stem\})", mask_pattern)
    return re.compile("".join("(.+)" if p == "{stem}" else re.escape(p) for p in parts) + r"\Z", re.IGNORECASE)


def load_folder(normal_dir, anomalous_dir, mask_dir=None, mask_pattern: str = "{stem}_mask.png",
                test_fraction: float = 0.2, size=256, seed: int = 0, require_masks: bool = True,
                grey: bool = False, name: str | None = None) -> tuple[AnomalyDataset, AnomalyDataset]:
    """Your own images: a folder of normal ones, a folder of anomalous ones, optionally masks.

    The normal images are split at random (``seed``) into training images and ``test_fraction`` of
    held-out normal test images; every anomalous image goes to the test split. The mask of an
    anomalous image ``scratch_01.jpg`` is ``mask_dir / mask_pattern.format(stem="scratch_01")``,
    e.g. ``"{stem}_mask.png"`` (MVTec's convention) or ``"{stem}.png"`` (same name in a separate
    folder). With ``mask_dir=None`` the masks are looked for next to the anomalous images, and files
    whose names match the pattern are taken as masks, not as images.

    Args:
        require_masks: if True (default) every anomalous image needs a mask. If False and no mask
            is found at all, the set has ``has_masks=False`` (image-level metrics only).
        size: side of the returned square images, ``(height, width)``, or ``None`` to keep the
            original size (all images must then share it).
        name: the data set's name (default: the name of the folder above ``normal_dir``).
    Returns:
        ``(train, test)``; kinds are ``"good"`` and ``"anomalous"``.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1 (the share of normal images held out for "
                         f"the test), got {test_fraction}.")
    try:
        valid = "{stem}" in mask_pattern and bool(mask_pattern.format(stem="x"))
    except (KeyError, IndexError, ValueError):  # other fields, such as "{name}", or stray braces
        valid = False
    if not valid:
        raise ValueError(f"mask_pattern must contain '{{stem}}' (the image's file name without extension) and "
                         f"no other '{{...}}' field, e.g. '{{stem}}_mask.png' or '{{stem}}.png'; got {mask_pattern!r}.")
    normal_dir = _require_dir(normal_dir, "normal image folder")
    anomalous_dir = _require_dir(anomalous_dir, "anomalous image folder")
    if normal_dir.resolve() == anomalous_dir.resolve():
        raise ValueError(f"normal_dir and anomalous_dir are the same folder ({str(normal_dir)!r}); keep normal "
                         "and anomalous images in two folders.")
    masks_beside = mask_dir is None or _as_path(mask_dir, "mask folder").resolve() == anomalous_dir.resolve()
    if masks_beside and Path(mask_pattern.replace("{stem}", "x")).stem == "x":
        raise ValueError(f"mask_pattern {mask_pattern!r} gives a mask the same name as its image, so the masks "
                         "cannot sit in the anomalous folder: put them in their own folder and pass mask_dir=..., "
                         "or name them like '{stem}_mask.png'.")
    mask_dir = anomalous_dir if mask_dir is None else _require_dir(mask_dir, "mask folder")
    regex = _pattern_regex(mask_pattern)
    exclude = (lambda p: regex.match(p.name) is not None) if masks_beside else None

    normal = _list_images(normal_dir, "normal image folder")
    anomalous = _list_images(anomalous_dir, "anomalous image folder", exclude=exclude)
    if len(normal) < 2:
        raise ValueError(f"normal image folder {str(normal_dir)!r} has {len(normal)} image; at least 2 are needed "
                         "(some to train on, one or more held out for the test).")
    n_test = max(1, int(round(test_fraction * len(normal))))
    if n_test >= len(normal):
        n_test = len(normal) - 1
    order = np.random.default_rng(seed).permutation(len(normal))
    test_normal = sorted(normal[i] for i in order[:n_test])
    train_normal = sorted(normal[i] for i in order[n_test:])

    mask_of = {}
    for p in anomalous:
        m = mask_dir / mask_pattern.format(stem=p.stem)
        if m.is_file():
            mask_of[p] = m
    without = [p.name for p in anomalous if p not in mask_of]
    if without and (require_masks or mask_of):
        example = mask_pattern.format(stem=anomalous[0].stem)
        what = (f"{len(without)} of {len(anomalous)} anomalous images have no mask: {_few(without)}. "
                f"Masks are looked for as {str(mask_dir)!r}/{mask_pattern!r} (for {anomalous[0].name!r}: "
                f"{example!r}).")
        if require_masks:
            raise FileNotFoundError(what + " Add the missing masks, fix mask_dir / mask_pattern, or pass "
                                    "require_masks=False to load without pixel ground truth.")
        raise ValueError(what + " Masks must be given for all anomalous images or for none: add the missing "
                         "ones, or move the masks away to load without pixel ground truth.")
    has_masks = bool(mask_of)
    name = name or (normal_dir.resolve().parent.name or "folder")
    train_items = [_Item(p, 0, "good", None) for p in train_normal]
    test_items = ([_Item(p, 0, "good", None) for p in test_normal]
                  + [_Item(p, 1, "anomalous", mask_of.get(p)) for p in anomalous])
    return _build(train_items, test_items, size, grey, name, has_masks=has_masks)


# --------------------------------------------------------------------------- torchvision sets

_TORCHVISION = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _torchvision_missing(cls_name: str, root: Path, detail: str) -> FileNotFoundError:
    where = (f"{str(root / 'cifar-10-batches-py')!r}" if cls_name == "CIFAR10"
             else f"{str(root / cls_name / 'raw')!r}")
    return FileNotFoundError(
        f"torchvision's {cls_name} files were not found under {where} ({detail}). The course never downloads "
        f"data. To get them, run once on a machine with internet:\n"
        f"    python -c \"import torchvision; d = torchvision.datasets.{cls_name}; "
        f"d('DIR', train=True, download=True); d('DIR', train=False, download=True)\"\n"
        f"then copy DIR here and pass root=DIR (the folder that contains "
        f"{'cifar-10-batches-py' if cls_name == 'CIFAR10' else cls_name + '/'}).")


def load_torchvision(name: str, root, normal_class=0, n_train: int | None = None,
                     n_test_normal: int | None = None, n_test_anomalous: int | None = None, seed: int = 0,
                     grey: bool = False) -> tuple[AnomalyDataset, AnomalyDataset]:
    """MNIST, Fashion-MNIST or CIFAR-10 from files you already have, one-vs-rest (Deep SVDD's protocol).

    Like :func:`anomaly_utils.data.load_mnist`: ``normal_class`` (or a list of classes) is normal,
    every other class anomalous. Training images come from the official training split (normal
    classes only), test images from the official test split: ``n_test_normal`` of each normal class
    and ``n_test_anomalous`` of each anomalous class (default ``None``: all of them, the paper's test
    set). Classes are indices or names (``"cat"``). ``download=False`` always: missing files raise a ``FileNotFoundError`` that says how to get
    them. Images are ``[1, 28, 28]`` (MNIST, Fashion-MNIST) or ``[3, 32, 32]`` (CIFAR-10; ``grey=True``
    gives 1 channel).
    """
    import torchvision

    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    if key not in _TORCHVISION:
        raise ValueError(f"unknown torchvision data set {name!r}; choose one of {sorted(_TORCHVISION.values())}.")
    cls_name = _TORCHVISION[key]
    root = _as_path(root, f"{cls_name} root folder")
    if not root.is_dir():
        raise _torchvision_missing(cls_name, root, f"the folder {str(root)!r} does not exist")
    cls = getattr(torchvision.datasets, cls_name)
    splits = {}
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except Exception as err:
            if isinstance(err, RuntimeError) and "not found" in str(err):  # torchvision's "Dataset not found"
                raise _torchvision_missing(cls_name, root, str(err).split(".")[0]) from None
            raise ValueError(f"torchvision's {cls_name} files under {str(root)!r} could not be read "
                             f"({type(err).__name__}: {err}); they look corrupt: fetch them again.") from None
        x, y = np.asarray(ds.data), np.asarray(ds.targets)
        splits[train] = (x, y)
    names = {c.lower(): i for i, c in enumerate(ds.classes)}

    def class_index(c):  # an index, or a class name such as "cat" (CIFAR-10) or "Sneaker" (Fashion-MNIST)
        if isinstance(c, str):
            if c.lower() not in names:
                raise ValueError(f"{cls_name}: no class named {c!r}; the classes are {list(ds.classes)}.")
            return names[c.lower()]
        return c

    normal = [normal_class] if np.isscalar(normal_class) else list(normal_class)
    normal = [class_index(c) for c in normal]
    classes = sorted(set(splits[True][1].tolist()))
    if not set(normal) <= set(classes):
        raise ValueError(f"{cls_name}: normal class(es) {normal} not among the classes {classes}.")

    def to_float(x):  # uint8 [N, H, W] or [N, H, W, 3] -> float [N, C, H, W] in [0, 1]
        x = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if grey and x.shape[1] == 3:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        return x.contiguous().numpy()

    # train: normal classes of the training split only (no need to convert the rest)
    x_tr, y_tr = splits[True]
    keep = np.isin(y_tr, normal)
    train, _ = _one_vs_rest(to_float(x_tr[keep]), y_tr[keep], normal, n_train, 0, 0, seed, cls_name)
    x_te, y_te = splits[False]
    counts = np.bincount(y_te, minlength=len(classes))
    if n_test_normal is None:
        n_test_normal = int(min(counts[c] for c in normal))
    if n_test_anomalous is None:
        n_test_anomalous = int(counts.max())
    _, test = _one_vs_rest(to_float(x_te), y_te, normal, 0, n_test_normal, n_test_anomalous, seed, cls_name)
    label = "+".join(map(str, normal))
    train.name, test.name = f"{cls_name.lower()}/{label}/train", f"{cls_name.lower()}/{label}/test"
    return train, test
