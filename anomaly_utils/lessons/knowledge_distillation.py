"""Generated from notebooks/09_knowledge_distillation.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import time

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_utils.backbones import FeatureExtractor, imagenet_normalize
from anomaly_utils.detector import check_input, remember_input, training_images
from anomaly_utils.distill import Distiller, add_to_class, match_size, penalty_images, random_crops, teacher_features
from anomaly_utils.lessons.memory_bank import gaussian_blur
from anomaly_utils.profiles import seed_everything


def combine_maps(stage_maps, size, mode: str = "product") -> torch.Tensor:
    """Per-stage maps ``[N, h_l, w_l]`` upsampled (bilinear) to ``size`` and multiplied (STFPM) or added (RD)."""
    out = None
    for m in stage_maps:
        m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        out = m if out is None else (out * m if mode == "product" else out + m)
    return out


def pdn(out_channels: int, width: int = 32) -> nn.Sequential:
    """A small patch description network (PDN) with stride 8: four 3 x 3 convolutions with ReLU, three 2 x 2
    average poolings and a linear 1 x 1 output. Receptive field 38 px; ``[N, 3, H, W] -> [N, C, H/8, W/8]``."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(2, ceil_mode=True),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(2, ceil_mode=True),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(2, ceil_mode=True),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(2 * w, out_channels, 1))


def hard_feature_mask(distances: torch.Tensor, q: float = 0.999) -> torch.Tensor:
    """EfficientAD's hard features: the entries of D (squared errors, any shape) at or above their q-quantile."""
    return distances >= torch.quantile(distances.detach().flatten().float(), q)


def hard_feature_loss(distances: torch.Tensor, q: float | None = 0.999) -> torch.Tensor:
    """L_hard: the mean of the squared errors D_c,w,h at or above their q-quantile d_hard (``q=None``: all of them)."""
    if q is None:
        return distances.mean()
    return distances[hard_feature_mask(distances, q)].mean()


class StudentTeacher(Distiller):
    """Students that regress a frozen teacher's standardised features at every position of one stage.

    Teacher T: EfficientNet-Lite0 block ``block`` (4: stride 8, 40 channels), standardised per channel with the
    training images' mean and standard deviation. Students S_m: ``n_students`` PDNs, trained side by side, each on
    its own batches of ``crop``-px random crops, on D = (S(x) - T(x))^2 (Adam, ``lr``, ``steps`` steps).
    ``q_hard``: only the errors at or above their q-quantile count (EfficientAD; None: all, Uninformed Students).
    ``penalty``: weight of the mean squared output on ``penalty_images`` (EfficientAD; 0: none).
    ``maps(images) -> (e, v)``: the error of the students' mean and their predictive variance, ``[N, H/8, W/8]``.
    ``predict``: the error map e upsampled to the image, and its maximum.
    """

    trained = "students"

    def __init__(self, block: int = 4, n_students: int = 3, width: int = 32, steps: int = 400, batch_size: int = 8,
                 crop: int | None = 64, lr: float = 1e-3, q_hard: float | None = None, penalty: float = 0.0,
                 snapshots=(), seed: int = 0, device="cpu", use_cache: bool = True):
        self.check_args(steps, batch_size, lr, snapshots, crop, n_students=n_students, width=width)
        if q_hard is not None and not 0 <= q_hard < 1:
            raise ValueError(f"q_hard must be None (all errors count) or a quantile in [0, 1), got {q_hard!r}.")
        if not penalty >= 0:
            raise ValueError(f"penalty must be a weight >= 0 (0: no penalty), got {penalty!r}.")
        self.block, self.n_students, self.width, self.steps, self.crop = block, n_students, width, steps, crop
        self.batch_size, self.lr, self.q_hard, self.penalty = batch_size, lr, q_hard, penalty
        self.snapshots, self.seed, self.device, self.use_cache = tuple(snapshots), seed, torch.device(device), use_cache

    def fit(self, train_dataset):
        seed_everything(self.seed)
        self.teacher = FeatureExtractor((self.block,)).to(self.device)
        images = training_images(train_dataset)
        t = teacher_features(self.teacher, images)[0]
        self.t_mean, self.t_std = t.mean((0, 2, 3), keepdim=True), t.std((0, 2, 3), keepdim=True) + 1e-6
        self._images = images
        self._penalty = penalty_images(64, images.shape[-2:], images.shape[1], self.seed) if self.penalty > 0 else None
        students = nn.ModuleList(pdn(t.shape[1], self.width) for _ in range(self.n_students))
        config = dict(block=self.block, n_students=self.n_students, width=self.width, steps=self.steps, crop=self.crop,
                      batch_size=self.batch_size, lr=self.lr, q_hard=self.q_hard, penalty=self.penalty,
                      snapshots=self.snapshots, seed=self.seed)
        self.students = self.fit_cached(students, "09_student_teacher", config, self._train, images).eval()
        del self._images, self._penalty
        remember_input(self, images)
        return self


