"""Unit tests of lesson 06's exported code: the energy, one projection step, inpainting, the detector."""

import pytest
import torch

from anomaly_utils import AnomalyDataset
from anomaly_utils.lessons.autoencoders import ReconstructionDetector
from anomaly_utils.lessons.gradient_projection import GradientProjection, GradientProjectionDetector


def _images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def ae():
    train = AnomalyDataset(_images(32), torch.zeros(32))
    det = ReconstructionDetector("l2", latent_dim=8, width=8, epochs=3, batch_size=8, use_cache=False,
                                 progress=False)
    return det.fit(train)


def test_energy_is_reconstruction_plus_l1(ae):
    x_0 = _images(2, seed=1)
    x_t = (x_0 + 0.1).clamp(0, 1)
    proj = GradientProjection(ae, lam=0.5)
    e, x_hat = proj.energy(x_t, x_0)
    rec, _ = ae.reconstruction_loss(x_t)
    assert e.shape == (2,) and x_hat.shape == x_t.shape
    assert torch.allclose(e, rec + 0.5 * (x_t - x_0).abs().flatten(1).sum(1), rtol=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.01])
def test_one_step_decreases_the_energy_on_a_normal_image(ae, lam):
    x_0 = _images(1, seed=0)  # a training-like (normal) image
    proj = GradientProjection(ae, lam=lam, alpha=0.5)
    x_1 = proj.step(x_0, x_0)
    assert x_1.shape == x_0.shape and not torch.equal(x_1, x_0)
    with torch.no_grad():
        e0, _ = proj.energy(x_0, x_0)
        e1, _ = proj.energy(x_1, x_0)
    assert e1.item() < e0.item()


def test_step_follows_the_update_rule(ae):
    x_0 = _images(2, seed=2)
    proj = GradientProjection(ae, lam=0.0, alpha=0.3)
    x = x_0.clone().requires_grad_(True)
    rec, x_hat = ae.reconstruction_loss(x)
    (grad,) = torch.autograd.grad(rec.sum(), x)
    expected = (x_0 - 0.3 * grad * (x_0 - x_hat.detach()) ** 2).clamp(0, 1)
    assert torch.allclose(proj.step(x_0, x_0), expected, atol=1e-6)


def test_inpainting_only_moves_pixels_inside_omega(ae):
    x_0 = _images(2, seed=3)
    omega = torch.zeros(2, 1, 32, 32)
    omega[:, :, 10:20, 10:20] = 1
    x_T, frames = GradientProjection(ae, lam=0.0, alpha=5.0, n_steps=5).project(x_0, omega=omega, keep=(0, 5))
    assert set(frames) == {0, 5}
    outside = omega == 0
    assert torch.equal(x_T[outside], x_0[outside])
    assert not torch.equal(x_T[~outside], x_0[~outside])
    assert (x_T >= 0).all() and (x_T <= 1).all()


def test_detector_interface(ae):
    det = GradientProjectionDetector(ae, lam=0.01, alpha=1.0, n_steps=3)
    assert det.fit(None) is det  # the autoencoder is already fitted: nothing to do
    with torch.no_grad():  # evaluate() may call predict under no_grad: the projection must still work
        scores, maps = det.predict(_images(3, seed=4))
    assert scores.shape == (3,) and maps.shape == (3, 32, 32)
    assert torch.isfinite(scores).all() and (maps >= 0).all()


class _ConstantAE:
    """A stand-in autoencoder with f(x) = c everywhere and L_r(x) = ||x - c||^2: every step can be done by hand."""

    device = torch.device("cpu")

    def __init__(self, c):
        self.c = c

    def reconstruction_loss(self, x):
        x_hat = torch.full_like(x, self.c)
        return (x - x_hat).pow(2).flatten(1).sum(1), x_hat


