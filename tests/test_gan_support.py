"""The plumbing of lessons 03 and 04 (anomaly_utils.gan_support): cached fitting, balanced subsets, AUROC by kind."""

import pytest
import torch

import anomaly_utils.profiles as profiles
from anomaly_utils import AnomalyDataset
from anomaly_utils.gan_support import auroc_against_normal, balanced_subset, cached_fit, print_table


class _Counting:
    """A detector whose fit counts its calls and sets its one weight to the training images' mean."""

    def __init__(self):
        self.model, self.fits = torch.nn.Linear(1, 1, bias=False), 0

    def fit(self, train, scale=1.0):
        self.fits += 1
        with torch.no_grad():
            self.model.weight.fill_(float(train.images.mean()) * scale)
        self.history = {"fits": self.fits}
        return self

    def predict(self, images):
        from anomaly_utils.detector import check_input

        images = check_input(self, images)
        return images.flatten(1).mean(1) * self.model.weight.item(), None


def test_cached_fit_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "CACHE_DIR", tmp_path)
    monkeypatch.delenv("AD_NO_CACHE", raising=False)
    train = AnomalyDataset(torch.full((4, 1, 8, 8), 0.5), torch.zeros(4))
    a, _ = cached_fit(_Counting(), "toy", {"k": 1}, train, scale=2.0)
    assert a.fits == 1 and not a.from_cache and "train_seconds" in a.history
    b, seconds = cached_fit(_Counting(), "toy", {"k": 1}, train, scale=2.0)
    assert b.fits == 0 and b.from_cache and seconds == a.history["train_seconds"]
    assert b.model.weight.item() == pytest.approx(1.0)  # the weight fit computed (0.5 * 2), loaded
    assert b.predict(torch.ones(2, 1, 8, 8))[0].shape == (2,)  # fitted as far as predict's input check goes
    with pytest.raises(ValueError, match="fitted on 8 x 8"):
        b.predict(torch.ones(2, 1, 16, 16))
    other = AnomalyDataset(torch.full((4, 1, 8, 8), 0.25), torch.zeros(4))  # other pixels: another key
    assert not cached_fit(_Counting(), "toy", {"k": 1}, other)[0].from_cache


def test_balanced_subset():
    labels = torch.tensor([0] * 10 + [1] * 3)
    ds = AnomalyDataset((torch.arange(13.0) / 13).view(13, 1, 1, 1).expand(13, 1, 8, 8).clone(), labels)
    sub = balanced_subset(ds, 4, seed=0)
    assert int((sub.labels == 0).sum()) == 4 and int((sub.labels == 1).sum()) == 3  # all 3 anomalies
    values = sub.images[:, 0, 0, 0].tolist()
    assert values == sorted(values)  # the data set's order is kept
    assert torch.equal(balanced_subset(ds, 4, seed=0).images, sub.images)  # seeded
    assert balanced_subset(ds, None) is ds


def test_auroc_against_normal_by_hand():
    scores = [0.0, 1.0, 2.0, 3.0, 0.5, -1.0]
    kinds = ["good", "good", "a", "a", "b", "b"]
    out = auroc_against_normal(scores, kinds)
    assert out == {"a": pytest.approx(1.0), "b": pytest.approx(0.25)}  # b: only 0.5 > 0 of the four pairs


def test_print_table(capsys):
    print_table(["x", "v"], [["a", 0.12345], ["b", None]])
    assert capsys.readouterr().out.splitlines() == ["| x | v |", "|---|---|", "| a | 0.123 |", "| b | – |"]
