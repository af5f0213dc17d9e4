"""load_mnist(split="val"): a validation split that shares no image with the test split (lesson 01 chooses on it)."""

import pytest
import torch

from anomaly_utils import load_mnist


def _rows(ds):
    return {tuple(row.tolist()) for row in (ds.images.flatten(1) * 255).round().to(torch.uint8)}


@pytest.mark.parametrize("normal_class", [0, 7])
def test_val_split_is_disjoint_from_the_test_split(normal_class):
    train, test = load_mnist(normal_class)
    train_v, val = load_mnist(normal_class, split="val")
    assert val.name.endswith("/val") and test.name.endswith("/test")
    assert len(train_v) == len(train) - 100 and len(val) == len(test)  # 100 val normals out of the 400
    assert int((val.labels == 0).sum()) == 100 and int((val.labels == 1).sum()) == 900
    assert not _rows(val) & _rows(test)  # no val image is a test image (normal or anomalous)
    assert not _rows(val) & _rows(train_v)  # nor one the val model trains on
    assert _rows(train_v) <= _rows(train)  # the val model trains on part of the test model's training images
    assert sorted(set(val.kinds)) == [str(d) for d in range(10)]


def test_the_test_split_is_unchanged_by_the_new_argument():
    a_train, a_test = load_mnist(3)
    b_train, b_test = load_mnist(3, split="test")
    assert torch.equal(a_test.images, b_test.images) and torch.equal(a_train.images, b_train.images)


def test_val_split_errors():
    with pytest.raises(ValueError, match="split must be 'test' or 'val'"):
        load_mnist(0, split="train")
    with pytest.raises(ValueError, match="use a smaller n_test_normal"):
        load_mnist(0, n_train=50, n_test_normal=60, split="val")
