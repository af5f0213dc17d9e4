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
    patch_features,
    reduce_channels,
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
    x = torch.rand(2, 1, 64, 64)
    e = embedding(x)
    assert e.shape == (2, 40 + 112, 8, 8)
    assert to_patches(e).shape == (2 * 64, 152)
    assert torch.equal(patch_features(embedding.extractor(x)), e)  # the backbone, then patch_features


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
    with pytest.raises(ValueError, match="fitted on 32 x 32"):
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
    assert pc.embedding_args["count_include_pad"] is True and pc.embedding_args["upsample"] == "bilinear"
    assert PaDiM(d=100).default_embedding().extractor.blocks == (2, 4, 10)
    assert PaDiM(d=100).default_embedding().pool == 1


def test_padim_own_embedding_is_stride_4_unpooled():
    emb = PaDiM().default_embedding()
    x = torch.rand(1, 1, 64, 64)
    e = emb(x)
    assert e.shape == (1, 24 + 40 + 112, 16, 16)  # stride 4 grid
    feats = emb.extractor(x)
    assert len(feats) == 3
    assert torch.allclose(e[:, :24], feats[0])  # block 2 passes through unpooled
    assert torch.equal(e[:, 24:64], feats[1].repeat_interleave(2, -1).repeat_interleave(2, -2))  # block 4 repeated


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


# --------------------------------------------------------------------------- fidelity (hand-computed cases)


class _FixedStages(torch.nn.Module):
    """A stand-in backbone: returns the given feature maps (one per stage) whatever the images are."""

    def __init__(self, *stages, strides=(8, 16)):
        super().__init__()
        self.stages, self.strides, self.blocks = stages, list(strides), tuple(range(len(stages)))
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # PatchEmbedding.batched asks for the device

    def forward(self, images):
        return [s.expand(len(images), -1, -1, -1) for s in self.stages]


def test_neighbourhood_average_counts_the_zero_padding_by_default():
    ones = torch.ones(1, 1, 4, 4)
    official = PatchEmbedding(extractor=_FixedStages(ones, strides=(8,)))(torch.zeros(1, 3, 32, 32))[0, 0]
    # the padded 3 x 3 window (PyTorch's default, PatchCore's official code and anomalib): 4/9 in a corner,
    # 6/9 along an edge, 1 inside
    assert official[0, 0].item() == pytest.approx(4 / 9) and official[0, 1].item() == pytest.approx(6 / 9)
    assert official[1, 1].item() == pytest.approx(1.0)
    inside_only = PatchEmbedding(extractor=_FixedStages(ones, strides=(8,)), count_include_pad=False)
    assert torch.allclose(inside_only(torch.zeros(1, 3, 32, 32)), torch.ones(1, 1, 4, 4))
    for make in (KNNDetector, PatchCore):
        assert make().embedding_args["count_include_pad"] is True


def test_reduce_channels_by_hand():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert reduce_channels(x, 3).flatten().tolist() == [0.5, 2.5, 4.5]  # pairs averaged
    assert reduce_channels(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1), 4).flatten().tolist() == [1, 1, 2, 2]


def test_official_patchcore_embedding_weighs_each_stage_equally():
    # stage 1: 2 channels of value 1 on a 4 x 4 grid; stage 2: 8 channels of value 3 on 2 x 2 (4x more channels)
    ext = _FixedStages(torch.ones(1, 2, 4, 4), 3 * torch.ones(1, 8, 2, 2))
    e = PatchEmbedding(extractor=ext, embed_dim=16)(torch.zeros(1, 3, 32, 32))
    assert e.shape == (1, 16, 4, 4)
    inner = e[0, :, 1:3, 1:3]  # no zero padding in these cells' 3 x 3 windows... except for the coarse stage's
    assert torch.allclose(inner[:8], torch.ones(8, 2, 2))  # half the dimensions come from stage 1
    concat = PatchEmbedding(extractor=ext)(torch.zeros(1, 3, 32, 32))
    assert concat.shape == (1, 10, 4, 4)  # the course's default: 2 + 8 channels, stage 2 has 4x the weight


def test_padim_default_upsampling_repeats_each_coarse_cell():
    coarse = torch.arange(4.0).view(1, 1, 2, 2)
    ext = _FixedStages(torch.zeros(1, 1, 4, 4), coarse, strides=(4, 8))
    nearest = PatchEmbedding(extractor=ext, pool=1, upsample="nearest")(torch.zeros(1, 3, 16, 16))[0, 1]
    assert nearest.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]  # PaDiM's official code
    assert PaDiM().embedding_args == dict(blocks=(2, 4, 10), pool=1, count_include_pad=True, upsample="nearest",
                                          embed_dim=None)


