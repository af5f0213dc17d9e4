"""Lesson 10: the leaderboard's registry takes every lesson's chosen settings from results/, never a hand copy."""

import json

import pytest

from anomaly_utils.results import RESULTS_DIR, _settings_from_notes, lesson_settings


def test_grad_settings_equal_lesson_06_json():
    from anomaly_utils.lessons.leaderboard import GRAD_SETTINGS

    payload = json.loads((RESULTS_DIR / "06_gradient_projection.json").read_text())
    models = {"L2-AE-grad": "l2", "SSIM-AE-grad": "ssim", "VAE-grad": "vae"}
    for data in ("textures", "piped"):
        rows = [r for r in payload["rows"] if r["method"] in models and r["dataset"].startswith(data + "/")]
        assert {models[r["method"]] for r in rows} == {"l2", "ssim", "vae"}
        for r in rows:  # every category's row holds the settings the leaderboard runs
            for key, value in r["grad_settings"].items():
                assert GRAD_SETTINGS[data][models[r["method"]]][key] == pytest.approx(value), (data, r["method"], key)


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


def test_chosen_settings_key_wins_and_missing_is_a_clear_error(tmp_path):
    chosen = {"l2": {"alpha": 1.0, "lam": 0.5, "n_steps": 3}}
    (tmp_path / "06_x.json").write_text(json.dumps({"notes": "L2-AE: alpha=5, lambda=0, T=40",
                                                     "chosen_settings": chosen, "rows": []}))
    assert lesson_settings("06_x", results_dir=tmp_path) == chosen
    (tmp_path / "07_y.json").write_text(json.dumps({"notes": "nothing here", "rows": []}))
    with pytest.raises(KeyError, match="chosen_settings"):
        lesson_settings("07_y", results_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="run that lesson"):
        lesson_settings("99_missing", results_dir=tmp_path)
