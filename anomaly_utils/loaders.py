"""Loaders for a practitioner's own data: MVTec AD, VisA, a generic folder layout, torchvision sets.

Every loader returns ``(train, test)`` as :class:`~anomaly_utils.data.AnomalyDataset` s, the same
item type as the embedded sets (``Sample(image [C, H, W] in [0, 1], label 0/1, mask [H, W])``), so
every lesson's detector runs on them unchanged::

    train, test = load_mvtec("~/data/mvtec_anomaly_detection", "carpet", size=256)
    train, val = load_visa("data/downloads/visa", "pcb1", size=256, split="val")
    train, test = load_folder("my_parts/good", "my_parts/defective", mask_dir="my_parts/masks")
    train, test = load_torchvision("CIFAR10", "~/data/torchvision", normal_class=3)

Nothing is ever downloaded. Problems with the files (a missing path, an empty folder, an unreadable
image, a mask that does not fit its image, a missing mask) raise ``FileNotFoundError`` or
``ValueError`` with a message that names the file and says what to do; there is no silent fallback
to other data.

Channels: an all-grey source gives 1-channel images; if any image is in colour, every image is
loaded as RGB (grey ones repeated to 3 channels), so a data set never mixes channel counts.
``grey=True`` converts everything to 1 channel (ITU-R 601 luma).

Pixels: 8-bit images are divided by 255, 16-bit ones by 65535 (the bit depth, the same for every
image, never an image's own maximum). Photos are turned upright by their EXIF orientation, and
their masks are turned the same way (a mask is taken to be drawn on the stored pixels; the mask
file's own EXIF is ignored). Masks: a grey mask is defective above half its range (0/1 label
images: at 1); a colour mask wherever a pixel is not black; transparent pixels never. A warning
(one per data set) names anomalous images with empty masks and masks covering more than half of
their image (inverted?). Hidden files and folders (names starting with '.') are ignored; mask
extensions match in any case (``a_mask.PNG`` for ``{stem}_mask.png``).
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import AnomalyDataset, _one_vs_rest, check_counts, check_seed, resize_masks

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16-bit (or 32-bit) grey, float
_GREY_MODES = {"1", "L", "LA", "La", *_HIGH_BIT_MODES}


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


def _list_images(folder: Path, what: str, exclude=None, say_excluded: str | None = None) -> list[Path]:
    """The image files directly inside ``folder`` (sorted by name); an error if there are none.

    Files for which ``exclude(path)`` is true are left out; with ``say_excluded`` (the rule's name) a
    warning names them.
    """
    folder = _require_dir(folder, what)
    candidates = sorted(p for p in folder.iterdir() if _is_image_file(p))
    files = [p for p in candidates if not (exclude and exclude(p))]
    if say_excluded and len(files) < len(candidates):
        skipped = [p.name for p in candidates if exclude(p)]
        warnings.warn(f"{what} {str(folder)!r}: skipped {len(skipped)} file(s) named like masks ({say_excluded}): "
                      f"{_few(skipped)}. Masks are not images to train or test on; move them next to their images "
                      "(or into the mask folder).", stacklevel=3)
    if not files:
        subdirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
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

def _open(path: Path, what: str, draft=None):
    """Open and fully decode an image with PIL, as stored (no EXIF rotation); a ``ValueError`` naming the file.

    ``draft`` (a size ``(h, w)``): a JPEG may be decoded at a reduced scale that is still at least that
    size; ``im.info["full_size"]`` then holds the stored ``(width, height)``.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            full = im.size
            if draft is not None and im.format == "JPEG":
                h, w = draft
                big = max(w, h)  # an EXIF turn may swap the sides: ask for the longer side both ways
                im.draft(im.mode, (big, big) if _swaps(_orientation(im)) else (w, h))
            im.load()
            out = im.copy()
            out.info["full_size"] = full
            return out
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{what} {str(path)!r} is too large for PIL's safety limit against decompression bombs "
                         f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {err} If you trust the file, "
                         "raise the limit before loading: from PIL import Image; Image.MAX_IMAGE_PIXELS = None. "
                         "Or shrink the image.") from None
    except Exception as err:  # PIL raises OSError, UnidentifiedImageError, SyntaxError, ValueError, ...
        raise ValueError(f"cannot read {what} {str(path)!r} ({type(err).__name__}: {err}). The file is not a "
                         "valid image or is corrupt: replace it or remove it from the folder.") from None