def test_padim_mahalanobis_by_hand():
    g = torch.Generator().manual_seed(0)
    train = torch.randn(6, 3, 2, 2, generator=g)  # 6 images, D = 3 channels, 2 x 2 positions
    det = PaDiM(d=3, eps=0.5)
    det.build(train)
    test = torch.randn(2, 3, 2, 2, generator=g)
    got = det.patch_scores(test)
    x = train[:, det.channels].double()
    for i in range(2):
        for j in range(2):
            xi = x[:, :, i, j].numpy()
            cov = np.cov(xi, rowvar=False) + 0.5 * np.eye(3)
            for n in range(2):
                delta = test[n, det.channels, i, j].double().numpy() - xi.mean(0)
                assert got[n, i, j].item() == pytest.approx(float(np.sqrt(delta @ np.linalg.inv(cov) @ delta)),
                                                            rel=1e-4)


PADIM_TIMING = """
import sys, time, torch
from anomaly_utils import AnomalyDataset
from anomaly_utils.lessons.memory_bank import PaDiM
train = AnomalyDataset(torch.rand(10, 1, 64, 64, generator=torch.Generator().manual_seed(0)), torch.zeros(10))
for d in (100, 150, 176):
    t = time.perf_counter()
    det = PaDiM(d=d).fit(train)
    score, _ = det.predict(train.images[:2])
    assert torch.isfinite(score).all()
    print(f"d={d} fit {time.perf_counter() - t:.1f} s", flush=True)
"""


def test_padim_large_d_fits_in_seconds_with_two_threads():
    # a batched LU inverse (torch.linalg.inv) hung (d = 150) or failed (d = 176) here with 2 MKL threads
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    try:
        out = subprocess.run([sys.executable, "-c", PADIM_TIMING], env=env, capture_output=True, text=True,
                             timeout=180)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"PaDiM did not finish within 180 s (2 threads); done so far: {err.stdout}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("fit") == 3, out.stdout


# --------------------------------------------------------------------------- hardening


@pytest.mark.parametrize("make, match", [
    (lambda: KNNDetector(k=0), "k "),
    (lambda: PatchCore(coreset_ratio=0), "coreset_ratio"),
    (lambda: PatchCore(coreset_ratio=1.5), "coreset_ratio"),
    (lambda: PaDiM(d=0), "d "),
    (lambda: PaDiM(eps=0), "eps"),
    (lambda: KNNDetector(pool=2), "pool"),
    (lambda: KNNDetector(blocks=(4, 16)), "blocks"),
    (lambda: KNNDetector(sigma=-1), "sigma"),
    (lambda: PatchCore(image_size=8), "image_size"),
])
def test_bad_arguments_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_nearest_neighbours_rejects_k_zero_and_an_empty_bank():
    with pytest.raises(ValueError, match="k"):
        nearest_neighbours(torch.randn(3, 2), torch.randn(4, 2), k=0)
    with pytest.raises(ValueError, match="bank"):
        nearest_neighbours(torch.randn(3, 2), torch.randn(0, 2))


def test_padim_d_above_the_channels_is_an_error(embedding, mvtec):
    train, _ = mvtec
    with pytest.raises(ValueError, match="1 <= d <= 152"):
        PaDiM(d=200, embedding=embedding).fit(train)


@pytest.mark.parametrize("make", [KNNDetector, PaDiM, PatchCore])
def test_predict_before_fit_and_wrong_channels(make, embedding, mvtec):
    train, test = mvtec
    det = make(embedding=embedding) if make is not PaDiM else make(d=20, embedding=embedding)
    with pytest.raises(RuntimeError, match="before fit"):
        det.predict(test.images)
    det.fit(train)
    with pytest.raises(ValueError, match="channels"):
        det.predict(test.images.expand(-1, 3, -1, -1))


def test_too_small_images_get_a_clear_error(embedding):
    from anomaly_utils import AnomalyDataset

    tiny = AnomalyDataset(torch.rand(4, 1, 8, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="at least 16 x 16"):
        PatchCore(coreset_ratio=0.5, embedding=embedding).fit(tiny)


def test_coreset_ratio_one_keeps_every_patch(embedding, mvtec):
    train, _ = mvtec
    full = PatchCore(coreset_ratio=1.0, embedding=embedding).fit(train)
    assert len(full.memory_bank) == len(train) * 4 * 4  # 32 px at stride 8


def test_any_size_and_image_size(embedding, mvtec):
    train, _ = mvtec
    knn = KNNDetector(embedding=embedding).fit(train)
    score, amap = knn.predict(torch.rand(2, 1, 48, 40))  # kNN handles any size: maps at the input's size
    assert amap.shape == (2, 48, 40) and torch.isfinite(score).all()
    padim = PaDiM(d=20, image_size=32).fit(train)  # every image resized to 32 x 32: one grid for any input
    score, amap = padim.predict(torch.rand(2, 1, 64, 56))
    assert amap.shape == (2, 64, 56) and torch.isfinite(score).all()