@add_to_class(StudentTeacher)
def _train(self, students) -> dict:
    """StudentTeacher's training loop: every step, each student takes one Adam step on its own batch."""
    students.to(self.device).train()
    opts = [torch.optim.Adam(s.parameters(), lr=self.lr, weight_decay=1e-5) for s in students]
    g = torch.Generator().manual_seed(self.seed)
    mean, std = self.t_mean.to(self.device), self.t_std.to(self.device)
    history, start = {"loss": []}, time.perf_counter()
    for step in range(1, self.steps + 1):
        total = 0.0
        for student, opt in zip(students, opts):
            x = random_crops(self._images[torch.randint(0, len(self._images), (self.batch_size,), generator=g)],
                             self.crop, g).to(self.device)
            with torch.no_grad():
                t = (self.teacher(x)[0] - mean) / std  # T(x), standardised per channel
            s = match_size(student(imagenet_normalize(x)), t.shape[-2:])
            loss = hard_feature_loss((s - t).pow(2), self.q_hard)  # D = (S(x) - T(x))^2, all or only the hard ones
            if self._penalty is not None:  # keep the output small on images unlike the training set
                p = random_crops(self._penalty[torch.randint(0, len(self._penalty), (self.batch_size,), generator=g)],
                                 self.crop, g)
                loss = loss + self.penalty * student(imagenet_normalize(p.to(self.device))).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() / len(students)
        history["loss"].append(total)
        self.keep_snapshot(history, step, students)
    history["seconds"] = time.perf_counter() - start
    return history


@add_to_class(StudentTeacher)
@torch.no_grad()
def maps(self, images: torch.Tensor, teacher_feat=None):
    """``(e, v)``: the error ||mean_m S_m(x) - T(x)||^2 / C of the students' mean, and their predictive variance
    (the mean over channels of the variance over students; 0 for one student). Both ``[N, h, w]``."""
    x = images.to(self.device)
    t = self.teacher(x)[0] if teacher_feat is None else teacher_feat.to(self.device)
    t = (t - self.t_mean.to(self.device)) / self.t_std.to(self.device)
    preds = torch.stack([match_size(s(imagenet_normalize(x)), t.shape[-2:]) for s in self.students])  # [M, N, C, h, w]
    e = (preds.mean(0) - t).pow(2).mean(1)
    v = preds.var(0, unbiased=False).mean(1)
    return e, v


@add_to_class(StudentTeacher)
@torch.no_grad()
def predict(self, images: torch.Tensor):
    images = check_input(self, images, same_size=False)
    e, _ = self.maps(images)
    anomaly_map = combine_maps([e], images.shape[-2:]).cpu()
    return anomaly_map.flatten(1).amax(1), anomaly_map


