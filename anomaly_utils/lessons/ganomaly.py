"""Generated from notebooks/04_ganomaly.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from anomaly_utils.lessons.anogan import (Discriminator, crop_to, dcgan_decoder, dcgan_encoder,
                                          dcgan_weights_init, pad_to)


class GANomalyGenerator(nn.Module):
    """GANomaly's generator network: G_E -> G_D, then the second encoder E.

    x [N, nc, isize, isize] --G_E--> z [N, nz] --G_D--> x_hat [N, nc, isize, isize] --E--> z_hat [N, nz]
    G_E and E have the same architecture (a DCGAN pyramid, like D) but separate weights.
    """

    def __init__(self, isize: int = 32, nz: int = 100, nc: int = 1, ngf: int = 64):
        super().__init__()
        self.nz = nz
        self.encoder1 = dcgan_encoder(isize, nc, ngf, nz)  # G_E
        self.decoder = dcgan_decoder(isize, nz, nc, ngf)  # G_D
        self.encoder2 = dcgan_encoder(isize, nc, ngf, nz)  # E
        self.apply(dcgan_weights_init)  # N(0, 0.02) convolutions, N(1, 0.02) batch norm (official weights_init)

    def forward(self, x: torch.Tensor):
        z = self.encoder1(x)  # z = G_E(x): [N, nz, 1, 1]
        x_hat = self.decoder(z)  # x_hat = G_D(z): [N, nc, isize, isize]
        z_hat = self.encoder2(x_hat)  # z_hat = E(x_hat): [N, nz, 1, 1]
        return x_hat, z.flatten(1), z_hat.flatten(1)


def generator_losses(D, x, x_hat, z, z_hat, w_adv: float = 1.0, w_con: float = 50.0, w_enc: float = 1.0) -> dict:
    """GANomaly's three generator losses and their weighted sum (all scalars).

    L_adv = ||f(x) - f(x_hat)||_2^2  (feature matching on D's last hidden layer f, mean over elements)
    L_con = ||x - x_hat||_1          (contextual loss, mean over pixels)
    L_enc = ||z - z_hat||_2^2        (encoder loss, mean over the nz coordinates)
    x, x_hat: [N, C, H, W]; z, z_hat: [N, nz].
    """
    with torch.no_grad():
        f_real = D(x)[1]  # f(x) does not depend on the generator
    adv = (f_real - D(x_hat)[1]).pow(2).mean()
    con = (x - x_hat).abs().mean()
    enc = (z - z_hat).pow(2).mean()
    return {"loss": w_adv * adv + w_con * con + w_enc * enc, "adv": adv, "con": con, "enc": enc}


def discriminator_loss(D, x, x_hat) -> torch.Tensor:
    """L_D = (BCE(D(x), 1) + BCE(D(x_hat), 0)) / 2, as in the official code; x_hat is detached."""
    logit_real, logit_fake = D(x)[0], D(x_hat.detach())[0]
    return 0.5 * (F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
                  + F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake)))


def reset_if_won(D, loss_d: float, threshold: float = 1e-5) -> bool:
    """Re-initialise D with DCGAN's ``dcgan_weights_init`` if its loss fell below ``threshold``.

    The official code does this after every D step: a D that separates x from x_hat perfectly gives
    the generator no useful feature-matching signal, so it starts afresh. Returns whether it did.
    """
    if loss_d >= threshold:
        return False
    D.apply(dcgan_weights_init)
    return True


def train_ganomaly(G, D, images: torch.Tensor, epochs: int = 15, batch_size: int = 64, lr: float = 2e-4,
                   w_adv: float = 1.0, w_con: float = 50.0, w_enc: float = 1.0, device="cpu", seed: int = 0,
                   monitor=None) -> dict:
    """Train GANomaly on normal ``images [N, nc, isize, isize]`` for a fixed number of epochs.

    Each batch: one generator step on w_adv L_adv + w_con L_con + w_enc L_enc, then one D step.
    As in the official code, D is re-initialised when its loss falls below 1e-5 (it has won).
    ``monitor(G)``, if given, is called after every epoch and its value stored -- for diagnostics only,
    it never changes the schedule. Returns per-epoch means of every loss.
    """
    g = torch.Generator().manual_seed(seed)
    G.to(device).train(), D.to(device).train()
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    history = {"loss": [], "adv": [], "con": [], "enc": [], "loss_d": [], "d_resets": 0, "monitor": []}
    for epoch in tqdm(range(epochs), desc="GANomaly", leave=False):
        sums = dict.fromkeys(["loss", "adv", "con", "enc", "loss_d"], 0.0)
        perm = torch.randperm(len(images), generator=g)
        batches = [perm[i:i + batch_size] for i in range(0, len(images), batch_size)]
        for idx in batches:
            x = images[idx].to(device)
            x_hat, z, z_hat = G(x)
            losses = generator_losses(D, x, x_hat, z, z_hat, w_adv, w_con, w_enc)
            opt_g.zero_grad(), losses["loss"].backward(), opt_g.step()
            loss_d = discriminator_loss(D, x, x_hat)
            opt_d.zero_grad(), loss_d.backward(), opt_d.step()
            history["d_resets"] += reset_if_won(D, loss_d.item())  # D has won: start it afresh (official code)
            for k in ("loss", "adv", "con", "enc"):
                sums[k] += losses[k].item() / len(batches)
            sums["loss_d"] += loss_d.item() / len(batches)
        for k, v in sums.items():
            history[k].append(v)
        if monitor is not None:
            G.eval(), D.eval()
            history["monitor"].append(monitor(G))
            G.train(), D.train()
    G.eval(), D.eval()
    return history


from anomaly_utils import argcheck
from anomaly_utils.detector import check_input, remember_input, training_images
from anomaly_utils.lessons.anogan import check_isize


class GANomaly:
    """GANomaly (Akcay et al., ACCV 2018) with the course's detector interface.

    fit: train G = (G_E, G_D, E) and D on normal images (square, ``nc`` channels, side <= ``isize``: zero-padded).
    predict: one forward pass; pred_score = ||z - z_hat||_2^2 / nz per image [N] (``score="latent"``, the paper's)
    or the contextual mean |x - x_hat| (``score="contextual"``); anomaly_map = |x - x_hat| summed over channels.
    """

    def __init__(self, isize: int = 32, nz: int = 100, ngf: int = 64, ndf: int = 64, nc: int = 1,
                 epochs: int = 15, batch_size: int = 64, lr: float = 2e-4, w_adv: float = 1.0,
                 w_con: float = 50.0, w_enc: float = 1.0, score: str = "latent", device="cpu", seed: int = 0):
        check_isize(isize)
        for name, value in dict(nz=nz, ngf=ngf, ndf=ndf, nc=nc, epochs=epochs, batch_size=batch_size).items():
            argcheck.whole(name, value)
        argcheck.real("lr", lr, low=0, low_open=True)
        for name, value in dict(w_adv=w_adv, w_con=w_con, w_enc=w_enc).items():
            argcheck.real(name, value, low=0, why="a loss weight")
        self.score = argcheck.choice("score", score, ("latent", "contextual"))
        argcheck.whole("seed", seed, minimum=0)
        torch.manual_seed(seed)
        self.isize, self.nc, self.epochs, self.batch_size, self.lr, self.seed = isize, nc, epochs, batch_size, lr, seed
        self.weights = dict(w_adv=w_adv, w_con=w_con, w_enc=w_enc)
        self.device = torch.device(device)
        self.model = nn.ModuleDict({"G": GANomalyGenerator(isize, nz, nc, ngf), "D": Discriminator(isize, nc, ndf)})
        self.model.to(self.device)
        self.history = None

    def fit(self, train_dataset, monitor=None):
        images = training_images(train_dataset)
        if images.shape[1] != self.nc:
            raise ValueError(f"GANomaly(nc={self.nc}) got {images.shape[1]}-channel training images: build it with "
                             f"nc={images.shape[1]}, or convert the images to {self.nc} channel(s).")
        self.history = train_ganomaly(self.model["G"], self.model["D"], pad_to(images, self.isize), self.epochs,
                                      self.batch_size, self.lr, **self.weights, device=self.device, seed=self.seed,
                                      monitor=monitor)
        remember_input(self, images)  # the channels and size that scores / predict will insist on
        return self

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> dict:
        """``latent [N]``, ``contextual [N]``, ``anomaly_map [N, H, W]`` and ``x_hat`` for images ``[N, C, H, W]``."""
        images = check_input(self, images)  # fitted? the training images' channels and size?
        self.model.eval()  # batch norm with its running statistics: an image's score ignores its batch-mates
        x = pad_to(images, self.isize).to(self.device)
        x_hat, z, z_hat = self.model["G"](x)
        residual = (x - x_hat).abs()
        return {"latent": (z - z_hat).pow(2).mean(1).cpu(),  # A(x) = ||G_E(x) - E(G(x))||^2
                "contextual": residual.flatten(1).mean(1).cpu(),
                "anomaly_map": crop_to(residual.sum(1), images.shape[-1]).cpu(),
                "x_hat": crop_to(x_hat, images.shape[-1]).cpu()}

    def predict(self, images: torch.Tensor):
        s = self.scores(images)
        return s[self.score], s["anomaly_map"]