def test_energy_by_hand():
    # x_t = 0.5, x_0 = 0.4, f = 0.2 on a 2 x 2 image, lambda = 1:
    # E = 4 * (0.5 - 0.2)^2 + 1 * 4 * |0.5 - 0.4| = 0.36 + 0.4 = 0.76
    proj = GradientProjection(_ConstantAE(0.2), lam=1.0)
    e, _ = proj.energy(torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.4))
    assert torch.allclose(e, torch.tensor([0.76]))


def test_step_by_hand_weighted_unweighted_and_inpainting():
    # dE/dx = 2 (x - f) + lambda sign(x - x_0) = 2 * 0.3 + 1 = 1.6 at every pixel
    x_t, x_0 = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.4)
    ae = _ConstantAE(0.2)
    # Dehaene et al.'s step: x - alpha * dE/dx * (x - f)^2 = 0.5 - 1 * 1.6 * 0.09 = 0.356
    weighted = GradientProjection(ae, lam=1.0, alpha=1.0).step(x_t, x_0)
    assert torch.allclose(weighted, torch.full_like(x_t, 0.356))
    # plain gradient descent: 0.5 - 0.1 * 1.6 = 0.34
    plain = GradientProjection(ae, lam=1.0, alpha=0.1, weighted=False).step(x_t, x_0)
    assert torch.allclose(plain, torch.full_like(x_t, 0.34))
    # inpainting: the same plain step inside Omega, nothing outside
    omega = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    inpainted = GradientProjection(ae, lam=1.0, alpha=0.1).step(x_t, x_0, omega)
    assert torch.allclose(inpainted, torch.tensor([[[[0.34, 0.5], [0.5, 0.34]]]]))
    # the step is clipped to [0, 1]: 0.5 - 10 * 1.6 < 0
    assert torch.equal(GradientProjection(ae, lam=1.0, alpha=10.0, weighted=False).step(x_t, x_0),
                       torch.zeros_like(x_t))


# ---- the VAE's energy is its loss, the negative ELBO (Dehaene et al., 2020) -----------------------------------------

class _ConstantVAE:
    """A stand-in VAE: f(x) = c, mu(x) = the sum of x's pixels (one code dimension), log sigma^2 = 0."""

    device = torch.device("cpu")
    loss = "vae"

    def __init__(self, c, sigma):
        self.c, self.vae_sigma = c, sigma

    def model(self, x):
        mu = x.flatten(1).sum(1)[:, None, None, None]
        return torch.full_like(x, self.c), mu, torch.zeros_like(mu)

    def reconstruction_loss(self, x):
        x_hat = torch.full_like(x, self.c)
        return (x - x_hat).pow(2).flatten(1).sum(1) / (2 * self.vae_sigma ** 2), x_hat


def test_vae_energy_by_hand():
    # x_t = 0.5 and x_0 = 0.4 on a 2 x 2 image, f = 0.2, sigma_x = 0.5, lambda = 1:
    # L_r = 4 * 0.3^2 / (2 * 0.25) = 0.72; mu = 4 * 0.5 = 2, log sigma^2 = 0, so KL = mu^2 / 2 = 2.0;
    # the anchor: 4 * 0.1 = 0.4. E = 0.72 + 2.0 + 0.4 = 3.12 (-ELBO), 1.12 with L_r alone
    x_t, x_0 = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.4)
    vae = _ConstantVAE(0.2, 0.5)
    e, x_hat = GradientProjection(vae, lam=1.0).energy(x_t, x_0)
    assert torch.allclose(e, torch.tensor([3.12])) and torch.allclose(x_hat, torch.full_like(x_t, 0.2))
    e, _ = GradientProjection(vae, lam=1.0, elbo=False).energy(x_t, x_0)
    assert torch.allclose(e, torch.tensor([1.12]))


def test_vae_step_by_hand():
    # dL_r/dx = (x - f) / sigma^2 = 0.3 / 0.25 = 1.2; dKL/dx = mu * dmu/dx = 2 * 1 = 2; d(anchor)/dx = 1:
    # weighted step with alpha = 1: 0.5 - (1.2 + 2 + 1) * 0.09 = 0.122; without KL: 0.5 - 2.2 * 0.09 = 0.302
    x_t, x_0 = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.4)
    vae = _ConstantVAE(0.2, 0.5)
    assert torch.allclose(GradientProjection(vae, lam=1.0, alpha=1.0).step(x_t, x_0), torch.full_like(x_t, 0.122))
    assert torch.allclose(GradientProjection(vae, lam=1.0, alpha=1.0, elbo=False).step(x_t, x_0),
                          torch.full_like(x_t, 0.302))