def normalized_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """STFPM's per-position distance 1/2 ||t^_ij - s^_ij||^2, with t^ = t / ||t|| over the channels.

    ``t, s [N, C, h, w] -> [N, h, w]``. For unit vectors 1/2 ||a - b||^2 = 1 - a.b: it is 1 - cos(t_ij, s_ij).
    """
    return 0.5 * (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum(1)


def stfpm_loss(teacher_feats, student_feats) -> torch.Tensor:
    """STFPM's loss: the sum over stages l of the mean over positions (and images) of 1/2 ||t^l_ij - s^l_ij||^2."""
    return sum(normalized_distance(t, s).mean() for t, s in zip(teacher_feats, student_feats))


class STFPM(Distiller):
    """Student-Teacher Feature Pyramid Matching (Wang et al., BMVC 2021) as a detector.

    Teacher: the frozen ImageNet EfficientNet-Lite0 at stages ``blocks`` (2, 4, 10: strides 4, 8, 16). Student: the
    same architecture from scratch, trained on the normal images to minimise ``stfpm_loss`` (Adam, ``lr``) for
    ``steps`` steps of ``batch_size`` random ``crop``-px crops (the teacher sees the same crops).
    ``predict(images [N, C, H, W]) -> (pred_score [N], anomaly_map [N, H, W])``: the per-stage distances upsampled
    to the image and multiplied (``combine="product"``, the paper) or added (``"sum"``); the score is the maximum.
    Any image size, grey or RGB (as in fit). ``snapshots``: steps whose weights are kept (``restore(step)``).
    """

    trained = "student"

    def __init__(self, blocks=(2, 4, 10), steps: int = 300, batch_size: int = 8, crop: int | None = 64,
                 lr: float = 1e-3, combine: str = "product", snapshots=(), seed: int = 0, device="cpu",
                 use_cache: bool = True):
        self.check_args(steps, batch_size, lr, snapshots, crop)
        if combine not in ("product", "sum"):
            raise ValueError(f"combine must be 'product' (the paper) or 'sum', got {combine!r}.")
        self.blocks, self.steps, self.batch_size, self.crop, self.lr = tuple(blocks), steps, batch_size, crop, lr
        self.combine, self.snapshots, self.seed = combine, tuple(snapshots), seed
        self.device, self.use_cache = torch.device(device), use_cache

    def fit(self, train_dataset):
        seed_everything(self.seed)
        self.teacher = FeatureExtractor(self.blocks).to(self.device)
        student = FeatureExtractor(self.blocks, pretrained=False, trainable=True)  # the same architecture, from scratch
        config = dict(blocks=self.blocks, steps=self.steps, batch_size=self.batch_size, crop=self.crop, lr=self.lr,
                      snapshots=self.snapshots, seed=self.seed)
        self._images = training_images(train_dataset)
        self.student = self.fit_cached(student, "09_stfpm", config, self._train, train_dataset.images).eval()
        del self._images
        remember_input(self, train_dataset.images)
        return self


@add_to_class(STFPM)
def _train(self, student) -> dict:
    student.to(self.device).train()
    opt = torch.optim.Adam(student.parameters(), lr=self.lr)
    g = torch.Generator().manual_seed(self.seed)
    history, start = {"loss": []}, time.perf_counter()
    for step in range(1, self.steps + 1):
        idx = torch.randint(0, len(self._images), (self.batch_size,), generator=g)
        x = random_crops(self._images[idx], self.crop, g).to(self.device)
        with torch.no_grad():
            t_feats = self.teacher(x)
        loss = stfpm_loss(t_feats, student(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        self.keep_snapshot(history, step, student)
    history["seconds"] = time.perf_counter() - start
    return history


@add_to_class(STFPM)
@torch.no_grad()
def stage_maps(self, images: torch.Tensor, teacher_feats=None) -> list:
    """The per-stage distance maps ``[N, h_l, w_l]`` (``teacher_feats``: the teacher's outputs, if computed)."""
    x = images.to(self.device)
    t_feats = self.teacher(x) if teacher_feats is None else [t.to(self.device) for t in teacher_feats]
    return [normalized_distance(t, s) for t, s in zip(t_feats, self.student(x))]


@add_to_class(STFPM)
@torch.no_grad()
def predict(self, images: torch.Tensor):
    images = check_input(self, images, same_size=False)
    anomaly_map = combine_maps(self.stage_maps(images), images.shape[-2:], self.combine).cpu()
    return anomaly_map.flatten(1).amax(1), anomaly_map


def conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3, relu: bool = True) -> nn.Sequential:
    """Convolution (``kernel`` x ``kernel``, ``stride``), BatchNorm and, unless ``relu=False``, ReLU."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ResBlock(nn.Module):
    """A ResNet basic block: two 3 x 3 conv-BN layers and a shortcut (a 1 x 1 conv-BN where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), conv_bn(c_out, c_out, relu=False))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else conv_bn(c_in, c_out, stride, kernel=1, relu=False))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class OCBE(nn.Module):
    """Reverse Distillation's one-class bottleneck embedding: multi-scale feature fusion (MFF), then the
    one-class embedding block (OCE).

    MFF: every teacher stage is brought to the deepest stage's grid by stride-2 conv-BN-ReLU layers, and the stages
    are concatenated. OCE: residual blocks, the first with stride 2, give the compact embedding phi
    ``[N, embedding_channels, H / 32, W / 32]`` (for teacher strides 4, 8, 16).
    """

    def __init__(self, channels=(24, 40, 112), strides=(4, 8, 16), embedding_channels: int = 256, n_blocks: int = 2):
        super().__init__()
        self.mff = nn.ModuleList()
        for c, s in zip(channels, strides):
            n_down = (strides[-1] // s).bit_length() - 1  # stride-2 layers from stride s to the deepest stride
            widths = [c] + [channels[-1]] * n_down
            self.mff.append(nn.Sequential(*[conv_bn(a, b, stride=2) for a, b in zip(widths, widths[1:])]))
        first = ResBlock(len(channels) * channels[-1], embedding_channels, stride=2)
        self.oce = nn.Sequential(first, *[ResBlock(embedding_channels, embedding_channels) for _ in range(n_blocks - 1)])

    def forward(self, feats):
        size = feats[-1].shape[-2:]
        return self.oce(torch.cat([match_size(down(f), size) for down, f in zip(self.mff, feats)], dim=1))


class DecoderStage(nn.Module):
    """Upsample by ``factor`` (transposed conv-BN-ReLU) onto the teacher's grid, one residual block, and a linear
    1 x 1 head that predicts the teacher's feature of this stage (EfficientNet's block outputs are signed)."""

    def __init__(self, c_in: int, hidden: int, c_out: int, factor: int = 2):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, hidden, factor, factor, bias=False), nn.BatchNorm2d(hidden),
                                nn.ReLU(inplace=True))
        self.block = ResBlock(hidden, hidden)
        self.head = nn.Conv2d(hidden, c_out, 1)

    def forward(self, x, size):
        h = self.block(match_size(self.up(x), size))
        return h, self.head(h)


