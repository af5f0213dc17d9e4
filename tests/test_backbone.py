"""The offline ImageNet backbone: real weights (a cat is a cat) and the feature maps' shapes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaly_utils.backbones import BLOCK_STRIDE, FeatureExtractor, efficientnet_lite0, imagenet_normalize

CAT_CLASSES = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def chelsea_224() -> torch.Tensor:
    import skimage.data

    img = torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea())).permute(2, 0, 1).float() / 255
    return F.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


def test_imagenet_weights_recognise_a_cat():
    model = efficientnet_lite0().eval()
    with torch.no_grad():
        logits = model(imagenet_normalize(chelsea_224()))
    assert logits.shape == (1, 1000)
    top5 = set(logits[0].topk(5).indices.tolist())
    assert top5 & CAT_CLASSES, f"no cat class in the top 5 {sorted(top5)}: are the ImageNet weights loaded?"
    assert int(logits[0].argmax()) in CAT_CLASSES


def test_feature_extractor_shapes():
    fx = FeatureExtractor((2, 4, 10))
    assert fx.strides == [4, 8, 16]
    with torch.no_grad():
        feats = fx(chelsea_224())
    assert [tuple(f.shape) for f in feats] == [(1, 24, 56, 56), (1, 40, 28, 28), (1, 112, 14, 14)]
    assert not any(p.requires_grad for p in fx.parameters())
    fx.train()
    assert not fx.training  # frozen BatchNorm statistics


def test_feature_extractor_grey_input_and_bad_blocks():
    fx = FeatureExtractor((4,))
    with torch.no_grad():
        (grey,) = fx(torch.rand(2, 1, 64, 64))
    assert grey.shape == (2, 40, 64 // BLOCK_STRIDE[4], 64 // BLOCK_STRIDE[4])
    with pytest.raises(ValueError, match="block indices in 0..15"):
        FeatureExtractor((2, 16))


# --------------------------------------------------------------------------- hardening (issue 22: the rest of the area)

@pytest.mark.parametrize("images,match", [
    (torch.rand(3, 32, 32), r"shape \[3, 32, 32\].*images\[None\]"),
    (torch.rand(2, 32, 32, 3), r"Channels-last.*permute"),
    (torch.rand(2, 4, 32, 32), r"alpha channel"),
    (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), r"float in \[0, 1\].*/ 255"),
    (torch.rand(2, 3, 32, 32) * 255, r"values from .* to .*divide 8-bit pixels by 255"),
    (imagenet_normalize(torch.rand(2, 3, 32, 32)), r"do not apply an ImageNet normalisation"),
])
def test_backbone_input_that_would_be_misread_is_an_error(images, match):
    fx = FeatureExtractor((2,))
    with pytest.raises(ValueError, match=match):
        fx(images)


@pytest.mark.parametrize("blocks", [(), [], (2, 99), "2"])
def test_bad_blocks_say_what_to_give(blocks):
    with pytest.raises(ValueError, match=r"blocks must be one or more block indices in 0..15"):
        FeatureExtractor(blocks)
    assert FeatureExtractor(4).blocks == (4,)  # one int is one block
