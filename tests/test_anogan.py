"""Unit tests of lesson 03's exported code (anomaly_utils.lessons.anogan)."""

import pytest
import torch
import torch.nn as nn

from anomaly_utils import AnomalyDataset
from anomaly_utils.lessons.anogan import (
    AnoGAN,
    Discriminator,
    Generator,
    anogan_energy,
    crop_to,
    latent_search,
    pad_to,
    train_dcgan,
)


@pytest.mark.parametrize("isize", [32, 64])
def test_network_shapes(isize):
    G, D = Generator(isize, nz=8, nc=1, ngf=4), Discriminator(isize, nc=1, ndf=4)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, 1, isize, isize)
    assert 0 <= x.min() and x.max() <= 1  # sigmoid output, like the data
    logit, f = D(x)
    assert logit.shape == (3,)
    assert f.shape[0] == 3 and f.shape[-2:] == (4, 4)


def test_pad_crop_roundtrip():
    x = torch.rand(2, 1, 28, 28)
    p = pad_to(x, 32)
    assert p.shape == (2, 1, 32, 32)
    assert torch.equal(crop_to(p[:, 0], 28), x[:, 0])
    assert pad_to(x, 28) is x


def test_energy_terms_and_lambda():
    x = torch.zeros(2, 1, 4, 4)
    f = torch.zeros(2, 3, 2, 2)
    assert torch.allclose(anogan_energy(x, x, f, f), torch.zeros(2))
    # residual only: L_R = 16 per image, weighted by 1 - lambda
    assert torch.allclose(anogan_energy(x, x + 1, f, f, lam=0.1), torch.full((2,), 0.9 * 16))
    # discrimination only: L_D = 12 per image (an L1 sum), weighted by lambda
    assert torch.allclose(anogan_energy(x, x, f, f - 1, lam=0.1), torch.full((2,), 0.1 * 12))
    # per-image: changing image 1 leaves image 0's energy alone
    x_gen = x.clone()
    x_gen[1] += 0.5
    e = anogan_energy(x, x_gen, f, f)
    assert e[0] == 0 and e[1] > 0


class _PixelG(nn.Module):
    """A 'generator' that can draw any image exactly: G(z) = z reshaped (nz = number of pixels)."""

    def __init__(self, side=6):
        super().__init__()
        self.nz, self.side = side * side, side

    def forward(self, z):
        return z.view(len(z), 1, self.side, self.side)


class _PixelD(nn.Module):
    def forward(self, x):
        return x.flatten(1).sum(1), x  # features f_D(x) = x


def test_latent_search_reduces_energy_with_a_dcgan():
    torch.manual_seed(0)
    G, D = Generator(32, 8, 1, 4).eval(), Discriminator(32, 1, 4).eval()
    x = torch.rand(3, 1, 32, 32)
    _, energy, trace = latent_search(G, D, x, n_iter=30, lr=0.1, track=True)
    assert trace.shape == (30, 3)
    assert (energy < trace[0]).all()  # every image's energy went down
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in G.parameters())  # G untouched


def test_exact_generator_gives_near_zero_score():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 6, 6)
    _, energy, trace = latent_search(_PixelG(), _PixelD(), x, n_iter=300, lr=0.05, track=True)
    assert (energy < 0.05 * trace[0]).all()
    assert energy.max() < 1.0  # summed over 36 pixels: a mean error below ~0.03


def test_anogan_detector_interface():
    torch.manual_seed(0)
    images = torch.rand(16, 1, 28, 28) * 0.1
    det = AnoGAN(isize=32, nz=8, ngf=4, ndf=4, epochs=1, batch_size=8, n_iter=3).fit(AnomalyDataset(images, torch.zeros(16)))
    assert set(det.history) >= {"loss_d", "loss_g", "d_real", "d_fake", "snapshots"}
    with torch.no_grad():  # evaluate() calls predict under no_grad: the search must still work
        score, amap = det.predict(torch.rand(5, 1, 28, 28))
    assert score.shape == (5,) and amap.shape == (5, 28, 28)
    assert torch.isfinite(score).all() and (amap >= 0).all()


def test_train_dcgan_history_is_finite():
    torch.manual_seed(0)
    G, D = Generator(32, 8, 1, 4), Discriminator(32, 1, 4)
    h = train_dcgan(G, D, torch.rand(16, 1, 32, 32), epochs=2, batch_size=8, n_snapshots=2)
    assert len(h["loss_d"]) == 2 and len(h["snapshots"]) == 2
    assert all(torch.isfinite(torch.tensor(h[k])).all() for k in ("loss_d", "loss_g"))
    assert not G.training and not D.training  # returned in eval mode, ready for the search


def _conv_and_bn(module):
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    return convs, bns


