"""The anomaly-map explorer: the static fallback and the ipywidgets version."""

import itertools
import re

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from anomaly_utils import widgets
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
    rows = [sub._suptitle.get_text() for sub in ex.figure.subfigs]
    assert len(rows) == 4 and "best anomaly" in rows[0] and "item 5" in rows[0]
    assert len(ex.figure.axes) == 4 * 4  # three panels and a colour bar per sample
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
    assert "#0" in ex.figure._suptitle.get_text() and "normal" in ex.figure._suptitle.get_text()
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


# ----------------------------------------------------------------------------------------- hostile inputs

def test_transposed_maps_are_refused_not_stretched(case):
    images = torch.rand(6, 1, 16, 24)
    with pytest.raises(ValueError, match="transposed"):
        explorer(images, torch.rand(6, 24, 16), static=True)
    with pytest.raises(ValueError, match="aspect ratio"):
        explorer(images, torch.rand(6, 12, 8), static=True)  # transposed at half resolution
    ex = explorer(images, torch.rand(6, 8, 12), static=True, n_static=1)  # same aspect, lower resolution
    assert ex.maps.shape == (6, 16, 24)


@pytest.mark.parametrize("with_masks", [False, True])
def test_nan_maps_are_a_clear_error(case, with_masks):
    images, maps, masks, _, _ = case
    maps = maps.clone()
    maps[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        explorer(images, maps, masks if with_masks else None, static=True)
    with pytest.raises(ValueError, match="NaN or infinite"):
        explorer(images, case[1], scores=torch.tensor([0.1, float("inf"), 0, 0, 0, 0]), static=True)
    with pytest.raises(ValueError, match="finite"):
        explorer(images, case[1], threshold=float("nan"), static=True)


def test_0_255_images_are_scaled_not_drawn_white(case, capsys):
    images, maps, masks, scores, labels = case
    ex = explorer(images * 255, maps, masks, scores, labels, static=True)
    assert ex.images.max() <= 1.0 and np.allclose(ex.images, images.numpy(), atol=1e-6)
    assert "divided by 255" in capsys.readouterr().out
    ex = explorer((images * 255).to(torch.uint8), maps, static=True)
    assert ex.images.max() <= 1.0 and ex.images.max() > 0.9
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explorer((images - 0.45) / 0.226, maps, static=True)  # ImageNet-normalised


def test_threshold_attribute_and_slider_agree(case):
    pytest.importorskip("ipywidgets")
    images, maps, masks, scores, labels = case
    ex = explorer(images, maps, masks, scores, labels, static=False)
    ex.slider.value = ex.slider.max
    assert ex.threshold == pytest.approx(ex.slider.max)  # the attribute follows the slider
    assert "Explorer(6 samples, interactive, threshold=" in repr(ex)
    shown = ex.image.value
    ex.threshold = 0.75
    assert ex.slider.value == pytest.approx(0.75) and ex.image.value != shown  # the slider follows the attribute
    assert "0.75" in ex.figure.axes[2].get_title()
    ex.threshold = 5.0  # above every map value: the slider's range grows to hold it
    assert ex.slider.max >= 5.0 and ex.slider.value == pytest.approx(5.0) and ex.threshold == 5.0
    assert percent_predicted(ex) == 0.0
    start = explorer(images, maps, threshold=-1.0, static=False)  # a start outside the maps' range is kept
    assert start.threshold == -1.0 and start.slider.min <= -1.0


def test_static_threshold_redraws(case):
    images, maps, masks, scores, labels = case
    ex = explorer(images, maps, masks, scores, labels, static=True)
    ex.threshold = 0.25
    assert "0.25" in ex.figure.axes[2].get_title() and ex.threshold == 0.25


def titles_of(fig):
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [ax.title for ax in fig.axes if ax.get_title()]
    texts += [sub._suptitle for sub in fig.subfigs] + [fig._suptitle]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t is not None]


def test_static_view_has_no_overlapping_titles_and_uses_the_overlay(case, monkeypatch):
    images, maps, masks, scores, labels = case
    calls = []
    real = widgets.overlay

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(widgets, "overlay", spy)
    long_titles = [f"piped/PA_BRG01_RL contamination {i}" for i in range(6)]
    ex = explorer(images, maps, masks, scores, labels, titles=long_titles, static=True)
    assert len(calls) == 4  # the map panel of every sample is viz.overlay's
    colour_bars = [ax for ax in ex.figure.axes if ax.get_ylabel() == "anomaly score"]
    assert len(colour_bars) == 4
    titles = titles_of(ex.figure)
    assert len(titles) >= 4 * 3
    for (a, box_a), (b, box_b) in itertools.combinations(titles, 2):
        assert not box_a.overlaps(box_b), f"titles overlap: {a!r} and {b!r}"