def _swaps(turn) -> bool:
    """Whether an EXIF turn (a PIL transpose, or None) swaps width and height."""
    return getattr(turn, "name", None) in ("ROTATE_90", "ROTATE_270", "TRANSPOSE", "TRANSVERSE")


def _orientation(im):
    """The PIL transpose that turns ``im`` upright as its EXIF orientation says (None: as stored)."""
    from PIL import Image

    try:
        code = im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is no reason to reject the pixels
        return None
    t = Image.Transpose
    return {2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE, 6: t.ROTATE_270,
            7: t.TRANSVERSE, 8: t.ROTATE_90}.get(code)


def _scale_high_bit_depth(a: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """16-bit pixels to [0, 1] by the bit depth (/ 65535), the same for every image; float pixels as they are."""
    top = 1.0 if mode == "F" else 65535.0
    a = a.astype(np.float32) / top
    if a.size and not (a.min() >= 0 and a.max() <= 1):
        raise ValueError(f"image {str(path)!r} (PIL mode {mode}) has pixel values from {a.min() * top:g} to "
                         f"{a.max() * top:g}; expected 0 to {top:g}. Convert it to an 8- or 16-bit image first.")
    return a


def _read_image(path: Path, grey: bool, size=None):
    """Decode ``path`` to float32 in [0, 1]: ``[H, W]`` for grey images, ``[H, W, 3]`` for colour.

    Returns ``(pixels, turn, (H, W))``: photos are turned upright by their EXIF orientation; ``turn``
    is that transpose (or None), to be applied to the image's mask as well; ``(H, W)`` is the upright
    image's full size (what its mask must have). A JPEG much larger than ``size`` is decoded at a reduced
    scale (1/2, 1/4 or 1/8, JPEG's own DCT scaling, still at least ``size``): much faster for large photos.
    """
    im = _open(path, "image", draft=size)
    full, turn = im.info.get("full_size", im.size), _orientation(im)
    if turn is not None:
        im = im.transpose(turn)
    w, h = full
    hw = (w, h) if _swaps(turn) else (h, w)
    if im.mode in _HIGH_BIT_MODES:
        return _scale_high_bit_depth(np.asarray(im), im.mode, path), turn, hw
    if im.mode in _GREY_MODES or grey:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0, turn, hw
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    if im.mode == "P" and np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0], turn, hw  # a palette image whose palette is grey
    return rgb, turn, hw


def _read_mask(path: Path, image_path: Path, image_hw: tuple[int, int], turn=None,
               nonzero: bool = False) -> np.ndarray:
    """A binary mask ``[H, W]`` (bool), turned like its image (``turn``: the image's EXIF orientation).

    Grey masks: above half their range is defective (0/1 label images: 1). Colour masks (e.g. drawn
    in dark red): where the brightest channel is above half of the mask's brightest value (so JPEG
    noise around a defect is not defect). ``nonzero=True`` (label images such as VisA's, which number
    their defects 1, 2, ...): every non-zero pixel. Where the mask has an alpha channel, transparent
    pixels are never defective.
    """
    im = _open(path, "mask")
    if turn is not None:
        im = im.transpose(turn)
    if nonzero:
        a = (np.asarray(im) if im.mode in _HIGH_BIT_MODES else np.asarray(im.convert("L")) if im.mode in _GREY_MODES
             else np.asarray(im.convert("RGB")))  # alpha is not a label: handled below
        defective = (a != 0) if a.ndim == 2 else (a != 0).any(axis=-1)
    elif im.mode in _HIGH_BIT_MODES:
        a, top = np.asarray(im), 1.0 if im.mode == "F" else 65535.0
        defective = a > 0 if a.max() <= 1 else a > top / 2
    elif im.mode in ("1", "L", "LA", "La"):
        a = np.asarray(im.convert("L"))
        defective = a > 0 if a.max() <= 1 else a > 127  # 0/1 label images, or 0/255 cut at half
    else:
        brightest = np.asarray(im.convert("RGB")).max(axis=-1)
        defective = brightest > brightest.max() / 2  # an all-black mask stays empty (0 > 0 is False)
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        defective &= np.asarray(im.convert("RGBA"))[..., 3] > 0
    if defective.shape != tuple(image_hw):
        turned = " (after turning it like its image, whose EXIF orientation says it was rotated)" if turn else ""
        raise ValueError(f"mask {str(path)!r} is {defective.shape[1]} x {defective.shape[0]} pixels{turned} but its "
                         f"image {str(image_path)!r} is {image_hw[1]} x {image_hw[0]} (width x height). A mask must "
                         "have exactly its image's size: check that it belongs to this image.")
    return defective