@pytest.mark.parametrize("make", [lambda: Generator(32, 64, 1, 16), lambda: Discriminator(32, 1, 16)])
def test_dcgan_initialisation(make):
    # DCGAN / official GANomaly weights_init: conv ~ N(0, 0.02), batch norm weight ~ N(1, 0.02), bias 0.
    # PyTorch's default would fail: Kaiming-uniform convs (std ~0.03-0.14 here) and batch norm weight exactly 1.
    torch.manual_seed(0)
    convs, bns = _conv_and_bn(make())
    assert convs and bns
    w = torch.cat([m.weight.flatten() for m in convs])
    assert abs(w.mean().item()) < 0.002 and w.std().item() == pytest.approx(0.02, rel=0.1)
    gamma = torch.cat([m.weight for m in bns])
    assert gamma.mean().item() == pytest.approx(1.0, abs=0.01) and gamma.std().item() == pytest.approx(0.02, rel=0.3)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)


def test_dcgan_weights_init_by_hand():
    from anomaly_utils.lessons.anogan import dcgan_weights_init

    torch.manual_seed(0)
    conv, bn, lin = nn.Conv2d(64, 64, 4, bias=True), nn.BatchNorm2d(4096), nn.Linear(3, 3)
    for m in (conv, bn):
        nn.init.constant_(m.weight, 5.0), nn.init.constant_(m.bias, 5.0)
    lin_before = lin.weight.clone()
    for m in (conv, bn, lin):
        dcgan_weights_init(m)
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.05) and abs(conv.weight.mean().item()) < 0.001
    assert torch.equal(conv.bias, torch.zeros(64))
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.002) and bn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(bn.bias, torch.zeros(4096))
    assert torch.equal(lin.weight, lin_before)  # other layers are left alone


# ---------------------------------------------------------------- hardening: bad input gets a clear error


def _tiny(**kw):
    return AnoGAN(**{**dict(isize=32, nz=4, ngf=4, ndf=4, epochs=1, batch_size=8, n_iter=2), **kw})


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    return _tiny().fit(AnomalyDataset(torch.rand(8, 1, 28, 28), torch.zeros(8)))


def test_predict_before_fit_is_an_error_not_untrained_scores():
    with pytest.raises(RuntimeError, match="before fit"):
        _tiny().predict(torch.rand(2, 1, 28, 28))


def test_predict_on_another_size_or_channel_count(fitted):
    with pytest.raises(ValueError, match="fitted on 28 x 28 images but predict got 32 x 32"):
        fitted.predict(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="fitted on 28 x 28 images but predict got 28 x 20"):
        fitted.predict(torch.rand(2, 1, 28, 20))  # not square
    with pytest.raises(ValueError, match="1-channel images but predict got 3 channels"):
        fitted.predict(torch.rand(2, 3, 28, 28))
    score, amap = fitted.predict(torch.rand(2, 1, 28, 28))  # the training size still works
    assert score.shape == (2,) and amap.shape == (2, 28, 28)


@pytest.mark.parametrize("shape, match", [((4, 1, 28, 20), "needs square images, got 28 x 20"),
                                          ((4, 1, 64, 64), "larger than isize = 32.*isize=64"),
                                          ((4, 1, 40, 40), "larger than isize = 32.*isize=64"),
                                          ((4, 3, 28, 28), "nc=1.*3-channel")])
def test_fit_refuses_images_it_cannot_model(shape, match):
    with pytest.raises(ValueError, match=match):
        _tiny().fit(AnomalyDataset(torch.rand(*shape), torch.zeros(shape[0])))


def test_pad_to_errors():
    with pytest.raises(ValueError, match="square"):
        pad_to(torch.rand(1, 1, 30, 28), 32)
    with pytest.raises(ValueError, match="larger than isize"):
        pad_to(torch.rand(1, 1, 33, 33), 32)


@pytest.mark.parametrize("kw, match", [(dict(isize=28), "isize must be a power of 2"),
                                       (dict(isize=4), "isize must be a power of 2"),
                                       (dict(lam=1.5), "lam"), (dict(lam=-0.1), "lam"),
                                       (dict(n_iter=0), "n_iter"), (dict(lr=0.0), "lr"),
                                       (dict(search_lr=-1.0), "search_lr"), (dict(batch_size=0), "batch_size"),
                                       (dict(nz=0), "nz"), (dict(epochs=2.5), "epochs"), (dict(seed=-1), "seed"),
                                       (dict(nc=0), "nc")])
def test_bad_arguments_are_refused_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        _tiny(**kw)


def test_dcgan_builders_refuse_a_size_that_is_not_a_power_of_two():
    from anomaly_utils.lessons.anogan import dcgan_decoder, dcgan_encoder

    with pytest.raises(ValueError, match="power of 2"):
        dcgan_encoder(28, 1, 4, 8)
    with pytest.raises(ValueError, match="power of 2"):
        dcgan_decoder(48, 8, 1, 4)
