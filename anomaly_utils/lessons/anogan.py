"""Generated from notebooks/03_anogan.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm


def pad_to(images: torch.Tensor, isize: int) -> torch.Tensor:
    """Zero-pad square ``[N, C, s, s]`` images to ``[N, C, isize, isize]`` (MNIST 28 -> 32); no-op if s = isize.

    A non-square or larger image would not fail here but come out of the encoder as a grid of codes instead of
    one code: a clear error instead.
    """
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"the DCGAN needs square images, got {h} x {w}: crop or resize them to a square "
                         f"(e.g. torch.nn.functional.interpolate(images, size=({isize}, {isize}))).")
    if w > isize:
        raise ValueError(f"images of {w} x {w} px are larger than isize = {isize}: build the model with "
                         f"isize={1 << (w - 1).bit_length()} (a power of 2 >= {w}) or resize the images to "
                         f"{isize} x {isize}.")
    p = isize - w
    return F.pad(images, (p // 2, p - p // 2, p // 2, p - p // 2)) if p > 0 else images


def crop_to(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Undo ``pad_to`` on maps ``[N, isize, isize] -> [N, size, size]``."""
    p = maps.shape[-1] - size
    return maps[..., p // 2:p // 2 + size, p // 2:p // 2 + size] if p > 0 else maps


def dcgan_weights_init(module: nn.Module) -> None:
    """DCGAN's initialisation (Radford et al., 2016), for ``model.apply(dcgan_weights_init)``.

    (Transposed) convolutions: weights ~ N(0, 0.02); batch norm: weight ~ N(1, 0.02), bias = 0.
    PyTorch's default (Kaiming-uniform convolutions, batch-norm weight 1) is not what DCGAN,
    AnoGAN-style DCGANs or GANomaly's official code (its ``weights_init``) train from.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def check_isize(isize) -> int:
    """The pyramids halve the image down to 4 x 4: ``isize`` must be a power of 2, at least 8."""
    if isinstance(isize, bool) or not isinstance(isize, int) or isize < 8 or isize & (isize - 1):
        raise ValueError(f"isize must be a power of 2 >= 8 (e.g. 32 for MNIST padded from 28, 64 for 64 px "
                         f"images), got {isize!r}.")
    return isize


def dcgan_encoder(isize: int, nc: int, ndf: int, n_out: int) -> nn.Sequential:
    """DCGAN's convolutional pyramid: ``[N, nc, isize, isize] -> [N, n_out, 1, 1]``.

    Strided 4x4 convolutions halve the side until it is 4, doubling the channels (ndf, 2 ndf, ...);
    a last 4x4 convolution without padding maps the 4x4 grid to one vector of ``n_out`` numbers.
    """
    check_isize(isize)
    layers = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    size, ch = isize // 2, ndf
    while size > 4:
        layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2)]
        size, ch = size // 2, ch * 2
    layers += [nn.Conv2d(ch, n_out, 4, 1, 0, bias=False)]
    return nn.Sequential(*layers)


def dcgan_decoder(isize: int, nz: int, nc: int, ngf: int) -> nn.Sequential:
    """DCGAN's generator: ``z [N, nz, 1, 1] -> image [N, nc, isize, isize]`` in [0, 1] (sigmoid)."""
    check_isize(isize)
    ch = ngf * isize // 8  # channels at the 4x4 grid, halved at every up-sampling step
    layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
    size = 4
    while size < isize // 2:
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
        size, ch = size * 2, ch // 2
    layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Sigmoid()]
    return nn.Sequential(*layers)


class Generator(nn.Module):
    """G: latent code ``z [N, nz]`` -> image ``[N, nc, isize, isize]``."""

    def __init__(self, isize: int = 32, nz: int = 64, nc: int = 1, ngf: int = 32):
        super().__init__()
        self.nz = nz
        self.net = dcgan_decoder(isize, nz, nc, ngf)
        self.apply(dcgan_weights_init)  # DCGAN's initialisation, as in the official DCGAN / GANomaly code

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(len(z), -1, 1, 1))


class Discriminator(nn.Module):
    """D: image ``[N, nc, isize, isize]`` -> (logit [N], features f_D [N, C', 4, 4]).

    ``f_D`` is the last hidden layer, the one AnoGAN's discrimination loss and GANomaly's
    adversarial (feature matching) loss compare.
    """

    def __init__(self, isize: int = 32, nc: int = 1, ndf: int = 32):
        super().__init__()
        net = dcgan_encoder(isize, nc, ndf, 1)
        self.features = net[:-1]  # f_D(x)
        self.classifier = net[-1]  # one 4x4 conv -> the logit of "real"
        self.apply(dcgan_weights_init)

    def forward(self, x: torch.Tensor):
        f = self.features(x)
        return self.classifier(f).view(-1), f


