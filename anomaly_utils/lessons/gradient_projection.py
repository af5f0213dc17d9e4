"""Generated from notebooks/06_gradient_projection.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch

from anomaly_utils import argcheck
from anomaly_utils.autoencoding import add_to_class
from anomaly_utils.lessons.autoencoders import elbo_terms


class GradientProjection:
    """Dehaene et al.'s iterative energy-based projection of x_0 towards the normal data manifold.

    E(x_t) = L(x_t) + lam * ||x_t - x_0||_1, L = the autoencoder's loss: L_r (L2-AE, SSIM-AE) or, for the VAE,
             the negative ELBO L_r + D_KL(q(z|x_t) || p(z)) at z = mu (``elbo=False``: L_r alone)
    x_{t+1} = x_t - alpha * (grad_x E(x_t) * (x_t - f(x_t))^2)          (``weighted=True``)
    x_{t+1} = x_t - alpha * (grad_x E(x_t) * Omega)                       (inpainting: only inside Omega)
    ``ae`` is a fitted ReconstructionDetector (lesson 05); its weights stay frozen.
    """

    def __init__(self, ae, lam: float = 0.1, alpha: float = 1.0, n_steps: int = 30, weighted: bool = True,
                 elbo: bool = True):
        self.ae, self.weighted, self.elbo = ae, weighted, elbo
        self.lam = argcheck.real("lam", lam, low=0, why="the weight of the L1 anchor")
        self.alpha = argcheck.real("alpha", alpha, low=0, low_open=True, why="the step size")
        self.n_steps = argcheck.whole("n_steps", n_steps, minimum=0)

    def loss(self, x_t: torch.Tensor):
        """The autoencoder's loss L(x_t) per image [N] (differentiable in x_t) and f(x_t) [N, C, H, W]."""
        if self.elbo and getattr(self.ae, "loss", None) == "vae":
            x_hat, mu, logvar = self.ae.model(x_t)  # z = mu: f(x_t) decodes the mean code
            rec, kl = elbo_terms(x_t, x_hat, mu, logvar, self.ae.vae_sigma)
            return rec + kl, x_hat  # the negative ELBO
        return self.ae.reconstruction_loss(x_t)

    def energy(self, x_t: torch.Tensor, x_0: torch.Tensor):
        """E(x_t) per image [N] and f(x_t) [N, C, H, W]."""
        loss, x_hat = self.loss(x_t)
        return loss + self.lam * (x_t - x_0).abs().flatten(1).sum(1), x_hat


@add_to_class(GradientProjection)
def step(self, x_t: torch.Tensor, x_0: torch.Tensor, omega: torch.Tensor | None = None) -> torch.Tensor:
    """One projection step x_t -> x_{t+1} (kept in [0, 1]); ``omega`` [N, 1, H, W] restricts it to a mask."""
    x_t = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        e, x_hat = self.energy(x_t, x_0)
        (grad,) = torch.autograd.grad(e.sum(), x_t)  # each image's E depends only on its own x_t
    if omega is not None:
        weight = omega
    elif self.weighted:
        weight = (x_t - x_hat).detach() ** 2  # (x_t - f(x_t))^2: move where the AE disagrees
    else:
        weight = torch.ones_like(grad)
    return (x_t.detach() - self.alpha * grad * weight).clamp(0, 1)


@add_to_class(GradientProjection)
def project(self, x_0: torch.Tensor, n_steps: int | None = None, omega: torch.Tensor | None = None,
            keep: tuple = ()):
    """Run T = ``n_steps`` steps from x_0 [N, C, H, W]; returns x_T and {t: x_t} for t in ``keep``."""
    if getattr(self.ae, "model", True) is None:
        raise RuntimeError("the autoencoder is not trained yet: call ae.fit(train) before projecting.")
    x_0 = x_0.to(self.ae.device)
    if omega is not None and (omega.ndim != 4 or omega.shape[1] != 1 or omega.shape[2:] != x_0.shape[2:]):
        raise ValueError(f"omega must be a mask [N, 1, H, W] = [{len(x_0)}, 1, {x_0.shape[2]}, {x_0.shape[3]}] "
                         f"(1 inside the region to restore), got {list(omega.shape)}.")
    x_t, frames = x_0.clone(), {0: x_0.cpu()} if 0 in keep else {}
    for t in range(1, (self.n_steps if n_steps is None else n_steps) + 1):
        x_t = self.step(x_t, x_0, omega)
        if t in keep:
            frames[t] = x_t.cpu()
    return x_t, frames


from anomaly_utils.detector import check_input, training_images
from anomaly_utils.profiles import data_fingerprint


class GradientProjectionDetector:
    """AE-grad: the anomaly map is |x_0 - x_T| after the projection (channel mean) -- detector interface.

    ``pred_score`` = max of the box-blurred map, as for the plain autoencoder.
    """

    def __init__(self, ae, lam: float = 0.1, alpha: float = 1.0, n_steps: int = 30, weighted: bool = True,
                 elbo: bool = True):
        if not all(hasattr(ae, a) for a in ("fit", "reconstruction_loss", "score")):
            raise TypeError(f"ae must be lesson 05's ReconstructionDetector (fitted or not), got {type(ae).__name__}; "
                            "e.g. GradientProjectionDetector(ReconstructionDetector('l2'), lam=0.1).")
        self.ae = ae
        self.projection = GradientProjection(ae, lam, alpha, n_steps, weighted, elbo)

    def fit(self, train=None) -> "GradientProjectionDetector":
        """Fit the autoencoder on ``train`` unless it is fitted already (e.g. by lesson 05's code)."""
        if self.ae.model is None:
            if train is None:
                raise ValueError("the autoencoder is not trained yet: call fit(train) with the training images.")
            self.ae.fit(train)
        elif train is not None and data_fingerprint(training_images(train, normal_only=True)) != self.ae.train_fingerprint:
            raise ValueError(f"the autoencoder was trained on other images than {train.name!r}; pass an unfitted "
                             "ReconstructionDetector (fit then trains it on train) or fit on its own training set.")
        self.fit_input_shape = self.ae.fit_input_shape  # what check_input compares against
        return self

    def predict(self, images: torch.Tensor):
        """images [N, C, H, W] -> (pred_score [N], anomaly_map [N, H, W]), both on the CPU."""
        x_0 = check_input(self, images).to(self.ae.device)  # errors for predict before fit, other channels or size
        x_T, _ = self.projection.project(x_0)
        anomaly_map = (x_0 - x_T).abs().mean(1)
        return self.ae.score(anomaly_map).cpu(), anomaly_map.cpu()
