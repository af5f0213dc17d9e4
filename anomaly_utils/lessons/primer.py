"""Generated from notebooks/00_primer.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import numbers

import torch

from anomaly_utils.detector import check_input, remember_input, training_images


class NearestNeighbourDetector:
    '''k-nearest-neighbour distance on raw pixels: the image-level baseline.

    fit stores the normal training images as a memory bank [M, C*H*W]; predict returns the mean
    Euclidean distance to the k nearest of them: pred_score [N] (no anomaly map).
    '''

    def __init__(self, k: int = 1):
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k (the number of nearest neighbours) must be a whole number >= 1, got {k!r}.")
        self.k = int(k)

    def fit(self, train_dataset):
        images = training_images(train_dataset)
        if len(images) < self.k:
            raise ValueError(f"k={self.k}, but the training set holds only {len(images)} images: use k <= "
                             f"{len(images)} or more training images.")
        self.memory_bank = images.flatten(1)  # [M, D]
        remember_input(self, images)  # predict checks that its images have this channel count and size
        return self

    def predict(self, images: torch.Tensor):
        images = check_input(self, images)  # a clear error before fit, or for other channels / size
        distances = torch.cdist(images.flatten(1), self.memory_bank)  # [N, M]
        pred_score = distances.topk(self.k, largest=False).values.mean(1)  # [N]
        return pred_score, None


class PixelZScoreDetector:
    '''A Gaussian per pixel position: mu, sigma over the normal images; the pixel-level baseline.

    anomaly_map = |x - mu| / sigma, averaged over channels: [N, H, W]; pred_score = its maximum [N].
    '''

    def __init__(self, eps: float = 1e-2):
        if not eps > 0:
            raise ValueError(f"eps must be > 0 (it keeps sigma away from zero on constant pixels), got {eps!r}.")
        self.eps = eps

    def fit(self, train_dataset):
        images = training_images(train_dataset)
        if len(images) < 2:  # the spread of one sample is undefined (NaN)
            raise ValueError(f"the pixel z-score needs at least 2 training images to estimate each pixel's sigma, "
                             f"got {len(images)}.")
        self.mu = images.mean(0)  # [C, H, W]
        self.sigma = images.std(0) + self.eps  # [C, H, W]
        remember_input(self, images)
        return self

    def predict(self, images: torch.Tensor):
        images = check_input(self, images)  # same channels and size as fit saw: no silent broadcasting
        anomaly_map = ((images - self.mu) / self.sigma).abs().mean(1)  # [N, H, W]
        pred_score = anomaly_map.flatten(1).amax(1)  # [N]
        return pred_score, anomaly_map
