"""Synthetic anomalies: training pseudo-anomalies and the test defect families."""

import numpy as np
import pytest
import torch

from anomaly_utils import defects
from anomaly_utils.defects import (
    TEST_FAMILIES,
    TRAIN_FAMILIES,
    apply_defect,
    confetti_noise,
    local_shuffle,
    smooth_blobs,
)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return 0.2 + 0.6 * torch.rand(6, 3, 32, 32, generator=g)


def check_pair(images, out, masks):
    n, c, h, w = images.shape
    assert out.shape == images.shape and masks.shape == (n, h, w)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    changed = (out != images).any(dim=1)
    assert not (changed & (masks == 0)).any(), "pixels outside the mask were changed"
    return changed


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_confetti_noise(images):
    out, masks = confetti_noise(images, n_blobs=5, generator=gen(1))
    changed = check_pair(images, out, masks)
    assert (masks.sum(dim=(1, 2)) > 0).all() and changed.any(dim=(1, 2)).all()
    assert (masks.mean(dim=(1, 2)) < 0.5).all()  # small blobs, not the whole image
    out2, masks2 = confetti_noise(images, n_blobs=5, generator=gen(1))
    assert torch.equal(out, out2) and torch.equal(masks, masks2)
    assert not torch.equal(out, confetti_noise(images, n_blobs=5, generator=gen(2))[0])
    assert torch.equal(images, 0.2 + 0.6 * torch.rand(6, 3, 32, 32, generator=gen(0)))  # input untouched


def test_smooth_blobs(images):
    out, masks = smooth_blobs(images, generator=gen(3))
    changed = check_pair(images, out, masks)
    assert masks.sum() > 0 and changed.any()
    out2, _ = smooth_blobs(images, generator=gen(3))
    assert torch.equal(out, out2)


def test_local_shuffle(images):
    out, masks = local_shuffle(images, patch=8, p=0.3, generator=gen(4))
    check_pair(images, out, masks)
    assert masks.sum() > 0
    # a shuffled cell keeps its pixels: the same values per channel, in another order
    for i, y, x in zip(*np.nonzero(masks[:, ::8, ::8].numpy())):
        a = images[i, :, 8 * y:8 * y + 8, 8 * x:8 * x + 8].reshape(3, -1).sort(dim=1).values
        b = out[i, :, 8 * y:8 * y + 8, 8 * x:8 * x + 8].reshape(3, -1).sort(dim=1).values
        assert torch.equal(a, b)
    none, empty = local_shuffle(images, p=0.0, generator=gen(4))
    assert torch.equal(none, images) and empty.sum() == 0
    _, full = local_shuffle(images, patch=8, p=1.0, generator=gen(4))
    assert full.all()


def test_training_and_test_families_are_disjoint():
    assert set(TRAIN_FAMILIES).isdisjoint(TEST_FAMILIES)
    assert len(set(TEST_FAMILIES)) == len(TEST_FAMILIES) >= 3
    for family in TRAIN_FAMILIES:  # a training pseudo-anomaly cannot be used as a test defect
        with pytest.raises(ValueError, match="unknown defect family"):
            apply_defect(family, torch.rand(32, 32))


@pytest.mark.parametrize("family", TEST_FAMILIES)
def test_test_defects_are_local_and_masked(family):
    photo = defects_photo()
    rng = np.random.default_rng(0)
    for _ in range(3):
        image = torch.from_numpy(photo[:64, :64].copy())
        out, mask = apply_defect(family, image, photo, rng)
        assert out.shape == image.shape == mask.shape
        assert 0 <= float(out.min()) and float(out.max()) <= 1
        m = mask.bool()
        assert 0 < int(m.sum()) < 0.5 * m.numel()
        diff = (out - image).abs()
        assert diff[m].mean() > 3 * diff[~m].mean()  # the change is where the mask says


def defects_photo():
    from anomaly_utils.data import texture_photo

    return texture_photo("brick")


def test_defect_module_lists_every_family():
    assert set(defects._TEST) == set(TEST_FAMILIES)


@pytest.mark.parametrize("family", TEST_FAMILIES)
@pytest.mark.parametrize("category", ["brick", "grass", "gravel"])
def test_test_defects_are_visible(family, category):
    """Visible to a person at 128 px: a clear change of grey level or structure over a region, not a faint trace."""
    from anomaly_utils.data import texture_photo

    photo = texture_photo(category)
    rng = np.random.default_rng(1)
    for _ in range(3):
        image = torch.from_numpy(photo[200:328, 200:328].copy())
        out, mask = apply_defect(family, image, photo, rng)
        m = mask.bool()
        assert int(m.sum()) >= 150  # at least ~12 x 12 pixels of defect at 128 px
        changed = (out - image).abs()[m]
        if family == "cutpaste":  # same mean and contrast by construction: only the structure changes,
            assert float(changed.mean()) > float(image[m].std())  # by more than the texture's own spread
        else:
            assert float(changed.mean()) > 0.1  # the defect changes its pixels by a tenth of the range on average


def test_cutpaste_keeps_mean_and_contrast_of_the_region():
    """Foreign texture is a *structural* defect: the pasted patch has the grey-level mean and spread of what it covers."""
    from anomaly_utils.data import texture_photo

    photo = texture_photo("grass")
    image = torch.from_numpy(photo[100:228, 100:228].copy())
    out, mask = apply_defect("cutpaste", image, photo, np.random.default_rng(3))
    m = mask.bool()
    assert abs(float(out[m].mean() - image[m].mean())) < 0.02
    assert abs(float(out[m].std() - image[m].std())) < 0.02
    assert float((out - image).abs()[m].mean()) > 0.1  # yet the pixels are not the same


# --------------------------------------------------------------------------- hardening (issue 22: the rest of the area)

@pytest.mark.parametrize("name", ["confetti_noise", "fcdd_confetti_noise", "smooth_blobs", "local_shuffle"])
def test_pseudo_anomalies_need_a_batch(name):
    fn = getattr(defects, name)
    with pytest.raises(ValueError, match=rf"{name} needs a float tensor \[N, C, H, W\].*images\[None\]"):
        fn(torch.rand(1, 32, 32))  # one image without its batch dimension: "not enough values to unpack" before


def test_local_shuffle_patch_must_fit_and_defects_take_one_grey_image():
    with pytest.raises(ValueError, match="patch must be a whole number from 1 to the image side"):
        defects.local_shuffle(torch.rand(2, 1, 4, 4), patch=8)  # silently shuffled nothing before
    with pytest.raises(ValueError, match=r"one grey float image \[H, W\].*image\[0\]"):
        defects.apply_defect("hole", torch.rand(1, 32, 32), None, np.random.default_rng(0))
    image, mask = defects.apply_defect("hole", torch.rand(32, 32).numpy(), None, np.random.default_rng(0))
    assert image.shape == mask.shape == (32, 32)  # a NumPy image is taken as a tensor
