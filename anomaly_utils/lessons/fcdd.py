"""Generated from notebooks/02_fcdd.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch  # noqa: F811
import torch.nn as nn
import torch.nn.functional as F


def receptive_field(layers):
    """Theoretical receptive field of a stack of convolutions / poolings.

    ``layers``: list of ``(kernel_size, stride)`` (dilation 1). Returns ``(rf, jump)``: a heatmap cell
    sees ``rf x rf`` input pixels and neighbouring cells are ``jump`` pixels apart (the total stride).
    Recurrence: rf <- rf + (k - 1) * jump, jump <- jump * s.
    """
    rf, jump = 1, 1
    for k, s in layers:
        rf += (k - 1) * jump
        jump *= s
    return rf, jump


def empirical_receptive_field(net, image_size=64, in_channels=1):
    """Measure the receptive field: which input pixels change the centre heatmap cell? (by the gradient)

    Returns the side of the square of input pixels with a non-zero gradient of the centre cell.
    Use a net whose layers all pass gradients (e.g. ``FCDDNet(pretrained=False)``: same layers, same field).
    """
    x = torch.rand(1, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    was_training = net.training
    net.eval()
    out = net(x)
    u, v = out.shape[-2:]
    out[0, 0, u // 2, v // 2].backward()
    net.train(was_training)
    hit = x.grad[0].abs().sum(0) > 0
    rows, cols = hit.any(1).nonzero(), hit.any(0).nonzero()
    return int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


def receptive_centre(net, image_size=128, in_channels=1):
    """Measure where a heatmap cell looks: the centre of its receptive field, by the gradient.

    Backpropagates the middle output cell ``(i, i)`` to the input and takes the centre of the square of
    input pixels with a non-zero gradient. Returns the offset ``o`` such that cell ``i`` is centred on
    pixel ``o + stride * i`` (same along both axes). E.g. a 3x3 convolution with stride 2: 0 with padding 1
    on both sides, 1 with TensorFlow-style "same" padding (one pixel after only). Use a net whose layers
    pass gradients.
    """
    x = torch.rand(1, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    was_training = net.training
    net.eval()
    out = net(x)
    u = out.shape[-1]
    i = u // 2
    (grad,) = torch.autograd.grad(out[0, 0, i, i], x)  # d cell / d input (no parameter gradients stored)
    net.train(was_training)
    hit = grad[0].abs().sum(0) > 0
    rows = hit.any(1).nonzero().flatten().float()
    centre = (rows.min() + rows.max()).item() / 2  # centre of the field along the rows
    return centre - i * (image_size // u)


# (kernel, stride) of EfficientNet-Lite0's stem and first blocks (their depthwise convs; 1x1 convs add nothing)
EFFICIENTNET_LAYERS = [(3, 2), (3, 1), (3, 2), (3, 1), (5, 2), (5, 1), (3, 2), (3, 1), (3, 1)]


class FCDDNet(nn.Module):
    """A fully convolutional phi: ``[N, C, H, W] -> [N, 1, H / stride, W / stride]`` (no dense layer).

    base: the stem and blocks ``0..base_block`` of ImageNet-pretrained EfficientNet-Lite0, frozen
    (``pretrained=False``: the same layers, random and trainable). head: bias-free 3x3 convolutions
    and a final 1x1 convolution to one channel, trained with the FCDD loss. ``rf``: receptive field;
    ``centre``: cell ``i`` looks at pixel ``centre + stride * i`` (TF-"same" padding: 3 with stride 4, not 1.5).
    """

    def __init__(self, base_block=2, head_channels=32, head_layers=2, pretrained=True):
        super().__init__()
        from anomaly_utils.backbones import FeatureExtractor

        self.base = FeatureExtractor(blocks=(base_block,), pretrained=pretrained, trainable=not pretrained)
        c = self.base.body[-1]._block_args.output_filters
        layers = []
        for _ in range(head_layers):
            layers += [nn.Conv2d(c, head_channels, 3, padding=1, bias=False), nn.LeakyReLU(0.1)]
            c = head_channels
        self.head = nn.Sequential(*layers, nn.Conv2d(c, 1, 1, bias=False))
        self.stride = self.base.strides[0]
        # theoretical receptive field: the base's layers, then the head's 3x3 convolutions at this stride
        base_layers = EFFICIENTNET_LAYERS[: base_block + 2]
        self.rf, _ = receptive_field(base_layers + [(3, 1)] * head_layers)
        # where cell (i, j) looks: pixel (centre + stride i, centre + stride j), measured by the gradient
        # on a twin whose layers pass gradients (the frozen base computes without them)
        probe = self if not pretrained else FCDDNet(base_block, head_channels, head_layers, pretrained=False)
        self.centre = receptive_centre(probe, image_size=32 * -(-max(128, 2 * self.rf) // 32))

    def forward(self, x):
        return self.head(self.base(x)[0])  # phi(x), [N, 1, u, v]


def pseudo_huber(phi):
    """FCDD's output transform A(x) = sqrt(phi(x)^2 + 1) - 1, element-wise: ``[N, 1, u, v]`` -> same."""
    return torch.sqrt(phi ** 2 + 1) - 1