def _resize_image(a: np.ndarray, size) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # [C, H, W]
    if size is not None and tuple(t.shape[1:]) != size:
        t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return t.clamp(0, 1)


def _resize_mask(m: np.ndarray, size) -> torch.Tensor:
    """A bool mask as float 0/1 at ``size``; every defect keeps at least one pixel (``data.resize_masks``)."""
    t = torch.from_numpy(m.astype(np.float32))
    return t if size is None else resize_masks(t[None], size)[0]


def _is_int(n) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool)


def _check_size(size):
    """``None`` or ``(height, width)``; an error for anything else (such as '64' or 32.7)."""
    if size is None:
        return None
    pair = (size, size) if _is_int(size) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or not all(_is_int(s) and s >= 1 for s in pair):
        raise ValueError(f"size must be a positive int (square images), a (height, width) pair of ints or None "
                         f"(keep the original size); got {size!r}.")
    return int(pair[0]), int(pair[1])


def _find_files(wanted: list[Path]) -> list[Path | None]:
    """The file at each wanted path, its extension matched in any case (``a_mask.PNG`` for ``a_mask.png``)."""
    listings, found = {}, []
    for w in wanted:
        if w.parent not in listings:  # list each folder once
            files = [p for p in w.parent.iterdir() if p.is_file()] if w.parent.is_dir() else []
            listings[w.parent] = {(p.stem, p.suffix.lower()): p for p in files if not p.name.startswith(".")}
        found.append(listings[w.parent].get((w.stem, w.suffix.lower())))
    return found


class _Item(NamedTuple):
    path: Path
    label: int
    kind: str
    mask: Path | None  # None: no mask file (normal items, or a set without masks)


