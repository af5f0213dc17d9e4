"""Unit tests of lesson 05's exported code: SSIM, the ELBO, the autoencoder and its detector."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from anomaly_utils import AnomalyDataset, evaluate
from anomaly_utils.lessons.autoencoders import (
    ConvAutoencoder,
    ReconstructionDetector,
    box_blur,
    elbo_terms,
    gaussian_window,
    real_config,
    ssim,
    ssim_loss,
    ssim_map,
    texture_config,
)


def _images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish random images in [0, 1]
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def test_gaussian_window_is_normalised_and_symmetric():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11)
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.allclose(w, w.T) and torch.allclose(w, w.flip(0))
    assert w[5, 5] == w.max()


@pytest.mark.parametrize("gaussian", [True, False])
def test_ssim_of_identical_images_is_one(gaussian):
    x = _images()
    s = ssim(x, x, window_size=7, gaussian=gaussian)
    assert s.shape == (2,)
    assert torch.allclose(s, torch.ones(2), atol=1e-5)
    assert ssim_loss(x, x, window_size=7).abs() < 1e-5


def test_ssim_decreases_with_noise():
    x = _images(1)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    values = [ssim(x, (x + s * noise).clamp(0, 1), window_size=7).item() for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.5


def test_ssim_map_shape_and_range():
    x, y = _images(2, 32, 0), _images(2, 32, 1)
    m = ssim_map(x, y, window_size=11)
    assert m.shape == x.shape
    assert (m <= 1 + 1e-5).all() and (m >= -1 - 1e-5).all()


def test_ssim_matches_skimage_with_a_uniform_window():
    x, y = _images(1, 48, 0), _images(1, 48, 1)
    y = 0.7 * x + 0.3 * y
    win = 7
    ours = ssim_map(x, y, window_size=win, gaussian=False)[0, 0]
    pad = win // 2
    ours = ours[pad:-pad, pad:-pad].mean().item()  # skimage averages the map without its borders
    ref = structural_similarity(x[0, 0].numpy(), y[0, 0].numpy(), win_size=win, data_range=1.0,
                                use_sample_covariance=False)
    assert abs(ours - ref) < 1e-3, (ours, ref)


def test_elbo_terms():
    x = _images(3)
    mu, logvar = torch.zeros(3, 5), torch.zeros(3, 5)
    rec, kl = elbo_terms(x, x, mu, logvar)
    assert rec.shape == kl.shape == (3,)
    assert torch.allclose(rec, torch.zeros(3)) and torch.allclose(kl, torch.zeros(3))
    # KL against torch.distributions
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3, 5), torch.ones(3, 5))
    _, kl = elbo_terms(x, x, mu, logvar)
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).sum(1), atol=1e-5)
    # the reconstruction term is the Gaussian negative log-likelihood up to a constant
    x_hat = (x + 0.1).clamp(0, 1)
    rec, _ = elbo_terms(x, x_hat, mu, logvar, sigma=0.2)
    assert torch.allclose(rec, (x - x_hat).pow(2).flatten(1).sum(1) / (2 * 0.2 ** 2))


@pytest.mark.parametrize("variational", [False, True])
def test_conv_autoencoder_shapes(variational):
    m = ConvAutoencoder(1, 32, latent_dim=8, width=8, variational=variational)
    x = _images(2, 32)
    out = m(x)
    if variational:
        x_hat, mu, logvar = out
        assert mu.shape == logvar.shape == (2, 8, 1, 1)
    else:
        x_hat = out
    assert x_hat.shape == x.shape and (x_hat >= 0).all() and (x_hat <= 1).all()
    with pytest.raises(ValueError):
        ConvAutoencoder(1, 48)


def test_box_blur():
    maps = torch.zeros(1, 9, 9)
    maps[0, 4, 4] = 9.0
    out = box_blur(maps, 3)
    assert out.shape == maps.shape
    assert torch.isclose(out[0, 4, 4], torch.tensor(1.0)) and torch.isclose(out.sum(), torch.tensor(9.0))
    assert torch.equal(box_blur(maps, 1), maps)


@pytest.mark.parametrize("loss", ["l2", "ssim", "vae"])
def test_detector_fit_predict(loss):
    train = AnomalyDataset(_images(16, 32, 0), torch.zeros(16))
    test_images = _images(6, 32, 1)
    masks = torch.zeros(6, 32, 32)
    masks[3:, 8:16, 8:16] = 1
    test_images[3:, :, 8:16, 8:16] = 1.0  # white squares: anomalies
    test = AnomalyDataset(test_images, torch.tensor([0, 0, 0, 1, 1, 1]), masks)
    det = ReconstructionDetector(loss, latent_dim=8, width=8, epochs=2, batch_size=8, window_size=7,
                                 use_cache=False, progress=False)
    assert det.fit(train) is det
    assert len(det.history["loss"]) == 2 and np.isfinite(det.history["loss"]).all()
    scores, maps = det.predict(test.images)
    assert scores.shape == (6,) and maps.shape == (6, 32, 32)
    assert torch.isfinite(scores).all() and (maps >= -1e-6).all()
    rec, x_hat = det.reconstruction_loss(test.images)
    assert rec.shape == (6,) and x_hat.shape == test.images.shape
    ev = evaluate(det, test)
    assert 0 <= ev.image_auroc <= 1 and ev.pixel_auroc is not None


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError):
        ReconstructionDetector("l1")


def test_ssim_of_constant_images_by_hand():
    # constant patches: variances and covariance are 0, so the contrast-structure term is C2 / C2 = 1 and
    # SSIM = (2ab + C1) / (a^2 + b^2 + C1) = (0.25 + 1e-4) / (0.3125 + 1e-4) for a = 0.5, b = 0.25
    x, y = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), 0.25)
    expected = (0.25 + 1e-4) / (0.3125 + 1e-4)
    assert torch.allclose(ssim_map(x, y, window_size=7), torch.full_like(x, expected), atol=1e-6)


def test_ssim_map_on_rgb_is_per_channel():
    x, y = _images(1, 32, 0).expand(-1, 3, -1, -1).clone(), _images(1, 32, 1).expand(-1, 3, -1, -1).clone()
    y[:, 1] = x[:, 1]  # the green channel identical, the others not
    m = ssim_map(x, y, window_size=7)
    assert m.shape == (1, 3, 32, 32)
    assert torch.allclose(m[:, 1], torch.ones_like(m[:, 1]), atol=1e-5)
    assert torch.allclose(m[:, 0], ssim_map(x[:, :1], y[:, :1], window_size=7)[:, 0])


def test_configs_are_the_ones_lessons_06_and_10_rebuild(monkeypatch):
    # lesson 10 hard-codes the texture autoencoders' cpu configuration: the cache keys must match
    monkeypatch.setenv("AD_PROFILE", "cpu")
    monkeypatch.delenv("AD_DATA", raising=False)
    cfg = texture_config()
    assert {k: cfg[k] for k in ("size", "epochs", "width", "latent_dim", "window_size", "batch_size", "lr",
                                "vae_sigma", "score_blur")} == dict(size=64, epochs=40, width=16, latent_dim=64,
                                                                     window_size=7, batch_size=32, lr=1e-3,
                                                                     vae_sigma=0.1, score_blur=5)
    p = real_config()
    assert p["size"] == 64 and p["categories"] == ("PA_BDP01_TL", "PA_FVN01_TL", "PA_GLA01_TL")
    monkeypatch.setenv("AD_PROFILE", "smoke")
    assert texture_config()["epochs"] == 1


# ---- the cache key describes the training images exactly ------------------------------------------------------------

def _tiny(loss="l2", **kw):
    return ReconstructionDetector(loss, latent_dim=4, width=4, epochs=1, batch_size=8, window_size=3,
                                  progress=False, **kw)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    from anomaly_utils import profiles

    monkeypatch.setattr(profiles, "CACHE_DIR", tmp_path)
    monkeypatch.delenv("AD_NO_CACHE", raising=False)
    return tmp_path


def test_mirrored_or_reordered_training_set_is_not_served_the_old_weights(cache_dir):
    images = _images(8, 16, 0)
    train = AnomalyDataset(images, torch.zeros(8), name="t")
    assert not _tiny().fit(train).from_cache
    assert _tiny().fit(train).from_cache  # the same images: the cached weights
    # the old key (name, count, shape, pixel sum rounded to 3 decimals) was the same for these two
    for other in (images.flip(-1), images[torch.arange(7, -1, -1)]):
        assert not _tiny().fit(AnomalyDataset(other, torch.zeros(8), name="t")).from_cache


def test_config_key_uses_the_exact_data_fingerprint():
    from anomaly_utils.profiles import config_key

    images = _images(8, 16, 0)
    det = _tiny()
    keys = {config_key(det.config(x)) for x in (images, images.flip(-1), images[torch.arange(7, -1, -1)])}
    assert len(keys) == 3
    assert config_key(det.config(images)) == config_key(_tiny().config(images.clone()))


def test_use_cache_false_neither_reads_nor_writes_the_cache(cache_dir):
    train = AnomalyDataset(_images(8, 16, 0), torch.zeros(8))
    det = _tiny(use_cache=False).fit(train)
    assert det.from_cache is False and not list(cache_dir.glob("*.pt"))


def test_a_subclass_with_another_loss_does_not_load_the_base_weights(cache_dir):
    class Other(ReconstructionDetector):
        def training_loss(self, x):
            return {"loss": (x - self.model(x)).abs().mean()}

    train = AnomalyDataset(_images(8, 16, 0), torch.zeros(8))
    _tiny().fit(train)
    other = Other("l2", latent_dim=4, width=4, epochs=1, batch_size=8, window_size=3, progress=False).fit(train)
    assert not other.from_cache


# ---- hardening: clear errors for bad arguments and bad input --------------------------------------------------------

@pytest.mark.parametrize("kw, name", [(dict(latent_dim=0), "latent_dim"), (dict(width=-1), "width"),
                                      (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"),
                                      (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(window_size=4), "window_size"),
                                      (dict(window_size=1), "window_size"), (dict(vae_sigma=0.0), "vae_sigma"),
                                      (dict(score_blur=0), "score_blur"), (dict(epochs=2.5), "epochs"),
                                      (dict(loss="l1"), "loss")])
def test_bad_arguments_are_refused_at_construction(kw, name):
    with pytest.raises(ValueError, match=name):
        ReconstructionDetector(**kw)


def test_predict_and_reconstruct_before_fit_say_what_to_do():
    det = _tiny(use_cache=False)
    with pytest.raises(RuntimeError, match="fit"):
        det.predict(_images(2, 16))
    with pytest.raises(RuntimeError, match="fit"):
        det.reconstruct(_images(2, 16))


@pytest.fixture(scope="module")
def fitted():
    return ReconstructionDetector("l2", latent_dim=4, width=4, epochs=1, batch_size=8, use_cache=False,
                                  progress=False).fit(AnomalyDataset(_images(8, 16, 0), torch.zeros(8)))


def test_predict_with_other_channels_is_a_clear_error(fitted):
    with pytest.raises(ValueError, match="channels"):
        fitted.predict(_images(2, 16).expand(-1, 3, -1, -1))


def test_predict_with_another_size_is_a_clear_error(fitted):
    with pytest.raises(ValueError, match="16 x 16"):
        fitted.predict(_images(2, 32))


def test_predict_on_one_unbatched_image_is_a_clear_error(fitted):
    with pytest.raises(ValueError, match="N, C, H, W"):
        fitted.predict(_images(1, 16)[0])


def test_fit_on_non_square_or_odd_sized_images_is_a_clear_error():
    with pytest.raises(ValueError, match="square"):
        _tiny(use_cache=False).fit(AnomalyDataset(torch.rand(4, 1, 16, 32), torch.zeros(4)))
    with pytest.raises(ValueError, match="resize"):
        _tiny(use_cache=False).fit(AnomalyDataset(torch.rand(4, 1, 24, 24), torch.zeros(4)))


def test_real_config_follows_ad_data(monkeypatch, tmp_path):
    # the real-image section goes through anomaly_utils.sources: AD_DATA=mvtec takes the MVTec AD folders present
    for category in ("carpet", "bottle"):
        (tmp_path / category / "train" / "good").mkdir(parents=True)
    monkeypatch.setenv("AD_DATA", "mvtec")
    monkeypatch.setenv("AD_MVTEC_ROOT", str(tmp_path))
    monkeypatch.setenv("AD_PROFILE", "cpu")
    assert real_config()["categories"] == ("bottle", "carpet")
