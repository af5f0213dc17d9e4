"""Generated from notebooks/02_fcdd.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch  # noqa: F811
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


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


# (kernel, stride) of EfficientNet-Lite0's stem and first blocks (their depthwise convs; 1x1 convs add nothing)
EFFICIENTNET_LAYERS = [(3, 2), (3, 1), (3, 2), (3, 1), (5, 2), (5, 1), (3, 2), (3, 1), (3, 1)]


class FCDDNet(nn.Module):
    """A fully convolutional phi: ``[N, C, H, W] -> [N, 1, H / stride, W / stride]`` (no dense layer).

    base: the stem and blocks ``0..base_block`` of ImageNet-pretrained EfficientNet-Lite0, frozen
    (``pretrained=False``: the same layers, random and trainable). head: bias-free 3x3 convolutions
    and a final 1x1 convolution to one channel, trained with the FCDD loss.
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

    def forward(self, x):
        return self.head(self.base(x)[0])  # phi(x), [N, 1, u, v]


def pseudo_huber(phi):
    """FCDD's output transform A(x) = sqrt(phi(x)^2 + 1) - 1, element-wise: ``[N, 1, u, v]`` -> same."""
    return torch.sqrt(phi ** 2 + 1) - 1


def fcdd_loss(A, y):
    """FCDD's loss for a batch of heatmaps ``A [N, 1, u, v]`` and image labels ``y [N]`` (1 = anomalous).

    normal: (1/(u v)) sum_ij A_ij;  anomalous: -log(1 - exp(-(1/(u v)) sum_ij A_ij)).
    """
    a = A.flatten(1).mean(1)
    y = y.float()
    anomalous = -torch.log(-torch.expm1(-a).clamp(max=-1e-6))  # -log(1 - exp(-a)), stable for small a
    return ((1 - y) * a + y * anomalous).mean()


def fcdd_pixel_loss(A, Y):
    """FCDD's pixel-wise loss with ground-truth maps: ``A [N, 1, u, v]``, ``Y [N, 1, u, v]`` in [0, 1].

    Each cell contributes (1 - Y_ij) A_ij - Y_ij log(1 - exp(-A_ij)); averaged over cells and images.
    """
    anomalous = -torch.log(-torch.expm1(-A).clamp(max=-1e-6))
    return ((1 - Y) * A + Y * anomalous).mean()


def mask_to_grid(masks, grid_size):
    """Ground-truth masks ``[N, H, W]`` -> the fraction of defective pixels per heatmap cell ``[N, 1, u, v]``."""
    return F.adaptive_avg_pool2d(masks[:, None].float(), grid_size)


def gaussian_kernel(size, sigma):
    """A ``size x size`` 2-D Gaussian, normalised to sum 1."""
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


def gaussian_upsample(A, image_size, rf, stride, sigma):
    """FCDD's heatmap upsampling: transposed convolution of ``A [N, 1, u, v]`` with a fixed Gaussian.

    Each cell spreads its value over the ``rf x rf`` input pixels it saw (its receptive field),
    weighted by a Gaussian of std ``sigma``; cells ``stride`` pixels apart. Returns ``[N, 1, H, W]``.
    """
    k = rf + (rf - stride) % 2  # make (k - stride) even so the crop below is centred
    kernel = gaussian_kernel(k, sigma).to(A)[None, None]
    full = F.conv_transpose2d(A, kernel, stride=stride)  # [(u-1) s + k] pixels a side
    off = (k - stride) // 2  # cell i's centre i*s + (k-1)/2 in `full` is pixel i*s + (s-1)/2 of the image
    return full[..., off:off + image_size, off:off + image_size]


def bilinear_upsample(A, image_size):
    """The plain alternative: bilinear interpolation of ``A [N, 1, u, v]`` to ``[N, 1, H, W]``."""
    return F.interpolate(A, size=(image_size, image_size), mode="bilinear", align_corners=False)


