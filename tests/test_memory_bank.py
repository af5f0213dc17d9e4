"""Tests of lesson 07's exported code: kNN search, greedy coreset, the three detectors on an MVTec-layout folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_utils.lessons.memory_bank import (
    KNNDetector,
    MemoryBankDetector,
    PaDiM,
    PatchCore,
    PatchEmbedding,
    gaussian_blur,
    greedy_coreset,
    greedy_coreset_fast,
    nearest_neighbours,
    to_patches,
)


def write_mvtec_fixture(root, category="tile", size=32, n_train=4, seed=0):
    """A tiny MVTec-layout folder: train/good, test/good, test/crack, ground_truth/crack/<stem>_mask.png."""
    rng = np.random.default_rng(seed)
    base = root / category

    def texture():
        return (128 + 40 * rng.standard_normal((size, size))).clip(0, 255).astype(np.uint8)

    for sub in ["train/good", "test/good", "test/crack", "ground_truth/crack"]:
        (base / sub).mkdir(parents=True)
    for i in range(n_train):
        Image.fromarray(texture()).save(base / "train/good" / f"{i:03d}.png")
    for i in range(2):
        Image.fromarray(texture()).save(base / "test/good" / f"{i:03d}.png")
        img, mask = texture(), np.zeros((size, size), np.uint8)
        img[8:20, 10:14] = 255  # a bright bar
        mask[8:20, 10:14] = 255
        Image.fromarray(img).save(base / "test/crack" / f"{i:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth/crack" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def embedding():
    return PatchEmbedding()


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    from anomaly_utils.loaders import load_mvtec

    root = write_mvtec_fixture(tmp_path_factory.mktemp("mvtec"))
    return load_mvtec(root, "tile", size=32)


def test_nearest_neighbours_matches_cdist():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(300, 16, generator=g), torch.randn(1000, 16, generator=g)
    d, i = nearest_neighbours(q, bank, k=4, query_chunk=64, bank_chunk=150)  # many blocks, uneven last block
    ref = torch.cdist(q, bank).topk(4, largest=False)
    assert torch.allclose(d, ref.values, atol=1e-4)
    assert torch.equal(i, ref.indices)
    d2, _ = nearest_neighbours(q, bank, k=1, squared=True)
    assert torch.allclose(d2[:, 0], ref.values[:, 0] ** 2, atol=1e-3)


def test_nearest_neighbours_k_larger_than_bank():
    d, i = nearest_neighbours(torch.randn(5, 3), torch.randn(2, 3), k=4)
    assert d.shape == (5, 2) and i.shape == (5, 2)
    d, i = nearest_neighbours(torch.randn(0, 3), torch.randn(2, 3), k=1)  # no queries: empty, not an error
    assert d.shape == (0, 1) and i.shape == (0, 1)


def brute_force_k_centre(x, n, first):
    """Greedy k-centre the slow, obvious way: full cdist to the chosen set at every step."""
    chosen = [first]
    for _ in range(n - 1):
        dist = torch.cdist(x, x[chosen]).min(1).values
        chosen.append(int(dist.argmax()))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_coreset_matches_brute_force(seed):
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64)
    idx = greedy_coreset(x, 20, projection_dim=None, seed=seed)
    assert idx.tolist() == brute_force_k_centre(x, 20, int(idx[0]))
    assert len(set(idx.tolist())) == 20


def test_greedy_coreset_with_projection_covers_better_than_random():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([0.1 * torch.randn(950, 64, generator=g), torch.randn(50, 64, generator=g) + 3])  # a rare mode
    idx = greedy_coreset(x, 30, projection_dim=16)
    rand = torch.randperm(len(x), generator=g)[:30]
    radius = lambda sel: torch.cdist(x, x[sel]).min(1).values.max()  # noqa: E731
    assert radius(idx) < radius(rand)


def test_gaussian_blur_keeps_constants_and_mass():
    m = torch.zeros(1, 21, 21)
    assert torch.allclose(gaussian_blur(m + 3.0, 2.0), m + 3.0)
    m[0, 10, 10] = 1
    b = gaussian_blur(m, 2.0)
    assert abs(b.sum().item() - 1) < 1e-4 and b[0, 10, 10] < 1 and b[0, 10, 10] == b.max()


def test_patch_embedding_shapes(embedding):
    e = embedding(torch.rand(2, 1, 64, 64))
    assert e.shape == (2, 40 + 112, 8, 8)
    assert to_patches(e).shape == (2 * 64, 152)


@pytest.mark.parametrize("make", [lambda e: KNNDetector(embedding=e), lambda e: PaDiM(d=20, embedding=e),
                                  lambda e: PatchCore(coreset_ratio=0.25, embedding=e)])
def test_detectors_on_mvtec_layout(make, embedding, mvtec):
    train, test = mvtec
    det = make(embedding).fit(train)
    score, amap = det.predict(test.images)
    assert score.shape == (len(test),) and amap.shape == (len(test), 32, 32)
    assert torch.isfinite(score).all()
    assert score[test.labels == 1].mean() > score[test.labels == 0].mean()  # the bright bar is found


def test_patchcore_bank_is_a_coreset(embedding, mvtec):
    train, _ = mvtec
    knn, pc = KNNDetector(embedding=embedding).fit(train), PatchCore(coreset_ratio=0.25, embedding=embedding).fit(train)
    assert len(pc.memory_bank) == round(0.25 * len(knn.memory_bank))
    is_bank_row = (pc.memory_bank[:, None] == knn.memory_bank[None]).all(-1).any(1)
    assert is_bank_row.all()  # every coreset row is a row of the full bank


def test_padim_rejects_other_grid(embedding, mvtec):
    train, _ = mvtec
    det = PaDiM(d=20, embedding=embedding).fit(train)
    with pytest.raises(ValueError, match="grid"):
        det.predict(torch.rand(1, 1, 64, 64))


class _FixedScores(MemoryBankDetector):
    """A detector whose patch scores are given: to check the image score by hand."""

    def __init__(self, scores, **kw):
        super().__init__(**kw)
        self.scores = scores

    def patch_scores(self, embedding):
        return self.scores


def test_image_score_patch_max_vs_map_max_by_hand():
    # one isolated hot patch (score 8) on a 4 x 4 grid of zeros; image 16 x 16, so each patch is 4 x 4 pixels
    scores = torch.zeros(1, 4, 4)
    scores[0, 1, 1] = 8.0
    official = _FixedScores(scores, sigma=4.0, image_score="patch_max")
    pred, amap = official.scores_to_output(scores, (16, 16))
    assert pred.item() == 8.0  # PatchCore's official code: the largest raw patch score
    blurred = _FixedScores(scores, sigma=4.0, image_score="map_max")
    pred_b, amap_b = blurred.scores_to_output(scores, (16, 16))
    assert torch.equal(amap, amap_b)  # the map is the same; only the image score differs
    assert pred_b.item() == pytest.approx(amap_b.max().item()) and pred_b.item() < 4.0  # blurring spreads the peak
    with pytest.raises(ValueError, match="image_score"):
        _FixedScores(scores, image_score="mean")


def test_patchcore_defaults_follow_the_official_code():
    pc = PatchCore(coreset_ratio=0.1)
    assert pc.image_score == "patch_max" and pc.coreset_impl == "fast" and pc.projection_dim == 128
    assert PatchCore(coreset_ratio=0.1, coreset_impl="reference").projection_dim == 128
    assert PaDiM(d=100).default_embedding().extractor.blocks == (2, 4, 10)
    assert PaDiM(d=100).default_embedding().pool == 1


def test_padim_own_embedding_is_stride_4_unpooled():
    emb = PaDiM().default_embedding()
    e = emb(torch.rand(1, 1, 64, 64))
    assert e.shape == (1, 24 + 40 + 112, 16, 16)  # stride 4 grid
    feats = emb.extractor(torch.rand(1, 1, 64, 64))
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(emb(x)[:, :24], emb.extractor(x)[0])  # block 2 passes through unpooled
    assert len(feats) == 3


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fraction", [0.02, 0.3])
def test_fast_coreset_selects_the_same_points_as_the_reference(seed, fraction):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(3000, 32, generator=g), torch.randn(300, 32, generator=g) * 0.5 + 4]).double()
    ref = greedy_coreset(x, 300, projection_dim=None, seed=seed)
    fast = greedy_coreset_fast(x, 300, projection_dim=None, seed=seed, candidate_fraction=fraction)
    assert torch.equal(fast, ref)  # in float64 no near-tie flips: the lazy updates change nothing


def test_fast_coreset_refreshes_and_keeps_float32_picks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 64, generator=g)
    ref = greedy_coreset(x, 1000, projection_dim=16)
    fast = greedy_coreset_fast(x, 1000, projection_dim=16, candidate_fraction=0.01)
    assert len(set(ref.tolist()) & set(fast.tolist())) / 1000 > 0.98  # float32 rounding may flip a near-tie
    assert len(set(fast.tolist())) == 1000  # never picks a point twice


def test_fast_coreset_small_inputs():
    x = torch.randn(5, 3)
    assert sorted(greedy_coreset_fast(x, 5, projection_dim=None).tolist()) == [0, 1, 2, 3, 4]
    assert len(greedy_coreset_fast(x, 10, projection_dim=None)) == 5  # n is capped at the bank size
    assert len(greedy_coreset_fast(x, 1, projection_dim=None)) == 1
