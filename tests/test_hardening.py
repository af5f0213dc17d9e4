"""evaluate() rejects anomaly maps that do not fit the images instead of stretching them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_utils import AnomalyDataset, evaluate

H, W = 16, 24  # not square: a transposed map has another shape


def toy_test_set():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((6, 1, H, W), dtype=np.float32))
    masks = torch.zeros(6, H, W)
    masks[3:, 2:8, 4:16] = 1
    return AnomalyDataset(images, torch.tensor([0, 0, 0, 1, 1, 1]), masks, name="toy/test")


class MapDetector:
    """Returns the ground-truth masks of ``ds`` (plus noise) as maps, reshaped by ``shape_fn``."""

    def __init__(self, ds, shape_fn=lambda m: m):
        self.ds, self.shape_fn = ds, shape_fn

    def fit(self, train):
        return self

    def predict(self, images):
        idx = [int(torch.nonzero((self.ds.images == x).flatten(1).all(1))[0]) for x in images]
        maps = self.ds.masks[idx] + 0.1 * torch.rand(len(idx), H, W)
        return maps.amax(dim=(1, 2)), self.shape_fn(maps)


def test_fitting_maps_are_accepted():
    ds = toy_test_set()
    assert evaluate(MapDetector(ds), ds).pixel_auroc == pytest.approx(1.0)
    assert evaluate(MapDetector(ds, lambda m: m[:, None]), ds).pixel_auroc == pytest.approx(1.0)  # [N, 1, H, W]
    half = evaluate(MapDetector(ds, lambda m: m[:, ::2, ::2]), ds)  # [N, H/2, W/2], upsampled
    assert half.anomaly_maps.shape == (6, H, W) and half.pixel_auroc > 0.95
    # 6 x 8: a third of 16 x 24, rounded up (as a strided convolution with padding gives it)
    third = evaluate(MapDetector(ds, lambda m: F.interpolate(m[:, None], size=(6, 8), mode="area")[:, 0]), ds)
    assert third.anomaly_maps.shape == (6, H, W) and third.pixel_auroc > 0.9
    # twice the size (a detector run on images resized to 2x, as the leaderboard's Resized does)
    double = evaluate(MapDetector(ds, lambda m: m.repeat_interleave(2, 1).repeat_interleave(2, 2)), ds)
    assert double.anomaly_maps.shape == (6, H, W) and double.pixel_auroc == pytest.approx(1.0)


def test_transposed_maps_are_an_error():
    ds = toy_test_set()
    with pytest.raises(ValueError, match=r"shape \[\d, 24, 16\] \(height and width swapped\?\).*16 x 24"):
        evaluate(MapDetector(ds, lambda m: m.transpose(1, 2).contiguous()), ds)


@pytest.mark.parametrize("shape_fn", [lambda m: m[:, None].expand(-1, 3, -1, -1),  # 3 channels
                                      lambda m: m[:, :, :20],  # another aspect ratio
                                      lambda m: m[:, :12, :18],  # 3/4 of the size: no integer factor
                                      lambda m: m[:1]])  # one map for several images
def test_maps_that_do_not_fit_are_an_error(shape_fn):
    ds = toy_test_set()
    with pytest.raises(ValueError, match=r"anomaly maps of shape .* expected \[\d, 16, 24\]"):
        evaluate(MapDetector(ds, shape_fn), ds)


def test_nan_maps_and_scores_are_an_error():
    ds = toy_test_set()

    def nan_map(m):
        m = m.clone()
        m[0, 3, 3] = float("nan")
        return m
    with pytest.raises(ValueError, match="1 NaN or infinite pixels"):
        evaluate(MapDetector(ds, nan_map), ds)

    class NaNScores(MapDetector):
        def predict(self, images):
            s, m = super().predict(images)
            return torch.full_like(s, float("inf")), m
    with pytest.raises(ValueError, match="NaN or infinite scores"):
        evaluate(NaNScores(ds), ds)


def test_float64_maps_keep_their_precision():
    ds = toy_test_set()
    signal = MapDetector(ds, lambda m: 1e4 + 1e-4 * m.double())  # float32 would round the signal away
    assert evaluate(signal, ds).pixel_auroc == pytest.approx(1.0)


# --------------------------------------------------------------------------- evaluate: hardening, round 2 (issue 22)

@pytest.mark.parametrize("batch_size", [0, -4, 2.5, True])
def test_evaluate_rejects_a_bad_batch_size(batch_size):
    ds = toy_test_set()
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        evaluate(MapDetector(ds), ds, batch_size=batch_size)


def test_evaluate_on_empty_masks_says_the_masks_are_empty():
    ds = toy_test_set()
    empty = AnomalyDataset(ds.images, ds.labels, torch.zeros_like(ds.masks), name="toy/test")
    with pytest.raises(ValueError, match=r"toy/test: its 3 anomalous image\(s\).*every mask is empty.*"
                                         r"pixel_metrics=False"):
        evaluate(MapDetector(ds), empty)
    assert evaluate(MapDetector(ds), empty, pixel_metrics=False).pixel_auroc is None  # the way out works
    full = AnomalyDataset(ds.images, ds.labels, torch.ones_like(ds.masks), name="toy/test")
    with pytest.raises(ValueError, match="every pixel of every mask is marked defective.*inverted"):
        evaluate(MapDetector(ds), full)


def test_evaluate_names_a_train_test_pair_and_a_bad_predict():
    ds = toy_test_set()
    with pytest.raises(TypeError, match=r"\(train, test\) pair"):
        evaluate(MapDetector(ds), (ds, ds))

    class ScoresOnly(MapDetector):
        def predict(self, images):
            return super().predict(images)[0]
    with pytest.raises(TypeError, match=r"predict must return \(pred_score.*\(scores, None\)"):
        evaluate(ScoresOnly(ds), ds)


def test_evaluate_accepts_bfloat16_outputs():
    ds = toy_test_set()

    class Half(MapDetector):
        def predict(self, images):
            s, m = super().predict(images)
            return s.to(torch.bfloat16), m.to(torch.bfloat16)
    result = evaluate(Half(ds), ds)
    assert result.image_auroc == 1.0 and result.pixel_auroc > 0.95


def test_evaluate_maps_for_some_batches_only_is_an_error():
    ds = toy_test_set()

    class Sometimes(MapDetector):
        def predict(self, images):
            s, m = super().predict(images)
            return s, (m if images[0, 0, 0, 0] == ds.images[0, 0, 0, 0] else None)
    with pytest.raises(ValueError, match="maps for 2 of 6 images"):
        evaluate(Sometimes(ds), ds, batch_size=2)