def _neg_log_one_minus_exp(a):
    """-log(1 - exp(-a)), stable for small a (clamped so that a = 0 stays finite)."""
    return -torch.log(-torch.expm1(-a).clamp(max=-1e-6))


def fcdd_loss(A, y):
    """FCDD's loss for a batch of heatmaps ``A [N, 1, u, v]`` and image labels ``y [N]`` (1 = anomalous).

    normal: (1/(u v)) sum_ij A_ij;  anomalous: -log(1 - exp(-(1/(u v)) sum_ij A_ij)).
    """
    a = A.flatten(1).mean(1)
    y = y.float()
    return ((1 - y) * a + y * _neg_log_one_minus_exp(a)).mean()


def fcdd_pixel_loss(A_full, Y):
    """FCDD's semi-supervised loss with ground-truth maps (the paper's form, as in the official code).

    ``A_full [N, 1, H, W]``: the heatmap upsampled to full resolution (A'); ``Y [N, 1, H, W]`` in [0, 1].
    Per image: mean((1 - Y) A') - log(1 - exp(-mean(Y A'))), both means over all H W pixels; an image
    without anomalous pixels (Y = 0) gets only mean(A'). Averaged over the images.
    """
    normal = ((1 - Y) * A_full).flatten(1).mean(1)
    anom_mean = (Y * A_full).flatten(1).mean(1)
    has_anomaly = Y.flatten(1).amax(1) > 0
    anomalous = torch.where(has_anomaly, _neg_log_one_minus_exp(anom_mean), torch.zeros_like(anom_mean))
    return (normal + anomalous).mean()


def fcdd_cell_loss(A, Y):
    """NOT the paper's loss: the per-cell variant, kept only to compare with ``fcdd_pixel_loss``.

    Each cell of ``A [N, 1, u, v]`` contributes (1 - Y_ij) A_ij - Y_ij log(1 - exp(-A_ij)), ``Y`` the
    fraction of defective pixels per cell; averaged over all cells and images.
    """
    return ((1 - Y) * A + Y * _neg_log_one_minus_exp(A)).mean()


def mask_to_grid(masks, grid_size):
    """Ground-truth masks ``[N, H, W]`` -> the fraction of defective pixels per heatmap cell ``[N, 1, u, v]``."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid_size)


def gaussian_kernel(size, sigma):
    """A ``size x size`` 2-D Gaussian with peak 1 at its centre, as the official code's ``gkern``
    (not normalised to sum 1: a cell's value A is the height of its bump in A')."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = g[:, None] * g[None, :]
    return k / k.max()


def gaussian_upsample(A, image_size, rf, stride, sigma, centre=None):
    """FCDD's heatmap upsampling: transposed convolution of ``A [N, 1, u, v]`` with a fixed Gaussian.

    Each cell spreads its value over the ``rf x rf`` input pixels it saw (its receptive field),
    weighted by a Gaussian of std ``sigma`` with peak 1; cells ``stride`` pixels apart. Cell ``i``'s
    Gaussian is centred on pixel ``centre + stride * i`` (``centre``: the measured receptive-field centre
    of cell 0, ``FCDDNet.centre``; ``None`` = ``(stride - 1) / 2``, the centre of non-overlapping
    ``stride x stride`` windows). ``image_size``: ``H`` (square) or ``(H, W)``. Returns ``[N, 1, H, W]``.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    centre = (stride - 1) / 2 if centre is None else centre
    k = rf if ((rf - 1) / 2 - centre) % 1 == 0 else rf + 1  # k - 1 - 2 centre even: an integer crop offset
    kernel = gaussian_kernel(k, sigma).to(A)[None, None]
    full = F.conv_transpose2d(A, kernel, stride=stride)  # cell i peaks at i*s + (k-1)/2 in `full`
    off = int(round((k - 1) / 2 - centre))  # ... which must be pixel centre + i*s of the image
    if off < 0:
        full, off = F.pad(full, (-off, 0, -off, 0)), 0
    full = F.pad(full, (0, max(0, off + w - full.shape[-1]), 0, max(0, off + h - full.shape[-2])))
    return full[..., off:off + h, off:off + w]


def bilinear_upsample(A, image_size):
    """The plain alternative: bilinear interpolation of ``A [N, 1, u, v]`` to ``[N, 1, H, W]``."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return F.interpolate(A, size=size, mode="bilinear", align_corners=False)