def _build(train_items: list[_Item], test_items: list[_Item], size, grey: bool, name: str,
           has_masks: bool, mask_nonzero: bool = False) -> tuple[AnomalyDataset, AnomalyDataset]:
    """Decode and resize every item into one preallocated tensor; one channel count for the whole set.

    Warns (once per data set) about anomalous images with empty masks and about masks covering
    more than half of their image.
    """
    from tqdm.auto import tqdm

    size = _check_size(size)
    items = train_items + test_items
    images = masks = None  # allocated at the first image, then filled in place (no list to stack)
    empty, inverted = [], []
    for i, item in enumerate(tqdm(items, desc=f"loading {name}", disable=len(items) < 100, leave=False)):
        a, turn, hw = _read_image(item.path, grey, size)
        t = _resize_image(a, size)  # [C, h, w]
        if images is None:
            first = item.path
            images = torch.empty(len(items), t.shape[0], *t.shape[1:])
            masks = torch.zeros(len(items), *t.shape[1:]) if has_masks else None
        if t.shape[1:] != images.shape[2:]:
            raise ValueError(f"{name}: the images have different sizes ({str(first)!r} is {images.shape[3]} x "
                             f"{images.shape[2]}, {str(item.path)!r} is {t.shape[2]} x {t.shape[1]}); pass size=... "
                             "to resize them all to one size.")
        if t.shape[0] > images.shape[1]:  # the first colour image: the whole set becomes RGB
            images = images.expand(-1, 3, -1, -1).clone()
        images[i] = t  # a grey image is repeated to 3 channels in an RGB set
        if has_masks and item.mask is not None:
            m = _read_mask(item.mask, item.path, hw, turn, nonzero=mask_nonzero)
            masks[i] = _resize_mask(m, size)
            where = f"{item.mask.parent.name}/{item.mask.name}"
            if item.label == 1 and not masks[i].any():  # checked after resizing: what the metrics will see
                empty.append(where)
            if masks[i].mean() > 0.5:
                inverted.append(where)
    if empty:
        warnings.warn(f"{name}: {len(empty)} of {sum(it.label for it in test_items)} anomalous image(s) have an empty "
                      f"mask (no defective pixel): {_few(empty)}. Pixel metrics take them as defect-free; check "
                      "these masks.", stacklevel=3)
    if inverted:
        warnings.warn(f"{name}: {len(inverted)} mask(s) mark more than half of their image as defective: "
                      f"{_few(inverted)}. Are they inverted (some data sets mark the defect in black)? If so, "
                      "invert those mask files.", stacklevel=3)
    n = len(train_items)

    def split(lo, hi, items, suffix):
        return AnomalyDataset(images[lo:hi], [it.label for it in items],
                              None if masks is None else masks[lo:hi], [it.kind for it in items],
                              f"{name}/{suffix}")

    train = split(0, n, train_items, "train")
    test = split(n, len(items), test_items, "test")
    test.check_test_split()
    return train, test


# --------------------------------------------------------------------------- MVTec AD

def _named_like_mask(p: Path) -> bool:
    return p.stem.lower().endswith("_mask")


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
    size = _check_size(size)
    root = _require_dir(root, "MVTec AD root folder")
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir() and not p.name.startswith("."))
    if not isinstance(category, str) or not category or category.startswith(".") or "/" in category \
            or "\\" in category:
        raise ValueError(f"category must be the name of a category folder, such as 'bottle'; got {category!r}. "
                         + (f"Categories found in {str(root)!r}: {_few(found, 15)}." if found else ""))
    base = root / category
    if not base.is_dir():
        raise FileNotFoundError(
            f"MVTec AD category {category!r} not found: {str(base)!r} does not exist. "
            + (f"Categories found in {str(root)!r}: {_few(found, 15)}." if found else
               f"{str(root)!r} holds no category folders (<category>/train/good); get MVTec AD from "
               f"{MVTEC_URL} and extract it there."))
    train_paths = _list_images(base / "train" / "good", "MVTec AD training folder", exclude=_named_like_mask,
                               say_excluded="<stem>_mask.png")
    test_dir = _require_dir(base / "test", "MVTec AD test folder")
    kinds = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not kinds:
        raise ValueError(f"MVTec AD test folder {str(test_dir)!r} has no subfolders; expected 'good' and one "
                         "folder per defect type.")
    kinds = (["good"] if "good" in kinds else []) + [k for k in kinds if k != "good"]
    test_items, missing = [], []
    for kind in kinds:
        paths = _list_images(test_dir / kind, f"MVTec AD test folder ({kind})", exclude=_named_like_mask,
                             say_excluded="<stem>_mask.png")
        masks = [None] * len(paths) if kind == "good" else \
            _find_files([base / "ground_truth" / kind / f"{p.stem}_mask.png" for p in paths])
        for p, mask in zip(paths, masks):
            if kind != "good" and mask is None:
                missing.append(f"{kind}/{p.name}")
            test_items.append(_Item(p, int(kind != "good"), kind, mask))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} defective MVTec AD test image(s) have no ground-truth mask: {_few(missing)}. "
            f"Expected {str(base / 'ground_truth')!r}/<defect_type>/<stem>_mask.png; is the category "
            "extracted completely?")
    train_items = [_Item(p, 0, "good", None) for p in train_paths]
    return _build(train_items, test_items, size, grey, f"mvtec/{category}", has_masks=True)


