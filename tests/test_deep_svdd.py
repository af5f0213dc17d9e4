"""Unit tests of lesson 01's exported code (anomaly_utils.lessons.deep_svdd)."""

import pytest
import torch

from anomaly_utils.data import AnomalyDataset
from anomaly_utils.lessons.deep_svdd import (
    DeepSVDD,
    LeNetDecoder,
    LeNetEncoder,
    init_center,
    one_class_loss,
    radius_from_distances,
    soft_boundary_loss,
    svdd_epoch,
)


def _train_set(n=48, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = 0.2 + 0.1 * torch.rand(n, 1, size, size, generator=g)
    return AnomalyDataset(images, torch.zeros(n))


def test_one_class_loss_is_mean_distance():
    dist = torch.tensor([0.5, 1.0, 4.5])
    assert one_class_loss(dist).item() == pytest.approx(2.0)


def test_soft_boundary_loss_formula():
    dist = torch.tensor([0.5, 2.0, 3.0])  # squared distances
    R = torch.tensor(1.0)
    # R^2 + 1/(nu n) * sum max(0, d - R^2) = 1 + (0 + 1 + 2) / (0.5 * 3)
    assert soft_boundary_loss(dist, R, nu=0.5).item() == pytest.approx(3.0)
    assert soft_boundary_loss(torch.tensor([0.1, 0.2]), R, nu=0.1).item() == pytest.approx(1.0)  # all inside


def test_radius_is_quantile_of_distances():
    dist = torch.arange(1, 101, dtype=torch.float32) ** 2  # distances 1..100
    R = radius_from_distances(dist, nu=0.1)
    assert R.item() == pytest.approx(torch.quantile(torch.arange(1, 101, dtype=torch.float32), 0.9).item())
    inside = (dist.sqrt() <= R).float().mean().item()
    assert inside == pytest.approx(0.9, abs=0.02)


def test_init_center_pushes_small_coordinates_away_from_zero():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.5, 0.01, -0.02, -1.0]]).expand(len(x), 4)

    c = init_center(Fixed(), torch.zeros(3, 1, 4, 4), eps=0.1)
    assert torch.allclose(c, torch.tensor([0.5, 0.1, -0.1, -1.0]))


def test_encoder_is_bias_free_and_maps_zero_to_zero():
    net = LeNetEncoder(1, 28, (8, 4), 32, bias=False).eval()
    assert not any("bias" in name for name, _ in net.named_parameters())
    assert torch.allclose(net(torch.zeros(2, 1, 28, 28)), torch.zeros(2, 32))
    with_bias = LeNetEncoder(1, 28, (8, 4), 32, bias=True)
    assert any("bias" in name for name, _ in with_bias.named_parameters())


def test_decoder_shape():
    dec = LeNetDecoder(1, 28, (8, 4), 32)
    assert dec(torch.randn(3, 32)).shape == (3, 1, 28, 28)


@pytest.mark.parametrize("objective", ["one-class", "soft-boundary"])
def test_fit_predict_through_detector_interface(objective):
    train = _train_set()
    det = DeepSVDD(objective, nu=0.1, epochs=6, pretrain_epochs=1, progress=False).fit(train)
    scores, maps = det.predict(train.images)
    assert scores.shape == (len(train),) and maps is None and torch.isfinite(scores).all()
    assert len(det.history["loss"]) == 6 and det.history["loss"][-1] < det.history["loss"][0]
    assert scores.std() > 0  # a working (not collapsed) network tells its inputs apart
    if objective == "soft-boundary":  # R is the (1 - nu)-quantile: about nu of the training set outside
        assert 0.0 < (scores > 0).float().mean().item() <= 0.2


def test_learn_center_makes_c_a_parameter():
    det = DeepSVDD(epochs=1, learn_center=True, progress=False).fit(_train_set(16))
    assert isinstance(det.c, torch.nn.Parameter)


def test_unknown_objective_raises():
    with pytest.raises(ValueError):
        DeepSVDD("hard-boundary")


