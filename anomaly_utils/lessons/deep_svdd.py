"""Generated from notebooks/01_deep_svdd.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch  # noqa: F811
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from anomaly_utils import argcheck
from anomaly_utils.detector import check_input, remember_input, training_images


class LeNetEncoder(nn.Module):
    """Deep SVDD's small LeNet-type network phi(x; W): ``[N, C, H, W] -> [N, rep_dim]``.

    Each block is conv 5x5 -> BatchNorm -> leaky ReLU (slope 0.01, as the official code's F.leaky_relu)
    -> max-pool 2. With ``bias=False`` (the paper's choice) no layer has a bias and BatchNorm has no affine
    shift, so phi cannot output a constant vector without looking at the input. ``batch_norm=False`` drops
    BatchNorm (which re-spreads every channel over each batch) to watch the collapse. ``image_size``: the
    side of square images, or ``(H, W)``.
    """

    def __init__(self, in_channels=1, image_size=28, channels=(8, 4), rep_dim=32, bias=False, batch_norm=True):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        layers, c = [], in_channels
        for c_out in channels:
            norm = [nn.BatchNorm2d(c_out, eps=1e-4, affine=bias)] if batch_norm else []
            layers += [nn.Conv2d(c, c_out, 5, padding=2, bias=bias), *norm, nn.LeakyReLU(0.01), nn.MaxPool2d(2)]
            c = c_out
        self.features = nn.Sequential(*layers)
        k = 2 ** len(channels)  # every block halves the height and the width
        self.fc = nn.Linear(c * (h // k) * (w // k), rep_dim, bias=bias)  # the embedding phi(x) in R^rep_dim

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@torch.no_grad()
def init_center(net, images, eps=0.1, batch_size=256):
    """The centre c: mean of phi(x) over the training images, coordinates with |c_k| < eps pushed to +-eps.

    A coordinate of c near zero is one that a bias-free net can reach trivially with zero weights.
    ``images [N, C, H, W] -> c [rep_dim]``.
    """
    net.eval()
    c = torch.cat([net(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).mean(0)
    c[(c.abs() < eps) & (c < 0)] = -eps
    c[(c.abs() < eps) & (c >= 0)] = eps
    return c


def one_class_loss(dist):
    """One-class Deep SVDD: mean squared distance to the centre, (1/n) sum_i ||phi(x_i) - c||^2."""
    return dist.mean()


def soft_boundary_loss(dist, R, nu):
    """Soft-boundary Deep SVDD: R^2 + 1/(nu n) sum_i max(0, ||phi(x_i) - c||^2 - R^2)."""
    return R ** 2 + F.relu(dist - R ** 2).mean() / nu


def radius_from_distances(dist, nu):
    """R: the (1 - nu)-quantile of the distances ||phi(x_i) - c|| (the paper's line search for R)."""
    return torch.quantile(dist.detach().sqrt(), 1 - nu)


class LeNetDecoder(nn.Module):
    """Mirror of the encoder for autoencoder pre-training: ``[N, rep_dim] -> [N, C, H, W]``."""

    def __init__(self, in_channels=1, image_size=28, channels=(8, 4), rep_dim=32, bias=False):
        super().__init__()
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)  # (H, W)
        self.side = tuple(v // 2 ** len(channels) for v in self.size)
        self.c0 = channels[-1]
        self.fc = nn.Linear(rep_dim, self.c0 * self.side[0] * self.side[1], bias=bias)
        layers, c = [], self.c0
        for c_out in list(channels[::-1][1:]) + [in_channels]:
            layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c, c_out, 5, padding=2, bias=bias)]
            if c_out != in_channels:
                layers += [nn.BatchNorm2d(c_out, eps=1e-4, affine=bias), nn.LeakyReLU(0.01)]
            c = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        x = self.net(F.leaky_relu(self.fc(z).view(len(z), self.c0, *self.side), 0.01))
        if x.shape[-2:] != self.size:  # a side not divisible by 2^blocks: back to the image's size
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def pretrain_autoencoder(encoder, decoder, images, epochs=10, lr=1e-3, batch_size=64, weight_decay=1e-6,
                         device="cpu", progress=True):
    """Train encoder + decoder to reconstruct the normal images (mean squared error); returns the losses."""
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in tqdm(range(epochs), desc="AE pre-training", disable=not progress, leave=False):
        encoder.train(), decoder.train()
        total = 0.0
        for idx in torch.randperm(len(images)).split(batch_size):
            x = images[idx].to(device)
            loss = F.mse_loss(decoder(encoder(x)), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
    return losses


def svdd_epoch(net, images, c, opt, objective="one-class", R=0.0, nu=0.1, update_R=False, batch_size=64,
               device="cpu"):
    """One epoch of Deep SVDD over ``images`` in random mini-batches; returns ``(mean loss, R)``.

    ``update_R`` (soft-boundary only; the official code's rule after its warm-up epochs): after every
    mini-batch, R becomes the (1 - nu)-quantile of that mini-batch's distances.
    """
    net.train()
    total = 0.0
    for idx in torch.randperm(len(images)).split(batch_size):
        dist = ((net(images[idx].to(device)) - c) ** 2).sum(1)  # ||phi(x_i) - c||^2 of the mini-batch
        loss = one_class_loss(dist) if objective == "one-class" else soft_boundary_loss(dist, R, nu)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if update_R:
            R = radius_from_distances(dist, nu)
        total += loss.item() * len(idx)
    return total / len(images), R


class DeepSVDD:
    """Deep SVDD (Ruff et al., 2018) behind the course's detector interface.

    Args:
        objective: ``"one-class"`` or ``"soft-boundary"``.
        nu: the soft-boundary trade-off nu in (0, 1] (fraction of training points allowed outside).
        radius_update: soft-boundary, after the warm-up: ``"epoch"`` (R from all training images after each
            epoch, this lesson's default) or ``"batch"`` (after each mini-batch from its distances, the official code).
        channels, rep_dim: the LeNet-type encoder (rep_dim is the dimension of phi(x) and c).
        epochs, lr, weight_decay, batch_size: the SVDD training schedule (Adam).
        pretrain_epochs: autoencoder pre-training epochs (0 = none; the encoder starts random).
        bias, learn_center, batch_norm: switch on what the paper forbids (or off the BatchNorm it keeps).
    ``predict(images [N, C, H, W]) -> (pred_score [N], None)``: ||phi(x) - c||^2 (minus R^2 for soft-boundary).
    """

    def __init__(self, objective="one-class", nu=0.1, channels=(8, 4), rep_dim=32, epochs=20, lr=1e-3,
                 weight_decay=1e-6, batch_size=64, pretrain_epochs=0, eps=0.1, bias=False, learn_center=False,
                 batch_norm=True, radius_update="epoch", device="cpu", seed=0, progress=True):
        self.objective = argcheck.choice("objective", objective, ("one-class", "soft-boundary"))
        self.nu = argcheck.real("nu", nu, 0, 1, low_open=True, why="the fraction of training images outside")
        self.radius_update = argcheck.choice("radius_update", radius_update, ("epoch", "batch"))
        self.channels, self.rep_dim = argcheck.wholes("channels", channels), argcheck.whole("rep_dim", rep_dim)
        self.epochs, self.batch_size = argcheck.whole("epochs", epochs), argcheck.whole("batch_size", batch_size)
        self.pretrain_epochs = argcheck.whole("pretrain_epochs", pretrain_epochs, minimum=0)
        self.lr = argcheck.real("lr", lr, 0, low_open=True, why="Adam's learning rate")
        self.weight_decay = argcheck.real("weight_decay", weight_decay, 0)
        self.eps = argcheck.real("eps", eps, 0, low_open=True, why="the smallest |c_k|")
        self.bias, self.learn_center, self.batch_norm = bias, learn_center, batch_norm
        self.device, self.seed, self.progress = torch.device(device), seed, progress
        self.history = {}

    @torch.no_grad()
    def embed(self, images):
        """phi(x): ``[N, C, H, W] -> [N, rep_dim]`` (eval mode: BatchNorm uses its running statistics)."""
        if not hasattr(self, "net"):
            raise RuntimeError("DeepSVDD.embed was called before fit: call DeepSVDD(...).fit(train) first.")
        self.net.eval()
        return torch.cat([self.net(images[i:i + 256].to(self.device)) for i in range(0, len(images), 256)])

    @torch.no_grad()
    def predict(self, images):
        images = check_input(self, images)  # a clear error before fit, or for other channels / size
        dist = ((self.embed(images) - self.c) ** 2).sum(1)
        score = dist - self.R ** 2 if self.objective == "soft-boundary" else dist
        return score.cpu(), None


def deep_svdd_fit(self, train_dataset):
    """DeepSVDD.fit: build phi, pre-train it (optionally), fix c, then train; returns the fitted detector."""
    torch.manual_seed(self.seed)
    images = training_images(train_dataset)
    n, ch, h, w = images.shape
    if n < 2 or min(h, w) < 2 ** len(self.channels):
        raise ValueError(f"Deep SVDD needs at least 2 training images of at least {2 ** len(self.channels)} px "
                         f"per side ({len(self.channels)} pooling blocks); got {n} of {h} x {w}.")
    self.net = LeNetEncoder(ch, (h, w), self.channels, self.rep_dim, self.bias, self.batch_norm).to(self.device)
    if self.pretrain_epochs:
        decoder = LeNetDecoder(ch, (h, w), self.channels, self.rep_dim, self.bias).to(self.device)
        self.history["ae_loss"] = pretrain_autoencoder(
            self.net, decoder, images, self.pretrain_epochs, self.lr, self.batch_size, self.weight_decay,
            self.device, self.progress)
    self.c = init_center(self.net, images.to(self.device), self.eps)  # c from an initial forward pass
    self.R = torch.tensor(0.0, device=self.device)  # radius (soft-boundary only)
    params = list(self.net.parameters())
    if self.learn_center:  # the trap: c becomes a parameter, so c = phi(x) = 0 is reachable
        self.c = nn.Parameter(self.c.clone())
        params.append(self.c)
    opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
    # embedding_std[0]: the spread of phi(x) before training; then one entry per epoch
    self.history.update(loss=[], embedding_std=[self.embed(images[:256]).std(0).mean().item()])
    for epoch in tqdm(range(self.epochs), desc="Deep SVDD", disable=not self.progress, leave=False):
        fit_R = self.objective == "soft-boundary" and epoch >= min(5, self.epochs // 2)  # after the warm-up
        loss, self.R = svdd_epoch(self.net, images, self.c, opt, self.objective, self.R, self.nu,
                                  fit_R and self.radius_update == "batch", self.batch_size, self.device)
        if fit_R and self.radius_update == "epoch":  # on the distances predict() sees (eval mode)
            self.R = radius_from_distances(((self.embed(images) - self.c) ** 2).sum(1), self.nu)
        self.history["loss"].append(loss)
        self.history["embedding_std"].append(self.embed(images[:256]).std(0).mean().item())
    remember_input(self, images)
    return self


DeepSVDD.fit = deep_svdd_fit  # a method of the class above, in a cell of its own (short cells)
