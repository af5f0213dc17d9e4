"""anomaly_utils.sources: the AD_DATA switch, on a tiny fake MVTec AD folder and a faked piped source."""

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_utils import data, sources
from anomaly_utils.data import AnomalyDataset

# kind -> number of test images; good 9, scratch 6, hole 4: val gets 3 good and round(10/3) = 3 defective
KINDS = {"good": 9, "scratch": 6, "hole": 4}


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_category(root, name):
    base = root / name
    for i in range(3):
        save(base / "train" / "good" / f"{i:03d}.png", np.full((8, 8, 3), 100 + i, np.uint8))
    for kind, n in KINDS.items():
        for i in range(n):
            # each image's value encodes (kind, i), so the split can be traced back to the files
            save(base / "test" / kind / f"{i:03d}.png", np.full((8, 8, 3), 10 * list(KINDS).index(kind) + i,
                                                                 np.uint8))
            if kind != "good":
                m = np.zeros((8, 8), np.uint8)
                m[:4, :4] = 255
                save(base / "ground_truth" / kind / f"{i:03d}_mask.png", m)


@pytest.fixture
def mvtec(tmp_path, monkeypatch):
    root = tmp_path / "mvtec_anomaly_detection"
    make_category(root, "carpet")
    make_category(root, "bottle")
    (root / "license.txt").write_text("CC BY-NC-SA 4.0")
    monkeypatch.setenv("AD_DATA", "mvtec")
    monkeypatch.setenv("AD_MVTEC_ROOT", str(root))
    return root


def keys(ds):
    return {(k, round(float(v))) for k, v in zip(ds.kinds, ds.images[:, 0, 0, 0].mul(255).tolist())}


def test_name_defaults_to_piped_and_validates(monkeypatch):
    monkeypatch.delenv("AD_DATA", raising=False)
    assert sources.real_data_name() == "piped"
    monkeypatch.setenv("AD_DATA", "mvtec")
    assert sources.real_data_name() == "mvtec"
    monkeypatch.setenv("AD_DATA", "imagenet")
    with pytest.raises(ValueError, match="AD_DATA='imagenet'.*piped.*mvtec"):
        sources.real_data_name()


def test_mvtec_categories_listed(mvtec):
    assert sources.real_categories() == ["bottle", "carpet"]


def test_no_categories_says_make_mvtec(tmp_path, monkeypatch):
    monkeypatch.setenv("AD_DATA", "mvtec")
    monkeypatch.setenv("AD_MVTEC_ROOT", str(tmp_path / "nothing_here"))
    with pytest.raises(FileNotFoundError, match="make mvtec"):
        sources.real_categories()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("AD_MVTEC_ROOT", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="make mvtec"):
        sources.load_real("bottle")


def test_default_root_is_the_download_folder(monkeypatch):
    monkeypatch.delenv("AD_MVTEC_ROOT", raising=False)
    assert sources.mvtec_root().parts[-3:] == ("data", "downloads", "mvtec_anomaly_detection")


def test_val_and_test_disjoint_stratified_and_complete(mvtec):
    train, val = sources.load_real("carpet", size=8, split="val", seed=0)
    train2, test = sources.load_real("carpet", size=8, split="test", seed=0)
    assert len(train) == len(train2) == 3
    assert keys(val).isdisjoint(keys(test))
    assert len(keys(val) | keys(test)) == sum(KINDS.values())
    assert (val.labels == 0).sum() == 3 and (val.labels == 1).sum() == 3  # a third of each
    assert val.kinds.count("scratch") == 2 and val.kinds.count("hole") == 1  # stratified by defect kind
    assert test.kinds.count("good") == 6 and test.kinds.count("scratch") == 4 and test.kinds.count("hole") == 3
    assert val.has_masks and test.has_masks and val.image_size == (8, 8)
    assert val.name.endswith("/val") and test.name.endswith("/test")


def test_split_deterministic_for_a_seed(mvtec):
    a = keys(sources.load_real("carpet", size=8, split="val", seed=1)[1])
    b = keys(sources.load_real("carpet", size=8, split="val", seed=1)[1])
    others = [keys(sources.load_real("carpet", size=8, split="val", seed=s)[1]) for s in (2, 3, 4)]
    assert a == b
    assert any(o != a for o in others)


def test_bad_split_and_missing_category(mvtec):
    with pytest.raises(ValueError, match="split"):
        sources.load_real("carpet", split="train")
    with pytest.raises(FileNotFoundError, match="make mvtec CATEGORIES=zipper"):
        sources.load_real("zipper")


def test_piped_branch_calls_the_data_module(monkeypatch):
    monkeypatch.delenv("AD_DATA", raising=False)
    calls = []
    fake = AnomalyDataset(torch.zeros(2, 1, 4, 4), [0, 1], name="fake")

    def load_piped(category, size=128, split="test", seed=0):
        calls.append((category, size, split, seed))
        return fake, fake

    monkeypatch.setattr(data, "piped_categories", lambda: {"pipe_a": "one", "pipe_b": "two"}, raising=False)
    monkeypatch.setattr(data, "load_piped", load_piped, raising=False)
    assert sources.real_categories() == ["pipe_a", "pipe_b"]
    assert sources.load_real("pipe_a", size=64, split="val", seed=3) == (fake, fake)
    assert calls == [("pipe_a", 64, "val", 3)]


# --------------------------------------------------------------------------- no lesson bypasses sources (issue 21)

def test_no_lesson_but_the_primer_calls_load_piped():
    """Real images with masks come through sources.load_real / real_categories, so that AD_DATA switches every
    lesson; only 00_primer, which introduces PIPED, may call load_piped itself."""
    import json
    import re
    from pathlib import Path

    notebooks = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks
    call = re.compile(r"\bload_piped\s*\(")
    offenders = []
    for path in notebooks:
        if path.name.startswith("00_"):
            continue
        for k, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] != "code":
                continue
            code = "\n".join(line.split("#", 1)[0] for line in "".join(cell["source"]).splitlines())
            if call.search(code):
                offenders.append(f"{path.name} (cell {k})")
    assert not offenders, ("these lessons call load_piped directly; use anomaly_utils.sources.load_real(category, "
                           "size, split) and real_categories() instead: " + ", ".join(offenders))


@pytest.mark.parametrize("seed", [-1, None, 0.5])
def test_split_seed_is_checked(mvtec, seed):
    with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
        sources.load_real("carpet", size=8, split="val", seed=seed)  # NumPy's own error (or none) before
