"""The README's "every method on your own folder" recipe runs as written: RGB and grey folders, non-square images,
with masks (PIPED crops) and without (ELPV cells), every method of the registry, STFPM and Reverse Distillation
included (smoke profile: the lessons' settings with their step counts cut)."""

import re

import numpy as np
import pytest
from PIL import Image

from anomaly_utils.profiles import REPO_ROOT

PIPED = REPO_ROOT / "data" / "piped" / "data" / "PA_BDP01_TL"


def recipe_code() -> str:
    """The recipe's Python block in README.md (the one that imports METHODS)."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)
    block = next(b for b in blocks if "METHODS" in b and "load_folder" in b)
    return block


def piped_folder(root, grey: bool, n_good: int = 8, n_bad: int = 4):
    """A folder of non-square (96 x 128) crops of PIPED photos: good/, defective/ and masks/ (``<stem>_mask.png``)."""
    for sub in ("good", "defective", "masks"):
        (root / sub).mkdir(parents=True)
    crop = (0, 16, 128, 112)  # left, top, right, bottom: 128 wide, 96 high

    def save(src, dst, mode):
        Image.open(src).convert(mode).crop(crop).save(dst)

    for p in sorted((PIPED / "NoDefects").glob("*.png"))[:n_good]:
        save(p, root / "good" / p.name, "L" if grey else "RGB")
    for p in sorted((PIPED / "Defects").glob("*.png"))[:n_bad]:
        save(p, root / "defective" / p.name, "L" if grey else "RGB")
        gt = PIPED / "Defects" / "GroundThruth" / p.name.replace("_S_D_", "_S_GT_")
        save(gt, root / "masks" / f"{p.stem}_mask.png", "L")
    return root


def run_recipe(folder, head: str, family: str, require_masks: bool = True) -> dict:
    code = recipe_code().replace('"my_parts/good"', repr(str(folder / "good")))
    code = code.replace('"my_parts/defective"', repr(str(folder / "defective")))
    code = code.replace('"my_parts/masks"', repr(str(folder / "masks")) if require_masks else "None")
    code = code.replace('"piped/mine"', repr(f"{head}/mine")).replace('"real" in spec', repr(family) + " in spec")
    if not require_masks:
        code = code.replace("size=(96, 128))", "size=(96, 128), require_masks=False)")
    printed = {}
    env = {"print": lambda name, *values: printed.setdefault(name, values)}
    exec(compile(code, "README recipe", "exec"), env)
    return printed


@pytest.fixture
def smoke(monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "smoke")


@pytest.mark.parametrize("grey", [False, True])
def test_recipe_runs_every_real_method_on_a_folder_with_masks(tmp_path, smoke, grey):
    from anomaly_utils.lessons.leaderboard import METHODS

    printed = run_recipe(piped_folder(tmp_path, grey), "piped", "real")
    expected = {n for n, s in METHODS.items() if "real" in s.families}
    assert set(printed) == expected and {"STFPM", "Reverse Distillation"} <= expected
    for name, (image_auroc, pixel_auroc, pro) in printed.items():
        assert 0 <= image_auroc <= 1, name
        if name not in ("1-NN pixels", "Deep SVDD"):  # the image-level methods give no map
            assert 0 <= pixel_auroc <= 1 and 0 <= pro <= 1, name


def test_recipe_runs_every_image_method_on_a_grey_folder_without_masks(tmp_path, smoke):
    from anomaly_utils.data import _elpv_arrays
    from anomaly_utils.lessons.leaderboard import METHODS

    images, prob = _elpv_arrays("mono", 128)
    for sub, which in (("good", np.flatnonzero(prob == 0)[:8]), ("defective", np.flatnonzero(prob == 1)[:4])):
        (tmp_path / sub).mkdir()
        for i in which:
            Image.fromarray(images[i]).crop((0, 16, 128, 112)).save(tmp_path / sub / f"cell_{i}.png")
    printed = run_recipe(tmp_path, "elpv", "elpv", require_masks=False)
    assert set(printed) == {n for n, s in METHODS.items() if "elpv" in s.families}
    assert "AnoGAN" in printed and "STFPM" in printed
    assert all(0 <= v[0] <= 1 for v in printed.values())
