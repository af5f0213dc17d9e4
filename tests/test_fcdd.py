"""Unit tests of lesson 02's exported code (anomaly_utils.lessons.fcdd)."""

import math

import pytest
import torch
import torch.nn as nn

from anomaly_utils.data import AnomalyDataset
from anomaly_utils.defects import fcdd_confetti_noise
from anomaly_utils.lessons.fcdd import (
    FCDD,
    FCDDNet,
    bilinear_upsample,
    empirical_receptive_field,
    fcdd_cell_loss,
    fcdd_epoch,
    fcdd_loss,
    fcdd_pixel_loss,
    gaussian_kernel,
    gaussian_upsample,
    mask_to_grid,
    natural_image_crops,
    pseudo_anomalies,
    pseudo_huber,
    receptive_centre,
    receptive_field,
)


def test_receptive_field_recurrence():
    assert receptive_field([]) == (1, 1)
    assert receptive_field([(3, 1), (3, 1)]) == (5, 1)
    assert receptive_field([(3, 2), (3, 2)]) == (7, 4)
    assert receptive_field([(2, 2), (2, 2), (2, 2)]) == (8, 8)  # three 2x2 poolings: disjoint 8x8 cells


def test_empirical_receptive_field_matches_formula():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 1, 3, padding=1))
    assert empirical_receptive_field(net, image_size=32) == receptive_field([(3, 1), (3, 2), (3, 1)])[0] == 9


def test_fcdd_net_receptive_field_and_shape():
    net = FCDDNet(base_block=2, pretrained=False)
    assert net.stride == 4
    assert net(torch.rand(2, 1, 64, 64)).shape == (2, 1, 16, 16)
    assert empirical_receptive_field(net, image_size=64) == net.rf


def test_pseudo_huber():
    phi = torch.tensor([0.0, 0.1, -0.1, 100.0])
    A = pseudo_huber(phi)
    assert A[0] == 0 and A[1] == A[2] and (A >= 0).all()
    assert A[1].item() == pytest.approx(0.1 ** 2 / 2, rel=1e-2)  # quadratic near 0
    assert A[3].item() == pytest.approx(99.0, rel=1e-3)  # linear far away


def test_fcdd_loss_matches_the_paper():
    A = torch.stack([torch.full((1, 2, 2), 0.3), torch.tensor([[[0.0, 2.0], [0.0, 2.0]]])])  # means 0.3, 1.0
    assert fcdd_loss(A, torch.tensor([0, 0])).item() == pytest.approx((0.3 + 1.0) / 2)
    expected = (0.3 - math.log(1 - math.exp(-1.0))) / 2
    assert fcdd_loss(A, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-5)
    # anomalous: the loss falls as the map's mean grows
    low, high = torch.full((1, 1, 2, 2), 0.1), torch.full((1, 1, 2, 2), 3.0)
    assert fcdd_loss(high, torch.tensor([1])) < fcdd_loss(low, torch.tensor([1]))


def test_fcdd_loss_is_finite_at_zero():
    A = torch.zeros(2, 1, 3, 3, requires_grad=True)
    loss = fcdd_loss(A, torch.tensor([1, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(A.grad).all()


def test_pixel_loss_is_the_papers_full_resolution_form():
    # one anomalous image: A' = [[1, 3], [0, 0]], Y marks the 3
    A = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])
    Y = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    # mean((1 - Y) A') = 1/4, mean(Y A') = 3/4 (both over all four pixels)
    expected = 0.25 - math.log(1 - math.exp(-0.75))
    assert fcdd_pixel_loss(A, Y).item() == pytest.approx(expected, rel=1e-5)
    # a normal image (Y = 0) contributes only mean(A'): here 1; the batch mean is (expected + 1) / 2
    A2, Y2 = torch.cat([A, A]), torch.cat([Y, torch.zeros_like(Y)])
    assert fcdd_pixel_loss(A2, Y2).item() == pytest.approx((expected + 1.0) / 2, rel=1e-5)


def test_pixel_loss_reduces_to_image_loss_for_empty_masks():
    A = torch.rand(3, 1, 4, 4)
    assert fcdd_pixel_loss(A, torch.zeros_like(A)).item() == pytest.approx(fcdd_loss(A, torch.zeros(3)).item())
    assert fcdd_cell_loss(A, torch.zeros_like(A)).item() == pytest.approx(fcdd_loss(A, torch.zeros(3)).item())


def test_papers_pixel_loss_pushes_a_small_defect_much_harder_than_the_per_cell_form():
    # a 16 x 16 map, a defect on 4 cells with A = 1 there (A' = A: the upsampling is left out here)
    A = torch.zeros(1, 1, 16, 16)
    A[..., 7:9, 7:9] = 1.0
    Y = (A > 0).float()
    A.requires_grad_(True)
    fcdd_pixel_loss(A, Y).backward()
    g_paper = -A.grad[0, 0, 7, 7].item()
    A.grad = None
    fcdd_cell_loss(A, Y).backward()
    g_cell = -A.grad[0, 0, 7, 7].item()
    m = 4 / 256  # mean(Y A') over the pixels
    assert g_paper == pytest.approx(math.exp(-m) / (1 - math.exp(-m)) / 256, rel=1e-4)
    assert g_cell == pytest.approx(math.exp(-1) / (1 - math.exp(-1)) / 256, rel=1e-4)
    assert g_paper / g_cell == pytest.approx(109.1, rel=1e-2)


def test_mask_to_grid_gives_fractions():
    masks = torch.zeros(1, 8, 8)
    masks[0, :4, :2] = 1  # half of the top-left 4x4 cell
    Y = mask_to_grid(masks, (2, 2))
    assert Y.shape == (1, 1, 2, 2)
    assert torch.allclose(Y[0, 0], torch.tensor([[0.5, 0.0], [0.0, 0.0]]))


def test_gaussian_kernel_has_peak_one_like_the_official_gkern():
    k = gaussian_kernel(7, 1.5)
    assert k.shape == (7, 7) and torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))
    assert k[3, 3].item() == pytest.approx(1.0) and k.max().item() == pytest.approx(1.0)  # peak 1, not sum 1
    assert k[3, 4].item() == pytest.approx(math.exp(-1 / (2 * 1.5 ** 2)), rel=1e-6)  # one pixel off the centre
    assert k[4, 5].item() == pytest.approx(math.exp(-(1 + 4) / (2 * 1.5 ** 2)), rel=1e-6)
    assert k.sum().item() > 5  # the sum-1 kernel of the course's earlier version summed to 1