from anomaly_utils.defects import confetti_noise, fcdd_confetti_noise  # noqa: E402


def pseudo_anomalies(images, anomalies="confetti", n_confetti=2, outlier_images=None, generator=None,
                     confetti_sign="darken"):
    """The training anomalies (y = 1), drawn once: ``n_confetti`` noisy copies of each normal image and/or
    the outlier-exposure images; ``None`` when there are none (normal images only: the map collapses).
    ``"confetti"``: the official recipe, whose ``confetti_sign`` is ``"darken"``; ``"brighten"`` flips it,
    ``"both"`` flips it for each copy with probability 1/2. ``"simple-confetti"``: small sharp grey rectangles."""
    pool = []
    if anomalies == "simple-confetti":
        pool.append(confetti_noise(images.repeat(n_confetti, 1, 1, 1), generator=generator)[0])
    elif anomalies == "confetti":
        copies = images.repeat(n_confetti, 1, 1, 1)
        p_bright = {"darken": 0.0, "brighten": 1.0, "both": 0.5}[confetti_sign]
        bright = torch.rand(len(copies), generator=generator) < p_bright
        for sel, darken in [(~bright, True), (bright, False)]:
            if sel.any():
                copies[sel] = fcdd_confetti_noise(copies[sel], generator=generator, darken=darken)[0]
        pool.append(copies)
    if outlier_images is not None:
        pool.append(outlier_images)
    return torch.cat(pool) if pool else None


def fcdd_epoch(head, opt, normal, anomalous, labelled=None, upsample=None, pixel_loss="paper", batch_size=32,
               generator=None):
    """One epoch of training ``head`` on the frozen base's features; returns the mean loss per image.

    Each batch: ``batch_size`` normal feature maps (y = 0), as many pseudo-anomalies (y = 1) and, if
    ``labelled = (features, Y)``, up to 8 real defects with their masks. ``pixel_loss="paper"``: as in the
    official code, *every* sample goes through the loss on A' = ``upsample(A)`` (Y = 0 for normal images,
    1 for pseudo-anomalies, the mask for real defects); ``"per-cell"``: image-level loss + per-cell loss."""
    total, n = 0.0, 0
    for idx in torch.randperm(len(normal), generator=generator).split(batch_size):
        f, y = normal[idx], torch.zeros(len(idx), device=normal.device)
        if anomalous is not None:
            j = torch.randint(len(anomalous), (len(idx),), generator=generator)
            f, y = torch.cat([f, anomalous[j]]), torch.cat([y, torch.ones_like(y)])
        A = pseudo_huber(head(f))  # [B, 1, u, v]
        if labelled is None:
            loss = fcdd_loss(A, y)
        else:
            feats, Y = labelled
            k = torch.randint(len(feats), (min(len(idx), 8),), generator=generator)
            A_lab = pseudo_huber(head(feats[k]))
            if pixel_loss == "paper":  # the real defects weigh as much as the rest of the batch
                A_full = upsample(A)
                loss = (fcdd_pixel_loss(A_full, y.view(-1, 1, 1, 1).expand_as(A_full))
                        + fcdd_pixel_loss(upsample(A_lab), Y[k]))
            else:
                loss = fcdd_loss(A, y) + fcdd_cell_loss(A_lab, Y[k])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total, n = total + loss.item() * len(idx), n + len(idx)
    return total / n


from anomaly_utils.detector import check_input, remember_input, training_images  # noqa: E402
from anomaly_utils.fcdd_support import check_extra_images, check_fcdd_arguments, check_train_images  # noqa: E402
from anomaly_utils.fcdd_support import natural_image_crops, progress_range  # noqa: E402, F401