class FCDD:
    """Fully convolutional data description (Liznerski et al., 2021) behind the detector interface.

    Training sees the normal images (y = 0) and as many pseudo-anomalies (y = 1): confetti noise on
    normal images (``anomalies="confetti"``) and/or outlier-exposure images (``outlier_images``).
    Semi-supervised: ``labelled_images`` / ``labelled_masks`` are a few real defects with their masks,
    trained with the pixel-wise loss. The base is frozen, so its features are computed once
    (a pool of ``n_confetti`` noisy copies per training image) and only the head is trained.
    ``predict(images) -> (pred_score [N] = mean of A over the cells, anomaly_map [N, H, W])``.
    """

    def __init__(self, base_block=2, head_channels=32, head_layers=2, epochs=30, lr=1e-3, weight_decay=1e-6,
                 batch_size=32, anomalies="confetti", n_confetti=2, outlier_images=None, labelled_images=None,
                 labelled_masks=None, upsample="gaussian", sigma=None, device="cpu", seed=0, progress=True):
        self.base_block, self.head_channels, self.head_layers = base_block, head_channels, head_layers
        self.epochs, self.lr, self.weight_decay, self.batch_size = epochs, lr, weight_decay, batch_size
        self.anomalies, self.n_confetti, self.outlier_images = anomalies, n_confetti, outlier_images
        self.labelled_images, self.labelled_masks = labelled_images, labelled_masks
        self.upsample, self.sigma = upsample, sigma
        self.device, self.seed, self.progress = torch.device(device), seed, progress
        self.history = {}

    @torch.no_grad()
    def _base_features(self, images, batch_size=100):
        """The frozen base's feature maps ``[N, C_b, u, v]``, computed once."""
        return torch.cat([self.net.base(images[i:i + batch_size].to(self.device))[0]
                          for i in range(0, len(images), batch_size)])

    def fit(self, train_dataset):
        from anomaly_utils.defects import confetti_noise

        torch.manual_seed(self.seed)
        g = torch.Generator().manual_seed(self.seed)
        images = train_dataset.images
        self.net = FCDDNet(self.base_block, self.head_channels, self.head_layers).to(self.device)
        normal = self._base_features(images)
        pools = []  # pseudo-anomalies, y = 1
        if self.anomalies == "confetti":
            noisy, _ = confetti_noise(images.repeat(self.n_confetti, 1, 1, 1), generator=g)
            pools.append(self._base_features(noisy))
        if self.outlier_images is not None:
            pools.append(self._base_features(self.outlier_images))
        anomalous = torch.cat(pools)
        if self.labelled_images is not None:
            labelled = self._base_features(self.labelled_images)
            labelled_Y = mask_to_grid(self.labelled_masks.to(self.device), normal.shape[-2:])
        opt = torch.optim.Adam(self.net.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs)
        self.history = {"loss": []}
        for _ in tqdm(range(self.epochs), desc="FCDD", disable=not self.progress, leave=False):
            self.net.train()
            total, n = 0.0, 0
            for idx in torch.randperm(len(normal), generator=g).split(self.batch_size):
                j = torch.randint(len(anomalous), (len(idx),), generator=g)
                f = torch.cat([normal[idx], anomalous[j]])
                y = torch.cat([torch.zeros(len(idx)), torch.ones(len(j))]).to(self.device)
                loss = fcdd_loss(pseudo_huber(self.net.head(f)), y)
                if self.labelled_images is not None:  # semi-supervised: real defects, pixel-wise loss
                    k = torch.randint(len(labelled), (min(len(idx), 8),), generator=g)
                    loss = loss + fcdd_pixel_loss(pseudo_huber(self.net.head(labelled[k])), labelled_Y[k])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, n = total + loss.item() * len(idx), n + len(idx)
            sched.step()
            self.history["loss"].append(total / n)
        return self

    @torch.no_grad()
    def heatmap(self, images):
        """The low-resolution heatmap A(x): ``[N, C, H, W] -> [N, 1, u, v]``."""
        self.net.eval()
        return pseudo_huber(self.net(images.to(self.device)))

    @torch.no_grad()
    def predict(self, images):
        A = self.heatmap(images)
        size = images.shape[-1]
        if self.upsample == "gaussian":
            sigma = self.sigma if self.sigma is not None else self.net.rf / 4
            amap = gaussian_upsample(A, size, self.net.rf, self.net.stride, sigma)
        else:
            amap = bilinear_upsample(A, size)
        return A.flatten(1).mean(1).cpu(), amap[:, 0].cpu()


def natural_image_crops(n, size=64, crop=128, seed=0):
    """Outlier-exposure images: ``n`` grey crops of scikit-image's natural photos (no texture among them).

    A small offline stand-in for the paper's ImageNet-22k outliers: ``[n, 1, size, size]`` in [0, 1].
    """
    import numpy as np
    import skimage.data
    from skimage.color import rgb2gray

    names = ["camera", "coins", "moon", "page", "text", "clock", "astronaut", "coffee", "chelsea", "rocket"]
    rng = np.random.default_rng(seed)
    photos = []
    for name in names:
        im = getattr(skimage.data, name)()
        im = rgb2gray(im) if im.ndim == 3 else im / 255.0
        photos.append(im.astype(np.float32))
    crops = []
    for i in range(n):
        im = photos[i % len(photos)]
        c = min(crop, *im.shape)
        y, x = rng.integers(0, im.shape[0] - c + 1), rng.integers(0, im.shape[1] - c + 1)
        crops.append(torch.from_numpy(np.ascontiguousarray(im[y:y + c, x:x + c]))[None, None])
    out = torch.cat([F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                     for t in crops])
    return out.clamp(0, 1)
