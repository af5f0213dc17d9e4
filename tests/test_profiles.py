"""profiles: the active profile, pick(), seeding and the checkpoint cache."""

import os

import numpy as np
import pytest
import torch

from anomaly_utils import profiles
from anomaly_utils.profiles import config_key, get_device, get_profile, load_or_train, pick, seed_everything


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_pick_follows_ad_profile(monkeypatch, profile):
    monkeypatch.setenv("AD_PROFILE", profile.upper() if profile == "gpu" else profile)
    assert get_profile() == profile
    assert pick(smoke=1, cpu=20, gpu=100) == {"smoke": 1, "cpu": 20, "gpu": 100}[profile]


def test_default_profile_depends_on_cuda(monkeypatch):
    monkeypatch.delenv("AD_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_profile() == "cpu" and get_device().type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_profile() == "gpu"
    monkeypatch.setenv("AD_PROFILE", "smoke")
    assert get_device().type == "cpu"  # smoke never uses the GPU


def test_pick_returns_a_copy_of_dicts(monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "cpu")
    cpu = dict(epochs=20)
    cfg = pick(smoke=dict(epochs=1), cpu=cpu, gpu=dict(epochs=100))
    cfg["epochs"] = 5
    assert cpu == {"epochs": 20}


def test_profile_errors(monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "fast")
    with pytest.raises(ValueError, match="not a profile"):
        get_profile()
    monkeypatch.setenv("AD_PROFILE", "cpu")
    with pytest.raises(ValueError, match="unknown profile"):
        pick(smoke=1, cpu=2, gpu=3, tpu=4)
    with pytest.raises(ValueError, match="no value for the active profile 'cpu'"):
        pick(smoke=1, gpu=3)


def test_seed_everything_repeats_random_draws():
    seed_everything(7)
    a = (torch.rand(3), np.random.rand(3))
    seed_everything(7)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_config_key_is_stable_and_order_free():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})
    assert len(config_key({})) == 12


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(profiles, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("AD_NO_CACHE", raising=False)
    return tmp_path / "cache"


def make_trainer():
    calls = []

    def train_fn(model):
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(0.5 + len(calls))
        return {"loss": [3.0, 2.0, 1.0]}

    return train_fn, calls


def test_load_or_train_caches(cache):
    config = {"epochs": 3, "lr": 0.1}
    train_fn, calls = make_trainer()
    model, history, from_cache = load_or_train(torch.nn.Linear(2, 2), "demo", config, train_fn)
    assert not from_cache and calls == [1] and history == {"loss": [3.0, 2.0, 1.0]}
    path = profiles.cache_path("demo", config)
    assert path.parent == cache and path.exists()
    fresh = torch.nn.Linear(2, 2)
    again, history2, from_cache = load_or_train(fresh, "demo", config, train_fn)
    assert from_cache and calls == [1] and again is fresh  # not retrained
    assert torch.equal(again.weight, model.weight) and torch.equal(again.bias, model.bias)
    assert history2 == history
    # another config, use_cache=False or AD_NO_CACHE=1 retrain
    load_or_train(torch.nn.Linear(2, 2), "demo", {"epochs": 4, "lr": 0.1}, train_fn)
    assert len(calls) == 2
    load_or_train(torch.nn.Linear(2, 2), "demo", config, train_fn, use_cache=False)
    assert len(calls) == 3


def test_ad_no_cache_retrains(cache, monkeypatch):
    train_fn, calls = make_trainer()
    load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn)
    monkeypatch.setenv("AD_NO_CACHE", "1")
    _, _, from_cache = load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn)
    assert not from_cache and len(calls) == 2
    assert sorted(p.suffix for p in cache.iterdir()) == [".pt"]  # no temporary file left behind


def test_machine_description_names_cores_and_torch():
    from anomaly_utils.profiles import machine_description
    text = machine_description("cpu")
    assert f"{os.cpu_count()} cores" in text and f"torch {torch.__version__}" in text
