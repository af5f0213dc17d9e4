"""Unit tests of lesson 04's exported code (anomaly_utils.lessons.ganomaly)."""

import pytest
import torch

from anomaly_utils import AnomalyDataset
from anomaly_utils.lessons.anogan import Discriminator
from anomaly_utils.lessons.ganomaly import (
    GANomaly,
    GANomalyGenerator,
    discriminator_loss,
    generator_losses,
    train_ganomaly,
)


@pytest.mark.parametrize("isize", [32, 64])
def test_generator_shapes(isize):
    G = GANomalyGenerator(isize, nz=10, nc=1, ngf=4)
    x_hat, z, z_hat = G(torch.rand(3, 1, isize, isize))
    assert x_hat.shape == (3, 1, isize, isize)
    assert z.shape == (3, 10) and z_hat.shape == (3, 10)


def test_losses_vanish_for_a_perfect_generator():
    torch.manual_seed(0)
    D = Discriminator(32, 1, 4).eval()
    x, z = torch.rand(4, 1, 32, 32), torch.randn(4, 10)
    losses = generator_losses(D, x, x.clone(), z, z.clone())
    for k in ("loss", "adv", "con", "enc"):
        assert losses[k].item() == pytest.approx(0.0, abs=1e-7)


def test_loss_terms_and_weights():
    torch.manual_seed(0)
    D = Discriminator(32, 1, 4).eval()
    x, z = torch.rand(4, 1, 32, 32), torch.randn(4, 10)
    losses = generator_losses(D, x, x + 0.1, z, z + 2.0, w_adv=1, w_con=50, w_enc=1)
    assert losses["con"].item() == pytest.approx(0.1, rel=1e-4)  # L1, mean over pixels
    assert losses["enc"].item() == pytest.approx(4.0, rel=1e-4)  # squared L2, mean over coordinates
    assert losses["adv"].item() > 0  # D's features see the shift
    total = losses["adv"] + 50 * losses["con"] + losses["enc"]
    assert losses["loss"].item() == pytest.approx(total.item(), rel=1e-5)
    other = generator_losses(D, x, x + 0.1, z, z + 2.0, w_adv=0, w_con=1, w_enc=0)
    assert other["loss"].item() == pytest.approx(0.1, rel=1e-4)


def test_discriminator_loss_does_not_train_the_generator():
    D = Discriminator(32, 1, 4)
    x_hat = torch.rand(4, 1, 32, 32, requires_grad=True)
    discriminator_loss(D, torch.rand(4, 1, 32, 32), x_hat).backward()
    assert x_hat.grad is None
    assert any(p.grad is not None for p in D.parameters())


def test_training_lowers_the_contextual_loss():
    torch.manual_seed(0)
    G, D = GANomalyGenerator(32, 8, 1, 4), Discriminator(32, 1, 4)
    images = torch.zeros(32, 1, 32, 32)
    images[:, :, 8:24, 12:20] = 1.0  # one simple "normal" shape
    h = train_ganomaly(G, D, images, epochs=4, batch_size=8, lr=2e-3, monitor=lambda G: 1.0)
    assert h["con"][-1] < h["con"][0]
    assert h["monitor"] == [1.0] * 4
    assert not G.training


def test_detector_interface_and_scores():
    torch.manual_seed(0)
    det = GANomaly(isize=32, nz=8, ngf=4, ndf=4, epochs=1, batch_size=8)
    det.fit(AnomalyDataset(torch.rand(16, 1, 28, 28), torch.zeros(16)))
    images = torch.rand(5, 1, 28, 28)
    score, amap = det.predict(images)
    assert score.shape == (5,) and amap.shape == (5, 28, 28)
    s = det.scores(images)
    # the score is ||z - z_hat||^2 / nz, recomputed by hand; no search: predict is deterministic
    from anomaly_utils.lessons.anogan import pad_to
    with torch.no_grad():
        _, z, z_hat = det.model["G"](pad_to(images, 32))
    assert torch.allclose(s["latent"], (z - z_hat).pow(2).mean(1), atol=1e-6)
    assert torch.allclose(det.predict(images)[0], score)
    assert s["contextual"].shape == (5,) and s["x_hat"].shape == (5, 1, 28, 28)
