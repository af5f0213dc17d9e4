"""Generated from notebooks/10_leaderboard.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import inspect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_utils import AnomalyDataset, get_device, get_profile, load_mnist, load_textures, pick
from anomaly_utils.data import ELPV_CATEGORIES, TEXTURE_CATEGORIES, load_elpv
from anomaly_utils.results import chosen_settings
from anomaly_utils.sources import SOURCES, load_real, real_categories, real_data_name

FAMILIES = ("real", "textures", "mnist", "elpv")  # the leaderboard's data families, in the order of its tables
FAMILY_SIZE = {"real": 128, "textures": None, "mnist": 28, "elpv": 128}  # side the test images are scored at
FAMILY_CHANNELS = {"real": 3, "textures": 1, "mnist": 1, "elpv": 1}  # grey MVTec AD categories are made RGB


def family(dataset: str) -> str:
    """``"real"`` (``piped/...``, ``mvtec/...``, ``visa/...``), ``"textures"``, ``"mnist"`` or ``"elpv"``."""
    head = dataset.split("/")[0]
    return "real" if head in SOURCES else head


SHARED_TYPES = ["PA_BDP01_TL", "PA_BRG01_RL", "PA_FVN01_TL", "PA_GLA01_TL"]  # PIPED types of lessons 05, 07-09


def data_config() -> dict:
    """The leaderboard's data in the active profile: categories per family, seeds, split sizes (cpu: four PIPED
    types, those the lessons 05 and 07-09 use; three digits, lesson 03's; three seeds on mnist only; 100 ELPV
    test cells of each label; see section 3 for why)."""
    real = real_categories()
    shared = [t for t in SHARED_TYPES if t in real] or real[:4]
    return pick(
        smoke=dict(real=real[:1], textures=["brick"], mnist=[0], elpv=["mono"], seeds=[0], seed_families=FAMILIES,
                   tex_size=32,
                   tex_n_train=32, tex_n_test=10, mnist_n_train=64, mnist_n_test_normal=20, mnist_n_test_anomalous=4,
                   elpv_n_train=32, elpv_n_test=12),
        cpu=dict(real=shared, textures=list(TEXTURE_CATEGORIES), mnist=[0, 1, 7], elpv=list(ELPV_CATEGORIES),
                 seeds=[0, 1, 2], seed_families=("mnist",), tex_size=64, tex_n_train=200, tex_n_test=50,
                 mnist_n_train=None, mnist_n_test_normal=100, mnist_n_test_anomalous=20, elpv_n_train=None,
                 elpv_n_test=100),
        gpu=dict(real=real, textures=list(TEXTURE_CATEGORIES), mnist=list(range(10)), elpv=list(ELPV_CATEGORIES),
                 seeds=[0, 1, 2], seed_families=FAMILIES, tex_size=64, tex_n_train=200, tex_n_test=50,
                 mnist_n_train=None, mnist_n_test_normal=100, mnist_n_test_anomalous=100, elpv_n_train=None,
                 elpv_n_test=None),
    )


def datasets(fam: str | None = None) -> list[str]:
    """Every data set of the leaderboard (or of one family), e.g. ``"piped/PA_BDP01_TL"``, ``"elpv/mono"``."""
    cfg, real = data_config(), real_data_name()
    names = {"real": [f"{real}/{c}" for c in cfg["real"]], "textures": [f"textures/{c}" for c in cfg["textures"]],
             "mnist": [f"mnist/{c}" for c in cfg["mnist"]], "elpv": [f"elpv/{c}" for c in cfg["elpv"]]}
    return names[fam] if fam else [d for f in FAMILIES for d in names[f]]


def bench_data(dataset: str, split: str = "test", size: int | None = None, n_train: int | None = None):
    """``(train, eval)`` of a data set; ``split`` is ``"test"``, ``"val"`` or, on ELPV, ``"uncertain"``.

    ``size`` and ``n_train``: what a method's lesson trained on. Real and ELPV images are loaded at that size by
    their loader, so the training images are byte for byte the lesson's (and its cached model is found); textures
    (whose test defects depend on the size) and mnist keep their own size, and ``AtSize`` resizes them.
    """
    cfg, fam, which = data_config(), family(dataset), dataset.split("/")[1]
    if fam == "real":
        return load_real(which, size=size or FAMILY_SIZE["real"], split=split)
    if fam == "mnist":
        return load_mnist(int(which), n_train=cfg["mnist_n_train"], n_test_normal=cfg["mnist_n_test_normal"],
                          n_test_anomalous=cfg["mnist_n_test_anomalous"], split=split)
    if fam == "textures":
        return load_textures(which, size=cfg["tex_size"], n_train=cfg["tex_n_train"], n_test_normal=cfg["tex_n_test"],
                             n_test_defective=cfg["tex_n_test"], split=split)
    caps = [n for n in (n_train, cfg["elpv_n_train"]) if n is not None]
    train, ev = load_elpv(which, size=size or FAMILY_SIZE["elpv"], split=split, n_train=min(caps) if caps else None)
    if cfg["elpv_n_test"]:  # smoke and cpu: the first cells of each label
        ev = ev.subset(torch.cat([torch.nonzero(ev.labels == y)[:cfg["elpv_n_test"], 0] for y in (0, 1)]))
    return train, ev


class AtSize:
    """A detector that sees ``size`` x ``size`` images with ``channels`` channels, whatever it is given.

    Images are resized (bilinear, antialiased) and made grey (channel mean) or RGB (repeated) before ``fit`` and
    ``predict``; anomaly maps come back at the input's height x width. So every method of the registry runs at
    the size its lesson chose, on images of any size, grey or RGB (non-square ones too).
    """

    def __init__(self, detector, size: int | None, channels: int):
        self.detector, self.size, self.channels = detector, size, channels

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.channels:
            images = images.mean(1, keepdim=True) if self.channels == 1 else images.expand(-1, 3, -1, -1)
        if self.size is not None and tuple(images.shape[-2:]) != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                   antialias=True)
        return images.contiguous()

    def fit(self, train_dataset, fit=None):
        """``fit(prepared)`` (default: the detector's own ``fit``) on the prepared training images."""
        normal = train_dataset.normal() if hasattr(train_dataset, "normal") else train_dataset
        prepared = AnomalyDataset(self.prepare(normal.images), normal.labels, None, normal.kinds, normal.name)
        (fit or self.detector.fit)(prepared)
        return self

    def predict(self, images: torch.Tensor):
        scores, maps = self.detector.predict(self.prepare(images))
        if maps is not None and tuple(maps.shape[-2:]) != tuple(images.shape[-2:]):
            maps = F.interpolate(torch.as_tensor(maps).reshape(len(images), 1, *maps.shape[-2:]).float(),
                                 size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
        return scores, maps


SMOKE_STEPS = {"epochs": 1, "pretrain_epochs": 1, "steps": 2, "n_iter": 5, "n_steps": 2}  # smoke: step counts only


@dataclass
class MethodSpec:
    """One method of the leaderboard, built from what its lesson chose on each family's validation split."""

    name: str  # as in its lesson's results ("GANomaly")
    lesson: str  # results/<lesson>.json holds its chosen settings (save_result(..., settings=...))
    detector: Callable  # the detector's class: detector(**settings) builds it
    families: tuple  # the data families it runs on
    trains: bool = True  # learns weights from random ones: several seeds (on the profile's seed_families)
    borrow: dict = field(default_factory=dict)  # family -> the family whose choice it takes (not measured there)
    data_args: dict = field(default_factory=dict)  # family -> dict(size=, n_train=): what its lesson trained on
    base: "MethodSpec | None" = None  # the autoencoder a gradient projection wraps
    eval_subset: dict = field(default_factory=dict)  # family -> test images per label (a method too slow for all)
    uses_backbone: bool = False  # built on the pretrained EfficientNet-Lite0
    backbone_blocks: tuple = (4, 10)

    @property
    def data(self) -> tuple:  # older name of families
        return self.families

    def settings(self, fam: str) -> dict:
        """The constructor arguments its lesson recorded for ``fam`` (smoke: step counts cut, nothing else)."""
        chosen = dict(chosen_settings(self.lesson, self.name, self.borrow.get(fam, fam)))
        if get_profile() == "smoke":
            chosen.update({k: min(v, SMOKE_STEPS[k]) for k, v in chosen.items() if k in SMOKE_STEPS})
        return chosen

    def size(self, fam: str) -> int | None:
        """The side it sees: the GANs' ``isize``, else what its lesson trained on, else the family's own. MNIST
        digits keep their 28 px: the GANs zero-pad them to ``isize`` themselves, as in lessons 03 and 04."""
        if fam == "mnist":
            return FAMILY_SIZE[fam]
        args = self.base.data_args if self.base else self.data_args
        return self.settings(fam).get("isize") or args.get(fam, {}).get("size") or FAMILY_SIZE[fam]

    def build(self, fam: str, seed: int = 0):
        """A fresh detector with its lesson's settings for ``fam`` (and the caller's seed, device, no progress bar)."""
        if self.base is not None:  # lesson 06: the projection wraps lesson 05's autoencoder
            return self.detector(self.base.build(fam, seed), **self.settings(fam))
        kwargs = self.settings(fam)
        if "nc" in inspect.signature(self.detector).parameters:
            kwargs["nc"] = FAMILY_CHANNELS[fam]  # the GANs: as many channels as the family's images
        caller = dict(seed=seed, device=get_device(), progress=False)
        params = inspect.signature(self.detector).parameters
        return self.detector(**kwargs, **{k: v for k, v in caller.items() if k in params})

    def make(self, dataset: str, seed: int = 0) -> AtSize:
        """A fresh detector for ``dataset`` (e.g. ``"piped/mine"``), at its size, for any input size and channels."""
        fam = family(dataset)
        return AtSize(self.build(fam, seed), self.size(fam), FAMILY_CHANNELS[fam])


# Where a method's lesson did not measure a family the leaderboard runs, it takes the choice made on the nearest
# family (a stated rule, not a choice on this family's data): PIPED <- textures (image-level networks and the
# GANs, as on the 64-px texture crops), ELPV <- textures (the autoencoders, grey crops of a surface) or <- real
# (FCDD: real photos). What each lesson trained on where it differs from the family's default (side,
# training cells): lessons 01, 03, 04 ran ELPV at 64 px on 300 / 350 cells, lesson 09 at 128 px on 200 cells,
# lesson 05 PIPED at 64 px; the autoencoders run ELPV at 64 px on 200 cells (our rule: their texture setting).
ELPV_64 = {"elpv": dict(size=64, n_train=200)}


def make_registry() -> dict:
    """Every method of the course by name: a fresh dict of ``MethodSpec``."""
    from anomaly_utils.lessons.anogan import AnoGAN
    from anomaly_utils.lessons.autoencoders import ReconstructionDetector, real_config
    from anomaly_utils.lessons.cfa import CFA
    from anomaly_utils.lessons.deep_svdd import DeepSVDD
    from anomaly_utils.lessons.fcdd import FCDD
    from anomaly_utils.lessons.ganomaly import GANomaly
    from anomaly_utils.lessons.gradient_projection import GradientProjectionDetector
    from anomaly_utils.lessons.knowledge_distillation import STFPM, ReverseDistillation
    from anomaly_utils.lessons.memory_bank import KNNDetector, PaDiM, PatchCore
    from anomaly_utils.lessons.primer import NearestNeighbourDetector, PixelZScoreDetector

    maps, everywhere = ("textures", "real", "elpv"), ("mnist", "textures", "real", "elpv")
    ae_data = {"real": dict(size=real_config()["size"]), **ELPV_64}  # lesson 05's PIPED size (and ours on ELPV)
    specs = [
        MethodSpec("1-NN pixels", "00_primer", NearestNeighbourDetector, everywhere, trains=False),
        MethodSpec("z-score", "00_primer", PixelZScoreDetector, maps, trains=False),
        MethodSpec("Deep SVDD", "01_deep_svdd", DeepSVDD, everywhere, borrow={"real": "textures"},
                   data_args={"real": dict(size=64), "elpv": dict(size=64, n_train=300)}),
        MethodSpec("FCDD", "02_fcdd", FCDD, maps, borrow={"elpv": "real"}, data_args=ELPV_64),
        MethodSpec("AnoGAN", "03_anogan", AnoGAN, ("mnist", "elpv"), data_args={"elpv": dict(n_train=350)},
                   eval_subset={"elpv": 60, "mnist": 60}),  # latent search, 100 steps per image: 60 per label
        MethodSpec("GANomaly", "04_ganomaly", GANomaly, everywhere, borrow={"real": "textures"},
                   data_args={"elpv": dict(n_train=350)}),
    ]
    for name in ("L2-AE", "SSIM-AE", "VAE"):
        ae = MethodSpec(name, "05_autoencoders", ReconstructionDetector, maps, borrow={"elpv": "textures"},
                        data_args=ae_data)
        grad = MethodSpec(f"{name}-grad", "06_gradient_projection", GradientProjectionDetector, ("textures", "real"),
                          base=ae)
        specs += [ae, grad]
    specs += [
        MethodSpec("kNN (SPADE-like)", "07_memory_bank", KNNDetector, maps, trains=False, uses_backbone=True),
        MethodSpec("PaDiM", "07_memory_bank", PaDiM, maps, trains=False, uses_backbone=True,
                   backbone_blocks=(2, 4, 10)),
        MethodSpec("PatchCore", "07_memory_bank", PatchCore, maps, trains=False, uses_backbone=True),
        MethodSpec("CFA", "08_cfa", CFA, maps, uses_backbone=True,
                   data_args={"textures": dict(size=128)}),
        MethodSpec("STFPM", "09_knowledge_distillation", STFPM, maps, uses_backbone=True, backbone_blocks=(2, 4, 10),
                   data_args={"textures": dict(size=128), "elpv": dict(n_train=200)}),
        MethodSpec("Reverse Distillation", "09_knowledge_distillation", ReverseDistillation, maps, uses_backbone=True,
                   backbone_blocks=(2, 4, 10), data_args={"textures": dict(size=128), "elpv": dict(n_train=200)}),
    ]
    return {s.name: s for s in specs}


METHODS = make_registry()
BENCH_DATASETS = ["mnist/0", "textures/brick"]


def bootstrap_draws(values: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """Resampled means of each method's scores ``{method: array [categories, seeds]}`` (same categories for all).

    Each of the ``n_boot`` resamples draws the categories with replacement (one draw shared by every method: they
    ran on the same categories) and, inside each drawn category, the seeds with replacement; its mean is one draw.
    """
    rng = np.random.default_rng(seed)  # a fixed bootstrap seed: the intervals are the same on a rerun
    arrays = {m: np.asarray(v, dtype=float).reshape(len(v), -1) for m, v in values.items()}
    n_cat, max_seeds = len(next(iter(arrays.values()))), max(a.shape[1] for a in arrays.values())
    cats = rng.integers(0, n_cat, size=(n_boot, n_cat, 1))  # the categories of each resample
    u = rng.random((n_boot, n_cat, max_seeds))  # uniform numbers that pick the seeds inside each category
    return {m: a[cats, (u[..., :a.shape[1]] * a.shape[1]).astype(int)].mean(axis=(1, 2)) for m, a in arrays.items()}


def interval(draws: np.ndarray, level: float = 0.95) -> tuple:
    """The percentile interval holding the central ``level`` of the bootstrap draws."""
    return tuple(float(q) for q in np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))


def ties_with(best: str, draws: dict, level: float = 0.95) -> list:
    """The methods whose difference to ``best`` (paired: the same resampled categories) has an interval holding 0."""
    return [m for m in draws if m == best or interval(draws[best] - draws[m], level)[0] <= 0
            <= interval(draws[best] - draws[m], level)[1]]


def predict_tiled(detector, images: torch.Tensor, tile: int, stride: int):
    """Run ``detector`` (fitted on ``tile`` x ``tile`` images) on larger ``images [N, C, H, W]`` window by window.

    Windows of ``tile`` pixels every ``stride`` pixels (the last row and column flush with the border); each pixel's
    score is the mean over the windows that hold it, and an image's score is the maximum of its map.
    """
    n, _, h, w = images.shape
    if h < tile or w < tile:
        raise ValueError(f"images of {h} x {w} are smaller than one tile of {tile}: resize them instead.")
    tops = sorted({*range(0, h - tile + 1, stride), h - tile})
    lefts = sorted({*range(0, w - tile + 1, stride), w - tile})
    total, count = torch.zeros(n, h, w), torch.zeros(1, h, w)
    for top in tops:
        for left in lefts:
            _, maps = detector.predict(images[:, :, top:top + tile, left:left + tile])
            total[:, top:top + tile, left:left + tile] += torch.as_tensor(maps).reshape(n, tile, tile)
            count[:, top:top + tile, left:left + tile] += 1
    maps = total / count
    return maps.flatten(1).amax(1), maps
