"""The primer's baselines (exported from notebooks/00_primer.ipynb)."""

from types import SimpleNamespace

import pytest
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


# ---------------------------------------------------------------- bad input: clear errors, no silent NaN or broadcast
def _set(images):
    return AnomalyDataset(images, torch.zeros(len(images)))


def test_zscore_needs_two_training_images():
    with pytest.raises(ValueError, match="at least 2 training images"):  # the std of one image is NaN
        PixelZScoreDetector().fit(_set(torch.rand(1, 1, 8, 8)))


@pytest.mark.parametrize("eps", [0, -0.1, float("nan")])
def test_zscore_rejects_a_non_positive_eps(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        PixelZScoreDetector(eps=eps)


@pytest.mark.parametrize("fit_c, predict_c", [(1, 3), (3, 1)])
def test_zscore_refuses_other_channels_instead_of_broadcasting(fit_c, predict_c):
    det = PixelZScoreDetector().fit(_set(torch.rand(5, fit_c, 8, 8)))
    with pytest.raises(ValueError, match=f"fitted on {fit_c}-channel images but predict got {predict_c}"):
        det.predict(torch.rand(2, predict_c, 8, 8))


@pytest.mark.parametrize("detector", [PixelZScoreDetector(), NearestNeighbourDetector(k=1)])
def test_other_size_than_fit_is_a_clear_error(detector):
    detector.fit(_set(torch.rand(5, 1, 8, 8)))
    with pytest.raises(ValueError, match="fitted on 8 x 8 images but predict got 8 x 12"):
        detector.predict(torch.rand(2, 1, 8, 12))


@pytest.mark.parametrize("detector", [PixelZScoreDetector(), NearestNeighbourDetector(k=1)])
def test_predict_before_fit_is_a_clear_error(detector):
    with pytest.raises(RuntimeError, match="before fit"):
        detector.predict(torch.rand(2, 1, 8, 8))


def test_non_square_images_work_when_fit_and_predict_agree():
    train = _set(torch.rand(6, 1, 8, 12))
    score, amap = PixelZScoreDetector().fit(train).predict(torch.rand(3, 1, 8, 12))
    assert score.shape == (3,) and amap.shape == (3, 8, 12) and torch.isfinite(amap).all()
    score, _ = NearestNeighbourDetector(k=2).fit(train).predict(torch.rand(3, 1, 8, 12))
    assert score.shape == (3,) and torch.isfinite(score).all()


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "1"])
def test_nearest_neighbour_rejects_a_bad_k(k):
    with pytest.raises(ValueError, match="k .*whole number >= 1"):  # k = 0 used to give NaN scores
        NearestNeighbourDetector(k=k)


def test_nearest_neighbour_k_above_the_bank_size_is_a_clear_error():
    with pytest.raises(ValueError, match="k=5, but the training set holds only 3 images"):
        NearestNeighbourDetector(k=5).fit(_set(torch.rand(3, 1, 8, 8)))


def test_nearest_neighbour_refuses_other_channels():
    det = NearestNeighbourDetector(k=1).fit(_set(torch.rand(4, 1, 8, 8)))
    with pytest.raises(ValueError, match="1-channel images but predict got 3"):
        det.predict(torch.rand(2, 3, 8, 8))


def test_k_nearest_is_the_mean_of_the_k_smallest_distances():
    bank = torch.zeros(3, 1, 1, 2)
    bank[1, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5 from the origin
    bank[2, 0, 0] = torch.tensor([6.0, 8.0])  # distance 10
    score, _ = NearestNeighbourDetector(k=2).fit(SimpleNamespace(images=bank)).predict(torch.zeros(1, 1, 1, 2))
    assert score.item() == pytest.approx((0 + 5) / 2)
