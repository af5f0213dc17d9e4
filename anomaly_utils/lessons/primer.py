"""Generated from notebooks/00_primer.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch


class NearestNeighbourDetector:
    '''k-nearest-neighbour distance on raw pixels: the image-level baseline.

    fit stores the normal training images as a memory bank [M, C*H*W]; predict returns the mean
    Euclidean distance to the k nearest of them: pred_score [N] (no anomaly map).
    '''

    def __init__(self, k: int = 1):
        self.k = k

    def fit(self, train_dataset):
        self.memory_bank = train_dataset.images.flatten(1)  # [M, D]
        return self

    def predict(self, images: torch.Tensor):
        distances = torch.cdist(images.flatten(1), self.memory_bank)  # [N, M]
        pred_score = distances.topk(self.k, largest=False).values.mean(1)  # [N]
        return pred_score, None


class PixelZScoreDetector:
    '''A Gaussian per pixel position: mu, sigma over the normal images; the pixel-level baseline.

    anomaly_map = |x - mu| / sigma, averaged over channels: [N, H, W]; pred_score = its maximum [N].
    '''

    def __init__(self, eps: float = 1e-2):
        self.eps = eps  # keeps sigma away from zero on constant pixels

    def fit(self, train_dataset):
        self.mu = train_dataset.images.mean(0)  # [C, H, W]
        self.sigma = train_dataset.images.std(0) + self.eps  # [C, H, W]
        return self

    def predict(self, images: torch.Tensor):
        anomaly_map = ((images - self.mu) / self.sigma).abs().mean(1)  # [N, H, W]
        pred_score = anomaly_map.flatten(1).amax(1)  # [N]
        return pred_score, anomaly_map
