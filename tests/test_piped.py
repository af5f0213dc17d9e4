"""PIPED, the real paper-impurity set shipped in data/piped/: splits, masks, speed."""

import time

import pytest
import torch

from anomaly_utils import data
from anomaly_utils.data import load_piped, piped_categories


def rows(images):
    return {bytes(x) for x in images.reshape(len(images), -1).numpy()}


def test_twelve_types_with_descriptions():
    cats = piped_categories()
    assert len(cats) == 12 and all(isinstance(v, str) and len(v) > 10 for v in cats.values())
    assert "PU_PNG01_TL" not in cats  # the type without defective patches cannot be evaluated


@pytest.mark.parametrize("category", ["PA_BRG01_RL", "PA_ZPB01_RL", "PA_BTN01_RL"])
def test_splits_are_disjoint_and_complete(category):
    train, test = load_piped(category)
    _, val = load_piped(category, split="val")
    assert 26 <= len(train) <= 30 and train.labels.sum() == 0 and train.images.shape[1:] == (3, 128, 128)
    assert (test.labels == 0).sum() == 12 and (val.labels == 0).sum() == 6
    assert (test.labels == 1).sum() == 32 and (val.labels == 1).sum() == 16  # 48 defective, 1/3 to val
    a, b, c = rows(train.images), rows(val.images), rows(test.images)
    assert len(a) + len(b) + len(c) == len(train) + 22 + 44 and not (a & b or a & c or b & c)
    # every defective patch has a non-empty mask, normal patches an empty one
    per_image = test.masks.flatten(1).sum(1)
    assert torch.all((per_image > 0) == (test.labels == 1))
    assert 0.0005 < float(test.masks[test.labels == 1].mean()) < 0.2


def test_duplicate_patches_are_kept_once():
    normal, _, _, _ = data._piped_arrays("PA_BFT01_TL")  # stores one defect-free patch five times
    assert len(normal) == 44 and len(rows(torch.from_numpy(normal))) == 44


def test_masks_match_the_impurities():
    # impurities are darker than the paper around them in every type (hand-drawn masks, white = impurity)
    for category in ["PA_BDP01_TL", "PA_GLA01_TL", "PA_ZPB01_RL"]:
        _, test = load_piped(category)
        d = test.labels == 1
        grey, m = test.images[d].mean(1), test.masks[d] > 0
        assert float(grey[m].mean()) < float(grey[~m].mean()) - 0.05


def test_seed_changes_the_split_and_is_reproducible():
    a, _ = load_piped("PA_BRG01_RL", seed=0)
    b, _ = load_piped("PA_BRG01_RL", seed=0)
    c, _ = load_piped("PA_BRG01_RL", seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_resize_and_mask_names_with_and_without_leading_zero():
    train, test = load_piped("PA_ZPB01_RL", size=64)  # its masks are named *_GT_7_3, its images *_D_07_3
    assert train.images.shape[1:] == (3, 64, 64) and test.masks.shape[1:] == (64, 64)
    assert set(test.masks.unique().tolist()) <= {0.0, 1.0}


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="piped_categories"):
        load_piped("PA_NOPE")
    with pytest.raises(ValueError, match="split"):
        load_piped("PA_BRG01_RL", split="train")
    with pytest.raises(ValueError, match="size"):
        load_piped("PA_BRG01_RL", size="64")


def test_all_twelve_types_load_in_seconds():
    data._piped_arrays.cache_clear()
    start = time.process_time()
    for category in piped_categories():
        load_piped(category)
    assert time.process_time() - start < 20  # CPU seconds: robust to a busy machine


def test_a_list_of_categories_or_a_bad_seed_says_what_to_do():
    with pytest.raises(ValueError, match=r"category must be one PIPED type.*loop"):
        load_piped(["PA_BRG01_RL", "PA_BTN01_RL"])  # was a TypeError (unhashable list) from the cache
    for seed in (-1, None):
        with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
            load_piped("PA_BRG01_RL", seed=seed)
