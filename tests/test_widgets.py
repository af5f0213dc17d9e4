"""The anomaly-map explorer: the static fallback and the ipywidgets version."""

import re

import numpy as np
import pytest
import torch

from anomaly_utils.widgets import default_threshold, explorer, static_requested


@pytest.fixture
def case():
    """6 grey images 16 x 16; items 3..5 anomalous with a square defect; maps peak on the defect."""
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((6, 1, 16, 16), dtype=np.float32))
    masks = torch.zeros(6, 16, 16)
    masks[3:, 4:8, 4:8] = 1
    maps = torch.from_numpy(rng.random((6, 16, 16), dtype=np.float32)) * 0.5 + masks
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([0.1, 0.2, 0.9, 0.8, 0.3, 0.95])
    return images, maps, masks, scores, labels


def test_static_rule(monkeypatch):
    monkeypatch.delenv("AD_STATIC_WIDGETS", raising=False)
    monkeypatch.setenv("AD_PROFILE", "cpu")
    assert not static_requested()
    monkeypatch.setenv("AD_PROFILE", "smoke")
    assert static_requested()
    monkeypatch.setenv("AD_PROFILE", "cpu")
    monkeypatch.setenv("AD_STATIC_WIDGETS", "1")
    assert static_requested()


def test_static_figure_shows_best_and_worst(case, monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "smoke")
    images, maps, masks, scores, labels = case
    ex = explorer(images, maps, masks, scores, labels, titles=[f"item {i}" for i in range(6)])
    assert ex.static and ex.widget is None
    # best anomaly (5), worst anomaly (4), worst normal (2), best normal (0)
    assert ex.indices == [5, 4, 2, 0]
    assert len(ex.figure.axes) == 4 * 3
    assert "best anomaly" in ex.figure.axes[0].get_title() and "item 5" in ex.figure.axes[0].get_title()
    # the F1-optimal pixel threshold separates this easy case: the lowest defect pixel's score
    assert ex.threshold == pytest.approx(float(maps[masks == 1].min()))


def test_static_without_labels_uses_scores(case):
    images, maps, _, scores, _ = case
    ex = explorer(images.numpy(), maps.numpy(), scores=scores.numpy(), static=True, n_static=3)
    assert ex.indices == [5, 2, 0]  # two highest, one lowest
    assert ex.threshold == pytest.approx(np.quantile(maps.numpy(), 0.99))


def percent_predicted(ex):
    return float(re.search(r"([0-9.]+)% px", ex.figure.axes[2].get_title()).group(1))


def test_interactive_widget_updates(case):
    pytest.importorskip("ipywidgets")
    images, maps, masks, scores, labels = case
    ex = explorer(images, maps, masks, scores, labels, static=False)
    assert not ex.static
    assert ex.sample.value == 5 and ex.sample.max == 5  # starts on the highest score
    first = ex.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    assert percent_predicted(ex) == pytest.approx(100 * 16 / 256, abs=0.05)  # exactly the 4 x 4 defect
    ex.slider.value = ex.slider.max
    assert ex.image.value != first
    assert percent_predicted(ex) <= 0.4  # the single highest pixel (1 of 256)
    shown = ex.image.value
    ex.overlay.value = False
    assert ex.image.value != shown
    ex.sample.value = 0
    assert "#0" in ex.figure.axes[0].get_title() and "normal" in ex.figure.axes[0].get_title()
    no_masks = explorer(images, maps, static=False)
    assert no_masks.contour.disabled


def test_small_maps_are_upsampled(case):
    images, maps, _, _, _ = case
    ex = explorer(images, maps[:, None, ::2, ::2], static=True, n_static=1)  # [N, 1, 8, 8] maps
    assert ex.maps.shape == (6, 16, 16)
    assert np.allclose(ex.maps[:, ::2, ::2].mean(), maps[:, ::2, ::2].mean().item(), atol=0.05)


def test_input_errors(case):
    images, maps, masks, scores, labels = case
    with pytest.raises(ValueError, match="one per image"):
        explorer(images, maps[:5], static=True)
    with pytest.raises(ValueError, match="masks must be"):
        explorer(images, maps, masks[:, :8], static=True)
    with pytest.raises(ValueError, match="5 labels for 6 images"):
        explorer(images, maps, labels=labels[:5], static=True)
    with pytest.raises(ValueError, match="images must be"):
        explorer(torch.zeros(6, 2, 16, 16), maps, static=True)


def test_default_threshold_subsamples_large_maps():
    rng = np.random.default_rng(0)
    maps = rng.random((20, 256, 256)).astype(np.float32)
    t = default_threshold(maps, max_pixels=100_000)
    assert t == pytest.approx(0.99, abs=0.005)
