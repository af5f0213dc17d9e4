"""Generated from notebooks/08_cfa.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_utils.cfa_support import check_bank_size, check_cfa_args
from anomaly_utils.detector import check_input, remember_input, training_images
from anomaly_utils.lessons.memory_bank import (PatchEmbedding, gaussian_blur, greedy_coreset_fast, nearest_neighbours,
                                               to_patches)


class CoordConv2d(nn.Module):
    """CFA's patch descriptor phi: a 1 x 1 convolution over the patch features plus two coordinate channels.

    ``forward(p [N, D, h, w]) -> phi(p) [N, D_out, h, w]``; the extra channels hold the patch's
    x and y position in [-1, 1], so phi can treat the image border differently from the centre.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size=1)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        n, _, h, w = p.shape
        yy = torch.linspace(-1, 1, h, device=p.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xx = torch.linspace(-1, 1, w, device=p.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return self.conv(torch.cat([p, xx, yy], dim=1))

    @torch.no_grad()
    def identity_(self) -> "CoordConv2d":
        """phi(p) = p (the first D_out features): weight 1 on the diagonal, 0 for the coordinates and the bias."""
        self.conv.weight.zero_()
        self.conv.bias.zero_()
        self.conv.weight[:, :-2, 0, 0] = torch.eye(self.conv.out_channels, self.conv.in_channels - 2)
        return self


def kmeans(x: torch.Tensor, n_clusters: int, n_iter: int = 30, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means: ``x [T, D] -> centres [n_clusters, D]`` (assignments by ``nearest_neighbours``)."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:n_clusters]].clone()
    for _ in range(n_iter):
        _, assign = nearest_neighbours(x, centres, k=1)
        sums = torch.zeros_like(centres).index_add_(0, assign[:, 0], x)
        counts = torch.bincount(assign[:, 0], minlength=len(centres)).unsqueeze(1)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # an empty cluster keeps its centre
        if torch.allclose(new, centres):
            break
        centres = new
    return centres


@torch.no_grad()
def build_memory_bank(phi_images, n_memory: int, beta: float = 0.1, seed: int = 0) -> torch.Tensor:
    """CFA's memory bank C of fixed size ``n_memory``, whatever the number of training images.

    ``phi_images``: an iterable of per-image patch descriptors ``[T, D]`` (T patches of image x_i).
    C_0 = k-means of the first image's T patches into ``n_memory`` centres; then for every later
    image x_i: C_i^NN = the patch of x_i nearest to each memorised feature, and
    C_i <- (1 - beta) C_{i-1} + beta C_i^NN (an exponential moving average). Returns C ``[n_memory, D]``.
    """
    C = None
    for phi in phi_images:
        if C is None:
            C = kmeans(phi, n_memory, seed=seed)  # C_0
            continue
        _, nn_idx = nearest_neighbours(C, phi, k=1)  # for each c in C_{i-1}: its nearest patch of x_i
        C = (1 - beta) * C + beta * phi[nn_idx[:, 0]]  # C_i <- (1 - beta) C_{i-1} + beta C_i^NN
    return C


@torch.no_grad()
def location_mean_bank(phi_maps: torch.Tensor, gamma_c: float = 1, seed: int = 0) -> torch.Tensor:
    """The official code's memory bank: the mean descriptor of every patch position over the training images.

    ``phi_maps [N, D, h, w] -> C [h * w / gamma_c, D]``: C_ij = 1/N sum_n phi(p(x_n))_ij (the code keeps it as a
    running mean over batches, C <- (i C + mean of batch i) / (i + 1), which is the same average), one feature per
    position in ``to_patches`` order; only when ``gamma_c > 1`` does k-means compress the h * w means to h * w / gamma_c.
    """
    C = to_patches(phi_maps.mean(0, keepdim=True))  # [h * w, D]
    if gamma_c > 1:
        C = kmeans(C, max(1, round(len(C) / gamma_c)), seed=seed)
    return C


@torch.no_grad()
def coreset_bank(phi_patches: torch.Tensor, n_memory: int, seed: int = 0) -> torch.Tensor:
    """Our memory bank: ``phi_patches [N * T, D] -> C [n_memory, D]``, a greedy k-centre coreset (lesson 07).

    Every training descriptor ends near a memorised one (the coreset minimises the largest such distance, up to a
    factor 2), rare normal patches included. Fixed size, as CFA's bank; selection after a random projection to 128
    dimensions, as PatchCore's official code.
    """
    return phi_patches[greedy_coreset_fast(phi_patches, n_memory, projection_dim=128, seed=seed)]


@torch.no_grad()
def cfa_memory_bank(phi_maps: torch.Tensor, bank: str = "coreset", n_memory: int = 256, gamma_c: float = 1,
                    beta: float = 0.1, seed: int = 0) -> torch.Tensor:
    """The bank C [M, D'] of the untrained descriptors ``phi_maps [N, D', h, w]``: ``"coreset"`` (ours),
    ``"location_mean"`` (the official code) or ``"ema"`` (the paper)."""
    if bank == "location_mean":
        return location_mean_bank(phi_maps, gamma_c, seed)
    if bank == "ema":
        return build_memory_bank(to_patches(phi_maps).split(phi_maps.shape[-2] * phi_maps.shape[-1]), n_memory, beta, seed)
    return coreset_bank(to_patches(phi_maps), n_memory, seed)


def cfa_loss(phi: torch.Tensor, C: torch.Tensor, K: int = 3, J: int = 3, r=1e-5, alpha: float = 0.1,
             return_active: bool = False):
    """CFA's coupled-hypersphere losses for patch descriptors ``phi [T, D]`` and memory bank ``C [M, D]``, M >= K + J.

    D(phi, c) is the squared Euclidean distance. With c_t^k the K nearest memorised features of
    patch t and c_t^j the J next ones (the (K+1)-th to (K+J)-th, hard negatives):
        L_att = 1/(TK) sum_t sum_k max(0, D(phi_t, c_t^k) - r^2)
        L_rep = 1/(TJ) sum_t sum_j max(0, r^2 - D(phi_t, c_t^j) - alpha)   (0 when J = 0)
    ``r`` is a float or a (learnable) tensor. Returns ``(L_att, L_rep)`` (scalars, differentiable w.r.t. phi
    and r); with ``return_active=True`` also the fraction of repulsion terms whose hinge is open (> 0).
    """
    if len(C) < K + J:  # fewer memorised features than neighbours: the repulsion would average nothing (NaN)
        raise ValueError(f"cfa_loss needs a memory bank of at least K + J = {K + J} features, got {len(C)}.")
    dist, _ = nearest_neighbours(phi, C, k=K + J, squared=True)  # [T, K + J], nearest first
    L_att = F.relu(dist[:, :K] - r ** 2).mean()
    rep = r ** 2 - dist[:, K:K + J] - alpha
    L_rep = F.relu(rep).mean() if J > 0 else L_att * 0
    if return_active:
        return L_att, L_rep, (rep > 0).float().mean().item() if J > 0 else 0.0
    return L_att, L_rep


@torch.no_grad()
def data_radius(phi: torch.Tensor, C: torch.Tensor, K: int = 3) -> float:
    """``r="auto"``: r^2 = the median squared distance of the descriptors ``phi [T, D]`` to their K-th nearest
    memorised feature, so that both hinges are open for part of the terms from the first step."""
    d, _ = nearest_neighbours(phi, C, k=K, squared=True)
    return d[:, -1].median().sqrt().item()


def softmin_score(phi: torch.Tensor, C: torch.Tensor, K: int = 3, squared: bool = False) -> torch.Tensor:
    """CFA's anomaly score of each patch: ``phi [T, D] -> [T]``.

    s_t = softmin(d_t^1, ..., d_t^K)_1 * d_t^1 with d_t^k the distance to the k-th nearest memorised feature:
    the distance to the nearest one, weighted by how clearly it is the nearest. The official code takes the
    Euclidean distance (``squared=False``, the default); the paper writes the squared distance D
    (``squared=True``). With ``K=1`` it is the plain nearest distance (lesson 07's kNN score).
    """
    dist, _ = nearest_neighbours(phi, C, k=K, squared=squared)  # [T, K]
    return F.softmin(dist, dim=1)[:, 0] * dist[:, 0]


def adapt(phi: CoordConv2d, radius: torch.Tensor, p: torch.Tensor, C: torch.Tensor, K: int = 3, J: int = 3,
          alpha: float = 0.1, epochs: int = 1, lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
          on_epoch=None, progress: bool = False) -> dict:
    """Train the descriptor ``phi`` (and ``radius`` when it requires a gradient) on L_CFA = L_att + L_rep.

    ``p [N, D, h, w]``: the frozen patch features of the training images; ``C [M, D']``: the fixed memory bank.
    ``on_epoch(epoch)`` is called after every epoch. Returns the history: per epoch the mean L_att and L_rep, the
    share of open repulsion hinges and r.
    """
    from tqdm.auto import tqdm

    params = list(phi.parameters()) + ([radius] if radius.requires_grad else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4, amsgrad=True)
    g = torch.Generator().manual_seed(seed)
    history = {"L_att": [], "L_rep": [], "rep_active": [], "r": []}
    for epoch in tqdm(range(epochs), desc="CFA", disable=not progress):
        sums = torch.zeros(3)
        for idx in torch.randperm(len(p), generator=g).split(batch_size):
            L_att, L_rep, active = cfa_loss(to_patches(phi(p[idx])), C, K, J, radius, alpha, return_active=True)
            opt.zero_grad()
            (L_att + L_rep).backward()
            opt.step()
            sums += torch.tensor([L_att.item(), L_rep.item(), active]) * len(idx)
        for key, value in zip(["L_att", "L_rep", "rep_active"], (sums / len(p)).tolist()):
            history[key].append(value)
        history["r"].append(radius.item())
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return history


class CFA:
    """Coupled-hypersphere-based Feature Adaptation (Lee et al., 2022) as a detector.

    fit: frozen patch features p -> phi = ``CoordConv2d`` (``init`` "identity" or "random") -> a bank of M = T / gamma_c
    features from the untrained phi, then fixed (``bank``: "coreset" ours, "location_mean" official code, "ema" paper)
    -> r (a number, or "auto": the data's scale) -> ``adapt`` for ``epochs`` epochs.
    predict: ``images [N, C, H, W] -> (pred_score [N], anomaly_map [N, H, W])``: ``softmin_score`` over the
    ``score_k`` nearest memorised features (1: the nearest distance), upsampled, smoothed; the score is the map's max.
    """

    def __init__(self, embedding: PatchEmbedding | None = None, bank: str = "coreset", gamma_c: float | None = None,
                 gamma_d: int = 1, K: int = 3, J: int = 3, r: float | str = 1e-5, learn_r: bool = True,
                 alpha: float = 0.1, beta: float = 0.1, init: str = "identity", score_k: int = 1, epochs: int = 1,
                 lr: float = 1e-3, batch_size: int = 8, sigma: float = 4.0, squared_score: bool = False,
                 seed: int = 0, progress: bool = False, on_epoch=None):
        self.__dict__.update(check_cfa_args(**{k: v for k, v in locals().items() if k != "self"}))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            self.embedding = PatchEmbedding()
        return self.embedding.batched(images)

    def descriptors(self, p: torch.Tensor) -> torch.Tensor:
        """phi(p): ``[N, D, h, w] -> [N * h * w, D']`` (one row per patch)."""
        return to_patches(self.descriptor(p))

    def fit(self, train_dataset):
        p = self.embed(training_images(train_dataset))  # frozen features [N, D, h, w]
        torch.manual_seed(self.seed)
        self.descriptor = CoordConv2d(p.shape[1], p.shape[1] // self.gamma_d)
        if self.init == "identity":
            self.descriptor.identity_()
        n, _, h, w = p.shape
        M = check_bank_size(self, n, h, w)  # M = T / gamma_c (1/4 for the coreset, else 1), at least K + J
        with torch.no_grad():  # C: built once with the untrained phi, then fixed
            self.memory_bank = cfa_memory_bank(self.descriptor(p), self.bank, M, self.gamma_c, self.beta, self.seed)
        r0 = data_radius(self.descriptors(p[:32]), self.memory_bank, self.K) if self.r == "auto" else self.r
        self.radius = nn.Parameter(torch.tensor(float(r0)), requires_grad=self.learn_r)
        remember_input(self, train_dataset.images)
        epoch_done = None if self.on_epoch is None else (lambda epoch: self.on_epoch(epoch, self))
        if epoch_done:
            epoch_done(0)  # epoch 0: the untrained phi
        self.history = adapt(self.descriptor, self.radius, p, self.memory_bank, self.K, self.J, self.alpha,
                             self.epochs, self.lr, self.batch_size, self.seed, epoch_done, self.progress)
        return self

    @torch.no_grad()
    def predict_embedding(self, p: torch.Tensor, image_size):
        """``predict`` from precomputed patch features ``p [N, D, h, w]`` (the backbone is frozen)."""
        n, _, h, w = p.shape
        scores = softmin_score(self.descriptors(p), self.memory_bank, self.score_k, self.squared_score)
        upsampled = F.interpolate(scores.view(n, 1, h, w), size=tuple(image_size), mode="bilinear", align_corners=False)
        anomaly_map = gaussian_blur(upsampled[:, 0], self.sigma)
        return anomaly_map.amax(dim=(1, 2)), anomaly_map

    @torch.no_grad()
    def predict(self, images: torch.Tensor):
        images = check_input(self, images, same_size=self.bank == "location_mean")  # a bank per training position
        return self.predict_embedding(self.embed(images), images.shape[-2:])
