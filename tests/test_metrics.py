"""anomaly_utils.metrics against scikit-learn and against hand-computed AUPRO values."""

import time
import tracemalloc

import numpy as np
import pytest
import scipy.ndimage
import sklearn.metrics as skm
import torch

from anomaly_utils.metrics import aupro, f1_optimal_threshold, image_auroc, pixel_auroc, roc_curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(size=400) + 0.7 * y, 1)  # rounding makes many ties
    assert len(np.unique(s)) < 200
    assert image_auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    # torch tensors are accepted too
    assert image_auroc(torch.from_numpy(y), torch.from_numpy(s)) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_all_tied_scores_give_one_half():
    assert image_auroc([0, 1, 0, 1], [3.0, 3.0, 3.0, 3.0]) == pytest.approx(0.5)


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 2)
    fpr, tpr, thr = roc_curve(y, s)
    fpr_sk, tpr_sk, thr_sk = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)
    np.testing.assert_allclose(thr[1:], thr_sk[1:])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


def test_pixel_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 64, 64), dtype=np.float32)
    masks[:, 20:30, 10:40] = 1
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    maps = np.round(maps, 2)  # ties
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)
    assert pixel_auroc(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(expected, abs=1e-9)


def test_pixel_auroc_on_two_million_pixels_is_fast_and_lean():
    rng = np.random.default_rng(1)
    n, h, w = 8, 512, 512  # 2,097,152 pixels
    masks = np.zeros((n, h, w), dtype=np.uint8)
    masks[:, 100:160, 200:300] = 1
    maps = rng.random((n, h, w), dtype=np.float32) + 0.5 * masks
    tracemalloc.start()
    start = time.perf_counter()
    value = pixel_auroc(masks, maps)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # the uniform scores give a known AUROC: P(U + 0.5 > U') + ties = 1 - 0.5 * 0.5^2 = 0.875
    assert value == pytest.approx(0.875, abs=3e-3)
    assert seconds < 15, f"pixel_auroc on 2M pixels took {seconds:.1f} s"
    # a few arrays of 2M float64 / int64 (16 MB each) are fine; Python lists of 2M floats are not
    assert peak < 250e6, f"pixel_auroc on 2M pixels peaked at {peak / 1e6:.0f} MB"


# --------------------------------------------------------------------------- AUPRO

def two_region_case(b_score):
    """One 100 x 100 image: region A (10 x 10 = 100 px) scores 2 (above every normal pixel),
    region B (2 x 2 = 4 px) scores ``b_score``; the normal pixels have distinct scores in [0, 1)."""
    rng = np.random.default_rng(0)
    masks = np.zeros((1, 100, 100), dtype=bool)
    masks[0, 10:20, 10:20] = True  # A
    masks[0, 60:62, 60:62] = True  # B
    maps = np.zeros((1, 100, 100), dtype=np.float64)
    normal = rng.permutation(np.arange((~masks).sum()) / (~masks).sum())
    maps[~masks] = normal
    maps[0, 10:20, 10:20] = 2.0
    maps[0, 60:62, 60:62] = b_score
    return masks, maps.astype(np.float32), np.sort(normal)


def test_aupro_one_region_found_one_missed():
    masks, maps, _ = two_region_case(b_score=-1.0)
    # PRO is 1/2 at every FPR (A always covered, B never). Weighting by pixels would give 100/104.
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-6)


def test_aupro_region_found_at_fpr_one_tenth():
    masks, maps, normal = two_region_case(b_score=0.0)
    # B's score: exactly 10 % of the normal pixels score at least as high
    b = normal[int(round(0.9 * len(normal)))]
    maps[0, 60:62, 60:62] = b
    # PRO = 1/2 for FPR < 0.1, then 1: area (0.1 * 0.5 + 0.2 * 1) / 0.3
    expected = (0.1 * 0.5 + 0.2 * 1.0) / 0.3
    assert aupro(masks, maps) == pytest.approx(expected, abs=3e-3)
    assert aupro(masks, maps) == pytest.approx(expected, abs=3e-4)  # exact: no threshold sampling
    # a smaller integration limit only sees the part where B is missed
    assert aupro(masks, maps, fpr_limit=0.05) == pytest.approx(0.5, abs=1e-6)


def test_aupro_perfect_and_inverted_maps():
    masks, maps, _ = two_region_case(b_score=2.0)
    assert aupro(masks, maps) == pytest.approx(1.0, abs=1e-9)
    assert aupro(masks, -maps) == pytest.approx(0.0, abs=1e-9)