class Decoder(nn.Module):
    """Reverse Distillation's student D: a decoder that mirrors the teacher, from the embedding phi back to every
    teacher stage, the deepest first. ``forward(phi, sizes) -> [f_D^1, ..., f_D^K]`` in the teacher's order."""

    def __init__(self, channels=(24, 40, 112), strides=(4, 8, 16), embedding_channels: int = 256, width: int = 32):
        super().__init__()
        hidden = [width * 2 ** k for k in range(len(channels))]  # e.g. 32, 64, 128: narrower where the grid is finer
        self.stages = nn.ModuleList()
        c_in, factor = embedding_channels, 2  # phi has twice the deepest stage's stride
        for k in reversed(range(len(channels))):  # the deepest stage first
            self.stages.append(DecoderStage(c_in, hidden[k], channels[k], factor))
            c_in, factor = hidden[k], (strides[k] // strides[k - 1] if k > 0 else 1)

    def forward(self, phi, sizes):
        outs, h = [], phi
        for stage, size in zip(self.stages, reversed(sizes)):
            h, f = stage(h, size)
            outs.append(f)
        return outs[::-1]


def cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Reverse Distillation's M^k(h, w) = 1 - cos(f_E^k(h, w), f_D^k(h, w)): ``[N, C, h, w] x 2 -> [N, h, w]``."""
    return 1 - F.cosine_similarity(t, s, dim=1)


def cosine_loss(teacher_feats, student_feats) -> torch.Tensor:
    """L_KD = sum over stages k of 1 / (H_k W_k) sum_{h, w} M^k(h, w), averaged over the batch (the paper's Eq. 3)."""
    return sum(cosine_distance(t, s).mean() for t, s in zip(teacher_feats, student_feats))


class ReverseDistillation(Distiller):
    """Reverse Distillation (Deng & Li, CVPR 2022) as a detector.

    Teacher encoder E: the frozen ImageNet EfficientNet-Lite0 at stages ``blocks`` (2, 4, 10). The trainable one-class
    bottleneck (``OCBE``) fuses the stages into a compact embedding phi; the student decoder D (``Decoder``, hidden
    widths ``width`` x 1, 2, 4) rebuilds every stage from phi. Training: ``cosine_loss`` on the normal images for
    ``steps`` steps of ``batch_size`` images (Adam, lr 5e-3, betas (0.5, 0.999), as the official code); the teacher's
    features of the training images are computed once. ``predict(images [N, C, H, W]) -> (pred_score [N],
    anomaly_map [N, H, W])``: the sum of the upsampled 1 - cos maps, smoothed with a Gaussian (``sigma``); the score
    is its maximum. Any image size, grey or RGB (as in fit).
    """

    trained = "model"

    def __init__(self, blocks=(2, 4, 10), embedding_channels: int = 256, width: int = 32, steps: int = 400,
                 batch_size: int = 16, lr: float = 5e-3, sigma: float = 4.0, snapshots=(), seed: int = 0,
                 device="cpu", use_cache: bool = True):
        self.check_args(steps, batch_size, lr, snapshots, embedding_channels=embedding_channels, width=width)
        self.blocks, self.embedding_channels, self.width = tuple(blocks), embedding_channels, width
        self.steps, self.batch_size, self.lr, self.sigma = steps, batch_size, lr, sigma
        self.snapshots, self.seed, self.device, self.use_cache = tuple(snapshots), seed, torch.device(device), use_cache

    def fit(self, train_dataset):
        seed_everything(self.seed)
        self.teacher = FeatureExtractor(self.blocks).to(self.device)
        self._feats = teacher_features(self.teacher, training_images(train_dataset))  # the teacher is frozen: once
        channels, strides = [f.shape[1] for f in self._feats], self.teacher.strides
        model = nn.ModuleDict({"bottleneck": OCBE(channels, strides, self.embedding_channels),
                               "decoder": Decoder(channels, strides, self.embedding_channels, self.width)})
        config = dict(blocks=self.blocks, embedding_channels=self.embedding_channels, width=self.width,
                      steps=self.steps, batch_size=self.batch_size, lr=self.lr, snapshots=self.snapshots, seed=self.seed)
        self.model = self.fit_cached(model, "09_reverse_distillation", config, self._train, train_dataset.images).eval()
        del self._feats
        remember_input(self, train_dataset.images)
        return self

    def student(self, t_feats):
        """D(OCBE(E(x))): the decoder's features, one per teacher stage, from the teacher's features ``t_feats``."""
        return self.model["decoder"](self.model["bottleneck"](t_feats), [t.shape[-2:] for t in t_feats])


@add_to_class(ReverseDistillation)
def _train(self, model) -> dict:
    self.model = model.to(self.device).train()
    opt = torch.optim.Adam(model.parameters(), lr=self.lr, betas=(0.5, 0.999))
    g = torch.Generator().manual_seed(self.seed)
    history, start = {"loss": []}, time.perf_counter()
    for step in range(1, self.steps + 1):
        idx = torch.randint(0, len(self._feats[0]), (self.batch_size,), generator=g)
        t_feats = [f[idx].to(self.device) for f in self._feats]
        loss = cosine_loss(t_feats, self.student(t_feats))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history["loss"].append(loss.item())
        self.keep_snapshot(history, step, model)
    history["seconds"] = time.perf_counter() - start
    return history


@add_to_class(ReverseDistillation)
@torch.no_grad()
def stage_maps(self, images: torch.Tensor, teacher_feats=None) -> list:
    """The per-stage maps M^k ``[N, h_k, w_k]`` (``teacher_feats``: the teacher's outputs, if computed)."""
    t_feats = self.teacher(images.to(self.device)) if teacher_feats is None else [t.to(self.device) for t in teacher_feats]
    return [cosine_distance(t, s) for t, s in zip(t_feats, self.student(t_feats))]


@add_to_class(ReverseDistillation)
@torch.no_grad()
def predict(self, images: torch.Tensor):
    images = check_input(self, images, same_size=False)
    anomaly_map = gaussian_blur(combine_maps(self.stage_maps(images), images.shape[-2:], "sum"), self.sigma).cpu()
    return anomaly_map.flatten(1).amax(1), anomaly_map


def quantile_normalize(maps: torch.Tensor, q_a: float, q_b: float) -> torch.Tensor:
    """EfficientAD's map normalisation, linear: q_a (the 0.9-quantile of normal maps) -> 0, q_b (the 0.995-quantile) -> 0.1."""
    return 0.1 * (maps - q_a) / (q_b - q_a)


def map_quantiles(normal_maps: torch.Tensor, a: float = 0.9, b: float = 0.995) -> tuple:
    """``(q_a, q_b)``: the ``a`` and ``b`` quantiles of all pixel values of anomaly maps of normal images."""
    values = torch.as_tensor(normal_maps).detach().flatten().double().cpu().numpy()
    return float(np.quantile(values, a)), float(np.quantile(values, b))


class EfficientAD(StudentTeacher):
    """EfficientAD's student-teacher branch (Batzner et al., WACV 2024) as a detector; no autoencoder branch.

    One PDN student trained with the hard-feature loss (``q_hard`` = 0.999) plus the penalty on images unlike the
    training set (``penalty`` = 1), then map normalisation: ``val_fraction`` of the training images (10 %, as the
    official reproduction) are held out of training, and the 0.9 and 0.995 quantiles of their maps are q_a and q_b;
    ``predict`` returns ``quantile_normalize(map, q_a, q_b)`` and its maximum.
    """

    def __init__(self, block: int = 4, width: int = 32, steps: int = 400, batch_size: int = 8, crop: int | None = 64,
                 lr: float = 1e-3, q_hard: float | None = 0.999, penalty: float = 1.0, val_fraction: float = 0.1,
                 snapshots=(), seed: int = 0, device="cpu", use_cache: bool = True):
        super().__init__(block, 1, width, steps, batch_size, crop, lr, q_hard, penalty, snapshots, seed, device, use_cache)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction (the share of training images kept for q_a and q_b) must be in (0, 1), "
                             f"got {val_fraction!r}.")
        self.val_fraction = val_fraction

    def fit(self, train_dataset):
        n = len(training_images(train_dataset))
        n_val = max(1, round(self.val_fraction * n))
        if n - n_val < 1:
            raise ValueError(f"EfficientAD needs at least 2 training images (to train on, and for q_a, q_b); got {n}.")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        super().fit(train_dataset.subset(order[n_val:]))
        self.normal_images = train_dataset.images[order[:n_val]]  # held out of training: q_a and q_b
        return self.calibrate()

    def calibrate(self):
        """q_a and q_b from the maps of the held-out normal images (again after ``restore``)."""
        self.q_a, self.q_b = map_quantiles(StudentTeacher.predict(self, self.normal_images)[1], 0.9, 0.995)
        return self

    def restore(self, step: int):
        return super().restore(step).calibrate()

    @torch.no_grad()
    def predict(self, images: torch.Tensor):
        anomaly_map = quantile_normalize(StudentTeacher.predict(self, images)[1], self.q_a, self.q_b)
        return anomaly_map.flatten(1).amax(1), anomaly_map
