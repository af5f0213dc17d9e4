"""The primer's baselines (exported from notebooks/00_primer.ipynb)."""

import torch

from anomaly_utils import AnomalyDataset, evaluate
from anomaly_utils.lessons.primer import NearestNeighbourDetector, PixelZScoreDetector


def _toy(n=20, size=8):
    g = torch.Generator().manual_seed(0)
    normal = 0.5 + 0.01 * torch.randn(n, 1, size, size, generator=g)
    return AnomalyDataset(normal, torch.zeros(n), torch.zeros(n, size, size))


def test_nearest_neighbour_matches_brute_force():
    train = _toy()
    queries = torch.rand(5, 1, 8, 8)
    score, anomaly_map = NearestNeighbourDetector(k=1).fit(train).predict(queries)
    brute = torch.stack([min(torch.dist(q, t) for t in train.images) for q in queries])
    assert anomaly_map is None
    assert torch.allclose(score, brute, atol=1e-5)


def test_zscore_finds_a_bright_square():
    train = _toy()
    test_images = 0.5 + 0.01 * torch.randn(4, 1, 8, 8)
    masks = torch.zeros(4, 8, 8)
    test_images[2:, :, 2:4, 2:4] += 0.5
    test_images = test_images.clamp(0, 1)  # images are in [0, 1] (AnomalyDataset checks it)
    masks[2:, 2:4, 2:4] = 1
    test = AnomalyDataset(test_images, torch.tensor([0, 0, 1, 1]), masks)
    ev = evaluate(PixelZScoreDetector().fit(train), test)
    assert ev.image_auroc == 1.0
    assert ev.pixel_auroc > 0.99
