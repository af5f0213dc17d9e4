"""Lesson 08 (CFA): bad arguments and inputs get clear errors; the pieces of the lesson's fix, checked by hand.

Each hardening case failed on the lesson's earlier code (a NaN loss, an AttributeError deep inside, or a silent
result): K + J above the bank size, J = 0, predict before fit, other channels or size, bad constructor arguments.
"""

import numpy as np
import pytest
import torch

from anomaly_utils.cfa_support import choose_epoch, fit_with_val_curve, restore_epoch
from anomaly_utils.data import AnomalyDataset
from anomaly_utils.lessons.cfa import CFA, CoordConv2d, cfa_loss, coreset_bank, softmin_score
from anomaly_utils.lessons.memory_bank import KNNDetector, PatchEmbedding

C_LINE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0], [5.0, 0.0]])


@pytest.fixture(scope="module")
def embedding():
    return PatchEmbedding()


def images(n, channels=1, height=32, width=32, seed=0, labels=None, masks=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, height, width, generator=g)
    y = torch.zeros(n) if labels is None else torch.as_tensor(labels, dtype=torch.float32)
    m = None
    if masks:
        m = torch.zeros(n, height, width)
        for i in np.flatnonzero(y.numpy()):
            x[i, :, 8:20, 10:16], m[i, 8:20, 10:16] = 1.0, 1.0  # a bright bar and its mask
    return AnomalyDataset(x, y, m, ["defective" if v else "good" for v in y.tolist()], "random")


def test_k_plus_j_larger_than_the_bank_is_an_error_at_fit(embedding):
    # 32 px: T = 4 x 4 = 16 patches; gamma_c = 8 leaves M = 2 < K + J = 6 (the old code trained on a NaN loss)
    with pytest.raises(ValueError, match=r"K \+ J = 3 \+ 3 = 6 .* M = T / gamma_c"):
        CFA(embedding=embedding, bank="location_mean", gamma_c=8, init="random", epochs=1).fit(images(4))
    with pytest.raises(ValueError, match="at least K"):
        cfa_loss(torch.zeros(2, 2), C_LINE[:4], K=3, J=3)


def test_repulsion_with_j_zero_is_zero_not_nan():
    L_att, L_rep, active = cfa_loss(torch.tensor([[0.1, 0.0]]), C_LINE, K=2, J=0, r=1.0, return_active=True)
    assert L_rep.item() == 0.0 and torch.isfinite(L_att) and active == 0.0


def test_predict_before_fit_says_so():
    with pytest.raises(RuntimeError, match="before fit"):
        CFA().predict(torch.rand(1, 1, 32, 32))


def test_channels_and_size_are_checked(embedding):
    det = CFA(embedding=embedding, bank="location_mean", init="random", epochs=0).fit(images(4))
    with pytest.raises(ValueError, match="1-channel"):
        det.predict(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="fitted on 32 x 32"):  # one memorised feature per training position
        det.predict(torch.rand(2, 1, 64, 64))


def test_coreset_bank_serves_other_sizes_non_square_too(embedding):
    det = CFA(embedding=embedding, epochs=1, batch_size=2).fit(images(4))
    assert det.memory_bank.shape == (64, 152)  # M = T / gamma_c = 16 / 0.25
    score, amap = det.predict(torch.rand(3, 1, 32, 64))
    assert score.shape == (3,) and amap.shape == (3, 32, 64) and torch.isfinite(amap).all()


@pytest.mark.parametrize("kwargs, name", [
    (dict(bank="kmeans"), "bank"), (dict(gamma_c=0), "gamma_c"), (dict(gamma_c=0.5, bank="location_mean"), "gamma_c"),
    (dict(gamma_d=0), "gamma_d"), (dict(K=0), "K"), (dict(J=-1), "J"), (dict(r=-1.0), "r"), (dict(r="big"), "r"),
    (dict(alpha=-0.1), "alpha"), (dict(beta=0), "beta"), (dict(init="zeros"), "init"),
    (dict(init="identity", gamma_d=2), "gamma_d"), (dict(score_k=0), "score_k"), (dict(epochs=-1), "epochs"),
    (dict(epochs=1.5), "epochs"), (dict(lr=0), "lr"), (dict(batch_size=0), "batch_size"), (dict(sigma=-1), "sigma"),
    (dict(learn_r="yes"), "learn_r"), (dict(squared_score=1), "squared_score"), (dict(seed=-1), "seed"),
    (dict(on_epoch=3), "on_epoch"), (dict(embedding="effnet"), "embedding"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CFA(**kwargs)


def test_a_coreset_larger_than_the_training_patches_is_an_error(embedding):
    with pytest.raises(ValueError, match="coreset of M = 1600"):  # 2 images x 16 patches
        CFA(embedding=embedding, gamma_c=0.01, epochs=0).fit(images(2))


def test_identity_descriptor_returns_the_features():
    p = torch.randn(2, 5, 3, 4)
    assert torch.equal(CoordConv2d(5, 5).identity_()(p), p)


def test_untrained_cfa_with_every_patch_memorised_is_knn(embedding):
    # identity phi + a "coreset" keeping all N * T training patches + nearest-distance score = kNN (k = 1)
    train, x = images(3), torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    cfa = CFA(embedding=embedding, gamma_c=1 / 3, K=1, J=0, epochs=0).fit(train)
    knn = KNNDetector(k=1, embedding=embedding).fit(train)
    (s1, m1), (s2, m2) = cfa.predict(x), knn.predict(x)
    assert torch.allclose(m1, m2, atol=1e-4) and torch.allclose(s1, s2, atol=1e-4)


def test_coreset_bank_keeps_the_outlier():
    x = torch.tensor([[0.0], [1.0], [10.0]])  # whichever point comes first, 10 is the farthest from 0 and from 1
    assert 10.0 in coreset_bank(x, 2).flatten().tolist()


def test_softmin_cuts_the_score_of_a_far_patch_with_tied_neighbours():
    far = torch.tensor([[2.5, 3.0]])  # sqrt(0.25 + 9) from both (2, 0) and (3, 0)
    d = np.sqrt(0.25 + 9)
    assert softmin_score(far, C_LINE, K=1).item() == pytest.approx(d, rel=1e-5)
    assert softmin_score(far, C_LINE, K=3).item() < 0.6 * d  # two ties and a third close behind: weight < 1/2


def test_val_schedule_restores_an_epoch_and_prefers_fewer_epochs(embedding):
    train, val = images(4), images(4, seed=2, labels=[0, 0, 1, 1], masks=True)
    det, curve = fit_with_val_curve(lambda **kw: CFA(embedding=embedding, batch_size=2, **kw), train, val, 2)
    assert [c["epoch"] for c in curve] == [0, 1, 2]
    fresh = CFA(embedding=embedding, batch_size=2, epochs=1).fit(train)
    restore_epoch(det, curve, 1)
    assert torch.allclose(det.predict(val.images)[1], fresh.predict(val.images)[1], atol=1e-5)
    flat = [{"image_auroc": 0.9, "pixel_auroc": 0.8}] * 3
    assert choose_epoch([flat, flat]) == 0
    better = flat[:1] + [{"image_auroc": 0.95, "pixel_auroc": 0.8}] * 2
    assert choose_epoch([better, flat]) == 1
