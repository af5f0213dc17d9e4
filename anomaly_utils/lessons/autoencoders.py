"""Generated from notebooks/05_autoencoders.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

from anomaly_utils import pick
from anomaly_utils.data import TEXTURE_CATEGORIES
from anomaly_utils.sources import real_categories


def texture_config() -> dict:
    """Lesson 05's autoencoders on the textures in the active profile (lessons 06 and 10 build the same)."""
    cfg = pick(
        smoke=dict(size=32, n_train=32, n_test=10, epochs=1, width=8, latent_dim=16, window_size=7,
                   categories=("brick",)),
        cpu=dict(size=64, n_train=200, n_test=50, epochs=40, width=16, latent_dim=64, window_size=7,
                 categories=TEXTURE_CATEGORIES),
        gpu=dict(size=128, n_train=1000, n_test=100, epochs=100, width=32, latent_dim=100, window_size=11,
                 categories=TEXTURE_CATEGORIES),
    )
    cfg.update(batch_size=32, lr=1e-3, vae_sigma=0.1, score_blur=5)  # the same in every profile
    return cfg


PIPED_TYPES = ("PA_BDP01_TL", "PA_FVN01_TL", "PA_GLA01_TL")  # three paper types of different difficulty


def real_config() -> dict:
    """Lesson 05's autoencoders on the real images of ``AD_DATA`` (PIPED: RGB paper patches resized to ``size``)."""
    cfg = pick(
        smoke=dict(size=32, epochs=2, width=8, latent_dim=16, window_size=7, n_categories=1),
        cpu=dict(size=64, epochs=150, width=16, latent_dim=64, window_size=7, n_categories=3),
        gpu=dict(size=128, epochs=1000, width=32, latent_dim=100, window_size=11, n_categories=3),
    )
    cfg.update(batch_size=16, lr=1e-3, vae_sigma=0.1, score_blur=5)
    available = real_categories()  # PIPED's types, or the MVTec AD categories present
    chosen = [c for c in PIPED_TYPES if c in available] or available
    cfg["categories"] = tuple(chosen[:cfg.pop("n_categories")])
    return cfg


def detector_kwargs(cfg: dict) -> dict:
    """The ``ReconstructionDetector`` arguments of a configuration (what this lesson records as its settings)."""
    return {k: cfg[k] for k in ("latent_dim", "width", "epochs", "batch_size", "lr", "window_size", "vae_sigma",
                                "score_blur")}


import torch
import torch.nn.functional as F


