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
