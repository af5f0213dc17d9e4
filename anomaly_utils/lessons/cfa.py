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


@torch.no_grad()
def location_mean_bank(phi_maps: torch.Tensor, gamma_c: int = 1, seed: int = 0) -> torch.Tensor:
    """The official code's memory bank: the mean descriptor of every patch position over the training images.

    ``phi_maps [N, D, h, w] -> C [h * w / gamma_c, D]``: C_ij = 1/N sum_n phi(p(x_n))_ij (the code keeps it as a
    running mean over batches, C <- (i C + mean of batch i) / (i + 1), which is the same average), one feature per
    position in ``to_patches`` order; only when ``gamma_c > 1`` does k-means compress the h * w means to h * w / gamma_c.
    """
    C = to_patches(phi_maps.mean(0, keepdim=True))  # [h * w, D]
    if gamma_c > 1:
        C = kmeans(C, max(1, len(C) // gamma_c), seed=seed)
    return C


def cfa_loss(phi: torch.Tensor, C: torch.Tensor, K: int = 3, J: int = 3, r=1e-5, alpha: float = 0.1,
             return_active: bool = False):
    """CFA's coupled-hypersphere losses for patch descriptors ``phi [T, D]`` and memory bank ``C [M, D]``.

    D(phi, c) is the squared Euclidean distance. With c_t^k the K nearest memorised features of
    patch t and c_t^j the J next ones (the (K+1)-th to (K+J)-th, hard negatives):
        L_att = 1/(TK) sum_t sum_k max(0, D(phi_t, c_t^k) - r^2)
        L_rep = 1/(TJ) sum_t sum_j max(0, r^2 - D(phi_t, c_t^j) - alpha)
    ``r`` is a float or a (learnable) tensor. Returns ``(L_att, L_rep)`` (scalars, differentiable w.r.t. phi
    and r); with ``return_active=True`` also the fraction of repulsion terms whose hinge is open (> 0).
    """
    dist, _ = nearest_neighbours(phi, C, k=K + J, squared=True)  # [T, K + J], nearest first
    L_att = F.relu(dist[:, :K] - r ** 2).mean()
    rep = r ** 2 - dist[:, K:K + J] - alpha
    L_rep = F.relu(rep).mean()
    if return_active:
        return L_att, L_rep, (rep > 0).float().mean().item()
    return L_att, L_rep


def softmin_score(phi: torch.Tensor, C: torch.Tensor, K: int = 3, squared: bool = False) -> torch.Tensor:
    """CFA's anomaly score of each patch: ``phi [T, D] -> [T]``.

    s_t = softmin(d_t^1, ..., d_t^K)_1 * d_t^1 with d_t^k the distance to the k-th nearest memorised feature:
    the distance to the nearest one, weighted by how clearly it is the nearest. The official code takes the
    Euclidean distance (``squared=False``, the default); the paper writes the squared distance D
    (``squared=True``). The soft-min weights differ between the two, so patch rankings differ.
    """
    dist, _ = nearest_neighbours(phi, C, k=K, squared=squared)  # [T, K]
    return F.softmin(dist, dim=1)[:, 0] * dist[:, 0]


class CFA:
    """Coupled-hypersphere-based Feature Adaptation (Lee et al., 2022) as a detector.

    fit: frozen patch features p (``PatchEmbedding``), descriptor phi = ``CoordConv2d``, memory bank C
    of T / gamma_c features built with the untrained phi (``bank="location_mean"``: the official code's
    mean per position; ``"ema"``: the paper's k-means + EMA), then phi (and r, when ``learn_r``, as in the
    official code) is trained for ``epochs`` epochs on L_CFA = L_att + L_rep with C held fixed.
    ``r="auto"`` starts r at the square root of the median squared distance of the untrained descriptors to
    their K-th nearest memorised feature, so both hinges are open for part of the terms from the start;
    ``r=1e-5, learn_r=False`` is the paper's setting (then L_rep is always 0).
    predict: ``images [N, C, H, W] -> (pred_score [N], anomaly_map [N, H, W])``: the soft-min score
    per patch (``squared_score=False``: on Euclidean distances, as the official code), upsampled,
    smoothed with a Gaussian (sigma 4); ``pred_score`` is the map's maximum.
    """

    def __init__(self, embedding: PatchEmbedding | None = None, gamma_c: int = 1, gamma_d: int = 1,
                 K: int = 3, J: int = 3, r: float | str = "auto", alpha: float = 0.1, beta: float = 0.1,
                 epochs: int = 10, lr: float = 1e-3, batch_size: int = 8, sigma: float = 4.0,
                 seed: int = 0, progress: bool = False, on_epoch=None, bank: str = "location_mean",
                 learn_r: bool = True, squared_score: bool = False):
        if bank not in ("location_mean", "ema"):
            raise ValueError(f"bank must be 'location_mean' or 'ema', got {bank!r}")
        self.embedding = embedding
        self.bank, self.learn_r, self.squared_score = bank, learn_r, squared_score
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
        with torch.no_grad():  # C: T / gamma_c memorised features, built once with the untrained phi
            if self.bank == "ema":  # the paper: k-means of the first image, then EMA over the others
                self.memory_bank = build_memory_bank((self.descriptors(p[i:i + 1]) for i in range(n)),
                                                     n_memory=max(self.K + self.J, h * w // self.gamma_c),
                                                     beta=self.beta, seed=self.seed)
            else:  # the official code: the mean descriptor per position
                self.memory_bank = location_mean_bank(torch.cat([self.descriptor(p[i:i + 64])
                                                                 for i in range(0, n, 64)]), self.gamma_c, self.seed)
            r0 = self.r
            if r0 == "auto":  # r^2 = median squared distance to the K-th nearest memorised feature
                d, _ = nearest_neighbours(self.descriptors(p[: min(n, 32)]), self.memory_bank, k=self.K, squared=True)
                r0 = d[:, -1].median().sqrt().item()
        self.radius = torch.nn.Parameter(torch.tensor(float(r0)), requires_grad=self.learn_r)
        params = list(self.descriptor.parameters()) + ([self.radius] if self.learn_r else [])
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=5e-4, amsgrad=True)
        g = torch.Generator().manual_seed(self.seed)
        self.history = {"L_att": [], "L_rep": [], "rep_active": [], "r": []}
        for epoch in tqdm(range(self.epochs), desc="CFA", disable=not self.progress):
            sums = torch.zeros(3)
            for idx in torch.randperm(n, generator=g).split(self.batch_size):
                L_att, L_rep, active = cfa_loss(self.descriptors(p[idx]), self.memory_bank, self.K, self.J,
                                                self.radius, self.alpha, return_active=True)
                opt.zero_grad()
                (L_att + L_rep).backward()
                opt.step()
                sums += torch.tensor([L_att.item(), L_rep.item(), active]) * len(idx)
            self.history["L_att"].append(sums[0].item() / n)
            self.history["L_rep"].append(sums[1].item() / n)
            self.history["rep_active"].append(sums[2].item() / n)  # share of repulsion terms with an open hinge
            self.history["r"].append(self.radius.item())
            if self.on_epoch is not None:
                self.on_epoch(epoch + 1, self)
        return self

    @torch.no_grad()
    def predict_embedding(self, p: torch.Tensor, image_size):
        """``predict`` from precomputed patch features ``p [N, D, h, w]`` (the backbone is frozen)."""
        n, _, h, w = p.shape
        scores = softmin_score(self.descriptors(p), self.memory_bank, self.K, self.squared_score).view(n, 1, h, w)
        anomaly_map = F.interpolate(scores, size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]
        anomaly_map = gaussian_blur(anomaly_map, self.sigma)
        return anomaly_map.amax(dim=(1, 2)), anomaly_map

    @torch.no_grad()
    def predict(self, images: torch.Tensor):
        return self.predict_embedding(self.embed(images), images.shape[-2:])


def fit_on_val_schedule(make_cfa, train_dataset, val_dataset, max_epochs: int, embedding=None):
    """Train ``make_cfa(epochs=max_epochs, on_epoch=...)`` and keep the epoch best on the validation split.

    The criterion is the mean of image and pixel AUROC on ``val_dataset`` (normal and defective crops from a
    region of the photo that the test split never uses), checked after every epoch (epoch 0: the untrained phi).
    Returns ``(detector restored to its best epoch, best_epoch, curve [(epoch, image AUROC, pixel AUROC)])``.
    """
    import copy

    from anomaly_utils import metrics

    curve, best = [], {"score": -1.0}
    p_val = None

    def check(epoch, det):
        nonlocal p_val
        if p_val is None:
            p_val = det.embed(val_dataset.images)
        scores, maps = det.predict_embedding(p_val, val_dataset.image_size)
        ia, pa = metrics.image_auroc(val_dataset.labels, scores), metrics.pixel_auroc(val_dataset.masks, maps)
        curve.append((epoch, ia, pa))
        if (ia + pa) / 2 > best["score"]:
            best.update(score=(ia + pa) / 2, epoch=epoch, state=copy.deepcopy(det.descriptor.state_dict()),
                        r=det.radius.detach().clone())

    det = make_cfa(epochs=0, embedding=embedding).fit(train_dataset)  # epoch 0: the same untrained phi and bank
    check(0, det)
    det = make_cfa(epochs=max_epochs, on_epoch=check, embedding=det.embedding).fit(train_dataset)
    det.descriptor.load_state_dict(best["state"])
    det.radius.data.copy_(best["r"])
    det.best_epoch = best["epoch"]
    return det, best["epoch"], curve