# --------------------------------------------------------------------------- VisA

VISA_URL = "https://github.com/amazon-science/spot-diff"
VISA_SPLITS = ("val", "test", "official")


def _visa_rows(root: Path) -> list[dict]:
    """The rows of VisA's official one-class split file ``root/split_csv/1cls.csv``; clear errors if unusable."""
    import csv

    path = root / "split_csv" / "1cls.csv"
    if not path.is_file():
        raise FileNotFoundError(f"VisA's split file {str(path)!r} does not exist. Download VisA with `make visa` (it "
                                f"unpacks the official archive, split_csv/ included), or point root at the folder "
                                f"that holds split_csv/ and the category folders ({VISA_URL}).")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = {"object", "split", "label", "image", "mask"}
        if not columns <= set(reader.fieldnames or ()):
            raise ValueError(f"{str(path)!r} has the columns {reader.fieldnames}; VisA's 1cls.csv has "
                             f"{sorted(columns)}. Is it the original file?")
        return list(reader)


def _visa_kinds(base: Path) -> dict[str, str]:
    """Defect description per anomalous image from ``<category>/image_anno.csv`` (``{image path: label}``)."""
    import csv

    path = base / "image_anno.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {r["image"]: r["label"].strip() for r in csv.DictReader(f)
                if r.get("image") and r.get("label") and r["label"].strip() != "normal"}


def load_visa(root, category: str, size=256, split: str = "test", seed: int = 0,
              grey: bool = False) -> tuple[AnomalyDataset, AnomalyDataset]:
    """A category of VisA with its official one-class split (download it with ``make visa``)::

        root/split_csv/1cls.csv                          object,split,label,image,mask (paths relative to root)
        root/<category>/Data/Images/Normal/*.JPG         normal images
        root/<category>/Data/Images/Anomaly/*.JPG        anomalous images
        root/<category>/Data/Masks/Anomaly/*.png         their masks: every non-zero pixel is defective
        root/<category>/image_anno.csv                   a description of each defect (used as its kind)

    Zou et al., "SPot-the-Difference Self-Supervised Pre-training for Anomaly Detection and Segmentation",
    ECCV 2022; CC BY 4.0 as github.com/amazon-science/spot-diff says. 12 categories, 10,821 photos.

    Train is the split file's training images (all normal). Its test split (normal and anomalous) has no
    validation part, so, as for MVTec AD (``anomaly_utils.sources.split_val_test``), a seeded third of each kind
    goes to ``split="val"`` and the rest to ``split="test"``; ``split="official"`` returns the whole official
    test split, the one papers report (compare with papers there; never choose settings on it).

    Size: the photos are large (about 1500 x 1000 px, differing per category). They are resized to ``size`` x
    ``size`` **without keeping the aspect ratio and without cropping** (as anomalib does): a centre crop would
    cut defects near the border out of images that stay labelled anomalous. Pass ``size=(height, width)`` to
    keep an aspect ratio. JPEGs are decoded at a reduced scale (still at least ``size``), which is fast;
    nothing is cached on disk. The last category loaded stays decoded in memory (a lesson asks for its val and
    then its test split; each call returns copies); after changing its files, call
    ``anomaly_utils.loaders._visa_official.cache_clear()`` or restart the kernel.

    Returns ``(train, evaluation)``; kinds are ``"good"`` or the defect description.
    """
    from .sources import split_val_test

    size = _check_size(size)
    if split not in VISA_SPLITS:
        raise ValueError(f"split must be one of {VISA_SPLITS}, got {split!r}.")
    seed = check_seed(seed)
    root = _require_dir(root, "VisA root folder").resolve()
    split_file = root / "split_csv" / "1cls.csv"
    stamp = split_file.stat().st_mtime_ns if split_file.is_file() else None
    train, test = _visa_official(root, category, size, bool(grey), stamp)
    train = train.subset(list(range(len(train))))  # copies: the cached tensors stay as loaded
    if split == "official":
        return train, test.subset(list(range(len(test))))
    val_part, test_part = split_val_test(test, seed=seed)
    return train, (val_part if split == "val" else test_part)


