"""ELPV (real solar cells, image level): seeded, disjoint splits; uncertain cells kept apart; clear errors."""
import numpy as np
import pytest
import torch

from anomaly_utils.data import load_elpv


def _keys(ds):
    return {bytes(x.numpy().tobytes()) for x in (ds.images * 255).round().to(torch.uint8)}


@pytest.mark.parametrize("cell_type", ["mono", "poly"])
def test_splits_are_disjoint_and_labelled(cell_type):
    train, val = load_elpv(cell_type, size=32, split="val")
    _, test = load_elpv(cell_type, size=32, split="test")
    _, unc = load_elpv(cell_type, size=32, split="uncertain")
    assert train.labels.sum() == 0 and not train.has_masks and train.images.shape[1:] == (1, 32, 32)
    assert set(val.kinds) == set(test.kinds) == {"good", "defective"}
    assert set(unc.kinds) == {"good", "p=1/3", "p=2/3"}
    # the uncertain split's normal cells are the test split's
    assert torch.equal(unc.normal().images, test.normal().images)
    # no image in two of train / val / test (a few cells may be pixel-identical copies: compare counts)
    n = {"train": len(train), "val": len(val), "test": len(test)}
    assert len(train) > len(test.normal()) > len(val.normal()) > 50 and n["test"] > n["val"]
    tr, va, te = _keys(train), _keys(val), _keys(test)
    assert len(tr & va) + len(tr & te) + len(va & te) <= 2  # the package holds a handful of duplicate cells
    for ds in (val, test):
        ds.check_test_split()


def test_seeded_and_n_train():
    a, _ = load_elpv("mono", size=16, seed=0)
    b, _ = load_elpv("mono", size=16, seed=0)
    c, _ = load_elpv("mono", size=16, seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    small, _ = load_elpv("mono", size=16, n_train=10)
    assert torch.equal(small.images, a.images[:10])


@pytest.mark.parametrize("kwargs, match", [
    (dict(cell_type="cigs"), "mono"), (dict(split="train"), "split"), (dict(size=4), "size"),
    (dict(seed=-1), "seed"), (dict(seed=None), "seed"), (dict(n_train=0), "n_train"),
    (dict(n_train=100000), "n_train"),
])
def test_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_elpv(**{"size": 16, **kwargs})


def test_counts_match_the_package():
    _, unc_m = load_elpv("mono", size=16, split="uncertain")
    _, unc_p = load_elpv("poly", size=16, split="uncertain")
    assert int(unc_m.labels.sum()) == 117 + 56 and int(unc_p.labels.sum()) == 178 + 50
    assert np.isclose(len(load_elpv("mono", size=16)[0]) / 588, 0.60, atol=0.01)
