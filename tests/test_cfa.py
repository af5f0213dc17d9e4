"""Tests of lesson 08's exported code: CFA's losses, score, memory bank and the detector on an MVTec-layout folder."""

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_utils.lessons.cfa import (
    CFA,
    CoordConv2d,
    build_memory_bank,
    cfa_loss,
    kmeans,
    location_mean_bank,
    softmin_score,
)
from anomaly_utils.lessons.memory_bank import PatchEmbedding

C_LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0]])


def test_attraction_loss_by_hand():
    phi = torch.tensor([[0.1, 0.0]], requires_grad=True)
    L_att, _ = cfa_loss(phi, C_LINE, K=3, J=3, r=0.0, alpha=0.1)
    assert L_att.item() == pytest.approx((0.01 + 0.81 + 3.61) / 3, abs=1e-5)
    L_att.backward()  # d/dphi_x of mean((x - c)^2) = 2 * mean(x - c) = 2 * (0.1 - 1)
    assert phi.grad[0, 0].item() == pytest.approx(2 * (0.1 - 1.0), abs=1e-4)
    L_att_r, _ = cfa_loss(phi, C_LINE, K=3, J=3, r=1.0, alpha=0.1)  # hinge: max(0, D - r^2)
    assert L_att_r.item() == pytest.approx((0 + 0 + 2.61) / 3, abs=1e-5)


def test_repulsion_loss_by_hand():
    phi = torch.tensor([[0.1, 0.0]])
    # next J = 3 neighbours are at squared distances 8.41, 15.21, 24.01
    _, L_rep = cfa_loss(phi, C_LINE, K=3, J=3, r=4.0, alpha=0.1)  # max(0, 16 - D - 0.1)
    assert L_rep.item() == pytest.approx((16 - 8.41 - 0.1 + 16 - 15.21 - 0.1 + 0) / 3, abs=1e-4)
    _, L_rep_paper = cfa_loss(phi, C_LINE, K=3, J=3, r=1e-5, alpha=0.1)  # the paper's defaults: always zero
    assert L_rep_paper.item() == 0.0


def test_repulsion_loss_pushes_away():
    phi = torch.tensor([[0.1, 0.0]], requires_grad=True)
    _, L_rep = cfa_loss(phi, C_LINE, K=1, J=1, r=2.0, alpha=0.0)  # 2nd neighbour at D = 0.81 < r^2 = 4
    L_rep.backward()
    assert phi.grad[0, 0].item() == pytest.approx(2 * (1.0 - 0.1))  # d(r^2 - (x - 1)^2)/dx
    assert phi.grad[0, 0].item() > 0  # so gradient descent moves phi towards -x: away from c = (1, 0)


def test_softmin_score_official_is_on_euclidean_distances():
    phi = torch.tensor([[0.1, 0.0], [2.5, 0.0]])
    s = softmin_score(phi, C_LINE, K=3)  # official code: sqrt first
    d = torch.tensor([0.1, 0.9, 1.9])
    assert s[0].item() == pytest.approx((torch.softmax(-d, 0)[0] * d[0]).item(), rel=1e-5)
    d1 = torch.tensor([0.5, 0.5, 1.5])
    assert s[1].item() == pytest.approx((torch.softmax(-d1, 0)[0] * 0.5).item(), rel=1e-4)


def test_squared_and_euclidean_softmin_rank_patches_differently():
    # patch A at the origin: three centres at distance 3; patch B at (100, 0): one centre at 1.5, two at 10
    C = torch.tensor([[3.0, 0.0], [-1.5, 2.598076], [-1.5, -2.598076],
                      [101.5, 0.0], [100.0, 10.0], [100.0, -10.0]])
    phi = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    s = softmin_score(phi, C, K=3)  # A: 3 / 3 = 1;  B: ~1.5 * 1
    s2 = softmin_score(phi, C, K=3, squared=True)  # A: 9 / 3 = 3;  B: ~2.25 * 1
    assert s[0].item() == pytest.approx(1.0, rel=1e-4) and s[1].item() == pytest.approx(1.5, rel=1e-3)
    assert s2[0].item() == pytest.approx(3.0, rel=1e-4) and s2[1].item() == pytest.approx(2.25, rel=1e-3)
    assert s[1] > s[0] and s2[0] > s2[1]  # the ranking flips


def test_softmin_score_squared():
    phi = torch.tensor([[0.1, 0.0], [2.5, 0.0]])
    s = softmin_score(phi, C_LINE, K=3, squared=True)
    d = torch.tensor([0.01, 0.81, 3.61])
    assert s[0].item() == pytest.approx((torch.softmax(-d, 0)[0] * d[0]).item(), rel=1e-5)
    d1 = torch.tensor([0.25, 0.25, 2.25])  # two centres tie at 0.25, the third is at 2.25
    assert s[1].item() == pytest.approx((torch.softmax(-d1, 0)[0] * 0.25).item(), rel=1e-4)