@functools.lru_cache(maxsize=1)
def _visa_official(root: Path, category, size, grey: bool, stamp) -> tuple[AnomalyDataset, AnomalyDataset]:
    """``(train, official test)`` of a VisA category, decoded once (a lesson asks for val, then for test)."""
    rows = _visa_rows(root)
    listed = sorted({r["object"] for r in rows})
    if not isinstance(category, str) or category not in listed:
        raise ValueError(f"VisA has no category {category!r}; its split file lists: {_few(listed, 12)}.")
    base = root / category
    if not (base / "Data").is_dir():
        raise FileNotFoundError(f"VisA category {category!r} is not unpacked: {str(base / 'Data')!r} does not exist. "
                                f"Run `make visa CATEGORIES={category}` (or `make visa`).")
    kinds = _visa_kinds(base)
    train_items, test_items, missing = [], [], []
    for r in (r for r in rows if r["object"] == category):
        if r["label"] not in ("normal", "anomaly") or r["split"] not in ("train", "test"):
            raise ValueError(f"VisA split file: unexpected row {r} (label must be normal/anomaly, split train/test).")
        label = int(r["label"] == "anomaly")
        if r["split"] == "train" and label:
            raise ValueError(f"VisA split file lists an anomalous training image ({r['image']}); the one-class "
                             "split trains on normal images only. Is it the original 1cls.csv?")
        image, mask = root / r["image"], (root / r["mask"] if label and r["mask"] else None)
        missing += [str(f.relative_to(root)) for f in (image, mask) if f is not None and not f.is_file()]
        if label and mask is None:
            missing.append(f"(no mask listed for {r['image']})")
        item = _Item(image, label, kinds.get(r["image"], "anomaly") if label else "good", mask)
        (train_items if r["split"] == "train" else test_items).append(item)
    if missing:
        raise FileNotFoundError(f"VisA {category}: {len(missing)} file(s) of the split file are missing: "
                                f"{_few(missing)}. Is the category unpacked completely? Run `make visa "
                                f"CATEGORIES={category}` again.")
    return _build(train_items, test_items, size, grey, f"visa/{category}", has_masks=True, mask_nonzero=True)


# --------------------------------------------------------------------------- generic folders

def _pattern_regex(mask_pattern: str) -> re.Pattern:
    """Matches the file names ``mask_pattern`` gives, with the extension in any case (as ``_find_files``)."""
    ext = Path(mask_pattern).suffix
    parts = re.split(r"(\{stem\})", mask_pattern[:len(mask_pattern) - len(ext)])
    name = "".join("(.+)" if p == "{stem}" else re.escape(p) for p in parts)
    return re.compile(name + (f"(?i:{re.escape(ext)})" if ext else "") + r"\Z")


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
    size = _check_size(size)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.integer, np.floating)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number between 0 and 1 (the share of normal images held out "
                         f"for the test, e.g. 0.2), got {test_fraction!r}.")
    seed = check_seed(seed)
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

    # a file named like a mask ("0_mask.png") in the normal folder is a stray mask, not a training image
    named_like_masks = None if Path(mask_pattern.replace("{stem}", "x")).stem == "x" else \
        (lambda p: regex.match(p.name) is not None)
    normal = _list_images(normal_dir, "normal image folder", exclude=named_like_masks, say_excluded="mask_pattern")
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

    found = _find_files([mask_dir / mask_pattern.format(stem=p.stem) for p in anomalous])
    mask_of = {p: m for p, m in zip(anomalous, found) if m is not None}
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

    check_counts(n_train=n_train, n_test_normal=n_test_normal, n_test_anomalous=n_test_anomalous)
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
    test.check_test_split()  # e.g. every class normal: no anomalous test images
    return train, test
