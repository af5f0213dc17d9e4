"""Every detector's ``fit`` takes a data set; a bare tensor (a common first try) gets an error that says how to wrap
it, not ``AttributeError: 'Tensor' object has no attribute 'images'`` from inside ``fit``."""

import pytest
import torch

from anomaly_utils import AnomalyDataset
from anomaly_utils.detector import training_images


def _detectors():
    from anomaly_utils.lessons.anogan import AnoGAN
    from anomaly_utils.lessons.autoencoders import ReconstructionDetector
    from anomaly_utils.lessons.cfa import CFA
    from anomaly_utils.lessons.deep_svdd import DeepSVDD
    from anomaly_utils.lessons.fcdd import FCDD
    from anomaly_utils.lessons.ganomaly import GANomaly
    from anomaly_utils.lessons.gradient_projection import GradientProjectionDetector
    from anomaly_utils.lessons.knowledge_distillation import (
        STFPM,
        EfficientAD,
        ReverseDistillation,
        StudentTeacher,
    )
    from anomaly_utils.lessons.memory_bank import KNNDetector, PaDiM, PatchCore
    from anomaly_utils.lessons.primer import NearestNeighbourDetector, PixelZScoreDetector

    return {"1-NN": NearestNeighbourDetector, "z-score": PixelZScoreDetector, "Deep SVDD": DeepSVDD, "FCDD": FCDD,
            "AnoGAN": AnoGAN, "GANomaly": GANomaly, "autoencoder": ReconstructionDetector,
            "gradient projection": lambda: GradientProjectionDetector(ReconstructionDetector()),
            "kNN": KNNDetector, "PaDiM": PaDiM, "PatchCore": PatchCore, "CFA": CFA,
            "Uninformed Students": StudentTeacher, "STFPM": STFPM, "Reverse Distillation": ReverseDistillation,
            "EfficientAD": EfficientAD}


@pytest.mark.parametrize("name", list(_detectors()))
def test_fit_on_a_bare_tensor_says_how_to_wrap_it(name):
    detector = _detectors()[name]()
    with pytest.raises(TypeError, match=r"AnomalyDataset\(images, labels=torch.zeros"):
        detector.fit(torch.rand(4, 1, 32, 32))


def test_training_images_names_what_it_got_and_keeps_data_sets_unchanged():
    with pytest.raises(TypeError, match=r"a tensor of shape \[4, 1, 8, 8\]"):
        training_images(torch.rand(4, 1, 8, 8))
    with pytest.raises(TypeError, match="a list"):
        training_images([torch.rand(1, 8, 8)])
    data = AnomalyDataset(torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 0, 1, 0]))
    assert training_images(data) is data.images
    assert torch.equal(training_images(data, normal_only=True), data.images[[0, 2, 4]])


def test_fit_on_a_loaders_train_test_pair_says_which_split_to_pass():
    pair = (AnomalyDataset(torch.rand(3, 1, 8, 8), torch.zeros(3)), AnomalyDataset(torch.rand(2, 1, 8, 8), torch.zeros(2)))
    with pytest.raises(TypeError, match=r"\(train, test\) pair.*training split.*detector.fit\(train\)"):
        training_images(pair)