def test_aupro_is_invariant_to_offset_and_scale():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 40, 40), dtype=bool)
    masks[0, 5:15, 5:12] = True
    masks[1, 20:30, 22:35] = True
    masks[1, 2:4, 2:4] = True
    # multiples of 1/1024 stay exact in float32 after the offset, so no new ties appear
    maps = (rng.integers(0, 1024, masks.shape) + 300 * masks) / 1024
    base = aupro(masks, maps)
    assert 0.1 < base < 0.95
    assert aupro(masks, maps + 7.0) == pytest.approx(base, abs=1e-12)
    assert aupro(masks, 4.0 * maps) == pytest.approx(base, abs=1e-12)


def test_aupro_uses_eight_connected_regions_across_images():
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 2, 2] = masks[0, 3, 3] = True  # diagonal neighbours: one region under 8-connectivity
    masks[1, 5:7, 5:7] = True  # a second region, in another image
    rng = np.random.default_rng(0)
    maps = rng.random(masks.shape) * 0.5
    maps[masks] = -1.0  # below every normal pixel: never found ...
    maps[0, 2, 2] = 1.0  # ... but this one: half of region 1 found, region 2 missed
    # (0.5 + 0) / 2 = 0.25; with 4-connectivity it would be (1 + 0 + 0) / 3
    assert aupro(masks, maps) == pytest.approx(0.25, abs=1e-6)


def test_aupro_interpolates_tied_normal_scores():
    # 90 % of the normal pixels score exactly 0, so FPR jumps from 0.1 to 1 at the last threshold;
    # the one region (scored 0 too) is found only there. Linear interpolation between (0.1, 0) and
    # (1, 1) at FPR 0.3 gives PRO 2/9: area 0.5 * 0.2 * 2/9, divided by 0.3.
    masks = np.zeros((1, 10, 110), dtype=bool)
    masks[0, :, 100:] = True
    maps = np.zeros((1, 10, 110))
    maps[0, :, :100] = np.r_[np.zeros(900), np.linspace(0.01, 1, 100)].reshape(10, 100)
    assert aupro(masks, maps) == pytest.approx(0.5 * 0.2 * (2 / 9) / 0.3, abs=1e-9)


# --------------------------------------------------------------------------- F1-optimal threshold

