"""anomaly_utils: the plumbing of the deep visual anomaly detection course (what is not being taught).

The methods themselves are built in the notebooks; cells marked ``#@save`` are exported to
``anomaly_utils.lessons`` so that later lessons, the leaderboard and the tests can import them.
"""

from .data import (
    AnomalyDataset,
    Sample,
    load_digits,
    load_mnist,
    load_piped,
    load_textures,
    piped_categories,
    to_rgb,
)
from .detector import Detector, Evaluation, evaluate, fit_timed, predict_batched
from .metrics import aupro, f1_optimal_threshold, image_auroc, pixel_auroc, roc_curve
from .profiles import get_device, get_profile, load_or_train, pick, seed_everything, setup
from .results import result_row, save_result

__all__ = [
    "AnomalyDataset", "Sample", "load_digits", "load_mnist", "load_piped", "load_textures", "piped_categories",
    "to_rgb",
    "Detector", "Evaluation", "evaluate", "fit_timed", "predict_batched",
    "aupro", "f1_optimal_threshold", "image_auroc", "pixel_auroc", "roc_curve",
    "get_device", "get_profile", "load_or_train", "pick", "seed_everything", "setup",
    "result_row", "save_result",
]
