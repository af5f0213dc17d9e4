"""Generated from notebooks/06_gradient_projection.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch

from anomaly_utils.lessons.autoencoders import ReconstructionDetector


class GradientProjection:
    """Dehaene et al.'s iterative energy-based projection of x_0 towards the normal data manifold.

    E(x_t) = L_r(x_t) + lam * ||x_t - x_0||_1
    x_{t+1} = x_t - alpha * (grad_x E(x_t) * (x_t - f(x_t))^2)          (``weighted=True``)
    x_{t+1} = x_t - alpha * (grad_x E(x_t) * Omega)                       (inpainting: only inside Omega)
    ``ae`` is a fitted ReconstructionDetector; its L_r and f are used as they are (weights frozen).
    """

    def __init__(self, ae: ReconstructionDetector, lam: float = 0.1, alpha: float = 1.0, n_steps: int = 30,
                 weighted: bool = True):
        self.ae, self.lam, self.alpha, self.n_steps, self.weighted = ae, lam, alpha, n_steps, weighted

    def energy(self, x_t: torch.Tensor, x_0: torch.Tensor):
        """E(x_t) per image [N] and f(x_t) [N, C, H, W]."""
        rec, x_hat = self.ae.reconstruction_loss(x_t)
        return rec + self.lam * (x_t - x_0).abs().flatten(1).sum(1), x_hat

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

    def project(self, x_0: torch.Tensor, n_steps: int | None = None, omega: torch.Tensor | None = None,
                keep: tuple = ()):
        """Run T = ``n_steps`` steps from x_0 [N, C, H, W]; returns x_T and {t: x_t} for t in ``keep``."""
        x_0 = x_0.to(self.ae.device)
        x_t, frames = x_0.clone(), {0: x_0.cpu()} if 0 in keep else {}
        for t in range(1, (self.n_steps if n_steps is None else n_steps) + 1):
            x_t = self.step(x_t, x_0, omega)
            if t in keep:
                frames[t] = x_t.cpu()
        return x_t, frames


class GradientProjectionDetector:
    """AE-grad: the anomaly map is |x_0 - x_T| after the projection (channel mean) -- detector interface.

    ``fit`` fits the autoencoder (``load_or_train`` loads it if lesson 05 trained the same config).
    ``pred_score`` = max of the box-blurred map, as for the plain autoencoder.
    """

    def __init__(self, ae: ReconstructionDetector, lam: float = 0.1, alpha: float = 1.0, n_steps: int = 30,
                 weighted: bool = True):
        self.ae = ae
        self.projection = GradientProjection(ae, lam, alpha, n_steps, weighted)

    def fit(self, train) -> "GradientProjectionDetector":
        if self.ae.model is None:
            self.ae.fit(train)
        return self

    def predict(self, images: torch.Tensor):
        """images [N, C, H, W] -> (pred_score [N], anomaly_map [N, H, W]), both on the CPU."""
        x_0 = images.to(self.ae.device)
        x_T, _ = self.projection.project(x_0)
        anomaly_map = (x_0 - x_T).abs().mean(1)
        return self.ae.score(anomaly_map).cpu(), anomaly_map.cpu()