def test_peak_one_kernel_makes_a_uniform_map_about_27_times_larger():
    # stride 4, rf 35, sigma 35 / 4, cell i centred on pixel 4 i + 3: by hand, a pixel in the middle collects,
    # along each axis, exp(-d^2 / (2 sigma^2)) over the cells whose 35-px field holds it (|d| <= 17)
    rf, stride, sigma, centre, size = 35, 4, 35 / 4, 3.0, 64
    p = 32
    one_axis = sum(math.exp(-(p - (centre + stride * i)) ** 2 / (2 * sigma ** 2))
                   for i in range(size // stride) if abs(p - (centre + stride * i)) <= (rf - 1) / 2)
    up = gaussian_upsample(torch.ones(1, 1, 16, 16), size, rf, stride, sigma, centre)
    assert up[0, 0, p, p].item() == pytest.approx(one_axis ** 2, rel=1e-5)
    assert 26 < one_axis ** 2 < 28  # A' ~ 27 A here; a kernel of sum 1 would give ~ A / 16
    assert (up[0, 0, p, p] / gaussian_kernel(rf, sigma).sum()).item() == pytest.approx(1 / 16, rel=0.05)


@pytest.mark.parametrize("rf,stride,centre", [(35, 4, None), (35, 4, 3.0), (19, 4, 3.0), (9, 2, 0.0),
                                             (8, 8, None), (8, 8, 3.5)])
def test_gaussian_upsample_centres_each_cell_on_its_receptive_field(rf, stride, centre):
    size = 64
    u = size // stride
    A = torch.zeros(1, 1, u, u)
    i, j = u // 2, u // 4
    A[0, 0, i, j] = 1.0
    up = gaussian_upsample(A, size, rf, stride, sigma=rf / 4, centre=centre)
    assert up.shape == (1, 1, size, size)
    peak = (up[0, 0] == up[0, 0].max()).nonzero().float().mean(0)
    o = (stride - 1) / 2 if centre is None else centre
    assert torch.allclose(peak, torch.tensor([i * stride + o, j * stride + o]), atol=0.51)
    # linear in A: upsampling a sum is the sum of the upsamplings
    B = torch.rand(1, 1, u, u)
    assert torch.allclose(gaussian_upsample(A + B, size, rf, stride, 3.0, centre),
                          gaussian_upsample(A, size, rf, stride, 3.0, centre)
                          + gaussian_upsample(B, size, rf, stride, 3.0, centre), atol=1e-5)


def test_receptive_centre_hand_computed():
    # conv 3x3 stride 2 padding 1: cell i sees pixels 2i-1..2i+1, centre 2i
    assert receptive_centre(nn.Conv2d(1, 1, 3, stride=2, padding=1), image_size=32) == 0.0
    # 2x2 windows, stride 2: cell i sees 2i..2i+1, centre 2i + 0.5
    assert receptive_centre(nn.Conv2d(1, 1, 2, stride=2), image_size=32) == 0.5
    # TF-"same": pad one pixel after only, then 3x3 stride 2: cell i sees 2i..2i+2, centre 2i + 1
    tf_same = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 1, 3, stride=2))
    assert receptive_centre(tf_same, image_size=32) == 1.0