def train_dcgan(G, D, images: torch.Tensor, epochs: int = 20, batch_size: int = 64, lr: float = 2e-4,
                d_lr_factor: float = 1.0, d_steps: int = 1, saturating: bool = False, real_label: float = 0.9,
                n_snapshots: int = 4,
                device="cpu", seed: int = 0) -> dict:
    """Train a DCGAN on normal ``images [N, nc, isize, isize]`` (already padded). Returns the history.

    D minimises the binary cross-entropy of real (1) against G(z) (0); G minimises
    -log D(G(z)) (the non-saturating loss), or log(1 - D(G(z))) with ``saturating=True`` (the
    original minimax loss). ``real_label`` < 1 is one-sided label smoothing (Salimans et al., 2016), a
    small brake on a D that learns 400 images by heart. ``d_lr_factor`` and ``d_steps`` exist to show
    an overpowering D.
    history: per-epoch losses and mean D outputs, plus ``snapshots`` of G(z_fixed) during training.
    """
    g = torch.Generator().manual_seed(seed)
    G.to(device).train(), D.to(device).train()
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr * d_lr_factor, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits
    z_fixed = torch.randn(16, G.nz, generator=g).to(device)
    history = {"loss_d": [], "loss_g": [], "d_real": [], "d_fake": [], "snapshots": [], "snapshot_epochs": []}
    snap_at = {round(e) for e in torch.linspace(0, epochs - 1, n_snapshots).tolist()}
    for epoch in tqdm(range(epochs), desc="DCGAN", leave=False):
        sums = torch.zeros(4)
        perm = torch.randperm(len(images), generator=g)
        batches = [perm[i:i + batch_size] for i in range(0, len(images), batch_size)]
        for idx in batches:
            x = images[idx].to(device)
            ones, zeros = torch.ones(len(x), device=device), torch.zeros(len(x), device=device)
            for _ in range(d_steps):  # --- D step: real -> 1, fake -> 0
                fake = G(torch.randn(len(x), G.nz, generator=g).to(device)).detach()
                logit_real, logit_fake = D(x)[0], D(fake)[0]
                loss_d = bce(logit_real, real_label * ones) + bce(logit_fake, zeros)
                opt_d.zero_grad(), loss_d.backward(), opt_d.step()
            # --- G step: make D call G(z) real
            logit_fake = D(G(torch.randn(len(x), G.nz, generator=g).to(device)))[0]
            loss_g = -bce(logit_fake, zeros) if saturating else bce(logit_fake, ones)
            opt_g.zero_grad(), loss_g.backward(), opt_g.step()
            sums += torch.tensor([loss_d.item(), loss_g.item(), torch.sigmoid(logit_real).mean().item(),
                                  torch.sigmoid(logit_fake).mean().item()])
        for key, v in zip(["loss_d", "loss_g", "d_real", "d_fake"], (sums / len(batches)).tolist()):
            history[key].append(v)
        if epoch in snap_at:
            G.eval()
            with torch.no_grad():
                history["snapshots"].append(G(z_fixed).cpu())
            history["snapshot_epochs"].append(epoch + 1)
            G.train()
    G.eval(), D.eval()
    return history


def anogan_energy(x, x_gen, f_x, f_gen, lam: float = 0.1) -> torch.Tensor:
    """AnoGAN's loss per image: (1 - lam) * L_R + lam * L_D, both L1 sums.  Returns ``[N]``.

    L_R = sum |x - G(z)| (residual loss), L_D = sum |f_D(x) - f_D(G(z))| (discrimination loss).
    x, x_gen: ``[N, C, H, W]``; f_x, f_gen: ``[N, C', h, w]``.
    """
    residual = (x - x_gen).abs().flatten(1).sum(1)  # L_R(z)
    discrimination = (f_x - f_gen).abs().flatten(1).sum(1)  # L_D(z)
    return (1 - lam) * residual + lam * discrimination