class FCDD:
    """Fully convolutional data description (Liznerski et al., 2021) behind the detector interface.

    ``anomalies``: ``"confetti"`` (official recipe; ``confetti_sign`` ``"darken"``, ``"brighten"`` or ``"both"``),
    ``"simple-confetti"`` or None; ``outlier_images``: outlier exposure (instead of, or with, confetti). Semi-supervised: ``labelled_images`` / ``labelled_masks``,
    a few real defects with their masks, trained with ``pixel_loss`` ``"paper"`` or ``"per-cell"``. The base
    is frozen: its features are computed once and only the head is trained. ``upsample``: ``"gaussian"``
    (std ``sigma``, default rf / 4) or ``"bilinear"``. ``predict(images) -> (pred_score [N] = mean of A,
    anomaly_map [N, H, W])`` for images of any size; ``history``: loss, mean / max A per epoch. ``fit``: below.
    """

    def __init__(self, base_block=2, head_channels=32, head_layers=2, epochs=30, lr=1e-3, weight_decay=1e-6,
                 batch_size=32, anomalies="confetti", n_confetti=2, confetti_sign="darken", outlier_images=None,
                 labelled_images=None, labelled_masks=None, pixel_loss="paper", upsample="gaussian", sigma=None,
                 device="cpu", seed=0, progress=True):
        self.base_block, self.head_channels, self.head_layers = base_block, head_channels, head_layers
        self.epochs, self.lr, self.weight_decay, self.batch_size = epochs, lr, weight_decay, batch_size
        self.anomalies, self.n_confetti, self.confetti_sign = anomalies, n_confetti, confetti_sign
        self.outlier_images = outlier_images
        self.labelled_images, self.labelled_masks, self.pixel_loss = labelled_images, labelled_masks, pixel_loss
        self.upsample, self.sigma = upsample, sigma
        self.device, self.seed, self.progress = torch.device(device), seed, progress
        check_fcdd_arguments(self)  # a clear error for every bad argument
        self.history = {}

    @torch.no_grad()
    def _features(self, images, batch_size=100):  # the frozen base's feature maps [N, C_b, u, v]
        return torch.cat([self.net.base(images[i:i + batch_size].to(self.device))[0]
                          for i in range(0, len(images), batch_size)])

    def _upsample(self, A, size, how=None):  # A [N, 1, u, v] -> A' [N, 1, H, W]
        if (how or self.upsample) == "gaussian":
            sigma = self.sigma if self.sigma is not None else self.net.rf / 4
            return gaussian_upsample(A, size, self.net.rf, self.net.stride, sigma, self.net.centre)
        return bilinear_upsample(A, size)

    @torch.no_grad()
    def predict(self, images):
        images = check_input(self, images, same_size=False)  # any size: the map comes back at H x W
        A = pseudo_huber(self.net.eval()(images.to(self.device)))  # [N, 1, u, v]
        return A.flatten(1).mean(1).cpu(), self._upsample(A, tuple(images.shape[-2:]))[:, 0].cpu()


def fcdd_fit(self, train_dataset):
    """``FCDD.fit``: features of the normal images, of the pseudo-anomalies and of the real defects
    (once), then ``epochs`` epochs of ``fcdd_epoch`` with a cosine learning rate; returns the detector."""
    images = check_train_images(training_images(train_dataset))
    size, g = tuple(images.shape[-2:]), torch.Generator().manual_seed(self.seed)
    torch.manual_seed(self.seed)
    self.net = FCDDNet(self.base_block, self.head_channels, self.head_layers).to(self.device)
    normal = self._features(images)
    if self.outlier_images is not None:
        check_extra_images("outlier_images", self.outlier_images, images.shape[1:])
    pool = pseudo_anomalies(images, self.anomalies, self.n_confetti, self.outlier_images, g,
                            self.confetti_sign)
    anomalous = self._features(pool) if pool is not None else None
    labelled = None
    if self.labelled_images is not None:  # real defects; Y: masks at full resolution, or per cell
        check_extra_images("labelled_images", self.labelled_images, images.shape[1:])
        Y = torch.as_tensor(self.labelled_masks).float().reshape(-1, 1, *size).to(self.device)
        labelled = (self._features(self.labelled_images),
                    Y if self.pixel_loss == "paper" else mask_to_grid(Y[:, 0], normal.shape[-2:]))
    opt = torch.optim.Adam(self.net.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)
    self.history = {"loss": [], "A_mean": [], "A_max": []}
    for _ in progress_range(self.epochs, "FCDD", self.progress):
        self.net.train()
        self.history["loss"].append(fcdd_epoch(self.net.head, opt, normal, anomalous, labelled,
                                               lambda A: self._upsample(A, size, "gaussian"), self.pixel_loss,
                                               self.batch_size, g))
        sched.step()
        with torch.no_grad():
            A_normal = pseudo_huber(self.net.eval().head(normal[:256]))
            self.history["A_mean"].append(A_normal.mean().item())
            self.history["A_max"].append(A_normal.max().item())
    remember_input(self, images)
    return self


FCDD.fit = fcdd_fit  # attach the method to the class defined above