def test_kmeans_and_memory_bank_size():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 3, generator=g) + 10, torch.randn(50, 3, generator=g) - 10])
    centres = kmeans(x, 2)
    assert sorted(centres[:, 0].round().tolist()) == pytest.approx([-10, 10], abs=1)
    images = [torch.randn(16, 3, generator=g) for _ in range(7)]
    C = build_memory_bank(images, n_memory=8, beta=0.5)
    assert C.shape == (8, 3)
    assert build_memory_bank(images[:2], n_memory=8).shape == C.shape  # independent of the data set's size
    one = build_memory_bank(images[:1], n_memory=16)  # gamma_c = 1: k-means of T into T is the identity
    assert torch.allclose(one.sort(0).values, images[0].sort(0).values)


def test_ema_update():
    first = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    second = torch.tensor([[1.0, 0.0], [9.0, 0.0], [100.0, 0.0]])
    C = build_memory_bank([first, second], n_memory=2, beta=0.25)
    assert torch.allclose(C.sort(0).values, torch.tensor([[0.25, 0.0], [9.75, 0.0]]))


def test_coordconv_shapes():
    layer = CoordConv2d(5, 7)
    assert layer(torch.randn(2, 5, 4, 6)).shape == (2, 7, 4, 6)
    assert layer.conv.in_channels == 7


def write_mvtec_fixture(root, category="tile", size=32, n_train=4, seed=0):
    """A tiny MVTec-layout folder: train/good, test/good, test/crack, ground_truth/crack/<stem>_mask.png."""
    rng = np.random.default_rng(seed)
    base = root / category
    for sub in ["train/good", "test/good", "test/crack", "ground_truth/crack"]:
        (base / sub).mkdir(parents=True)

    def texture():
        return (128 + 40 * rng.standard_normal((size, size))).clip(0, 255).astype(np.uint8)

    for i in range(n_train):
        Image.fromarray(texture()).save(base / "train/good" / f"{i:03d}.png")
    for i in range(2):
        Image.fromarray(texture()).save(base / "test/good" / f"{i:03d}.png")
        img, mask = texture(), np.zeros((size, size), np.uint8)
        img[8:20, 10:14], mask[8:20, 10:14] = 255, 255  # a bright bar and its mask
        Image.fromarray(img).save(base / "test/crack" / f"{i:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth/crack" / f"{i:03d}_mask.png")
    return root


def test_cfa_on_mvtec_layout(tmp_path):
    from anomaly_utils.loaders import load_mvtec

    train, test = load_mvtec(write_mvtec_fixture(tmp_path), "tile", size=32)
    det = CFA(embedding=PatchEmbedding(), epochs=6, batch_size=2).fit(train)  # ours: coreset of 4 T, identity phi
    assert det.memory_bank.shape == (64, 152)  # T = 4 x 4 patches at stride 8; M = T / gamma_c = 16 / 0.25
    att = det.history["L_att"]  # noisy on 4 images in batches of 2: compare the last three epochs with the first
    assert len(att) == 6 and sum(att[-3:]) / 3 < att[0]
    score, amap = det.predict(test.images)
    assert score.shape == (len(test),) and amap.shape == (len(test), 32, 32)
    assert score[test.labels == 1].mean() > score[test.labels == 0].mean()
    old = CFA(embedding=PatchEmbedding(), epochs=6, batch_size=2, bank="location_mean", init="random", r="auto",
              score_k=3).fit(train)  # the lesson's earlier recipe
    assert old.memory_bank.shape == (16, 152)
    assert min(old.history["rep_active"]) > 0  # r = "auto", learned: the repulsion acts
    assert old.radius.requires_grad and old.history["r"][-1] != old.radius.new_tensor(0)
    paper = CFA(embedding=PatchEmbedding(), epochs=2, batch_size=2, r=1e-5, learn_r=False, bank="ema", gamma_c=1,
                init="random").fit(train)
    assert paper.history["L_rep"] == [0.0, 0.0] and paper.history["rep_active"] == [0.0, 0.0]


def test_location_mean_bank_by_hand():
    maps = torch.zeros(2, 3, 1, 2)  # 2 images, D = 3, a 1 x 2 grid
    maps[0, :, 0, 0], maps[1, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 4.0, 5.0])
    maps[0, :, 0, 1], maps[1, :, 0, 1] = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([10.0, 0.0, -2.0])
    C = location_mean_bank(maps)
    assert torch.allclose(C, torch.tensor([[2.0, 3.0, 4.0], [5.0, 0.0, -1.0]]))  # one mean per position
    assert location_mean_bank(maps, gamma_c=2).shape == (1, 3)  # gamma_c > 1: k-means compresses


def test_learnable_radius_gets_gradients_from_both_hinges():
    phi = torch.tensor([[0.1, 0.0]])
    r = torch.tensor(2.0, requires_grad=True)
    L_att, L_rep, active = cfa_loss(phi, C_LINE, K=1, J=1, r=r, alpha=0.0, return_active=True)
    # att: max(0, 0.01 - 4) = 0; rep: max(0, 4 - 0.81) = 3.19 -> d/dr = 2r = 4
    assert L_att.item() == 0.0 and L_rep.item() == pytest.approx(3.19, abs=1e-5) and active == 1.0
    (L_att + L_rep).backward()
    assert r.grad.item() == pytest.approx(4.0)
