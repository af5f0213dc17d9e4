"""Generated from notebooks/08_cfa.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_utils.lessons.memory_bank import PatchEmbedding, gaussian_blur, nearest_neighbours, to_patches


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


def cfa_loss(phi: torch.Tensor, C: torch.Tensor, K: int = 3, J: int = 3, r: float = 1e-5, alpha: float = 0.1):
    """CFA's coupled-hypersphere losses for patch descriptors ``phi [T, D]`` and memory bank ``C [M, D]``.

    D(phi, c) is the squared Euclidean distance. With c_t^k the K nearest memorised features of
    patch t and c_t^j the J next ones (the (K+1)-th to (K+J)-th, hard negatives):
        L_att = 1/(TK) sum_t sum_k max(0, D(phi_t, c_t^k) - r^2)
        L_rep = 1/(TJ) sum_t sum_j max(0, r^2 - D(phi_t, c_t^j) - alpha)
    Returns ``(L_att, L_rep)`` (scalars, differentiable w.r.t. phi).
    """
    dist, _ = nearest_neighbours(phi, C, k=K + J, squared=True)  # [T, K + J], nearest first
    L_att = F.relu(dist[:, :K] - r ** 2).mean()
    L_rep = F.relu(r ** 2 - dist[:, K:K + J] - alpha).mean()
    return L_att, L_rep


def softmin_score(phi: torch.Tensor, C: torch.Tensor, K: int = 3) -> torch.Tensor:
    """CFA's anomaly score of each patch: ``phi [T, D] -> [T]``.

    s_t = softmin(D(phi_t, c_t^1), ..., D(phi_t, c_t^K))_1 * D(phi_t, c_t^1): the distance to the
    nearest memorised feature, weighted by how clearly it is the nearest.
    """
    dist, _ = nearest_neighbours(phi, C, k=K, squared=True)  # [T, K]
    return F.softmin(dist, dim=1)[:, 0] * dist[:, 0]


class CFA:
    """Coupled-hypersphere-based Feature Adaptation (Lee et al., 2022) as a detector.

    fit: frozen patch features p (``PatchEmbedding``), descriptor phi = ``CoordConv2d``, memory bank C
    of T / gamma_c features (``build_memory_bank`` with the untrained phi), then phi is trained for a
    fixed number of ``epochs`` on L_CFA = L_att + L_rep with C held fixed.
    predict: ``images [N, C, H, W] -> (pred_score [N], anomaly_map [N, H, W])``: the soft-min score
    per patch, upsampled, smoothed with a Gaussian (sigma 4); ``pred_score`` is the map's maximum.
    """

    def __init__(self, embedding: PatchEmbedding | None = None, gamma_c: int = 1, gamma_d: int = 1,
                 K: int = 3, J: int = 3, r: float = 1e-5, alpha: float = 0.1, beta: float = 0.1,
                 epochs: int = 10, lr: float = 1e-3, batch_size: int = 8, sigma: float = 4.0,
                 seed: int = 0, progress: bool = False, on_epoch=None):
        self.embedding = embedding
        self.gamma_c, self.gamma_d, self.K, self.J, self.r, self.alpha = gamma_c, gamma_d, K, J, r, alpha
        self.beta, self.epochs, self.lr, self.batch_size = beta, epochs, lr, batch_size
        self.sigma, self.seed, self.progress = sigma, seed, progress
        self.on_epoch = on_epoch  # optional callback(epoch, detector) after each epoch, e.g. a validation check

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            self.embedding = PatchEmbedding()
        return self.embedding.batched(images)

    def descriptors(self, p: torch.Tensor) -> torch.Tensor:
        """phi(p): ``[N, D, h, w] -> [N * h * w, D']`` (one row per patch)."""
        return to_patches(self.descriptor(p))

    def fit(self, train_dataset):
        from tqdm.auto import tqdm

        torch.manual_seed(self.seed)
        p = self.embed(train_dataset.images)  # frozen features [N, D, h, w]
        n, D, h, w = p.shape
        self.descriptor = CoordConv2d(D, D // self.gamma_d)
        with torch.no_grad():  # C: T / gamma_c memorised features, k-means + EMA over the training images
            self.memory_bank = build_memory_bank((self.descriptors(p[i:i + 1]) for i in range(n)),
                                                 n_memory=max(self.K + self.J, h * w // self.gamma_c),
                                                 beta=self.beta, seed=self.seed)
        opt = torch.optim.AdamW(self.descriptor.parameters(), lr=self.lr, weight_decay=5e-4, amsgrad=True)
        g = torch.Generator().manual_seed(self.seed)
        self.history = {"L_att": [], "L_rep": []}
        for epoch in tqdm(range(self.epochs), desc="CFA", disable=not self.progress):
            sums = torch.zeros(2)
            for idx in torch.randperm(n, generator=g).split(self.batch_size):
                L_att, L_rep = cfa_loss(self.descriptors(p[idx]), self.memory_bank, self.K, self.J, self.r,
                                        self.alpha)
                opt.zero_grad()
                (L_att + L_rep).backward()
                opt.step()
                sums += torch.stack([L_att.detach(), L_rep.detach()]) * len(idx)
            self.history["L_att"].append(sums[0].item() / n)
            self.history["L_rep"].append(sums[1].item() / n)
            if self.on_epoch is not None:
                self.on_epoch(epoch + 1, self)
        return self

    @torch.no_grad()
    def predict_embedding(self, p: torch.Tensor, image_size):
        """``predict`` from precomputed patch features ``p [N, D, h, w]`` (the backbone is frozen)."""
        n, _, h, w = p.shape
        scores = softmin_score(self.descriptors(p), self.memory_bank, self.K).view(n, 1, h, w)
        anomaly_map = F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]
        anomaly_map = gaussian_blur(anomaly_map, self.sigma)
        return anomaly_map.amax(dim=(1, 2)), anomaly_map

    @torch.no_grad()
    def predict(self, images: torch.Tensor):
        return self.predict_embedding(self.embed(images), images.shape[-2:])
