"""Profiles, seeding, device choice and checkpoint caching.

A *profile* says how big an experiment is:

* ``smoke`` -- CI: every notebook in about a minute on 2 CPU cores (numbers are meaningless),
* ``cpu``   -- the default without a GPU: real results, each notebook within ~10 minutes on 2 cores,
* ``gpu``   -- the default with CUDA: paper-scale sizes.

``AD_PROFILE=smoke|cpu|gpu`` overrides the choice. Each notebook shows its own knobs openly::

    cfg = pick(smoke=dict(epochs=1), cpu=dict(epochs=20), gpu=dict(epochs=100))
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "data" / "cache"


def get_profile() -> str:
    """The active profile: ``$AD_PROFILE`` if set, else ``gpu`` with CUDA, else ``cpu``."""
    name = os.environ.get("AD_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(f"AD_PROFILE={name!r} is not a profile; use one of {', '.join(PROFILES)}.")
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def pick(**per_profile):
    """Return the value given for the active profile, e.g. ``pick(smoke=1, cpu=20, gpu=100)``.

    Dicts are returned as copies, so a notebook may change them without touching the original.
    """
    unknown = set(per_profile) - set(PROFILES)
    if unknown:
        raise ValueError(f"pick() got unknown profile(s) {sorted(unknown)}; the profiles are {PROFILES}.")
    profile = get_profile()
    if profile not in per_profile:
        raise ValueError(f"pick() has no value for the active profile {profile!r}; give {profile}=...")
    value = per_profile[profile]
    return dict(value) if isinstance(value, dict) else value


def get_device() -> torch.device:
    """CUDA if available (and the profile is not smoke), else CPU."""
    if torch.cuda.is_available() and get_profile() != "smoke":
        return torch.device("cuda")
    return torch.device("cpu")


def machine_description(profile: str | None = None) -> str:
    """What timings are measured on, e.g. "AMD EPYC, 2 cores, torch 2.14.1" (the GPU's name in ``gpu``)."""
    if (profile or get_profile()) == "gpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")] if cpuinfo.exists() else []
        name = models[0] if models else (platform.processor() or platform.machine())
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def setup(seed: int = 0, verbose: bool = True) -> tuple[str, torch.device]:
    """The one setup call of a notebook: seed everything, print profile, device and versions.

    Returns ``(profile, device)``.
    """
    seed_everything(seed)
    profile, device = get_profile(), get_device()
    if verbose:
        gpu = f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""
        print(f"profile={profile}  device={device}{gpu}  torch={torch.__version__}  "
              f"threads={torch.get_num_threads()}  python={platform.python_version()}  seed={seed}")
    return profile, device


def config_key(config: dict) -> str:
    """A short, stable hash of a JSON-serialisable config (the checkpoint's name)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cache_path(name: str, config: dict, suffix: str = ".pt") -> Path:
    """Where the checkpoint of ``name`` trained with ``config`` lives: ``data/cache/<name>-<hash>.pt``."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR / f"{name}-{config_key(config)}{suffix}"


def load_or_train(model: torch.nn.Module, name: str, config: dict, train_fn, use_cache: bool = True):
    """Load ``model``'s weights from the cache if this exact config was trained before, else train.

    ``train_fn(model) -> history`` trains in place and returns anything JSON-able (e.g. the losses).
    Returns ``(model, history, from_cache)``. Set ``AD_NO_CACHE=1`` to always retrain.
    """
    path = cache_path(name, config)
    use_cache = use_cache and os.environ.get("AD_NO_CACHE", "") != "1"
    if use_cache and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["state_dict"])
        return model, saved["history"], True
    history = train_fn(model)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "history": history, "config": config}, tmp)
    tmp.replace(path)
    return model, history, False
