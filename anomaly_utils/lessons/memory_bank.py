"""Generated from notebooks/07_memory_bank.ipynb by `make export`: do not edit.

Edit the notebook's `#@save` cells instead, then run `make export`.
"""
# ruff: noqa

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_utils import argcheck
from anomaly_utils.backbones import FeatureExtractor
from anomaly_utils.detector import check_input, remember_input, training_images
from anomaly_utils.viz import show_maps  # noqa: F401 (plotting plumbing; lesson 08 imports it from here)


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


def to_patches(embedding: torch.Tensor) -> torch.Tensor:
    """``[N, D, h, w] -> [N * h * w, D]``: one row per patch (the memory bank's layout)."""
    return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def check_embedding_args(pool, upsample, embed_dim) -> None:
    """Clear errors for ``patch_features``' arguments (before any backbone is loaded)."""
    argcheck.whole("pool", pool)
    if pool % 2 == 0:
        raise ValueError(f"pool must be odd (1, 3, 5, ...) so that the grid keeps its size, got {pool}.")
    argcheck.choice("upsample", upsample, ("bilinear", "nearest"))
    if embed_dim is not None:
        argcheck.whole("embed_dim", embed_dim)


def patch_features(feats: list, pool: int = 3, count_include_pad: bool = True, upsample: str = "bilinear",
                   embed_dim: int | None = None) -> torch.Tensor:
    """Stage outputs ``[N, C_b, h_b, w_b]`` (finest first) -> locally aware patch features ``[N, D, h, w]``.

    Each stage is averaged over its ``pool`` x ``pool`` neighbourhood (``count_include_pad=True``: over the
    zero-padded window, PyTorch's default and the official code's, so border cells are pulled towards 0), the
    coarser stages are upsampled to the first one's grid (``"bilinear"``: PatchCore's code; ``"nearest"``: PaDiM's,
    each coarse cell repeated) and concatenated. ``embed_dim``: PatchCore's official reduction instead, where each
    stage's pool x pool x C patch is kept unaveraged, pooled to ``embed_dim`` numbers, then all stages together to
    ``embed_dim`` (``reduce_channels``), so that every stage weighs the same.
    """
    p = pool
    if embed_dim is None:  # local aggregation: each patch averages its p x p neighbours at every stage
        feats = [F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=count_include_pad) for f in feats]
    else:  # the official code keeps the p x p x C patch (zero padding) as one vector per cell
        feats = [F.unfold(f, p, padding=p // 2).view(len(f), -1, *f.shape[-2:]) for f in feats]
    size = feats[0].shape[-2:]
    align = {} if upsample == "nearest" else {"align_corners": False}
    feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode=upsample, **align) for f in feats]
    if embed_dim is not None:
        feats = [reduce_channels(f, embed_dim) for f in feats]  # each stage -> embed_dim numbers per cell
        feats = [reduce_channels(torch.cat(feats, 1), embed_dim)]  # all stages together -> embed_dim
    return torch.cat(feats, dim=1)


