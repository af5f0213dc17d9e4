"""Lesson 10: the registry builds every detector from its lesson's recorded choice; seeds, bootstrap, tiling."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from anomaly_utils.results import RESULTS_DIR, _settings_from_notes, lesson_settings

CALLER_ARGS = {"seed", "device", "progress"}  # the caller's, not a choice of a lesson


def recorded(lesson: str, method: str, fam: str):
    """What ``results/<lesson>.json`` records for ``method`` on ``fam`` (read here without the course's helper)."""
    path = RESULTS_DIR / f"{lesson}.json"
    return json.loads(path.read_text()).get("chosen_settings", {}).get(method, {}).get(fam)


class Spy:
    """Stands in for a detector class: records the keyword arguments it is built with."""

    def __init__(self, cls):
        self.cls, self.calls = cls, []
        import inspect

        self.__signature__ = inspect.signature(cls)

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return object()


def normalised(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def built_args(spec, fam):
    """The constructor arguments ``spec`` passes for ``fam`` (its base autoencoder's too, for a projection)."""
    spy = Spy(spec.detector)
    base_spy = Spy(spec.base.detector) if spec.base else None
    base = dataclasses.replace(spec.base, detector=base_spy) if spec.base else None
    dataclasses.replace(spec, detector=spy, base=base).build(fam, seed=2)
    return spy.calls[0], (base_spy.calls[0] if base_spy else None)


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "cpu")
    monkeypatch.delenv("AD_CAP", raising=False)


def test_every_registry_entry_is_built_with_its_lessons_recorded_choice(cpu):
    from anomaly_utils.lessons.leaderboard import FAMILY_CHANNELS, METHODS

    for name, spec in METHODS.items():
        for fam in spec.families:
            source = spec.borrow.get(fam, fam)
            choice = recorded(spec.lesson, name, source)
            assert choice is not None, f"results/{spec.lesson}.json records no choice for {name} on {source}: rerun it"
            args, base_args = built_args(spec, fam)
            lesson_args = {k: v for k, v in args.items() if k not in CALLER_ARGS}
            expected = dict(choice)
            if "nc" in lesson_args:  # the GANs get as many channels as the family's images
                assert lesson_args["nc"] == FAMILY_CHANNELS[fam]
                if source == fam:
                    assert expected.get("nc", FAMILY_CHANNELS[fam]) == FAMILY_CHANNELS[fam]
                expected["nc"] = lesson_args["nc"]
            assert normalised(lesson_args) == normalised(expected), (name, fam)
            assert args.get("seed", 2) == 2 and args.get("progress", False) is False  # the caller's seed reaches it
            if spec.base is not None:  # the projection wraps lesson 05's autoencoder with its own recorded choice
                base_choice = recorded(spec.base.lesson, spec.base.name, spec.base.borrow.get(fam, fam))
                assert normalised({k: v for k, v in base_args.items() if k not in CALLER_ARGS}) == \
                    normalised(base_choice)


def test_the_three_old_mismatches_follow_their_lessons(cpu):
    from anomaly_utils.lessons.leaderboard import METHODS

    gan = METHODS["GANomaly"].settings("mnist")
    assert (gan["lr"], gan["batch_size"]) == tuple(recorded("04_ganomaly", "GANomaly", "mnist")[k]
                                                   for k in ("lr", "batch_size"))
    svdd = METHODS["Deep SVDD"].settings("textures")
    assert svdd == recorded("01_deep_svdd", "Deep SVDD", "textures")
    cfa = METHODS["CFA"].settings("textures")
    assert cfa == recorded("08_cfa", "CFA", "textures")


def test_borrowed_families_are_only_those_the_lesson_did_not_measure(cpu):
    from anomaly_utils.lessons.leaderboard import METHODS

    for name, spec in METHODS.items():
        for fam, source in spec.borrow.items():
            assert fam in spec.families and recorded(spec.lesson, name, fam) is None, \
                f"{name}: lesson {spec.lesson} now records {fam}; drop the borrowed {source} choice"


def test_smoke_cuts_only_step_counts(monkeypatch):
    from anomaly_utils.lessons.leaderboard import METHODS, SMOKE_STEPS

    for name, spec in METHODS.items():
        for fam in spec.families:
            monkeypatch.setenv("AD_PROFILE", "cpu")
            full = spec.settings(fam)
            monkeypatch.setenv("AD_PROFILE", "smoke")
            cut = spec.settings(fam)
            assert set(cut) == set(full)
            for k in full:
                if k in SMOKE_STEPS:
                    assert cut[k] == min(full[k], SMOKE_STEPS[k]), (name, fam, k)
                else:
                    assert cut[k] == full[k], (name, fam, k)


# ------------------------------------------------------------------------------------------------ statistics
def test_bootstrap_of_constant_scores_is_that_constant():
    from anomaly_utils.lessons.leaderboard import bootstrap_draws, interval

    draws = bootstrap_draws({"a": np.full((4, 3), 0.7)}, n_boot=500)
    assert np.allclose(draws["a"], 0.7) and interval(draws["a"]) == pytest.approx((0.7, 0.7))


def test_bootstrap_over_two_categories_takes_three_values_and_is_reproducible():
    from anomaly_utils.lessons.leaderboard import bootstrap_draws, interval

    draws = bootstrap_draws({"m": [[0.6], [0.8]]}, n_boot=4000, seed=3)["m"]
    assert set(np.round(draws, 6)) == {0.6, 0.7, 0.8}  # both mono, one of each, both poly
    assert np.mean(draws == 0.7) == pytest.approx(0.5, abs=0.03)  # one of each: probability 1/2
    assert interval(draws) == (0.6, 0.8)
    again = bootstrap_draws({"m": [[0.6], [0.8]]}, n_boot=4000, seed=3)["m"]
    assert np.array_equal(draws, again)


def test_bootstrap_resamples_seeds_inside_a_category():
    from anomaly_utils.lessons.leaderboard import bootstrap_draws

    draws = bootstrap_draws({"m": [[0.0, 1.0]]}, n_boot=4000)["m"]  # one category, two seeds
    assert set(np.round(draws, 6)) == {0.0, 0.5, 1.0}
    assert np.mean(draws) == pytest.approx(0.5, abs=0.03)


def test_paired_difference_finds_a_consistent_gap_that_overlapping_intervals_hide():
    from anomaly_utils.lessons.leaderboard import bootstrap_draws, interval, ties_with

    cats = np.array([0.55, 0.65, 0.75, 0.85, 0.95])[:, None]
    draws = bootstrap_draws({"A": cats + 0.02, "B": cats, "C": cats + 0.0}, n_boot=2000)
    lo_a, hi_a = interval(draws["A"])
    lo_b, hi_b = interval(draws["B"])
    assert lo_a < hi_b  # the two means' intervals overlap ...
    assert interval(draws["A"] - draws["B"]) == pytest.approx((0.02, 0.02))  # ... the paired gap does not
    assert ties_with("A", draws) == ["A"] and ties_with("B", draws) == ["B", "C"]


def test_a_methods_draws_do_not_depend_on_the_other_methods():
    from anomaly_utils.lessons.leaderboard import bootstrap_draws

    a = np.random.default_rng(0).random((5, 3))
    alone = bootstrap_draws({"a": a}, n_boot=300)["a"]
    with_others = bootstrap_draws({"z": np.ones((5, 1)), "a": a, "b": np.zeros((5, 3))}, n_boot=300)["a"]
    assert np.array_equal(alone, with_others)


def test_values_by_method_keeps_complete_methods_and_shared_seeds():
    from anomaly_utils.board_support import values_by_method

    rows = [{"method": "a", "dataset": d, "seed": s, "aupro": 0.1 * i + s}
            for i, d in enumerate(["x/1", "x/2"]) for s in (0, 1)]
    rows += [{"method": "b", "dataset": "x/1", "seed": 0, "aupro": 0.5}]  # b misses x/2
    rows += [{"method": "a", "dataset": "x/1", "seed": 2, "aupro": 9.0}]  # seed 2 only on x/1
    out = values_by_method(rows, ["x/1", "x/2"], "aupro")
    assert set(out) == {"a"} and out["a"].tolist() == [[0.0, 1.0], [0.1, 1.1]]


# ------------------------------------------------------------------------------------------------ plumbing
class MeanMap:
    """Map = the channel mean; score = its maximum. Fits nothing (records what it saw)."""

    def fit(self, train):
        self.seen = train.images
        return self

    def predict(self, images):
        m = images.mean(1)
        return m.flatten(1).amax(1), m


def test_at_size_converts_channels_and_size_and_returns_maps_at_the_input_size():
    from anomaly_utils import AnomalyDataset
    from anomaly_utils.lessons.leaderboard import AtSize

    rgb = torch.rand(3, 3, 48, 80)  # non-square
    det = AtSize(MeanMap(), 32, 1).fit(AnomalyDataset(rgb, torch.zeros(3)))
    assert det.detector.seen.shape == (3, 1, 32, 32)
    scores, maps = det.predict(torch.rand(2, 3, 40, 60))
    assert maps.shape == (2, 40, 60) and scores.shape == (2,)
    grey = torch.rand(2, 1, 64, 64)
    det3 = AtSize(MeanMap(), 64, 3).fit(AnomalyDataset(grey, torch.zeros(2)))
    assert det3.detector.seen.shape == (2, 3, 64, 64)
    assert torch.equal(det3.detector.seen[:, 1], grey[:, 0])  # repeated, not changed


def test_at_size_passes_the_lessons_bytes_through_unchanged():
    from anomaly_utils import AnomalyDataset
    from anomaly_utils.lessons.leaderboard import AtSize
    from anomaly_utils.profiles import data_fingerprint

    images = torch.rand(4, 1, 64, 64)
    det = AtSize(MeanMap(), 64, 1).fit(AnomalyDataset(images, torch.zeros(4)))
    assert data_fingerprint(det.detector.seen) == data_fingerprint(images)  # the cached model's key is found


def test_gans_see_mnist_digits_at_28_px_as_their_lessons_do(cpu):
    # lessons 03 and 04 give the GANs the 28-px digits, which the GAN zero-pads to isize = 32 itself; resizing them
    # to 32 first (bilinear) would be other images: another result, and the lessons' cached models not found
    from anomaly_utils.lessons.leaderboard import METHODS

    for name in ("AnoGAN", "GANomaly"):
        spec = METHODS[name]
        assert spec.settings("mnist")["isize"] == 32
        assert spec.size("mnist") == 28, name
        assert spec.make("mnist/0").size == 28
    assert METHODS["GANomaly"].size("elpv") == METHODS["GANomaly"].settings("elpv")["isize"]  # elsewhere: isize


def test_predict_tiled_averages_overlapping_windows():
    from anomaly_utils.lessons.leaderboard import predict_tiled

    class WindowCount:  # every window's map is 1: the tiled map is 1 everywhere (a mean, not a sum)
        def predict(self, images):
            return torch.ones(len(images)), torch.ones(len(images), *images.shape[-2:])

    scores, maps = predict_tiled(WindowCount(), torch.rand(2, 1, 96, 70), tile=32, stride=16)
    assert maps.shape == (2, 96, 70) and torch.allclose(maps, torch.ones(2, 96, 70))
    image = torch.rand(1, 1, 64, 64)
    scores, maps = predict_tiled(MeanMap(), image, tile=32, stride=16)
    assert torch.allclose(maps, image[:, 0]) and scores.item() == pytest.approx(image.max().item())
    with pytest.raises(ValueError, match="smaller than one tile"):
        predict_tiled(MeanMap(), torch.rand(1, 1, 20, 64), tile=32, stride=16)


def test_lesson_cache_names_still_appear_in_lessons_03_and_04():
    # the leaderboard loads the lessons' GANs from the cache under these names and keys (board_support.lesson_cache)
    from anomaly_utils.profiles import REPO_ROOT

    nb3 = (REPO_ROOT / "notebooks" / "03_anogan.ipynb").read_text()
    nb4 = (REPO_ROOT / "notebooks" / "04_ganomaly.ipynb").read_text()
    for needle in ['\\"anogan_mnist\\"', 'f\\"anogan_elpv_{ct}\\"', '\\"init\\": \\"dcgan\\"']:
        assert needle in nb3, needle
    for needle in ['f\\"ganomaly_mnist{c}\\"', 'f\\"ganomaly_{cat}\\"', 'f\\"ganomaly_elpv_{ct}\\"',
                   '\\"d_loss\\": \\"half\\"', '\\"seed\\": 0']:
        assert needle in nb4, needle


def test_cache_key_holds_the_seed(tmp_path, monkeypatch):
    from anomaly_utils import profiles

    monkeypatch.setattr(profiles, "CACHE_DIR", tmp_path)
    monkeypatch.delenv("AD_NO_CACHE", raising=False)
    calls = []

    def train_fn(model):
        calls.append(torch.initial_seed())
        torch.nn.init.normal_(model.weight)
        return {}

    def fit(seed):
        profiles.seed_everything(seed)
        return profiles.load_or_train(torch.nn.Linear(2, 2), "demo", {"epochs": 1}, train_fn)

    w0, _, cached = fit(0)
    assert not cached
    w1, _, cached = fit(1)  # the old key ignored the seed: seed 1 loaded seed 0's weights
    assert not cached and not torch.equal(w0.weight, w1.weight)
    again, _, cached = fit(0)
    assert cached and torch.equal(again.weight, w0.weight) and calls == [0, 1]


# ------------------------------------------------------------------------------------------------ older behaviour
def test_grad_settings_equal_lesson_06_json():
    payload = json.loads((RESULTS_DIR / "06_gradient_projection.json").read_text())
    models = {"L2-AE-grad": "l2", "SSIM-AE-grad": "ssim", "VAE-grad": "vae"}
    for data in ("textures", "piped"):
        rows = [r for r in payload["rows"] if r["method"] in models and r["dataset"].startswith(data + "/")]
        settings = lesson_settings("06_gradient_projection", data)
        for r in rows:  # every category's row holds the settings lesson 06 chose
            for key, value in r.get("grad_settings", {}).items():
                assert settings[models[r["method"]]][key] == pytest.approx(value), (data, r["method"], key)


def test_settings_read_per_family_and_inconsistent_rows_refused(tmp_path):
    row = lambda m, d, a: {"method": m, "dataset": d, "grad_settings": {"alpha": a, "lam": 0.5, "n_steps": 10}}  # noqa: E731
    rows = [row("L2-AE-grad", "textures/brick", 15.0), row("L2-AE-grad", "textures/grass", 15.0),
            row("L2-AE-grad", "piped/PA_X", 5.0), row("L2-AE", "textures/brick", 1.0)]
    (tmp_path / "06_g.json").write_text(json.dumps({"notes": "", "rows": rows}))
    assert lesson_settings("06_g", "textures", tmp_path) == {"l2": {"alpha": 15.0, "lam": 0.5, "n_steps": 10}}
    assert lesson_settings("06_g", "piped", tmp_path)["l2"]["alpha"] == 5.0
    rows.append(row("L2-AE-grad", "textures/gravel", 1.0))
    (tmp_path / "06_h.json").write_text(json.dumps({"notes": "", "rows": rows}))
    with pytest.raises(ValueError, match="different settings"):
        lesson_settings("06_h", "textures", tmp_path)


def test_settings_parsed_from_old_notes():
    notes = ("lesson 05's autoencoders; alpha, lambda and T chosen on val: L2-AE: alpha=5, lambda=0, T=40; "
             "SSIM-AE: alpha=0.25, lambda=0, T=10; VAE: alpha=0.3, lambda=25, T=10")
    assert _settings_from_notes(notes) == {"l2": dict(alpha=5.0, lam=0.0, n_steps=40),
                                           "ssim": dict(alpha=0.25, lam=0.0, n_steps=10),
                                           "vae": dict(alpha=0.3, lam=25.0, n_steps=10)}


def test_readme_table_shows_means_with_intervals_and_elpv_columns(tmp_path, monkeypatch):
    from anomaly_utils.results import result_row, save_result, summary_table

    monkeypatch.setenv("AD_PROFILE", "cpu")

    def summary(method, fam, lesson, **values):
        cis = {f"{k}_ci": [v - 0.02, v + 0.01] for k, v in values.items()}
        head = {"real": "piped", "elpv-uncertain": "elpv"}.get(fam, fam)
        return result_row(method, f"{head} (mean of 4)", **values, **cis, train_seconds=2.0, infer_ms_per_image=1.5,
                          lesson=lesson, summary=fam)

    rows = [result_row("PaDiM", "piped/a", 1.0, 0.9, 0.8, lesson="07", seed=0),  # per-category rows are ignored
            summary("PaDiM", "real", "07", image_auroc=0.95, pixel_auroc=0.9, aupro=0.8),
            summary("PaDiM", "elpv", "07", image_auroc=0.93),
            summary("PaDiM", "elpv-uncertain", "07", image_auroc=0.71),
            summary("z-score", "real", "00", image_auroc=0.99, pixel_auroc=0.99, aupro=0.95),
            summary("AnoGAN", "mnist", "03", image_auroc=0.8)]
    save_result("10_leaderboard", rows, results_dir=tmp_path)
    lines = summary_table(tmp_path).splitlines()
    assert lines[0].startswith("Means over the categories") and "`cpu` profile" in lines[0]
    assert lines[2] == ("| lesson | method | PIPED image AUROC | PIPED AUPRO | ELPV image AUROC | ELPV doubtful cells | "
                        "textures image AUROC | textures AUPRO | mnist image AUROC | fit s | ms / image |")
    assert lines[4] == "| 00 | z-score | 0.99 [0.97, 1.00] | 0.95 [0.93, 0.96] | – | – | – | – | – | 2.0 | 1.5 |"
    assert lines[5] == ("| 07 | PaDiM | 0.95 [0.93, 0.96] | 0.80 [0.78, 0.81] | 0.93 [0.91, 0.94] | 0.71 [0.69, 0.72] "
                        "| – | – | – | 2.0 | 1.5 |")
    assert lines[6].startswith("| 03 | AnoGAN | – |") and len(lines) == 7
