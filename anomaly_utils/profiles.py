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
import inspect
import json
import os
import platform
import random
import re
import tempfile
import warnings
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
        if name == "gpu" and not torch.cuda.is_available():
            warnings.warn("AD_PROFILE=gpu but CUDA is not available: the gpu profile's paper-scale sizes will run "
                          "on the CPU and be very slow. Use AD_PROFILE=cpu on this machine.", stacklevel=2)
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


def data_fingerprint(x) -> str:
    """A SHA-1 of a tensor's or array's exact bytes, shape and dtype: any edited pixel changes it.

    Put it in a cache config (``dict(..., data=data_fingerprint(train.images))``) instead of a
    name, a count or a rounded sum, which stay the same for flipped images or small edits.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous()
        dtype, shape, raw = str(x.dtype), tuple(x.shape), x.reshape(-1).view(torch.uint8).numpy()
    else:
        x = np.ascontiguousarray(x)
        dtype, shape, raw = str(x.dtype), x.shape, x.reshape(-1).view(np.uint8)
    h = hashlib.sha1(f"{dtype} {shape} ".encode())
    h.update(raw)
    return h.hexdigest()


def _canonical(value):
    """``value`` with every tensor or array, at any depth, replaced by its exact fingerprint."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return {"fingerprint": data_fingerprint(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def model_source(model) -> str:
    """The source code of the classes ``model`` is built from (torch's own layers by name only).

    Part of the cache key, so that weights trained with older model code are not served. Classes
    without available source (e.g. defined in an interactive session) fall back to their name and
    the bytecode of their methods.
    """
    parts = []
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        name = f"{cls.__module__}.{cls.__qualname__}"
        if cls.__module__.startswith("torch."):
            parts.append(name)
            continue
        try:
            parts.append(inspect.getsource(cls))
        except (OSError, TypeError):
            code = [f.__code__.co_code.hex() for f in vars(cls).values() if hasattr(f, "__code__")]
            parts.append(name + ":" + ",".join(code))
    return "\n".join(parts)


def config_key(config: dict, model=None) -> str:
    """A short, stable hash of a config (the checkpoint's name), and of ``model``'s source code if given.

    Tensors and arrays anywhere in the config count by their exact bytes, shape and dtype.
    """
    text = json.dumps(_canonical(config), sort_keys=True, default=str)
    if model is not None:
        text += "\n" + model_source(model)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z")


def cache_path(name: str, config: dict, suffix: str = ".pt", model=None) -> Path:
    """Where the checkpoint of ``name`` trained with ``config`` lives: ``data/cache/<name>-<hash>.pt``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"cache name {name!r} is not a plain file name; use letters, digits, '-', '_' and '.' "
                         "only, not starting with '.' (e.g. '05_l2_ae').")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR / f"{name}-{config_key(config, model)}{suffix}"


def _read_checkpoint(path: Path):
    """The saved dict, or None (with a warning naming the file) if the file is truncated or not a checkpoint."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        saved["state_dict"], saved["history"]  # a KeyError (or TypeError) if this is not our checkpoint
        return saved
    except Exception as err:
        warnings.warn(f"cache file {str(path)!r} cannot be read ({type(err).__name__}: {err}); it is probably "
                      "truncated (an interrupted save or a full disk). Training again; the file will be replaced.",
                      stacklevel=3)
        return None


def _save_atomically(obj, path: Path) -> None:
    """Write to a temporary file of our own in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_train(model: torch.nn.Module, name: str, config: dict, train_fn, use_cache: bool = True):
    """Load ``model``'s weights from the cache if this exact config was trained before, else train.

    The key is ``config`` (tensors and arrays in it by their exact bytes) plus the source code of
    ``model``'s classes. ``train_fn(model) -> history`` trains in place and returns anything
    JSON-able (e.g. the losses). Returns ``(model, history, from_cache)``. Set ``AD_NO_CACHE=1`` to
    always retrain; an unreadable cache file is reported and retrained.
    """
    path = cache_path(name, config, model=model)  # checks the name before any training
    use_cache = use_cache and os.environ.get("AD_NO_CACHE", "") != "1"
    saved = _read_checkpoint(path) if use_cache and path.exists() else None
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
        return model, saved["history"], True
    history = train_fn(model)
    _save_atomically({"state_dict": model.state_dict(), "history": history, "config": _canonical(config)}, path)
    return model, history, False