def latent_search(G, D, x: torch.Tensor, n_iter: int = 300, lr: float = 0.05, lam: float = 0.1,
                  seed: int = 0, track: bool = False):
    """Find z with G(z) close to ``x [N, C, isize, isize]`` by gradient descent on ``anogan_energy``.

    G and D stay frozen (eval mode, so BatchNorm uses its running statistics and the images of a
    batch do not interact: searching N codes at once is N independent searches). Adam on z.
    Returns ``(z [N, nz], energy [N] after the last step, trace [n_iter, N] or None)``.
    """
    G.eval(), D.eval()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(x), G.nz, generator=gen).to(x.device).requires_grad_(True)  # z_1 ~ N(0, I)
    opt = torch.optim.Adam([z], lr=lr)
    with torch.no_grad():
        f_x = D(x)[1]  # f_D(x) does not depend on z: compute once
    trace = []
    for _ in range(n_iter):  # Gamma steps of back-propagation into z
        x_gen = G(z)
        energy = anogan_energy(x, x_gen, f_x, D(x_gen)[1], lam)
        # gradient w.r.t. z only (G and D get none); the sum's gradient w.r.t. z_i is image i's own
        z.grad = torch.autograd.grad(energy.sum(), z)[0]
        opt.step()
        if track:
            trace.append(energy.detach().cpu())
    with torch.no_grad():  # the score is the energy at the final z
        x_gen = G(z)
        energy = anogan_energy(x, x_gen, f_x, D(x_gen)[1], lam)
    return z.detach(), energy, (torch.stack(trace) if track else None)


from anomaly_utils import argcheck
from anomaly_utils.detector import check_input, remember_input, training_images


class AnoGAN:
    """AnoGAN (Schlegl et al., IPMI 2017) with the course's detector interface.

    fit: train a DCGAN on the normal images (square, ``nc`` channels, side <= ``isize``: zero-padded to it).
    predict: latent search per image; pred_score = final energy [N], anomaly_map = |x - G(z)| summed over
    channels [N, H, W]. predict needs images of the training images' channels and size.
    """

    def __init__(self, isize: int = 32, nz: int = 64, ngf: int = 32, ndf: int = 32, nc: int = 1,
                 epochs: int = 20, batch_size: int = 64, lr: float = 2e-4, n_iter: int = 300,
                 search_lr: float = 0.05, lam: float = 0.1, device="cpu", seed: int = 0):
        check_isize(isize)
        for name, value in dict(nz=nz, ngf=ngf, ndf=ndf, nc=nc, epochs=epochs, batch_size=batch_size,
                                n_iter=n_iter).items():
            argcheck.whole(name, value)
        argcheck.real("lr", lr, low=0, low_open=True), argcheck.real("search_lr", search_lr, low=0, low_open=True)
        argcheck.real("lam", lam, 0, 1, why="lambda, the weight of the discrimination loss")
        argcheck.whole("seed", seed, minimum=0)
        torch.manual_seed(seed)
        self.isize, self.nc, self.epochs, self.batch_size, self.lr, self.seed = isize, nc, epochs, batch_size, lr, seed
        self.n_iter, self.search_lr, self.lam, self.device = n_iter, search_lr, lam, torch.device(device)
        self.model = nn.ModuleDict({"G": Generator(isize, nz, nc, ngf), "D": Discriminator(isize, nc, ndf)})
        self.model.to(self.device)
        self.history = None

    def fit(self, train_dataset):
        images = training_images(train_dataset)
        if images.shape[1] != self.nc:
            raise ValueError(f"AnoGAN(nc={self.nc}) got {images.shape[1]}-channel training images: build it with "
                             f"nc={images.shape[1]}, or convert the images to {self.nc} channel(s).")
        self.history = train_dcgan(self.model["G"], self.model["D"], pad_to(images, self.isize), self.epochs,
                                   self.batch_size, self.lr, device=self.device, seed=self.seed)
        remember_input(self, images)  # the channels and size that predict will insist on
        return self

    def predict(self, images: torch.Tensor):
        images = check_input(self, images)  # fitted? the training images' channels and size?
        x = pad_to(images, self.isize).to(self.device)
        with torch.enable_grad():  # evaluate() may call predict under no_grad; the search needs gradients
            z, energy, _ = latent_search(self.model["G"], self.model["D"], x, self.n_iter, self.search_lr,
                                         self.lam, self.seed)
        with torch.no_grad():
            anomaly_map = (x - self.model["G"](z)).abs().sum(1)  # residual |x - G(z)|: [N, isize, isize]
        return energy.cpu(), crop_to(anomaly_map, images.shape[-1]).cpu()