def gaussian_window(window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """A normalised 2-D Gaussian window w: [window_size, window_size], sums to 1."""
    r = torch.arange(window_size, dtype=torch.float32) - (window_size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, gaussian: bool = True,
             sigma: float = 1.5, C1: float = 0.01 ** 2, C2: float = 0.03 ** 2) -> torch.Tensor:
    """Local structural similarity SSIM(p, q) of every pixel's window: [N, C, H, W] -> [N, C, H, W].

    SSIM(p, q) = (2 mu_p mu_q + C1)(2 sigma_pq + C2) / ((mu_p^2 + mu_q^2 + C1)(sigma_p^2 + sigma_q^2 + C2)),
    with local means, variances and covariance weighted by the window (Gaussian, or uniform
    with ``gaussian=False``). Images in [0, 1] (so C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1).
    Borders are reflect-padded so that the map has the image's size.
    """
    c = x.shape[1]
    if gaussian:
        w = gaussian_window(window_size, sigma)
    else:
        w = torch.full((window_size, window_size), 1.0 / window_size ** 2)
    pad = window_size // 2
    # the five local means E_w[.] in one depthwise convolution: x, y, x^2, y^2, xy stacked as channels
    stats = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [N, 5C, H, W]
    w = w.to(x)[None, None].expand(5 * c, 1, -1, -1)
    local = F.conv2d(F.pad(stats, (pad,) * 4, mode="reflect"), w, groups=5 * c)
    mu_x, mu_y, e_xx, e_yy, e_xy = local.chunk(5, dim=1)
    var_x = e_xx - mu_x ** 2  # sigma_p^2
    var_y = e_yy - mu_y ** 2  # sigma_q^2
    cov_xy = e_xy - mu_x * mu_y  # sigma_pq
    luminance = (2 * mu_x * mu_y + C1) / (mu_x ** 2 + mu_y ** 2 + C1)
    contrast_structure = (2 * cov_xy + C2) / (var_x + var_y + C2)
    return luminance * contrast_structure


def ssim(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    """Mean SSIM of each image pair: [N, C, H, W] x 2 -> [N]; 1 means identical."""
    return ssim_map(x, y, **kwargs).flatten(1).mean(1)


def ssim_loss(x: torch.Tensor, x_hat: torch.Tensor, **kwargs) -> torch.Tensor:
    """Bergmann et al.'s L_SSIM = 1 - SSIM(x, x_hat), averaged over the batch (a scalar)."""
    return (1 - ssim(x, x_hat, **kwargs)).mean()


from torch import nn


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Conv 4x4 stride 2 (halves H and W) + BatchNorm + LeakyReLU, as in Bergmann et al.'s encoder."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def deconv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Transposed conv 4x4 stride 2 (doubles H and W) + BatchNorm + LeakyReLU."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(0.2))


class ConvAutoencoder(nn.Module):
    """A small convolutional autoencoder f = g_dec(g_enc(x)) with a d-dimensional bottleneck z.

    x [N, C, S, S] --(n_down stride-2 convs)--> [N, width*2^k, 4, 4] --(4x4 conv)--> z [N, d, 1, 1]
    and back with transposed convs; a sigmoid keeps x_hat in [0, 1]. S = 4 * 2^n_down (64 -> 4 blocks).
    """

    def __init__(self, channels: int = 1, image_size: int = 64, latent_dim: int = 64, width: int = 32,
                 variational: bool = False):
        super().__init__()
        n_down = (image_size // 4).bit_length() - 1  # number of halvings from S to 4
        if image_size < 8 or 4 * 2 ** n_down != image_size:
            raise ValueError(f"image_size must be 4 * 2^k with k >= 1 (8, 16, 32, 64, 128, ...), got {image_size}: "
                             "resize the images (e.g. load them with size=64).")
        widths = [min(width * 2 ** i, 256) for i in range(n_down)]
        enc, c = [], channels
        for w in widths:
            enc.append(conv_block(c, w))
            c = w
        self.encoder = nn.Sequential(*enc)
        self.variational = variational
        # the bottleneck: a 4x4 conv to d numbers (two sets -- mu and log sigma^2 -- for a VAE)
        self.to_latent = nn.Conv2d(c, latent_dim * (2 if variational else 1), 4)
        self.from_latent = nn.Sequential(nn.ConvTranspose2d(latent_dim, c, 4), nn.BatchNorm2d(c), nn.LeakyReLU(0.2))
        dec = []
        for w in reversed(widths[:-1]):
            dec.append(deconv_block(c, w))
            c = w
        dec.append(nn.ConvTranspose2d(c, channels, 4, 2, 1))
        self.decoder = nn.Sequential(*dec)
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, S, S] -> z [N, d, 1, 1] (AE) or (mu, logvar) stacked as [N, 2d, 1, 1] (VAE)."""
        return self.to_latent(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, d, 1, 1] -> x_hat [N, C, S, S] in [0, 1]."""
        return torch.sigmoid(self.decoder(self.from_latent(z)))

    def forward(self, x: torch.Tensor, sample: bool = False):
        """AE: x_hat. VAE: (x_hat, mu, logvar); z = mu + sigma * eps when ``sample``, else z = mu."""
        h = self.encode(x)
        if not self.variational:
            return self.decode(h)
        mu, logvar = h.chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode(z), mu, logvar


def elbo_terms(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
               sigma: float = 0.1):
    """The two terms of the negative ELBO, per image: (L_r [N], KL [N]).

    L_r = -log p(x|z) for a Gaussian decoder N(x_hat, sigma^2 I), dropping the constant:
          ||x - x_hat||^2 / (2 sigma^2).
    KL  = D_KL(q(z|x) || N(0, I)) = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    The loss is L(x) = L_r + KL (the negative ELBO); the anomaly score keeps L_r only.
    """
    rec = (x - x_hat).pow(2).flatten(1).sum(1) / (2 * sigma ** 2)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(1)
    return rec, kl


from anomaly_utils import argcheck
from anomaly_utils.autoencoding import add_to_class, train_epochs
from anomaly_utils.detector import check_input, remember_input, training_images
from anomaly_utils.profiles import data_fingerprint, load_or_train, seed_everything

NAMES = {"l2": "L2-AE", "ssim": "SSIM-AE", "vae": "VAE"}  # the loss -> the method's name


class ReconstructionDetector:
    """Reconstruction-based anomaly detection with a conv autoencoder, behind the detector interface.

    ``loss="l2"``: L2-AE, trained on ||x - f(x)||^2, anomaly map (x - f(x))^2.
    ``loss="ssim"``: SSIM-AE (Bergmann et al., 2018), trained on 1 - SSIM(x, f(x)), map 1 - SSIM map.
    ``loss="vae"``: VAE trained on the negative ELBO L_r + KL; map (x - f(x))^2 with z = mu.
    """

    def __init__(self, loss: str = "l2", latent_dim: int = 64, width: int = 32, epochs: int = 30,
                 batch_size: int = 32, lr: float = 1e-3, window_size: int = 11, vae_sigma: float = 0.1,
                 score_blur: int = 5, seed: int = 0, device="cpu", use_cache: bool = True, progress: bool = True):
        self.loss = argcheck.choice("loss", loss, tuple(NAMES))
        self.latent_dim, self.width = argcheck.whole("latent_dim", latent_dim), argcheck.whole("width", width)
        self.epochs, self.batch_size = argcheck.whole("epochs", epochs), argcheck.whole("batch_size", batch_size)
        self.lr = argcheck.real("lr", lr, low=0, low_open=True, why="Adam's learning rate")
        self.window_size = argcheck.whole("window_size", window_size, minimum=3)
        if window_size % 2 == 0:
            raise ValueError(f"window_size must be odd (a window centred on its pixel), got {window_size}.")
        self.vae_sigma = argcheck.real("vae_sigma", vae_sigma, low=0, low_open=True, why="the decoder's sigma_x")
        self.score_blur, self.seed = argcheck.whole("score_blur", score_blur), seed
        self.device, self.use_cache, self.progress = torch.device(device), use_cache, progress
        self.model, self.history, self.from_cache, self.train_seconds = None, None, None, None

    def config(self, images: torch.Tensor) -> dict:
        """Everything the trained weights depend on (the cache key), with the exact fingerprint of the images."""
        return dict(detector=type(self).__name__, loss=self.loss, latent_dim=self.latent_dim, width=self.width,
                    epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, window_size=self.window_size,
                    vae_sigma=self.vae_sigma, seed=self.seed, data=data_fingerprint(images))

    def training_loss(self, x: torch.Tensor) -> dict:
        """The loss to minimise on a batch x [B, C, H, W] (and its parts, for the curves)."""
        if self.loss == "vae":
            x_hat, mu, logvar = self.model(x, sample=True)  # z ~ q(z|x) by the reparameterisation trick
            rec, kl = elbo_terms(x, x_hat, mu, logvar, self.vae_sigma)
            return {"loss": (rec + kl).mean(), "L_r": rec.mean(), "KL": kl.mean()}
        x_hat = self.model(x)
        if self.loss == "ssim":
            return {"loss": ssim_loss(x, x_hat, window_size=self.window_size)}
        return {"loss": (x - x_hat).pow(2).flatten(1).sum(1).mean()}


@add_to_class(ReconstructionDetector)
def fit(self, train) -> "ReconstructionDetector":
    """Train on the normal images of ``train`` (or load the cached weights of the same config and images)."""
    images = training_images(train, normal_only=True)
    _, c, h, w = images.shape
    if len(images) == 0 or h != w:
        raise ValueError(f"{train.name}: fit needs normal, square training images, got {len(images)} of "
                         f"{h} x {w}; crop or resize them (e.g. load with size=64).")
    seed_everything(self.seed)
    self.model = ConvAutoencoder(c, h, self.latent_dim, self.width, self.loss == "vae").to(self.device)

    def train_fn(model):  # the loop is plumbing; the loss is training_loss above
        return train_epochs(model, images, self.training_loss, self.epochs, self.batch_size, self.lr, self.seed,
                            self.device, NAMES[self.loss], self.progress)

    if self.use_cache:
        self.model, self.history, self.from_cache = load_or_train(
            self.model, f"05_{NAMES[self.loss].lower()}", self.config(images), train_fn)
    else:  # neither read nor write the cache (e.g. a changed training_loss)
        self.history, self.from_cache = train_fn(self.model), False
    self.model.to(self.device).eval()
    self.train_seconds = self.history["seconds"]  # the training time, also when loaded from the cache
    self.train_fingerprint = data_fingerprint(images)  # what it was trained on (lesson 06 checks it)
    remember_input(self, images)
    return self


def box_blur(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over k x k windows, same size: [N, H, W] -> [N, H, W] (k = 1 returns the maps)."""
    if k <= 1:
        return maps
    return F.avg_pool2d(F.pad(maps[:, None], (k // 2, (k - 1) // 2) * 2, mode="replicate"), k, 1)[:, 0]


@add_to_class(ReconstructionDetector)
def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
    """f(x): [N, C, H, W] -> [N, C, H, W] (the VAE decodes its mean z = mu)."""
    if self.model is None:
        raise RuntimeError("ReconstructionDetector has no trained model yet: call fit(train) first.")
    out = self.model(x)
    return out[0] if self.loss == "vae" else out


@add_to_class(ReconstructionDetector)
def reconstruction_loss(self, x: torch.Tensor):
    """L_r(x) per image [N] (differentiable in x) and f(x) [N, C, H, W].

    l2: ||x - f(x)||^2;  ssim: sum over pixels of 1 - SSIM map;  vae: ||x - f(x)||^2 / (2 sigma^2).
    """
    x_hat = self.reconstruct(x)
    if self.loss == "ssim":
        rec = (1 - ssim_map(x, x_hat, window_size=self.window_size)).flatten(1).sum(1)
    else:
        rec = (x - x_hat).pow(2).flatten(1).sum(1)
        if self.loss == "vae":
            rec = rec / (2 * self.vae_sigma ** 2)
    return rec, x_hat


@add_to_class(ReconstructionDetector)
def residual_map(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The anomaly map [N, H, W]: 1 - SSIM(x, x_hat) per pixel (ssim) or (x - x_hat)^2, channel mean."""
    if self.loss == "ssim":
        return (1 - ssim_map(x, x_hat, window_size=self.window_size)).mean(1)
    return (x - x_hat).pow(2).mean(1)


@add_to_class(ReconstructionDetector)
def score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
    """pred_score [N]: max of the box-blurred map (one bright pixel is not yet a defect)."""
    return box_blur(anomaly_map, self.score_blur).flatten(1).amax(1)


@add_to_class(ReconstructionDetector)
@torch.no_grad()
def predict(self, images: torch.Tensor):
    """images [N, C, H, W] -> (pred_score [N], anomaly_map [N, H, W]), both on the CPU."""
    x = check_input(self, images).to(self.device)  # errors for predict before fit, other channels or size
    anomaly_map = self.residual_map(x, self.reconstruct(x))
    return self.score(anomaly_map).cpu(), anomaly_map.cpu()
