"""Lesson 09: the leaderboard's registry takes every lesson's chosen settings from results/, never a hand copy."""

import json

import pytest

from anomaly_utils.results import RESULTS_DIR, _settings_from_notes, lesson_settings


def test_grad_settings_equal_lesson_06_json():
    from anomaly_utils.lessons.leaderboard import GRAD_SETTINGS

    payload = json.loads((RESULTS_DIR / "06_gradient_projection.json").read_text())
    expected = payload.get("chosen_settings") or _settings_from_notes(payload["notes"])
    assert set(expected) == {"l2", "ssim", "vae"}
    for model, values in expected.items():
        for key, value in values.items():
            assert GRAD_SETTINGS[model][key] == pytest.approx(value), (model, key)


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