def test_vae_energy_of_the_real_detector_is_the_negative_elbo():
    from anomaly_utils.lessons.autoencoders import elbo_terms

    train = AnomalyDataset(_images(16), torch.zeros(16))
    vae = ReconstructionDetector("vae", latent_dim=4, width=8, epochs=1, batch_size=8, use_cache=False,
                                 progress=False).fit(train)
    x = _images(2, seed=5)
    e, _ = GradientProjection(vae, lam=0.0).energy(x, x)
    with torch.no_grad():
        x_hat, mu, logvar = vae.model(x)
        rec, kl = elbo_terms(x, x_hat, mu, logvar, vae.vae_sigma)
    assert torch.allclose(e, rec + kl) and (kl > 0).all()
    assert torch.allclose(GradientProjection(vae, lam=0.0, elbo=False).energy(x, x)[0], rec)


# ---- hardening ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, name", [(dict(alpha=0.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(lam=-0.1), "lam"),
                                      (dict(n_steps=-1), "n_steps"), (dict(n_steps=2.5), "n_steps"),
                                      (dict(alpha=float("nan")), "alpha")])
def test_bad_projection_arguments_are_refused(ae, kw, name):
    with pytest.raises(ValueError, match=name):
        GradientProjection(ae, **kw)
    with pytest.raises(ValueError, match=name):
        GradientProjectionDetector(ae, **kw)


def test_detector_needs_an_autoencoder():
    with pytest.raises(TypeError, match="ReconstructionDetector"):
        GradientProjectionDetector("l2")


def test_predict_before_fit_is_a_clear_error():
    unfitted = ReconstructionDetector("l2", latent_dim=8, width=8, epochs=1, use_cache=False, progress=False)
    det = GradientProjectionDetector(unfitted)
    with pytest.raises(RuntimeError, match="fit"):
        det.predict(_images(2))
    with pytest.raises(RuntimeError, match="fit"):
        GradientProjection(unfitted).project(_images(2))
    with pytest.raises(ValueError, match="fit\\(train\\)"):
        det.fit(None)


def test_fit_trains_an_unfitted_autoencoder():
    train = AnomalyDataset(_images(16), torch.zeros(16))
    unfitted = ReconstructionDetector("l2", latent_dim=4, width=4, epochs=1, batch_size=8, use_cache=False,
                                      progress=False)
    det = GradientProjectionDetector(unfitted, n_steps=2).fit(train)
    assert unfitted.model is not None
    scores, maps = det.predict(_images(2, seed=6))
    assert scores.shape == (2,) and maps.shape == (2, 32, 32)


def test_fit_refuses_an_autoencoder_trained_on_other_images(ae):
    other = AnomalyDataset(_images(32).flip(-1), torch.zeros(32), name="mirrored")
    with pytest.raises(ValueError, match="other images"):
        GradientProjectionDetector(ae).fit(other)
    same = AnomalyDataset(_images(32), torch.zeros(32))
    assert GradientProjectionDetector(ae).fit(same).fit_input_shape == (1, 32, 32)


def test_predict_with_other_channels_or_size_is_a_clear_error(ae):
    det = GradientProjectionDetector(ae, n_steps=1).fit()
    with pytest.raises(ValueError, match="channels"):
        det.predict(_images(2).expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="32 x 32"):
        det.predict(_images(2, size=64))


def test_inpainting_mask_of_the_wrong_shape_is_a_clear_error(ae):
    with pytest.raises(ValueError, match="omega"):
        GradientProjection(ae, n_steps=1).project(_images(2), omega=torch.ones(2, 32, 32))