def test_fcdd_net_cells_look_at_4i_plus_3():
    # EfficientNet-Lite0's static "same" padding puts cell i's field centre at 4i + 3, not 4i + 1.5
    net = FCDDNet(base_block=2, pretrained=False)
    assert net.centre == 3.0
    assert FCDDNet(base_block=2).centre == 3.0


def test_fcdd_confetti_noise_recipe():
    grey = torch.full((6, 1, 64, 64), 0.5)
    out, masks = fcdd_confetti_noise(grey, generator=torch.Generator().manual_seed(0))
    assert out.shape == grey.shape and masks.shape == (6, 64, 64)
    assert (out <= grey).all() and (out >= 0).all()  # the official recipe darkens a mid-grey image
    assert (masks.flatten(1).sum(1) > 0).all()  # every image gets a blob
    again, _ = fcdd_confetti_noise(grey, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    bright, _ = fcdd_confetti_noise(grey, generator=torch.Generator().manual_seed(0), darken=False)
    assert (bright >= grey).all() and torch.allclose(bright - grey, grey - out, atol=1e-6)  # same blobs, opposite sign
    # no blur, no rotation, one blob per layer, sides 16 px: at most two 16 x 16 squares
    _, m = fcdd_confetti_noise(grey, generator=torch.Generator().manual_seed(2), blobs_per_image=(1e-9, 1e-9),
                               size_range=(0.25, 0.25), rotation=0.0, blur_sigma=0.0)
    assert (m.flatten(1).sum(1) <= 2 * 17 * 17).all() and (m.flatten(1).sum(1) >= 1).all()
    # the blur spreads a blob: more changed pixels than without
    _, m_blur = fcdd_confetti_noise(grey, generator=torch.Generator().manual_seed(2), blobs_per_image=(1e-9, 1e-9),
                                    size_range=(0.25, 0.25), rotation=0.0)
    assert (m_blur.flatten(1).sum(1) > m.flatten(1).sum(1)).all()


SHARP = dict(blobs_per_image=(1e-9, 1e-9), size_range=(0.25, 0.25), rotation=0.0, blur_sigma=0.0)


def test_confetti_sign_and_inversion_rule_hand_computed():
    # mid-grey 0.5, one sharp 8 x 8 square per layer: the "white" layer has fill -255 (-1 on [0, 1]) in the
    # official code, so its pixels go to 0; the coloured one subtracts a random grey: every change darkens
    grey = torch.full((4, 1, 32, 32), 0.5)
    out, m = fcdd_confetti_noise(grey, generator=torch.Generator().manual_seed(0), **SHARP)
    assert (out <= grey).all() and (out[m.bool()[:, None]] < 0.5).all()
    assert (out.flatten(1).amin(1) == 0).all()  # the full-strength square takes its pixels to black
    # a black image: darkening changes nothing (0 < 0.025 grey levels), brightening does: the noise is added
    black = torch.zeros(4, 1, 32, 32)
    out, _ = fcdd_confetti_noise(black, generator=torch.Generator().manual_seed(0), **SHARP)
    assert (out >= 0).all() and (out.flatten(1).amax(1) > 0).all()
    # an almost black image (0.01 = 2.55 grey levels): darkening >= 16 of 1024 pixels by 2.55 levels changes
    # the image by >= 0.04 grey levels on average: above 0.025 on the 0-255 scale, so it stays dark ...
    dim = torch.full((4, 1, 32, 32), 0.01)
    out, _ = fcdd_confetti_noise(dim, generator=torch.Generator().manual_seed(0), **SHARP)
    assert (out <= dim).all() and (out < dim).any()
    # ... while a threshold of 0.025 on [0, 1] (6.4 grey levels: the earlier, 255x looser rule) flips it
    out, _ = fcdd_confetti_noise(dim, generator=torch.Generator().manual_seed(0), invert_threshold=0.025 * 255,
                                 **SHARP)
    assert (out >= dim).all() and (out > dim).any()


def test_bilinear_upsample_shape():
    assert bilinear_upsample(torch.rand(2, 1, 16, 16), 64).shape == (2, 1, 64, 64)


def test_natural_image_crops():
    x = natural_image_crops(5, size=32)
    assert x.shape == (5, 1, 32, 32) and x.min() >= 0 and x.max() <= 1


def test_fit_predict_through_detector_interface():
    g = torch.Generator().manual_seed(0)
    images = 0.4 + 0.05 * torch.rand(12, 1, 32, 32, generator=g)
    train = AnomalyDataset(images, torch.zeros(12))
    masks = torch.zeros(2, 32, 32)
    masks[:, 8:16, 8:16] = 1
    labelled = images[:2].clone()
    labelled[:, :, 8:16, 8:16] = 1.0
    for kw in [dict(), dict(labelled_images=labelled, labelled_masks=masks),
               dict(labelled_images=labelled, labelled_masks=masks, pixel_loss="per-cell"),
               dict(confetti_sign="both"), dict(anomalies="simple-confetti"), dict(anomalies=None),
               dict(anomalies=None, outlier_images=natural_image_crops(6, size=32))]:
        det = FCDD(epochs=2, batch_size=6, progress=False, **kw).fit(train)
        scores, maps = det.predict(images[:3])
        assert scores.shape == (3,) and maps.shape == (3, 32, 32)
        assert torch.isfinite(scores).all() and (maps >= 0).all()
        assert len(det.history["A_mean"]) == 2
        det.upsample = "bilinear"
        assert det.predict(images[:3])[1].shape == (3, 32, 32)


def _fixed_head(w=1.0):
    head = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.constant_(head.weight, w)
    return head, torch.optim.SGD(head.parameters(), lr=0.0)  # lr 0: the loss is that of the fixed head


def test_semi_supervised_epoch_sends_every_sample_through_the_loss_on_A_prime():
    # 2 normal maps (phi = 0, A = 0), 2 pseudo-anomalies (phi = 2, A = sqrt(5) - 1 everywhere), 2 identical
    # real defects (A = a everywhere on 2 x 2 cells, Y marks the top-left quarter); upsample multiplies by 10
    a = math.sqrt(5) - 1
    normal, anomalous = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0)
    Y = torch.zeros(2, 1, 2, 2)
    Y[:, :, 0, 0] = 1
    calls = []

    def upsample(A):
        calls.append(len(A))
        return 10 * A

    head, opt = _fixed_head()
    loss = fcdd_epoch(head, opt, normal, anomalous, (anomalous.clone(), Y), upsample, "paper", batch_size=2,
                      generator=torch.Generator().manual_seed(0))
    assert sorted(calls) == [2, 4]  # normal + pseudo-anomalies (4), real defects (2): all on A'
    nl = lambda m: -math.log(1 - math.exp(-m))  # noqa: E731
    # batch of 4 on A' = 10 A: normal images mean(A') = 0, pseudo-anomalies (Y = 1) -log(1 - exp(-10 a));
    # real defects: mean((1 - Y) A') = 3/4 * 10 a and -log(1 - exp(-mean(Y A'))) = -log(1 - exp(-10 a / 4))
    expected = 2 * nl(10 * a) / 4 + 0.75 * 10 * a + nl(10 * a / 4)
    assert loss == pytest.approx(expected, rel=1e-5)
    # the per-cell variant: image-level loss on A (no upsampling) + per-cell loss on the real defects
    calls.clear()
    head, opt = _fixed_head()
    loss = fcdd_epoch(head, opt, normal, anomalous, (anomalous.clone(), Y), upsample, "per-cell", batch_size=2,
                      generator=torch.Generator().manual_seed(0))
    assert calls == [] and loss == pytest.approx(2 * nl(a) / 4 + (3 * a + nl(a)) / 4, rel=1e-5)