def brute_force_f1(y, s):
    best_t, best_f1 = None, -1.0
    for t in np.unique(s):
        p = s >= t
        tp = (p & y).sum()
        f1 = 2 * tp / (p.sum() + y.sum())
        if f1 > best_f1:
            best_t, best_f1 = t, f1
    return best_t, best_f1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_f1_optimal_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.3
    s = np.round(rng.normal(size=200) + 1.0 * y, 1)
    t, f1 = f1_optimal_threshold(y, s)
    t_bf, f1_bf = brute_force_f1(y, s)
    assert f1 == pytest.approx(f1_bf, abs=1e-12)
    assert t == pytest.approx(t_bf)
    assert skm.f1_score(y, s >= t) == pytest.approx(f1, abs=1e-12)


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("fn", [image_auroc, roc_curve, f1_optimal_threshold])
def test_single_label_is_a_clear_error(fn):
    with pytest.raises(ValueError, match="both normal"):
        fn([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="both normal"):
        fn([1, 1], [0.1, 0.2])


def test_pixel_metrics_need_both_kinds_of_pixels():
    with pytest.raises(ValueError, match="both normal"):
        pixel_auroc(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))
    with pytest.raises(ValueError, match="both defective and normal"):
        aupro(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="upsample the maps"):
        pixel_auroc(np.zeros((2, 8, 8)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        aupro(np.zeros((2, 8, 8)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="4 labels but 3 scores"):
        image_auroc([0, 1, 0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one score per label"):
        f1_optimal_threshold([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4, 0.5])


# --------------------------------------------------------------------------- hardening: exact AUPRO, NaN, precision

def exact_aupro(masks, maps, fpr_limit=0.3):
    """The definition, slowly: every distinct score is a threshold t; PRO(t) = mean over connected
    regions (8-connectivity, per image) of the fraction of the region's pixels >= t; FPR(t) = the
    fraction of normal pixels >= t. The curve starts at (0, 0) (as in MVTec's reference code), is
    integrated with trapezoids up to fpr_limit (linear interpolation there) and divided by it."""
    masks = np.asarray(masks) > 0.5
    maps = np.asarray(maps, dtype=np.float64)
    regions = []
    for m, s in zip(masks, maps):
        lab, n = scipy.ndimage.label(m, structure=np.ones((3, 3)))
        regions += [s[lab == k] for k in range(1, n + 1)]
    normal = maps[~masks]
    fpr, pro = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fpr.append(float((normal >= t).mean()))
        pro.append(float(np.mean([(r >= t).mean() for r in regions])))
    fpr, pro = np.array(fpr), np.array(pro)
    end = np.interp(fpr_limit, fpr, pro) if fpr_limit not in fpr else pro[fpr <= fpr_limit][-1]
    keep = fpr <= fpr_limit
    x, y = np.r_[fpr[keep], fpr_limit], np.r_[pro[keep], end]
    return float(np.trapezoid(y, x) / fpr_limit)


def near_perfect_case(n_false_positives):
    """A binary map equal to the mask, plus a few false-positive pixels among 13,456 normal ones."""
    masks = np.zeros((1, 120, 120), dtype=bool)
    masks[0, 30:50, 30:50] = True
    masks[0, 80:96, 60:94] = True
    maps = masks.astype(np.float32)
    normal = np.flatnonzero(~masks.ravel())
    assert len(normal) == 13_456
    hits = np.random.default_rng(n_false_positives).choice(normal, n_false_positives, replace=False)
    maps.ravel()[hits] = 1.0
    return masks, maps


@pytest.mark.parametrize("n_false_positives", [1, 5, 20])
def test_aupro_of_near_perfect_binary_maps(n_false_positives):
    # the old code sampled thresholds at FPR steps and never tried the top score: 0.1500
    masks, maps = near_perfect_case(n_false_positives)
    expected = exact_aupro(masks, maps)
    assert expected > 0.997
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_matches_the_exact_reference(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 24, 24), dtype=bool)
    masks[0, 3:9, 4:12] = True
    masks[0, 15:18, 15:17] = True
    masks[1, 10:20, 2:5] = True
    masks[1, 0, 23] = True  # a one-pixel region
    continuous = rng.normal(size=masks.shape) + 1.5 * masks
    tied = np.round(continuous * 2) / 2  # a few distinct values, many ties across both kinds
    for maps in (continuous, tied, (continuous > 1).astype(float)):
        for limit in (0.3, 0.05, 1.0):
            assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(exact_aupro(masks, maps, limit), abs=1e-3)


def test_aupro_on_two_million_pixels_is_fast():
    rng = np.random.default_rng(2)
    masks = np.zeros((8, 512, 512), dtype=bool)
    masks[:, 100:160, 200:300] = True
    masks[:, 300:310, 20:25] = True
    maps = rng.random(masks.shape, dtype=np.float32) + 0.5 * masks
    start = time.perf_counter()
    value = aupro(masks, maps)
    seconds = time.perf_counter() - start
    assert 0.5 < value < 1
    assert seconds < 20, f"aupro on 2M pixels took {seconds:.1f} s"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_metrics_reject_nan_scores(bad):
    y, s = np.array([0, 1, 0, 1]), np.array([0.1, bad, 0.3, 0.4])
    for fn in (image_auroc, roc_curve, f1_optimal_threshold):
        with pytest.raises(ValueError, match="NaN or infinite"):
            fn(y, s)
    masks = np.zeros((2, 4, 4))
    masks[1, :2, :2] = 1
    maps = np.random.default_rng(0).random((2, 4, 4))
    maps[0, 1, 2] = bad
    for fn in (pixel_auroc, aupro):
        with pytest.raises(ValueError, match=r"NaN or infinite.*index"):
            fn(masks, maps)


def test_pixel_metrics_keep_the_precision_of_the_maps():
    # a 1e-4 signal on maps around 1e4: float32 rounds it away (spacing 1e-3 there)
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 32, 32))
    masks[:, 8:16, 8:16] = 1
    maps = 1e4 + 1e-4 * (rng.random(masks.shape) + 0.5 * masks)
    expected = skm.roc_auc_score(masks.ravel(), maps.ravel())
    assert expected > 0.6
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)
    assert aupro(masks, maps) == pytest.approx(exact_aupro(masks, maps), abs=1e-3)
    assert aupro(masks, maps) > aupro(masks, maps.astype(np.float32)) + 0.05


# --------------------------------------------------------------------------- hardening, round 2 (issue 22)

@pytest.mark.parametrize("fn", [image_auroc, roc_curve, f1_optimal_threshold])
@pytest.mark.parametrize("bad", [0.5, np.nan, 2])
def test_labels_other_than_zero_and_one_are_rejected(fn, bad):
    # 0.5 and NaN were counted as anomalous (astype(bool)); the dataset class rejects them, the metrics must too
    with pytest.raises(ValueError, match=r"labels must be exactly 0 \(normal\) or 1 \(anomalous\).*1 of 4 labels"):
        fn([0, bad, 1, 1], [0.1, 0.2, 0.3, 0.4])


def test_minus_one_plus_one_labels_say_how_to_convert():
    with pytest.raises(ValueError, match=r"-1 / \+1.*scikit-learn.*\(y == -1\)\.astype\(int\).*-score_samples"):
        image_auroc([-1, 1, 1, -1], [0.9, 0.1, 0.2, 0.8])
    assert image_auroc(np.array([-1, 1, 1, -1]) == -1, [0.9, 0.1, 0.2, 0.8]) == 1.0  # converted: accepted
    assert image_auroc(torch.tensor([False, True]), [0.1, 0.2]) == 1.0  # bool labels


def test_confusion_at_checks_lengths_nan_scores_and_threshold():
    from anomaly_utils.metrics import confusion_at

    with pytest.raises(ValueError, match="3 labels but 1 scores"):
        confusion_at([0, 1, 1], [0.5], 0.3)  # was broadcast over all labels
    with pytest.raises(ValueError, match="NaN or infinite"):
        confusion_at([0, 1, 1], [0.5, np.nan, 1.0], 0.3)  # NaN was counted as normal
    with pytest.raises(ValueError, match="threshold must be one number"):
        confusion_at([0, 1, 1], [0.5, 0.2, 1.0], np.nan)
    with pytest.raises(ValueError, match="labels must be exactly 0"):
        confusion_at([0, 0.5, 1], [0.5, 0.2, 1.0], 0.3)
    assert confusion_at([0, 1, 1], [0.5, 0.2, 1.0], 0.3) == {
        "true_positives": 1, "false_positives": 1, "false_negatives": 1, "true_negatives": 0}
    assert confusion_at([0, 0], torch.tensor([0.5, 0.2]), torch.tensor(0.3))["false_positives"] == 1


def test_bfloat16_scores_and_maps_are_converted():
    y = torch.tensor([0, 1, 0, 1])
    s = torch.tensor([0.1, 0.9, 0.2, 0.8], dtype=torch.bfloat16)
    assert image_auroc(y, s) == 1.0
    assert f1_optimal_threshold(y, s)[1] == 1.0
    masks = torch.zeros(2, 8, 8)
    masks[1, 2:4, 2:4] = 1
    maps = (masks + 0.1 * torch.rand(2, 8, 8)).to(torch.bfloat16)
    assert pixel_auroc(masks, maps) == pytest.approx(1.0)
    assert aupro(masks, maps) == pytest.approx(1.0)


def test_one_two_dimensional_map_is_one_image_for_both_pixel_metrics():
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 16))
    mask[4:8, 4:9] = 1
    amap = rng.random((16, 16)) + 0.5 * mask
    assert aupro(mask, amap) == pytest.approx(aupro(mask[None], amap[None]))  # failed inside scipy before
    assert pixel_auroc(mask, amap) == pytest.approx(pixel_auroc(mask[None], amap[None]))
    assert aupro(mask[None, None], amap[None, None]) == pytest.approx(aupro(mask[None], amap[None]))  # [N, 1, H, W]
    with pytest.raises(ValueError, match=r"must be \[N, H, W\]"):
        aupro(mask.ravel(), amap.ravel())


def test_nan_in_masks_is_an_error():
    masks = np.zeros((2, 4, 4))
    masks[1, :2, :2] = 1
    masks[0, 3, 3] = np.nan
    for fn in (pixel_auroc, aupro):
        with pytest.raises(ValueError, match="1 mask pixels are NaN"):
            fn(masks, np.random.default_rng(0).random((2, 4, 4)))


@pytest.mark.parametrize("limit", ["0.3", 0, 1.5, np.nan, True])
def test_aupro_fpr_limit_must_be_a_number_in_range(limit):
    masks = np.zeros((1, 8, 8))
    masks[0, :2, :2] = 1
    with pytest.raises(ValueError, match=r"fpr_limit must be a number in \(0, 1\]"):
        aupro(masks, np.random.default_rng(0).random((1, 8, 8)), fpr_limit=limit)
