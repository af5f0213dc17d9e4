"""profiles: the active profile, pick(), seeding and the checkpoint cache."""

import os
import re

import numpy as np
import pytest
import torch

from anomaly_utils import profiles
from anomaly_utils.profiles import config_key, get_device, get_profile, load_or_train, pick, seed_everything


@pytest.mark.parametrize("profile", ["smoke", "cpu", "gpu"])
def test_pick_follows_ad_profile(monkeypatch, profile):
    monkeypatch.setenv("AD_PROFILE", profile.upper() if profile == "gpu" else profile)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (AD_PROFILE=gpu without CUDA warns)
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
    path = profiles.cache_path("demo", config, model=model)  # the key includes the model's code
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


# --------------------------------------------------------------------------- hardening: the cache key and files

def test_gpu_profile_without_cuda_warns(monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA is not available.*slow.*AD_PROFILE=cpu"):
        assert get_profile() == "gpu"


def test_data_fingerprint_sees_every_pixel():
    x = torch.rand(8, 1, 32, 32)
    edited = x.clone()
    edited[3, 0, 16, 16] += 1e-3
    # what callers used before: name, count, shape and a rounded sum: blind to flips and small edits
    old = lambda t: (len(t), list(t.shape[1:]), round(float(t.double().sum()), 1))  # noqa: E731
    assert old(x) == old(x.flip(-1)) == old(edited)
    fp = profiles.data_fingerprint
    assert fp(x) == fp(x.clone()) and len(fp(x)) == 40
    assert len({fp(x), fp(x.flip(-1)), fp(edited), fp(x.double()), fp(x.reshape(8, 32, 32))}) == 5
    assert fp(x.numpy()) == fp(np.ascontiguousarray(x.numpy()))


def test_config_key_hashes_arrays_exactly():
    x = torch.rand(4, 1, 64, 64)  # printed with '...': default=str saw only the corners
    edited = x.clone()
    edited[2, 0, 30, 30] += 0.01
    assert config_key({"data": x}) == config_key({"data": x.clone()})
    assert config_key({"data": x}) != config_key({"data": edited})
    assert config_key({"a": [1, {"b": x.numpy()}]}) != config_key({"a": [1, {"b": edited.numpy()}]})
    assert config_key({"data": x}) != config_key({"data": x.flip(-1)})


class Doubler(torch.nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_cache_key_includes_the_models_code(cache):
    train_fn, calls = make_trainer()
    load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn)
    _, _, from_cache = load_or_train(Doubler(2, 2), "demo", {}, train_fn)  # same weights' shapes, other code
    assert not from_cache and len(calls) == 2
    _, _, from_cache = load_or_train(Doubler(2, 2), "demo", {}, train_fn)
    assert from_cache and len(calls) == 2
    assert "2 * super().forward(x)" in profiles.model_source(Doubler(2, 2))


@pytest.mark.parametrize("name", ["a/b", "../outside", ".hidden", "", "sp ace"])
def test_bad_cache_names_fail_before_training(cache, name):
    train_fn, calls = make_trainer()
    with pytest.raises(ValueError, match="not a plain file name"):
        load_or_train(torch.nn.Linear(2, 2), name, {}, train_fn)
    assert calls == []


@pytest.mark.parametrize("keep", [0, 100])
def test_truncated_cache_file_is_named_and_retrained(cache, keep):
    train_fn, calls = make_trainer()
    model, _, _ = load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn)
    path = profiles.cache_path("demo", {}, model=model)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.warns(UserWarning, match=re.escape(f"cache file '{path}' cannot be read") + ".*Training again"):
        _, _, from_cache = load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn)
    assert not from_cache and len(calls) == 2
    _, _, from_cache = load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn)  # the file was replaced
    assert from_cache and len(calls) == 2


