"""Lesson 09 (knowledge distillation): the losses, masks and normalisations on hand-computed cases, the detectors'
interface (any size, grey or RGB, clear errors), and maps that find a planted defect."""

import math

import pytest
import torch
import torch.nn.functional as F

from anomaly_utils import distill, profiles
from anomaly_utils.data import AnomalyDataset
from anomaly_utils.lessons import knowledge_distillation as kd


def vec(*values):
    """One position with the given channel values: ``[1, C, 1, 1]``."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "CACHE_DIR", tmp_path / "cache")


# --------------------------------------------------------------------------- losses and maps, by hand

def test_normalized_distance_by_hand():
    t = vec(3.0, 4.0)  # t^ = (0.6, 0.8)
    assert kd.normalized_distance(t, vec(6.0, 8.0)).item() == pytest.approx(0.0, abs=1e-7)  # same direction, longer
    assert kd.normalized_distance(t, vec(4.0, -3.0)).item() == pytest.approx(1.0)  # perpendicular
    assert kd.normalized_distance(t, vec(-3.0, -4.0)).item() == pytest.approx(2.0)  # opposite
    # (1, 0) against (1, 1) / sqrt(2): 1/2 ((1 - 0.7071)^2 + 0.7071^2) = 1 - 0.7071
    assert kd.normalized_distance(vec(1.0, 0.0), vec(1.0, 1.0)).item() == pytest.approx(1 - 1 / math.sqrt(2))


def test_stfpm_loss_is_the_sum_over_stages_of_the_mean_over_positions():
    # stage 1: two positions with distances 0 and 2 (mean 1); stage 2: one position with distance 1
    t1 = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)  # positions (1, 0) and (1, 0)
    s1 = torch.tensor([[5.0, -2.0], [0.0, 0.0]]).view(1, 2, 1, 2)  # positions (5, 0) and (-2, 0)
    t2, s2 = vec(0.0, 2.0), vec(7.0, 0.0)
    assert kd.stfpm_loss([t1, t2], [s1, s2]).item() == pytest.approx(1.0 + 1.0)
    # the loss ignores the length of the feature vectors
    assert kd.stfpm_loss([t1], [3 * s1]).item() == pytest.approx(kd.stfpm_loss([t1], [s1]).item())


def test_cosine_loss_by_hand_and_equal_to_stfpm_distance():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # (1, 0), (0, 1)
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).view(1, 2, 1, 2)  # (1, 1), (1, 1): cos = 0.7071 at both
    m = kd.cosine_distance(t, s)
    assert m.shape == (1, 1, 2)
    assert torch.allclose(m, torch.full((1, 1, 2), 1 - 1 / math.sqrt(2)))
    assert kd.cosine_loss([t, vec(1.0, 0.0)], [s, vec(-1.0, 0.0)]).item() == pytest.approx(1 - 1 / math.sqrt(2) + 2.0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    assert torch.allclose(kd.cosine_distance(a, b), kd.normalized_distance(a, b), atol=1e-6)


def test_combine_maps_product_and_sum():
    a, b = torch.full((1, 2, 2), 2.0), torch.full((1, 4, 4), 3.0)
    assert torch.allclose(kd.combine_maps([a, b], (8, 8), "product"), torch.full((1, 8, 8), 6.0))
    assert torch.allclose(kd.combine_maps([a, b], (8, 6), "sum"), torch.full((1, 8, 6), 5.0))


def test_hard_feature_mask_and_loss_by_hand():
    d = torch.cat([torch.full((999,), 0.5), torch.tensor([9.0])])
    mask = kd.hard_feature_mask(d, 0.999)
    assert int(mask.sum()) == 1 and bool(mask[-1])
    assert kd.hard_feature_loss(d, 0.999).item() == pytest.approx(9.0)
    assert kd.hard_feature_loss(d, None).item() == pytest.approx((999 * 0.5 + 9.0) / 1000)
    d4 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # the 0.5-quantile is 2.5: the hard features are 3 and 4
    assert kd.hard_feature_mask(d4, 0.5).tolist() == [[False, False], [True, True]]
    assert kd.hard_feature_loss(d4, 0.5).item() == pytest.approx(3.5)
    # the gradient reaches only the hard features
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    kd.hard_feature_loss(x, 0.5).backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.5, 0.5]


def test_quantile_normalisation_by_hand():
    assert kd.quantile_normalize(torch.tensor([2.0, 6.0, 10.0, 0.0]), q_a=2.0, q_b=6.0).tolist() == \
        pytest.approx([0.0, 0.1, 0.2, -0.05])
    maps = torch.arange(1000, dtype=torch.float32).view(10, 10, 10)  # values 0 .. 999
    q_a, q_b = kd.map_quantiles(maps, 0.9, 0.995)
    assert q_a == pytest.approx(899.1) and q_b == pytest.approx(994.005)
    normed = kd.quantile_normalize(maps, q_a, q_b)
    assert float((normed > 0).float().mean()) == pytest.approx(0.1)
    assert float((normed > 0.1).float().mean()) == pytest.approx(0.005)


# --------------------------------------------------------------------------- plumbing

def test_penalty_images_are_not_the_texture_photos():
    assert not {"brick", "grass", "gravel"} & set(distill.PENALTY_PHOTOS)
    p = distill.penalty_images(5, (40, 56), channels=1, seed=3)
    assert p.shape == (5, 1, 40, 56) and 0 <= p.min() and p.max() <= 1
    assert torch.equal(p, distill.penalty_images(5, (40, 56), channels=1, seed=3))
    assert distill.penalty_images(2, 32, channels=3).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="channels"):
        distill.penalty_images(2, 32, channels=2)


def test_choose_step_by_hand():
    curves = {"a": [(10, 0.8, 0.9), (20, 0.9, 0.9), (30, 1.0, 0.8)],
              "b": [(10, 0.6, None), (20, 0.8, None), (30, 0.9, None)]}
    step, score = distill.choose_step(curves)
    assert score == pytest.approx({10: (0.85 + 0.6) / 2, 20: (0.9 + 0.8) / 2, 30: (0.9 + 0.9) / 2})
    assert step == 30
    assert distill.choose_step({"a": [(5, 0.7, 0.7), (9, 0.7, 0.7)]})[0] == 5  # a tie goes to the shorter training
    with pytest.raises(ValueError, match="other steps"):
        distill.choose_step({"a": [(5, 0.7, 0.7)], "b": [(6, 0.7, 0.7)]})


def test_map_contrast_by_hand():
    maps = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[4.0, 1.0], [1.0, 1.0]]])
    masks = torch.tensor([[[0, 0], [0, 0]], [[1, 0], [0, 0]]])
    assert distill.map_contrast(maps, masks, torch.tensor([0, 1])) == pytest.approx(4.0)


def test_match_size_and_random_crops():
    x = torch.rand(3, 2, 5, 7)
    assert distill.match_size(x, (5, 7)) is x
    assert distill.match_size(x, (4, 8)).shape == (3, 2, 4, 8)
    g = torch.Generator().manual_seed(0)
    assert distill.random_crops(torch.rand(4, 1, 50, 70), 32, g).shape == (4, 1, 32, 32)
    assert distill.random_crops(torch.rand(4, 1, 50, 20), 32, g).shape == (4, 1, 32, 20)
    assert distill.random_crops(x, None, g) is x


# --------------------------------------------------------------------------- detectors

def dataset(images):
    return AnomalyDataset(images, torch.zeros(len(images)), None, ["good"] * len(images), "tiny/train")


def small(name, **kw):
    base = dict(steps=2, batch_size=2, snapshots=(1, 2), use_cache=False)
    if name == "STFPM":
        return kd.STFPM(crop=None, **base, **kw)
    if name == "RD":
        return kd.ReverseDistillation(embedding_channels=8, width=4, **base, **kw)
    if name == "EfficientAD":
        return kd.EfficientAD(width=4, crop=32, **base, **kw)
    return kd.StudentTeacher(n_students=2, width=4, crop=None, **base, **kw)


@pytest.mark.parametrize("name", ["STFPM", "RD", "EfficientAD", "StudentTeacher"])
def test_detectors_any_size_grey_or_rgb(name):
    torch.manual_seed(0)
    for channels in (1, 3):
        det = small(name).fit(dataset(torch.rand(6, channels, 48, 64)))
        for size in [(48, 64), (57, 83), (130, 97), (33, 40)]:
            scores, maps = det.predict(torch.rand(2, channels, *size))
            assert scores.shape == (2,) and maps.shape == (2, *size) and torch.isfinite(maps).all()
        other = 3 if channels == 1 else 1
        with pytest.raises(ValueError, match="channels"):
            det.predict(torch.rand(1, other, 48, 64))
        det.restore(1)
        with pytest.raises(ValueError, match="snapshots"):
            det.restore(7)


@pytest.mark.parametrize("name", ["STFPM", "RD", "EfficientAD"])
def test_predict_before_fit_is_a_clear_error(name):
    with pytest.raises(RuntimeError, match="before fit"):
        small(name).predict(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("make, match", [
    (lambda: kd.STFPM(steps=0), "steps"),
    (lambda: kd.STFPM(crop=16), "crop"),
    (lambda: kd.STFPM(combine="max"), "combine"),
    (lambda: kd.STFPM(steps=10, snapshots=(5, 20)), "snapshots"),
    (lambda: kd.STFPM(lr=0), "lr"),
    (lambda: kd.ReverseDistillation(embedding_channels=0), "embedding_channels"),
    (lambda: kd.ReverseDistillation(batch_size=1.5), "batch_size"),
    (lambda: kd.EfficientAD(q_hard=1.5), "q_hard"),
    (lambda: kd.EfficientAD(penalty=-1), "penalty"),
    (lambda: kd.EfficientAD(val_fraction=0), "val_fraction"),
    (lambda: kd.StudentTeacher(n_students=0), "n_students"),
])
def test_bad_arguments_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_efficientad_needs_two_training_images_and_normalises_its_maps():
    with pytest.raises(ValueError, match="at least 2"):
        small("EfficientAD").fit(dataset(torch.rand(1, 1, 32, 32)))
    det = small("EfficientAD").fit(dataset(torch.rand(10, 1, 32, 32)))
    assert len(det.normal_images) == 1  # 10 % of 10 held out for q_a and q_b
    _, raw = kd.StudentTeacher.predict(det, det.normal_images)
    _, normed = det.predict(det.normal_images)
    assert torch.allclose(normed, kd.quantile_normalize(raw, det.q_a, det.q_b))


def test_training_goes_through_the_cache():
    images = torch.rand(4, 1, 32, 32)
    first = kd.ReverseDistillation(steps=2, batch_size=2, embedding_channels=8, width=4, snapshots=(1, 2)).fit(dataset(images))
    again = kd.ReverseDistillation(steps=2, batch_size=2, embedding_channels=8, width=4, snapshots=(1, 2)).fit(dataset(images))
    assert not first.from_cache and again.from_cache
    assert sorted(again.history["snapshots"]) == [1, 2]
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(first.predict(x)[1], again.predict(x)[1])
    other = kd.ReverseDistillation(steps=2, batch_size=2, embedding_channels=8, width=4, snapshots=(1, 2)).fit(
        dataset(images.flip(-1)))
    assert not other.from_cache  # other images, another cache entry


def smooth_texture(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(n, 1, size + 6, size + 6, generator=g), 7, stride=1)
    return (0.5 + 2.0 * (x - 0.5)).clamp(0, 1)


@pytest.mark.parametrize("name", ["RD", "EfficientAD"])
def test_map_is_highest_on_a_planted_defect(name):
    """Trained briefly on a smooth grey texture, the map peaks inside a planted black square."""
    torch.manual_seed(0)
    train = dataset(smooth_texture(24, 64, seed=0))
    if name == "RD":
        det = kd.ReverseDistillation(embedding_channels=32, width=8, steps=60, batch_size=8, use_cache=False)
    else:
        det = kd.EfficientAD(width=8, steps=80, batch_size=8, crop=None, penalty=0.0, use_cache=False)
    det.fit(train)
    test = smooth_texture(4, 64, seed=1)
    y0, x0 = 36, 14
    test[:, :, y0:y0 + 12, x0:x0 + 12] = 0.0  # a 12 x 12 black square
    scores, maps = det.predict(test)
    clean_scores, _ = det.predict(smooth_texture(4, 64, seed=2))
    for m in maps:
        y, x = divmod(int(m.argmax()), m.shape[1])
        assert y0 - 4 <= y < y0 + 16 and x0 - 4 <= x < x0 + 16, (y, x)
    assert scores.min() > clean_scores.max()
