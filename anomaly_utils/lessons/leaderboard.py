"""Generated from notebooks/10_leaderboard.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from anomaly_utils import AnomalyDataset, get_device, load_mnist, load_textures, pick
from anomaly_utils.data import TEXTURE_CATEGORIES
from anomaly_utils.results import lesson_settings
from anomaly_utils.sources import SOURCES, load_real, real_categories


class Resized:
    """Run a detector on images resized to ``size`` x ``size``; maps come back at that size.

    (``evaluate`` brings anomaly maps back to the image size with bilinear interpolation.)
    """

    def __init__(self, detector, size: int):
        self.detector, self.size = detector, size

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def fit(self, train_dataset):
        resized = AnomalyDataset(self._resize(train_dataset.images), train_dataset.labels, None,
                                 train_dataset.kinds, train_dataset.name)
        self.detector.fit(resized)
        return self

    def predict(self, images: torch.Tensor):
        return self.detector.predict(self._resize(images))


@dataclass
class MethodSpec:
    """One method of the leaderboard: its lesson, the data it applies to and how to build it."""

    name: str
    lesson: str
    make: Callable[[str], object]  # data set name ("mnist/3", "textures/brick") -> a fresh detector
    data: tuple = ("mnist", "textures")  # "mnist" (image level), "textures" and/or "real" (PIPED or MVTec AD)
    uses_backbone: bool = False  # built on the pretrained EfficientNet-Lite0
    backbone_blocks: tuple = (4, 10)


def family(dataset: str) -> str:
    """``"mnist"``, ``"textures"`` or ``"real"`` (``"piped/..."`` or ``"mvtec/..."``) for a data set name."""
    head = dataset.split("/")[0]
    return "real" if head in SOURCES else head


def data_config() -> dict:
    """The leaderboard's splits in the active profile (real data: PIPED or MVTec AD at 128 px)."""
    real = real_categories()
    return pick(
        smoke=dict(real_categories=real[:1], mnist_classes=[0], categories=["brick"], size=32, n_train=32, n_test=10,
                   mnist_n_train=64, mnist_n_test_normal=20, mnist_n_test_anomalous=4),
        cpu=dict(real_categories=real, mnist_classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], categories=list(TEXTURE_CATEGORIES), size=64,
                 n_train=200, n_test=50, mnist_n_train=None, mnist_n_test_normal=100, mnist_n_test_anomalous=20),
        gpu=dict(real_categories=real, mnist_classes=list(range(10)), categories=list(TEXTURE_CATEGORIES), size=64, n_train=200,
                 n_test=50, mnist_n_train=None, mnist_n_test_normal=100, mnist_n_test_anomalous=100),
    )


def bench_data(dataset: str, split: str = "test"):
    """``(train, eval)`` for ``"mnist/<class>"``, ``"textures/<category>"`` or ``"piped/<type>"``.

    ``split="val"``: textures and real data only. Real data comes through ``load_real`` at 128 px, as RGB.
    """
    cfg = data_config()
    head, which = dataset.split("/")
    if family(dataset) == "real":
        train, ev = load_real(which, size=REAL_SIZE, split=split)
        for ds in (train, ev):  # a grey MVTec AD category is repeated to 3 channels: one model shape for all
            if ds.images.shape[1] == 1:
                ds.images = ds.images.expand(-1, 3, -1, -1).contiguous()
        return train, ev
    if head == "mnist":
        return load_mnist(int(which), n_train=cfg["mnist_n_train"], n_test_normal=cfg["mnist_n_test_normal"],
                          n_test_anomalous=cfg["mnist_n_test_anomalous"])
    return load_textures(which, size=cfg["size"], n_train=cfg["n_train"], n_test_normal=cfg["n_test"],
                         n_test_defective=cfg["n_test"], split=split)


REAL_SIZE = 128  # PIPED's native size


def _epochs(smoke, cpu, gpu):
    return pick(smoke=smoke, cpu=cpu, gpu=gpu)