def test_leaky_relu_slope_is_the_official_0_01():
    # the official code (lukasruff/Deep-SVDD-PyTorch) uses F.leaky_relu with its default slope 0.01
    net = LeNetEncoder(1, 28, (8, 4), 32)
    slopes = [m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert slopes == [0.01, 0.01]
    x = torch.tensor([-2.0, 3.0])
    assert torch.allclose(net.features[2](x), torch.tensor([-0.02, 3.0]))
    dec = LeNetDecoder(1, 28, (8, 4), 32)
    assert [m.negative_slope for m in dec.modules() if isinstance(m, torch.nn.LeakyReLU)] == [0.01]


# ---------------------------------------------------------------- bad input: clear errors instead of NaN or torch errors
@pytest.mark.parametrize("nu", [0, -0.1, 1.5, float("nan"), "0.1"])
def test_nu_outside_0_1_is_refused(nu):
    with pytest.raises(ValueError, match=r"nu .* must be a number in \(0, 1\]"):  # nu = 0 gave NaN losses and scores
        DeepSVDD("soft-boundary", nu=nu)


@pytest.mark.parametrize("kwargs, name", [
    (dict(epochs=0), "epochs"), (dict(epochs=2.5), "epochs"), (dict(batch_size=0), "batch_size"),
    (dict(rep_dim=0), "rep_dim"), (dict(channels=()), "channels"), (dict(channels=(8, 0)), r"channels\[1\]"),
    (dict(channels=8), "channels"), (dict(lr=0), "lr"), (dict(lr=-1e-3), "lr"), (dict(weight_decay=-1), "weight_decay"),
    (dict(pretrain_epochs=-1), "pretrain_epochs"), (dict(eps=0), "eps"), (dict(radius_update="never"), "radius_update"),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DeepSVDD(**kwargs)


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before fit"):
        DeepSVDD().predict(torch.rand(2, 1, 28, 28))


def test_other_size_or_channels_than_fit_are_clear_errors():
    det = DeepSVDD(epochs=1, progress=False).fit(_train_set(16))
    with pytest.raises(ValueError, match="fitted on 28 x 28 images but predict got 32 x 32"):
        det.predict(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="fitted on 1-channel images but predict got 3"):
        det.predict(torch.rand(2, 3, 28, 28))


def test_too_few_or_too_small_training_images_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2 training images"):
        DeepSVDD(epochs=1, progress=False).fit(_train_set(1))
    with pytest.raises(ValueError, match="at least 8 px per side"):  # three pooling blocks
        DeepSVDD(channels=(4, 4, 4), epochs=1, progress=False).fit(_train_set(8, size=6))


@pytest.mark.parametrize("pretrain_epochs", [0, 1])
def test_non_square_and_odd_sized_images_train_and_score(pretrain_epochs):
    g = torch.Generator().manual_seed(0)
    train = AnomalyDataset(torch.rand(12, 1, 30, 44, generator=g), torch.zeros(12))  # 30 is not divisible by 4
    det = DeepSVDD(epochs=2, pretrain_epochs=pretrain_epochs, progress=False).fit(train)
    scores, _ = det.predict(torch.rand(3, 1, 30, 44))
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert LeNetDecoder(1, (30, 44), (8, 4), 32)(torch.randn(2, 32)).shape == (2, 1, 30, 44)


def test_official_radius_update_is_the_quantile_of_each_mini_batch():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(net.weight)  # phi(x) = x, and lr = 0 keeps it so
    images = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])  # distances to c = 0: 1..5
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    loss, R = svdd_epoch(net, images, torch.zeros(1), opt, "soft-boundary", torch.tensor(0.0), nu=0.25,
                         update_R=True, batch_size=5)
    assert loss == pytest.approx((1 + 4 + 9 + 16 + 25) / 5 / 0.25)  # R = 0 during the batch: R^2 + mean(d^2) / nu
    assert R.item() == pytest.approx(4.0)  # then R = the 0.75-quantile of the distances 1..5
    _, R_kept = svdd_epoch(net, images, torch.zeros(1), opt, "soft-boundary", torch.tensor(0.5), nu=0.25,
                           update_R=False, batch_size=5)
    assert R_kept.item() == 0.5  # without update_R, R is left alone (this lesson's default: once per epoch)


def test_batch_radius_update_trains_a_working_detector():
    det = DeepSVDD("soft-boundary", nu=0.2, epochs=4, batch_size=16, radius_update="batch", progress=False)
    scores, _ = det.fit(_train_set(48)).predict(_train_set(48).images)
    assert det.R.item() > 0 and torch.isfinite(scores).all() and (scores > 0).float().mean().item() <= 0.5


# ---------------------------------------------------------------- lesson 01's plumbing (anomaly_utils.svdd_support)
def test_normal_rank_is_the_fraction_of_normal_scores_below_ties_half():
    from anomaly_utils.svdd_support import normal_rank

    ranks = normal_rank([0.0, 2.0, 5.0, 2.5], normal_scores=[4.0, 1.0, 3.0, 2.0])
    assert ranks.tolist() == [0.0, 0.375, 1.0, 0.5]
    with pytest.raises(ValueError, match="at least one normal"):
        normal_rank([1.0], [])


def test_argcheck_messages_name_the_argument():
    from anomaly_utils import argcheck

    assert argcheck.whole("epochs", 3) == 3 and argcheck.wholes("channels", [8, 4]) == (8, 4)
    assert argcheck.real("nu", 1, 0, 1, low_open=True) == 1.0
    with pytest.raises(ValueError, match=r"nu \(the fraction\) must be a number in \(0, 1\], got 0"):
        argcheck.real("nu", 0, 0, 1, low_open=True, why="the fraction")
    with pytest.raises(ValueError, match="objective must be one of 'a', 'b'; got 'c'"):
        argcheck.choice("objective", "c", ("a", "b"))