def test_two_writers_of_one_key_do_not_collide(cache, monkeypatch):
    # another process saves the same key while this one is saving: each needs its own temporary file
    real_save, train_fn, _ = torch.save, *make_trainer()
    state = {"nested": False}

    def save_while_another_saves(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if not state["nested"]:
            state["nested"] = True
            load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn, use_cache=False)

    monkeypatch.setattr(torch, "save", save_while_another_saves)
    _, _, from_cache = load_or_train(torch.nn.Linear(2, 2), "demo", {}, train_fn)
    assert not from_cache and [p.suffix for p in cache.iterdir()] == [".pt"]


# --------------------------------------------------------------------------- shared checkpoints (issue 21)

NET_SOURCE = '''import torch


class Net(torch.nn.Module):
    """A tiny model."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.body(x)  # SCALE
'''


def import_file(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_class_source_under_two_module_names_shares_the_key(tmp_path):
    (tmp_path / "a.py").write_text(NET_SOURCE)
    (tmp_path / "b.py").write_text("# another file, other code above the class\nX = 1\n" + NET_SOURCE)
    a = import_file(tmp_path / "a.py", "anomaly_utils.lessons.some_lesson")
    b = import_file(tmp_path / "b.py", "__main__.cell")
    assert a.Net.__module__ != b.Net.__module__
    assert config_key({"epochs": 3}, a.Net()) == config_key({"epochs": 3}, b.Net())
    # a class compiled from a notebook cell: no file, its source only in linecache (as IPython keeps it)
    import linecache

    cell = "<ipython-input-7-cell>"
    linecache.cache[cell] = (len(NET_SOURCE), None, NET_SOURCE.splitlines(True), cell)
    namespace = {"__name__": "__main__"}
    exec(compile(NET_SOURCE, cell, "exec"), namespace)
    assert config_key({"epochs": 3}, namespace["Net"]()) == config_key({"epochs": 3}, a.Net())
    # the config and the source still count
    assert config_key({"epochs": 4}, a.Net()) != config_key({"epochs": 3}, a.Net())
    (tmp_path / "c.py").write_text(NET_SOURCE.replace("self.body(x)", "2 * self.body(x)"))
    c = import_file(tmp_path / "c.py", "anomaly_utils.lessons.some_lesson")
    assert config_key({"epochs": 3}, c.Net()) != config_key({"epochs": 3}, a.Net())


def test_class_without_source_falls_back_without_its_module_name():
    src = "import torch\nclass Bare(torch.nn.Module):\n    def forward(self, x):\n        return x + 1\n"
    keys = []
    for module in ("__main__", "anomaly_utils.lessons.x"):
        namespace = {"__name__": module}
        exec(compile(src, "<no file>", "exec"), namespace)  # neither a file nor a linecache entry
        assert profiles.class_source(namespace["Bare"]) is None
        keys.append(config_key({}, namespace["Bare"]()))
    assert keys[0] == keys[1]
    namespace = {"__name__": "__main__"}
    exec(compile(src.replace("x + 1", "x + 2"), "<no file>", "exec"), namespace)
    assert config_key({}, namespace["Bare"]()) != keys[0]


def test_a_class_defined_in_a_jupyter_cell_keys_like_its_exported_module(tmp_path):
    """In a real kernel: inspect.getsource fails for notebook classes; the key must still come from the source."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%matplotlib inline\n" + NET_SOURCE),
                nbformat.v4.new_code_cell("import inspect\nfrom anomaly_utils.profiles import config_key\n"
                                          "try:\n    inspect.getsource(Net)\n    print('getsource works')\n"
                                          "except OSError:\n    print('getsource fails')\n"
                                          "print('key', config_key({'epochs': 3}, Net()))")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    out = "".join(o.get("text", "") for o in nb.cells[1].outputs)
    (tmp_path / "lesson.py").write_text(NET_SOURCE)
    exported = import_file(tmp_path / "lesson.py", "anomaly_utils.lessons.lesson")
    assert f"key {config_key({'epochs': 3}, exported.Net())}" in out, out


# --------------------------------------------------------------------------- the gpu profile, capped (issue 22)

def test_cap_takes_counts_from_smoke_and_keeps_gpu_sizes(monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "gpu")
    monkeypatch.setenv("AD_CAP", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    smoke = dict(size=32, width=8, n_train=16, tex_n_test=4, epochs=1, pretrain_epochs=1, n_iter=10, steps=(2, 4),
                 classes=[0, 1], lr=1e-3, big_bank=50, piped_types=["A"], sub=dict(nz=16, epochs=1))
    gpu = dict(size=256, width=64, n_train=None, tex_n_test=100, epochs=100, pretrain_epochs=50, n_iter=500,
               steps=(10, 25, 50), classes=list(range(10)), lr=2e-4, big_bank=10**6, piped_types=None,
               sub=dict(nz=100, epochs=30), only_gpu=3)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "CUDA is not available ... slow" warning under the cap
        cfg = pick(smoke=smoke, cpu=dict(), gpu=gpu)
    assert cfg == dict(size=256, width=64, n_train=16, tex_n_test=4, epochs=1, pretrain_epochs=1, n_iter=10,
                       steps=(2, 4), classes=[0, 1], lr=2e-4, big_bank=50, piped_types=["A"],
                       sub=dict(nz=100, epochs=1), only_gpu=3)
    assert "only_gpu" not in smoke and cfg is not gpu
    assert pick(smoke=8, cpu=400, gpu=400) == 8  # a bare value: the smoke one
    assert pick(smoke=["PA_1"], cpu=["PA_1", "PA_2"], gpu=None) == ["PA_1"]
    with pytest.warns(UserWarning, match="'n_extra' looks like a count but the smoke value has no 'n_extra'"):
        assert pick(smoke=dict(size=1), cpu={}, gpu=dict(size=2, n_extra=9)) == dict(size=2, n_extra=9)
    with pytest.raises(ValueError, match="AD_CAP=1 takes the counts from the smoke value"):
        pick(cpu=1, gpu=2)
    monkeypatch.setenv("AD_PROFILE", "cpu")  # the cap applies to the cpu profile too
    assert pick(smoke=dict(size=8, epochs=1), cpu=dict(size=64, epochs=40), gpu={}) == dict(size=64, epochs=1)
    monkeypatch.setenv("AD_CAP", "0")
    assert pick(smoke=dict(size=8, epochs=1), cpu=dict(size=64, epochs=40), gpu={}) == dict(size=64, epochs=40)
    monkeypatch.setenv("AD_CAP", "maybe")
    with pytest.raises(ValueError, match="AD_CAP='maybe'"):
        pick(smoke=1, cpu=2, gpu=3)


@pytest.mark.parametrize("key,count", [("n_train", True), ("tex_n_test", True), ("mnist_n_test_anomalous", True),
                                       ("pretrain_epochs", True), ("collapse_steps", True), ("trace_iter", True),
                                       ("n_iter", True), ("sens_seeds", True), ("size", False), ("width", False),
                                       ("latent_dim", False), ("batch_size", False), ("nz", False),
                                       ("size_timing", False), ("normal_class", False), ("search_lr", False)])
def test_count_keys(key, count):
    assert profiles.is_count_key(key) == count


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, None, "0"])
def test_seed_everything_checks_the_seed(seed):
    with pytest.raises(ValueError, match="seed must be a whole number from 0 to 2\\*\\*32 - 1"):
        seed_everything(seed)  # NumPy's "Seed must be between 0 and 2**32 - 1" (or a TypeError) before


def test_load_or_train_arguments_and_unstable_configs(cache):
    train_fn, calls = make_trainer()
    with pytest.raises(TypeError, match="needs the torch.nn.Module"):
        load_or_train("model", "demo", {}, train_fn)
    with pytest.raises(TypeError, match=r"train_fn must be a function train_fn\(model\)"):
        load_or_train(torch.nn.Linear(2, 2), "demo", {}, {"epochs": 3})
    with pytest.warns(UserWarning, match="no stable text.*<lambda> at 0x.*cache never hits"):
        config_key({"schedule": lambda epoch: 0.1})  # a new key in every process: silent retraining
    assert calls == []
