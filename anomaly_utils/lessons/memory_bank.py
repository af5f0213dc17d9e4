"""Generated from notebooks/07_memory_bank.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_utils.backbones import FeatureExtractor


def gaussian_blur(maps: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of anomaly maps: ``[N, H, W] -> [N, H, W]`` (PatchCore, PaDiM and CFA use sigma 4)."""
    if sigma <= 0:
        return maps
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    m = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    m = F.conv2d(m, kernel.view(1, 1, 1, -1))  # along rows
    m = F.conv2d(m, kernel.view(1, 1, -1, 1))  # along columns
    return m[:, 0]


class PatchEmbedding(nn.Module):
    """Locally aware patch features from a frozen ImageNet backbone (PatchCore's recipe).

    Each chosen stage is averaged over a ``pool`` x ``pool`` neighbourhood (local aggregation), the
    coarser stages are upsampled bilinearly to the grid of the first one, and all are concatenated.
    ``forward(images [N, 1|3, H, W] in [0, 1]) -> embedding [N, D, H / s, W / s]`` with s the
    stride of the first block (8 for blocks (4, 10): D = 40 + 112 = 152).
    """

    def __init__(self, blocks=(4, 10), pool: int = 3, extractor: nn.Module | None = None):
        super().__init__()
        self.extractor = extractor if extractor is not None else FeatureExtractor(blocks)
        self.pool = pool

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.extractor(images)
        # local neighbourhood aggregation: each patch sees its 3 x 3 neighbours at every stage
        feats = [F.avg_pool2d(f, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
                 for f in feats]
        size = feats[0].shape[-2:]
        feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                 for f in feats]
        return torch.cat(feats, dim=1)

    def batched(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """``forward`` over many images in batches, on the backbone's device; result on the CPU."""
        device = next(self.extractor.parameters()).device
        return torch.cat([self(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])


def to_patches(embedding: torch.Tensor) -> torch.Tensor:
    """``[N, D, h, w] -> [N * h * w, D]``: one row per patch (the memory bank's layout)."""
    return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def show_maps(images, anomaly_maps, masks=None, titles=None, vmax=None):
    """Three rows per column: the image plain, the image with its mask outline (red), the heatmap overlay.

    One colour scale for all heatmaps (from the lowest value to the 99.9 % quantile of the maps shown).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    def to_np(x):
        return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    images, maps = to_np(images), to_np(anomaly_maps)
    masks = None if masks is None else to_np(masks)
    n = len(images)
    vmax = float(np.quantile(maps, 0.999)) if vmax is None else vmax
    vmin = float(maps.min())
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.6), squeeze=False)
    for k in range(n):
        img = images[k].transpose(1, 2, 0)
        img = img[..., 0] if img.shape[-1] == 1 else img
        for row in range(3):
            axes[row, k].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[row, k].set_xticks([]), axes[row, k].set_yticks([])
        im = axes[2, k].imshow(maps[k], cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
        if masks is not None and masks[k].any():
            for row in (1, 2):
                axes[row, k].contour(masks[k], levels=[0.5], colors="red", linewidths=0.8)
        if titles is not None:
            axes[0, k].set_title(titles[k], fontsize=7)
    axes[0, 0].set_ylabel("input", fontsize=8), axes[1, 0].set_ylabel("with mask", fontsize=8)
    axes[2, 0].set_ylabel("anomaly map", fontsize=8)
    fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.8, pad=0.01)
    return fig


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, squared: bool = False,
                       query_chunk: int = 2048, bank_chunk: int = 65536):
    """The ``k`` nearest rows of ``bank`` for every row of ``queries`` (Euclidean), by chunked matrix products.

    ``queries [Q, D]``, ``bank [M, D]`` -> ``(distances [Q, k], indices [Q, k])``, nearest first.
    Memory is bounded by one ``query_chunk x bank_chunk`` block (2048 x 65536 floats = 512 MB),
    whatever Q and M are: ``||q - m||^2 = ||q||^2 - 2 q.m + ||m||^2``, one ``addmm`` per block, then a
    running top-k merged across the bank's blocks. ``squared=True`` returns squared distances.
    """
    k = min(k, len(bank))
    if len(queries) == 0:
        return queries.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    bank_sq = bank.pow(2).sum(1)  # ||m||^2  [M]
    all_d, all_i = [], []
    for q0 in range(0, len(queries), query_chunk):
        q = queries[q0:q0 + query_chunk]
        q_sq = q.pow(2).sum(1, keepdim=True)  # ||q||^2  [q, 1]
        best_d = best_i = None
        for m0 in range(0, len(bank), bank_chunk):
            m = bank[m0:m0 + bank_chunk]
            d2 = torch.addmm(bank_sq[m0:m0 + bank_chunk].unsqueeze(0), q, m.T, alpha=-2) + q_sq  # [q, m]
            d, i = d2.topk(min(k, len(m)), dim=1, largest=False)
            i = i + m0
            if best_d is not None:  # merge with the best of the earlier blocks
                d, j = torch.cat([best_d, d], 1).topk(k, dim=1, largest=False)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_d, best_i = d, i
        all_d.append(best_d)
        all_i.append(best_i)
    d = torch.cat(all_d).clamp_min(0)  # rounding can make a tiny distance negative
    return (d if squared else d.sqrt()), torch.cat(all_i)


class MemoryBankDetector:
    """Shared plumbing of the patch-feature detectors: embed, score every patch, upsample, smooth.

    Subclasses implement ``build(train_embedding [N, D, h, w])`` and
    ``patch_scores(embedding [N, D, h, w]) -> [N, h, w]``. ``predict(images [N, C, H, W])`` returns
    ``(pred_score [N], anomaly_map [N, H, W])``. ``image_score``: ``"map_max"`` (the maximum of the
    upsampled, smoothed map: PaDiM's official code) or ``"patch_max"`` (the maximum of the raw patch
    scores: PatchCore's official code).
    """

    def __init__(self, embedding: PatchEmbedding | None = None, sigma: float = 4.0, batch_size: int = 32,
                 image_score: str = "map_max"):
        if image_score not in ("map_max", "patch_max"):
            raise ValueError(f"image_score must be 'map_max' or 'patch_max', got {image_score!r}")
        self.embedding = embedding
        self.sigma = sigma
        self.batch_size = batch_size
        self.image_score = image_score

    def default_embedding(self) -> PatchEmbedding:
        return PatchEmbedding()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            self.embedding = self.default_embedding()
        return self.embedding.batched(images, self.batch_size)

    def fit(self, train_dataset):
        self.build(self.embed(train_dataset.images))
        return self

    def scores_to_output(self, scores: torch.Tensor, image_size):
        """Patch scores ``[N, h, w]`` -> ``(pred_score [N], anomaly_map [N, H, W])``."""
        anomaly_map = F.interpolate(scores[:, None], size=tuple(image_size), mode="bilinear",
                                    align_corners=False)[:, 0]
        anomaly_map = gaussian_blur(anomaly_map, self.sigma)
        pred = scores.amax(dim=(1, 2)) if self.image_score == "patch_max" else anomaly_map.amax(dim=(1, 2))
        return pred, anomaly_map

    @torch.no_grad()
    def predict(self, images: torch.Tensor):
        return self.scores_to_output(self.patch_scores(self.embed(images)), images.shape[-2:])


class KNNDetector(MemoryBankDetector):
    """SPADE-like: every training patch goes into the memory bank; a patch's score is the mean
    distance to its ``k`` nearest memorised patches. ``memory_bank [N * h * w, D]``."""

    def __init__(self, k: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.k = k

    def build(self, train_embedding):
        self.memory_bank = to_patches(train_embedding)

    def patch_scores(self, embedding):
        n, _, h, w = embedding.shape
        dist, _ = nearest_neighbours(to_patches(embedding), self.memory_bank, k=self.k)
        return dist.mean(1).view(n, h, w)


class PaDiM(MemoryBankDetector):
    """PaDiM: one Gaussian N(mu_ij, Sigma_ij) per patch position (i, j) on a random subset of ``d`` channels.

    Score of a patch x_ij: the Mahalanobis distance sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij)),
    with Sigma_ij = sample covariance + ``eps`` * I (the regulariser that makes it invertible).
    Fitted on one image size; ``mean [h*w, d]``, ``cov_inv [h*w, d, d]``. Without an ``embedding`` it
    uses the paper's: the first three stages (EfficientNet-Lite0 blocks 2, 4, 10: strides 4, 8, 16),
    no neighbourhood pooling, upsampled to the stride-4 grid and concatenated (D = 24 + 40 + 112 = 176).
    """

    def __init__(self, d: int = 100, eps: float = 0.01, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.d, self.eps, self.seed = d, eps, seed

    def default_embedding(self) -> PatchEmbedding:
        return PatchEmbedding(blocks=(2, 4, 10), pool=1)  # pool=1: no local averaging

    def build(self, train_embedding):
        n, D, h, w = train_embedding.shape
        g = torch.Generator().manual_seed(self.seed)
        self.channels = torch.randperm(D, generator=g)[: min(self.d, D)]  # random dimensionality reduction
        x = train_embedding[:, self.channels].flatten(2).permute(2, 0, 1)  # [h*w, N, d]
        self.mean = x.mean(1)  # mu_ij  [h*w, d]
        xc = x - self.mean[:, None]
        cov = xc.transpose(1, 2) @ xc / max(n - 1, 1)  # [h*w, d, d]
        cov = cov + self.eps * torch.eye(len(self.channels))
        self.cov_inv = torch.linalg.inv(cov)  # Sigma_ij^-1
        self.grid = (h, w)

    def patch_scores(self, embedding):
        n, _, h, w = embedding.shape
        if (h, w) != self.grid:
            raise ValueError(f"PaDiM was fitted on a {self.grid} patch grid but got {(h, w)}: "
                             "its Gaussians are per position, so use the training image size.")
        delta = embedding[:, self.channels].flatten(2).permute(2, 0, 1) - self.mean[:, None]  # [h*w, N, d]
        m2 = torch.einsum("lnd,lde,lne->ln", delta, self.cov_inv, delta)  # squared Mahalanobis
        return m2.clamp_min(0).sqrt().T.reshape(n, h, w)


def random_projection(features: torch.Tensor, projection_dim: int | None, generator: torch.Generator) -> torch.Tensor:
    """PatchCore's psi: ``features [N, D] @`` a Gaussian ``[D, projection_dim]`` matrix scaled by 1 / sqrt(projection_dim).

    Johnson-Lindenstrauss: distances are roughly kept. ``None`` (or ``projection_dim >= D``) returns the features.
    """
    if projection_dim is None or projection_dim >= features.shape[1]:
        return features
    psi = torch.randn(features.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
    return features @ psi.to(features)


def greedy_coreset(features: torch.Tensor, n: int, projection_dim: int | None = 128, seed: int = 0,
                   progress: bool = False) -> torch.Tensor:
    """PatchCore's greedy k-centre coreset: indices ``[n]`` of rows of ``features [N, D]``.

    Each step adds the point farthest from everything chosen so far (the 2-approximation of the
    minimax facility location problem). Distances are taken after a random Gaussian projection
    psi to ``projection_dim`` dimensions (Johnson-Lindenstrauss: distances are roughly kept),
    which makes each step's ``addmv`` cheaper; ``None`` uses the features themselves.
    """
    from tqdm.auto import tqdm

    n = min(n, len(features))
    g = torch.Generator().manual_seed(seed)
    z = random_projection(features, projection_dim, g)
    z_sq = z.pow(2).sum(1)  # ||z||^2  [N]
    zT = z.T.contiguous()  # [d*, N]: the layout in which the matrix-vector product reads memory fastest
    selected = torch.empty(n, dtype=torch.long)
    selected[0] = torch.randint(len(z), (1,), generator=g).item()
    min_dist = torch.full((len(z),), float("inf"), dtype=z.dtype)  # squared distance to the coreset
    for t in tqdm(range(1, n), desc="coreset", disable=not progress, mininterval=1):
        c = z[selected[t - 1]]
        d2 = torch.addmv(z_sq + c @ c, zT.t(), c, alpha=-2)  # ||z - c||^2 for all N points: one matrix-vector product
        torch.minimum(min_dist, d2, out=min_dist)
        selected[t] = torch.argmax(min_dist)
    return selected


def greedy_coreset_fast(features: torch.Tensor, n: int, projection_dim: int | None = 128, seed: int = 0,
                        candidate_fraction: float = 0.02, progress: bool = False) -> torch.Tensor:
    """``greedy_coreset``'s selection with lazy updates: the same indices up to float rounding of near-ties.

    ``min_dist`` only decreases and each step needs only its maximum. Candidates are the
    ``candidate_fraction`` of points farthest from the coreset at the last refresh (``min_dist >= tau``); only
    they are updated each step. All other points are below ``tau``, so while the best candidate is at or
    above ``tau`` it is the true argmax; when it drops below, every point is updated against the centres
    added since the last refresh (one ``addmm``) and new candidates are drawn.
    """
    from tqdm.auto import tqdm

    n = min(n, len(features))
    g = torch.Generator().manual_seed(seed)
    z = random_projection(features, projection_dim, g)
    z_sq = z.pow(2).sum(1)  # ||z||^2  [N]
    selected = torch.empty(n, dtype=torch.long)
    selected[0] = torch.randint(len(z), (1,), generator=g).item()
    min_dist = torch.full((len(z),), float("inf"), dtype=z.dtype)  # exact for the centres selected[:folded]
    folded, tau = 0, float("inf")  # tau = inf: the first step refreshes
    cand = torch.arange(len(z))  # candidate indices, their rows of z, their exact distances
    z_c, z_sq_c, cand_dist = z, z_sq, min_dist.clone()
    for t in tqdm(range(1, n), desc="coreset", disable=not progress, mininterval=1):
        c = z[selected[t - 1]]
        torch.minimum(cand_dist, torch.addmv(z_sq_c + c @ c, z_c, c, alpha=-2), out=cand_dist)
        best = torch.argmax(cand_dist)
        if cand_dist[best] < tau:  # a point outside the candidates may be the farthest now: refresh
            centres = z[selected[folded:t]]
            rows = max(1, 2**24 // len(centres))  # chunks of at most 16M distances (64 MB)
            for i in range(0, len(z), rows):
                d2 = torch.addmm(z_sq[i:i + rows, None] + centres.pow(2).sum(1), z[i:i + rows], centres.T, alpha=-2)
                torch.minimum(min_dist[i:i + rows], d2.min(1).values, out=min_dist[i:i + rows])
            folded = t
            tau = torch.topk(min_dist, max(1, int(candidate_fraction * len(z)))).values[-1].item()
            cand = torch.nonzero(min_dist >= tau).squeeze(1)
            z_c, z_sq_c, cand_dist = z[cand], z_sq[cand], min_dist[cand].clone()
            best = torch.argmax(cand_dist)
        selected[t] = cand[best]
    return selected


class PatchCore(KNNDetector):
    """PatchCore: kNN scoring against a greedy coreset of ``coreset_ratio`` of the training patches.

    ``coreset_impl="fast"`` (default) selects with ``greedy_coreset_fast`` (lazy updates), ``"reference"``
    with the plain loop of ``greedy_coreset``; both project to ``projection_dim`` (128, as the official code).
    The image score is the maximum raw patch score, as in the official code.
    """

    def __init__(self, coreset_ratio: float = 0.1, projection_dim: int | None = 128, seed: int = 0,
                 coreset_impl: str = "fast", image_score: str = "patch_max", **kwargs):
        super().__init__(image_score=image_score, **kwargs)
        if coreset_impl not in ("fast", "reference"):
            raise ValueError(f"coreset_impl must be 'fast' or 'reference', got {coreset_impl!r}")
        self.coreset_ratio, self.projection_dim, self.seed = coreset_ratio, projection_dim, seed
        self.coreset_impl = coreset_impl

    def build(self, train_embedding):
        patches = to_patches(train_embedding)
        n = max(1, int(round(self.coreset_ratio * len(patches))))
        select = greedy_coreset_fast if self.coreset_impl == "fast" else greedy_coreset
        start = time.perf_counter()
        idx = select(patches, n, self.projection_dim, self.seed)
        self.coreset_seconds = time.perf_counter() - start
        self.coreset_indices = idx  # which training patches were kept
        self.memory_bank = patches[idx]
