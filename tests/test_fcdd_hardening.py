"""Bad inputs to lesson 02's FCDD detector: clear errors, and maps at the input's size (issue 22)."""

import pytest
import torch

from anomaly_utils.data import AnomalyDataset
from anomaly_utils.lessons.fcdd import FCDD


def _train(n=6, c=1, h=32, w=32, seed=0):
    images = 0.4 + 0.1 * torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    return AnomalyDataset(images, torch.zeros(n))


def _fit(train, **kw):
    return FCDD(epochs=1, batch_size=4, progress=False, **kw).fit(train)


@pytest.mark.parametrize("h,w", [(32, 48), (48, 32), (20, 36)])
def test_maps_come_back_at_the_input_size_for_non_square_images(h, w):
    train = _train(h=h, w=w)
    for upsample in ("gaussian", "bilinear"):
        det = _fit(train, upsample=upsample)
        scores, maps = det.predict(train.images[:2])
        assert scores.shape == (2,) and maps.shape == (2, h, w)  # was (2, 49, 48) etc.: square maps
        assert torch.isfinite(maps).all()


def test_a_fully_convolutional_detector_predicts_other_sizes_at_their_size():
    det = _fit(_train(h=32, w=32))
    assert det.predict(torch.rand(3, 1, 40, 24))[1].shape == (3, 40, 24)


def test_predict_before_fit_says_what_to_do():
    with pytest.raises(RuntimeError, match="before fit"):
        FCDD().predict(torch.rand(1, 1, 32, 32))


def test_channel_mismatch_between_fit_and_predict():
    det = _fit(_train(c=1))
    with pytest.raises(ValueError, match="1-channel.*3 channels"):
        det.predict(torch.rand(2, 3, 32, 32))
    rgb = _fit(_train(c=3))
    with pytest.raises(ValueError, match="3-channel.*1 channels"):
        rgb.predict(torch.rand(2, 1, 32, 32))


def test_predict_needs_a_batch_dimension():
    det = _fit(_train())
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        det.predict(torch.rand(1, 32, 32))


@pytest.mark.parametrize("kw,name", [
    (dict(epochs=0), "epochs"), (dict(epochs=2.5), "epochs"), (dict(lr=0), "lr"), (dict(lr=float("nan")), "lr"),
    (dict(batch_size=0), "batch_size"), (dict(weight_decay=-1), "weight_decay"),
    (dict(head_channels=0), "head_channels"), (dict(head_layers=-1), "head_layers"),
    (dict(base_block=12), "base_block"), (dict(base_block=True), "base_block"),
    (dict(anomalies="noise"), "anomalies"), (dict(n_confetti=0), "n_confetti"),
    (dict(confetti_sign="dark"), "confetti_sign"),
    (dict(pixel_loss="cell"), "pixel_loss"), (dict(upsample="nearest"), "upsample"), (dict(sigma=0), "sigma"),
    (dict(sigma=-3.0), "sigma"), (dict(outlier_images=torch.rand(4, 32, 32)), "outlier_images"),
    (dict(outlier_images=torch.rand(0, 1, 32, 32)), "outlier_images"),
    (dict(labelled_images=torch.rand(2, 1, 32, 32)), "labelled_masks"),
    (dict(labelled_masks=torch.ones(2, 32, 32)), "labelled_images"),
    (dict(labelled_images=torch.rand(2, 1, 32, 32), labelled_masks=torch.ones(3, 32, 32)), "labelled_masks"),
    (dict(labelled_images=torch.rand(2, 1, 32, 32), labelled_masks=torch.ones(2, 16, 16)), "labelled_masks"),
    (dict(labelled_images=torch.rand(2, 1, 32, 32), labelled_masks=torch.zeros(2, 32, 32)), "non-empty mask"),
])
def test_bad_arguments_fail_at_construction_and_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        FCDD(**kw)


def test_no_confetti_copies_needed_without_confetti():
    FCDD(anomalies=None, n_confetti=0)  # n_confetti is unused then: no error


def test_outlier_images_must_match_the_training_images():
    with pytest.raises(ValueError, match="outlier_images.*training images"):
        _fit(_train(h=32, w=32), outlier_images=torch.rand(4, 1, 24, 24))
    with pytest.raises(ValueError, match="outlier_images.*training images"):
        _fit(_train(c=3), outlier_images=torch.rand(4, 1, 32, 32))


def test_labelled_defects_must_match_the_training_images():
    masks = torch.zeros(2, 24, 24)
    masks[:, 4:8, 4:8] = 1
    with pytest.raises(ValueError, match="labelled_images.*training images"):
        _fit(_train(h=32, w=32), labelled_images=torch.rand(2, 1, 24, 24), labelled_masks=masks)


def test_fit_on_an_empty_data_set():
    empty = AnomalyDataset(torch.zeros(0, 1, 32, 32), torch.zeros(0)) if _empty_ok() else None
    if empty is None:
        pytest.skip("AnomalyDataset refuses empty data sets itself")
    with pytest.raises(ValueError, match="N >= 1"):
        FCDD(epochs=1, progress=False).fit(empty)


def _empty_ok():
    try:
        AnomalyDataset(torch.zeros(0, 1, 32, 32), torch.zeros(0))
        return True
    except Exception:
        return False
