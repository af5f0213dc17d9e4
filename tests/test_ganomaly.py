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


def test_generator_has_dcgan_initialisation():
    torch.manual_seed(0)
    G = GANomalyGenerator(32, nz=100, nc=1, ngf=16)
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))])
    assert w.std().item() == pytest.approx(0.02, rel=0.1)  # PyTorch's default conv init is ~2-7x wider here
    gamma = torch.cat([m.weight for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert gamma.std().item() == pytest.approx(0.02, rel=0.3)  # the default is exactly 1 (std 0)


class _ConstantD(torch.nn.Module):
    """A 'discriminator' whose logit is a constant c for every image (features: the image)."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(float(c)))

    def forward(self, x):
        return self.c.expand(len(x)), x


def test_discriminator_loss_is_halved_as_in_the_official_code():
    import math

    x = torch.rand(4, 1, 32, 32)
    # logit 0: BCE(real) = BCE(fake) = log 2; the official (BCE_real + BCE_fake) * 0.5 = log 2, not 2 log 2
    assert discriminator_loss(_ConstantD(0.0), x, x).item() == pytest.approx(math.log(2), rel=1e-6)
    # logit 2: BCE(real) = log(1 + e^-2), BCE(fake) = log(1 + e^2)
    expected = 0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(2)))
    assert discriminator_loss(_ConstantD(2.0), x, x).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_reset_uses_dcgan_initialisation():
    from anomaly_utils.lessons.ganomaly import reset_if_won

    D = Discriminator(32, 1, 16)
    for p in D.parameters():
        torch.nn.init.constant_(p, 5.0)
    assert reset_if_won(D, 1e-3) is False  # D has not won: untouched
    assert all(torch.all(p == 5.0) for p in D.parameters())
    torch.manual_seed(0)
    assert reset_if_won(D, 1e-6) is True  # loss below 1e-5: D starts afresh, DCGAN-style
    convs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in D.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    w = torch.cat([m.weight.flatten() for m in convs])
    assert w.std().item() == pytest.approx(0.02, rel=0.1)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    assert torch.cat([m.weight for m in bns]).mean().item() == pytest.approx(1.0, abs=0.01)


# ---------------------------------------------------------------- hardening: bad input gets a clear error


def _tiny(**kw):
    return GANomaly(**{**dict(isize=32, nz=8, ngf=4, ndf=4, epochs=1, batch_size=8), **kw})


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    return _tiny().fit(AnomalyDataset(torch.rand(16, 1, 28, 28), torch.zeros(16)))


def test_predict_before_fit_is_an_error_not_untrained_scores():
    with pytest.raises(RuntimeError, match="before fit"):
        _tiny().predict(torch.rand(2, 1, 28, 28))
    with pytest.raises(RuntimeError, match="before fit"):
        _tiny().scores(torch.rand(2, 1, 28, 28))


def test_images_larger_than_isize_are_refused_with_the_fix():
    # the convolutions would accept them silently (a grid of codes instead of one code)
    with pytest.raises(ValueError, match="larger than isize = 32.*isize=64"):
        _tiny().fit(AnomalyDataset(torch.rand(8, 1, 64, 64), torch.zeros(8)))


def test_predict_on_another_size_or_channel_count(fitted):
    with pytest.raises(ValueError, match="fitted on 28 x 28 images but predict got 64 x 64"):
        fitted.predict(torch.rand(2, 1, 64, 64))
    with pytest.raises(ValueError, match="fitted on 28 x 28 images but predict got 28 x 24"):
        fitted.predict(torch.rand(2, 1, 28, 24))
    with pytest.raises(ValueError, match="1-channel images but predict got 3 channels"):
        fitted.predict(torch.rand(2, 3, 28, 28))


def test_fit_refuses_another_channel_count_and_non_square_images():
    with pytest.raises(ValueError, match="nc=1.*3-channel"):
        _tiny().fit(AnomalyDataset(torch.rand(8, 3, 32, 32), torch.zeros(8)))
    with pytest.raises(ValueError, match="square"):
        _tiny().fit(AnomalyDataset(torch.rand(8, 1, 32, 24), torch.zeros(8)))


@pytest.mark.parametrize("kw, match", [(dict(isize=30), "isize must be a power of 2"), (dict(nz=0), "nz"),
                                       (dict(lr=-1e-3), "lr"), (dict(w_con=-1.0), "w_con"), (dict(epochs=0), "epochs"),
                                       (dict(batch_size=0), "batch_size"), (dict(score="residual"), "score"),
                                       (dict(nc=2.0), "nc"), (dict(seed=-1), "seed")])
def test_bad_arguments_are_refused_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kw)


def test_score_argument_selects_what_predict_returns(fitted):
    images = torch.rand(4, 1, 28, 28)
    s = fitted.scores(images)
    fitted.score = "contextual"
    try:
        assert torch.allclose(fitted.predict(images)[0], s["contextual"])
    finally:
        fitted.score = "latent"
    assert torch.allclose(fitted.predict(images)[0], s["latent"])


def test_an_images_score_does_not_depend_on_its_batch(fitted):
    # eval-mode batch norm (running statistics), unlike the official test(): one image alone or among others
    images = torch.rand(6, 1, 28, 28)
    together = fitted.scores(images)["latent"]
    alone = torch.cat([fitted.scores(images[i:i + 1])["latent"] for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-6)
    fitted.model.train()  # even if someone left the model in train mode, scores() switches to eval
    assert torch.allclose(fitted.scores(images[:1])["latent"], alone[:1], atol=1e-6)