def test_unsupervised_epoch_is_the_image_level_loss():
    a = math.sqrt(5) - 1
    head, opt = _fixed_head()
    loss = fcdd_epoch(head, opt, torch.zeros(3, 1, 2, 2), torch.full((3, 1, 2, 2), 2.0), batch_size=3,
                      generator=torch.Generator().manual_seed(0))
    assert loss == pytest.approx(-math.log(1 - math.exp(-a)) / 2, rel=1e-5)


def test_pseudo_anomalies_pool():
    images = torch.full((3, 1, 16, 16), 0.5)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dark = pseudo_anomalies(images, "confetti", 2, generator=g())
    bright = pseudo_anomalies(images, "confetti", 2, generator=g(), confetti_sign="brighten")
    assert dark.shape == (6, 1, 16, 16) and (dark <= 0.5).all() and (bright >= 0.5).all()
    assert (dark < 0.5).flatten(1).any(1).all() and (bright > 0.5).flatten(1).any(1).all()  # every copy changed
    both = pseudo_anomalies(images.repeat(10, 1, 1, 1), "confetti", 2, generator=g(), confetti_sign="both")
    darker, brighter = (both <= 0.5).flatten(1).all(1), (both >= 0.5).flatten(1).all(1)
    assert (darker ^ brighter).all()  # each copy has one sign ...
    assert 0 < int(brighter.sum()) < len(both)  # ... and both signs occur
    oe = torch.rand(4, 1, 16, 16)
    assert pseudo_anomalies(images, None, 2, oe).shape == (4, 1, 16, 16)
    assert pseudo_anomalies(images, "simple-confetti", 1, oe, g()).shape == (7, 1, 16, 16)
    assert pseudo_anomalies(images, None, 2) is None