def reduce_channels(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``[N, C, h, w] -> [N, dim, h, w]``: adaptive average pooling along the channels of each cell.

    PatchCore's ``MeanMapper`` and ``Aggregator``: output channel j averages input channels ~[j C / dim, (j + 1) C / dim).
    """
    n, c, h, w = x.shape
    pooled = F.adaptive_avg_pool1d(x.permute(0, 2, 3, 1).reshape(-1, 1, c), dim)  # [N h w, 1, dim]
    return pooled.view(n, h, w, dim).permute(0, 3, 1, 2)


class PatchEmbedding(nn.Module):
    """A frozen ImageNet backbone followed by ``patch_features`` (PatchCore's locally aware patch features).

    ``forward(images [N, 1|3, H, W] in [0, 1]) -> embedding [N, D, H / s, W / s]``, s the stride of the first
    block (8 for blocks (4, 10), where D = 40 + 112 = 152). ``pool``, ``count_include_pad``, ``upsample`` and
    ``embed_dim`` are ``patch_features``' arguments; their defaults follow PatchCore's official code except
    ``embed_dim`` (``None``: the stages are concatenated; 1024 is the official reduction).
    """

    def __init__(self, blocks=(4, 10), pool: int = 3, extractor: nn.Module | None = None,
                 count_include_pad: bool = True, upsample: str = "bilinear", embed_dim: int | None = None):
        super().__init__()
        check_embedding_args(pool, upsample, embed_dim)
        self.pool, self.count_include_pad, self.upsample, self.embed_dim = pool, bool(count_include_pad), upsample, embed_dim
        self.extractor = extractor if extractor is not None else FeatureExtractor(blocks)

    def check_size(self, images: torch.Tensor) -> None:
        need = max(getattr(self.extractor, "strides", [1]))  # the coarsest stage must keep at least one cell
        if min(images.shape[-2:]) < need:
            raise ValueError(f"images of {images.shape[-2]} x {images.shape[-1]} pixels are too small for blocks "
                             f"{tuple(self.extractor.blocks)}: their coarsest stage has stride {need}, so images "
                             f"need at least {need} x {need} pixels; resize them (the detectors' image_size does it).")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_size(images)
        return patch_features(self.extractor(images), self.pool, self.count_include_pad, self.upsample, self.embed_dim)

    def batched(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """``forward`` over many images in batches, on the backbone's device; result on the CPU."""
        device = next(self.extractor.parameters()).device
        return torch.cat([self(images[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])


def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, k: int = 1, squared: bool = False,
                       query_chunk: int = 2048, bank_chunk: int = 65536):
    """The ``k`` nearest rows of ``bank`` for every row of ``queries`` (Euclidean), by chunked matrix products.

    ``queries [Q, D]``, ``bank [M, D]`` -> ``(distances [Q, k], indices [Q, k])``, nearest first.
    Memory is bounded by one ``query_chunk x bank_chunk`` block (2048 x 65536 floats = 512 MB),
    whatever Q and M are: ``||q - m||^2 = ||q||^2 - 2 q.m + ||m||^2``, one ``addmm`` per block, then a
    running top-k merged across the bank's blocks. ``squared=True`` returns squared distances.
    """
    k = argcheck.whole("k (neighbours per query)", k)
    if len(bank) == 0 or queries.shape[1:] != bank.shape[1:]:
        raise ValueError(f"nearest_neighbours needs a non-empty bank [M, D] and queries [Q, D] of the same D; got "
                         f"queries {list(queries.shape)} and bank {list(bank.shape)}.")
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

    Subclasses implement ``build(train_embedding [N, D, h, w])`` and ``patch_scores(embedding) -> [N, h, w]``.
    ``predict(images [N, C, H, W])`` returns ``(pred_score [N], anomaly_map [N, H, W])``. ``image_score``:
    ``"map_max"`` (maximum of the upsampled, smoothed map: PaDiM's code) or ``"patch_max"`` (maximum raw patch
    score: PatchCore's code). Without an ``embedding`` one is built from ``blocks``, ``pool``,
    ``count_include_pad``, ``upsample`` and ``embed_dim`` (see ``PatchEmbedding``). ``image_size``: resize every
    image to ``image_size`` x ``image_size`` before embedding (maps come back at the input's size); ``None``
    keeps the input's size.
    """

    same_size = False  # patch scores do not depend on the position: any image size works

    def __init__(self, embedding: PatchEmbedding | None = None, sigma: float = 4.0, batch_size: int = 32,
                 image_score: str = "map_max", blocks=(4, 10), pool: int = 3, count_include_pad: bool = True,
                 upsample: str = "bilinear", embed_dim: int | None = None, image_size: int | None = None):
        self.image_score = argcheck.choice("image_score", image_score, ("map_max", "patch_max"))
        self.sigma = argcheck.real("sigma", sigma, low=0, why="the Gaussian smoothing of the map, in pixels")
        self.batch_size = argcheck.whole("batch_size", batch_size)
        self.image_size = None if image_size is None else argcheck.whole("image_size", image_size, minimum=16)
        blocks = argcheck.wholes("blocks", blocks, minimum=0)
        if max(blocks) > 15:
            raise ValueError(f"blocks are EfficientNet-Lite0's block indices 0..15 (e.g. (4, 10)), got {blocks}.")
        self.embedding = embedding
        self.embedding_args = dict(blocks=blocks, pool=pool, count_include_pad=count_include_pad,
                                   upsample=upsample, embed_dim=embed_dim)
        check_embedding_args(pool, upsample, embed_dim)  # now, not at fit (the backbone is loaded lazily)

    def default_embedding(self) -> PatchEmbedding:
        return PatchEmbedding(**self.embedding_args)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            self.embedding = self.default_embedding()
        if self.image_size is not None:
            images = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        return self.embedding.batched(images, self.batch_size)

    def fit(self, train_dataset):
        images = training_images(train_dataset)
        self.build(self.embed(images))
        remember_input(self, images)  # predict checks its images against these (channels; size for PaDiM)
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
        images = check_input(self, images, same_size=self.same_size and self.image_size is None)
        return self.scores_to_output(self.patch_scores(self.embed(images)), images.shape[-2:])


class KNNDetector(MemoryBankDetector):
    """SPADE-like: every training patch goes into the memory bank ``[N * h * w, D]``; a patch's score is the mean
    distance to its ``k`` nearest memorised patches. ``n_images``: SPADE's first step, search only the patches of
    the ``n_images`` training images nearest to the test image by a global feature (its mean patch feature);
    ``None`` searches the whole bank."""

    def __init__(self, k: int = 1, n_images: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.k = argcheck.whole("k (nearest memorised patches per test patch)", k)
        self.n_images = None if n_images is None else argcheck.whole("n_images", n_images)

    def build(self, train_embedding):
        self.memory_bank = to_patches(train_embedding)
        self.image_features = train_embedding.mean(dim=(2, 3))  # one global feature per training image [N, D]

    def patch_scores(self, embedding):
        n, D, h, w = embedding.shape
        if self.n_images is None or self.n_images >= len(self.image_features):
            dist, _ = nearest_neighbours(to_patches(embedding), self.memory_bank, k=self.k)
            return dist.mean(1).view(n, h, w)
        _, near = nearest_neighbours(embedding.mean(dim=(2, 3)), self.image_features, k=self.n_images)  # [n, K]
        per_image = self.memory_bank.view(len(self.image_features), -1, D)  # the bank, image by image
        dist = [nearest_neighbours(to_patches(embedding[i:i + 1]), per_image[near[i]].reshape(-1, D), k=self.k)[0]
                for i in range(n)]
        return torch.stack(dist).mean(-1).view(n, h, w)


class PaDiM(MemoryBankDetector):
    """PaDiM: one Gaussian N(mu_ij, Sigma_ij) per patch position (i, j) on a random subset of ``d`` channels.

    Score of a patch x_ij: the Mahalanobis distance sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij)),
    with Sigma_ij = sample covariance + ``eps`` * I (the regulariser that makes it invertible).
    Fitted on one patch grid; ``mean [h*w, d]``, ``cov_inv [h*w, d, d]``. Its default embedding is the paper's:
    the first three stages (EfficientNet-Lite0 blocks 2, 4, 10: strides 4, 8, 16), no neighbourhood pooling,
    upsampled to the stride-4 grid and concatenated (D = 24 + 40 + 112 = 176).
    """

    same_size = True  # one Gaussian per position: predict needs the training grid (or an image_size)

    def __init__(self, d: int = 100, eps: float = 0.01, seed: int = 0, blocks=(2, 4, 10), pool: int = 1,
                 upsample: str = "nearest", **kwargs):
        super().__init__(blocks=blocks, pool=pool, upsample=upsample, **kwargs)
        self.d = argcheck.whole("d (channels kept)", d)
        self.eps = argcheck.real("eps", eps, low=0, low_open=True, why="the covariance's regulariser")
        self.seed = seed

    def build(self, train_embedding):
        n, D, h, w = train_embedding.shape
        if self.d > D:
            raise ValueError(f"d={self.d}, but the embedding has only {D} channels: use 1 <= d <= {D}.")
        g = torch.Generator().manual_seed(self.seed)
        self.channels = torch.randperm(D, generator=g)[: self.d]  # random dimensionality reduction
        x = train_embedding[:, self.channels].flatten(2).permute(2, 0, 1)  # [h*w, N, d]
        self.mean = x.mean(1)  # mu_ij  [h*w, d]
        xc = x - self.mean[:, None]
        cov = xc.transpose(1, 2) @ xc / max(n - 1, 1) + self.eps * torch.eye(self.d)  # Sigma_ij  [h*w, d, d]
        # Sigma is symmetric positive definite: invert it through its Cholesky factor L (Sigma = L L^T), which
        # needs no pivoting (a batched LU inverse hangs or fails on some MKL builds for d > ~140)
        L, info = torch.linalg.cholesky_ex(cov)
        if info.any():
            raise ValueError(f"a covariance is not positive definite (eps={self.eps} is too small for these "
                             "features): use a larger eps.")
        self.cov_inv = torch.cholesky_inverse(L)  # Sigma_ij^-1
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
    selected[0] = torch.randint(len(z), (1,), generator=g).item()  # the official code: see "differences"
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
    """PatchCore: kNN scoring against a greedy coreset of ``coreset_ratio`` (0 < ratio <= 1) of the training patches.

    ``coreset_impl="fast"`` (default) selects with ``greedy_coreset_fast`` (lazy updates), ``"reference"``
    with the plain loop of ``greedy_coreset``; both project to ``projection_dim`` (128, as the official code).
    The image score is the maximum raw patch score, as in the official code. ``coreset_ratio=1`` keeps every patch.
    """

    def __init__(self, coreset_ratio: float = 0.1, projection_dim: int | None = 128, seed: int = 0,
                 coreset_impl: str = "fast", image_score: str = "patch_max", **kwargs):
        super().__init__(image_score=image_score, **kwargs)
        if self.n_images is not None:
            raise ValueError("n_images is kNN's search among the nearest training images; PatchCore searches its "
                             "whole coreset: leave n_images out.")
        self.coreset_ratio = argcheck.real("coreset_ratio", coreset_ratio, low=0, high=1, low_open=True,
                                           why="the fraction of training patches kept")
        self.projection_dim = None if projection_dim is None else argcheck.whole("projection_dim", projection_dim)
        self.coreset_impl = argcheck.choice("coreset_impl", coreset_impl, ("fast", "reference"))
        self.seed = seed

    def build(self, train_embedding):
        patches = to_patches(train_embedding)
        n = max(1, int(round(self.coreset_ratio * len(patches))))
        select = greedy_coreset_fast if self.coreset_impl == "fast" else greedy_coreset
        start = time.perf_counter()
        idx = select(patches, n, self.projection_dim, self.seed) if n < len(patches) else torch.arange(n)
        self.coreset_seconds = time.perf_counter() - start
        self.coreset_indices = idx  # which training patches were kept
        self.memory_bank = patches[idx]
        self.image_features = None  # the coreset mixes patches of all training images