def make_registry() -> dict:
    """Every method of the course by name (a fresh ``MethodSpec`` dict)."""
    from anomaly_utils.lessons.anogan import AnoGAN
    from anomaly_utils.lessons.autoencoders import ReconstructionDetector
    from anomaly_utils.lessons.cfa import CFA
    from anomaly_utils.lessons.deep_svdd import DeepSVDD
    from anomaly_utils.lessons.fcdd import FCDD
    from anomaly_utils.lessons.ganomaly import GANomaly
    from anomaly_utils.lessons.gradient_projection import GradientProjectionDetector
    from anomaly_utils.lessons.memory_bank import KNNDetector, PaDiM, PatchCore
    from anomaly_utils.lessons.primer import NearestNeighbourDetector, PixelZScoreDetector

    dev = get_device()

    def ae(loss, dataset="textures"):  # lesson 05's configuration in each profile (its cached weights are reused)
        kw = pick(smoke=dict(epochs=1, width=8, latent_dim=16, window_size=7),
                  cpu=dict(epochs=40, width=16, latent_dim=64, window_size=7),
                  gpu=dict(epochs=100, width=32, latent_dim=100, window_size=11))
        if family(dataset) == "real":  # 26-30 training images: one batch per epoch, so more epochs are cheap
            kw["epochs"] = pick(smoke=1, cpu=REAL_AE_EPOCHS, gpu=300)
        return ReconstructionDetector(loss=loss, batch_size=32, lr=1e-3, vae_sigma=0.1, score_blur=5,
                                      device=dev, progress=False, **kw)

    def grad(loss, dataset):  # lesson 06's projection (its val-chosen settings) on lesson 05's autoencoder
        return GradientProjectionDetector(ae(loss, dataset), **GRAD_SETTINGS["piped" if family(dataset) == "real" else "textures"][loss])

    def gan_size(dataset):
        return {"mnist": 32, "real": REAL_SIZE}.get(family(dataset), data_config()["size"])

    specs = [
        MethodSpec("1-NN pixels", "00", lambda d: NearestNeighbourDetector(k=1)),
        MethodSpec("z-score", "00", lambda d: PixelZScoreDetector(), data=("textures", "real")),
        MethodSpec("Deep SVDD", "01", lambda d: DeepSVDD(
            epochs=_epochs(1, 20, 150), pretrain_epochs=_epochs(1, 10, 100), device=dev, progress=False)),
        MethodSpec("FCDD", "02", lambda d: FCDD(epochs=_epochs(1, 20, 100), device=dev, progress=False),
                   data=("textures", "real")),
        MethodSpec("AnoGAN", "03", lambda d: AnoGAN(
            isize=gan_size(d), nz=64, ngf=16, ndf=16, epochs=_epochs(1, 25, 100), batch_size=16,
            n_iter=_epochs(5, 100, 500), search_lr=0.1, device=dev), data=("mnist",)),
        MethodSpec("GANomaly", "04", lambda d: GANomaly(
            isize=gan_size(d), nz=100, ngf=16, ndf=16, nc=3 if family(d) == "real" else 1,
            epochs=_epochs(1, 10, 15) if family(d) != "real" else _epochs(1, 15, 200), batch_size=32, device=dev),
            data=("mnist", "textures", "real")),
        MethodSpec("L2-AE", "05", lambda d: ae("l2", d), data=("textures", "real")),
        MethodSpec("SSIM-AE", "05", lambda d: ae("ssim", d), data=("textures", "real")),
        MethodSpec("VAE", "05", lambda d: ae("vae", d), data=("textures", "real")),
        MethodSpec("L2-AE-grad", "06", lambda d: grad("l2", d), data=("textures", "real")),
        MethodSpec("SSIM-AE-grad", "06", lambda d: grad("ssim", d), data=("textures", "real")),
        MethodSpec("VAE-grad", "06", lambda d: grad("vae", d), data=("textures", "real")),
        MethodSpec("kNN (SPADE-like)", "07", lambda d: Resized(KNNDetector(k=1), 128), data=("textures", "real"),
                   uses_backbone=True),
        MethodSpec("PaDiM", "07", lambda d: Resized(PaDiM(d=100), 128), data=("textures", "real"), uses_backbone=True),
        MethodSpec("PatchCore", "07", lambda d: Resized(PatchCore(coreset_ratio=0.1), 128), data=("textures", "real"),
                   uses_backbone=True),
        MethodSpec("CFA", "08", lambda d: Resized(CFA(epochs=_epochs(1, 10, 30)), 128), data=("textures", "real"),
                   uses_backbone=True),
    ]
    return {s.name: s for s in specs}


# lesson 06's projection settings as lesson 06 chose them on the textures' and on PIPED's validation splits
# (cpu profile run; the same values in every profile; PIPED's are used for MVTec AD too), read from
# results/06_gradient_projection.json: never a hand copy
GRAD_SETTINGS = {data: lesson_settings("06_gradient_projection", data) for data in ("textures", "piped")}
REAL_AE_EPOCHS = 40  # cpu profile, real data: 40 steps of one batch of 26-30 images (runtime budget)

METHODS = make_registry()


def datasets() -> list[str]:
    cfg = data_config()
    from anomaly_utils.sources import real_data_name

    return ([f"{real_data_name()}/{c}" for c in cfg["real_categories"]] + [f"textures/{c}" for c in cfg["categories"]]
            + [f"mnist/{c}" for c in cfg["mnist_classes"]])


BENCH_DATASETS = ["mnist/0", "textures/brick"]
