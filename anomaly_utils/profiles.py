"""Profiles, seeding, device choice and checkpoint caching.

A *profile* says how big an experiment is:

* ``smoke`` -- CI: every notebook in about a minute on 2 CPU cores (numbers are meaningless),
* ``cpu``   -- the default without a GPU: real results, each notebook within ~10 minutes on 2 cores,
* ``gpu``   -- the default with CUDA: paper-scale sizes.

``AD_PROFILE=smoke|cpu|gpu`` overrides the choice. Each notebook shows its own knobs openly::

    cfg = pick(smoke=dict(epochs=1), cpu=dict(epochs=20), gpu=dict(epochs=100))

**The gpu profile on a CPU, capped** (``AD_PROFILE=gpu AD_CAP=1``): a check that the gpu configuration runs
(its keys, the shapes its sizes give) without a GPU, in a few times the time of a smoke run. Under the cap
:func:`pick` returns the active profile's value (gpu; ``AD_PROFILE=cpu AD_CAP=1`` caps the cpu one alike) with its
*counts* taken from the smoke value:

* in a dict, an entry whose key has a count word among its ``_``-separated parts (``n``, ``num``, ``epochs``,
  ``steps``, ``iter``, ``iters``, ``iterations``, ``seeds``, ``trials``, ``repeats``, ``rounds``, ``bank``,
  ``query``: ``n_train``, ``tex_n_test``, ``pretrain_epochs``, ``collapse_steps``, ``n_iter``, ``big_bank`` ...)
  takes the smoke value; so does an entry whose gpu value is a list, a tuple or None (a sweep or a set of
  categories or classes: its length is a count; None means "all"). Nested dicts follow the same rule;
* every other entry (``size``, ``width``, ``nz``, ``batch_size``, learning rates ...) keeps the gpu value, and
  the result has exactly the gpu dict's keys: a key the gpu dict lacks fails as it would on a GPU;
* a value that is not a dict (``pick(smoke=8, cpu=400, gpu=400)``) has no name to judge it by and takes the
  smoke value: keep a size in a dict if the cap must not touch it.

Limits: only what the sizes and the keys decide is checked. The values of a sweep that only the gpu profile
tries (say a latent size of 512) are not run; counts hidden behind other names keep their gpu value (a
warning names a count-like gpu key the smoke dict lacks); and on a machine without CUDA every tensor is on the
CPU, so a missing ``.to(device)`` is only caught where a GPU is present. The cap never writes results worth
keeping: run it with a scratch results folder (``tests/test_gpu_profile.py`` does).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import linecache
import os
import platform
import random
import re
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "data" / "cache"


def capped() -> bool:
    """Whether ``AD_CAP`` asks for capped counts (``1``, ``true``, ``yes``); see the module docstring."""
    value = os.environ.get("AD_CAP", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"AD_CAP={os.environ.get('AD_CAP')!r}: use AD_CAP=1 (cap the counts of the active profile to "
                     "the smoke profile's) or leave it unset.")


def get_profile() -> str:
    """The active profile: ``$AD_PROFILE`` if set, else ``gpu`` with CUDA, else ``cpu``."""
    name = os.environ.get("AD_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(f"AD_PROFILE={name!r} is not a profile; use one of {', '.join(PROFILES)}.")
        if name == "gpu" and not torch.cuda.is_available() and not capped():
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
    if capped() and profile != "smoke":
        if "smoke" not in per_profile:
            raise ValueError("AD_CAP=1 takes the counts from the smoke value, but this pick() has none; give smoke=...")
        return _cap(value, per_profile["smoke"])
    return dict(value) if isinstance(value, dict) else value


_COUNT_WORDS = {"n", "num", "epochs", "steps", "iter", "iters", "iterations", "seeds", "trials", "repeats", "rounds",
                "bank", "query"}


def is_count_key(key) -> bool:
    """Whether a config key names a count (``n_train``, ``tex_epochs``, ``n_iter`` ...): see the module docstring."""
    return any(part in _COUNT_WORDS for part in str(key).lower().split("_"))


def _cap(value, smoke, where: str = "pick()"):
    """``value`` (the active profile's) with its counts taken from ``smoke`` (the AD_CAP rule)."""
    if not isinstance(value, dict):
        return smoke
    if not isinstance(smoke, dict):
        return dict(value)
    out = {}
    for key, v in value.items():
        if key not in smoke:
            if is_count_key(key):
                warnings.warn(f"AD_CAP: {where} key {key!r} looks like a count but the smoke value has no {key!r}; "
                              "it keeps its full value.", stacklevel=3)
            out[key] = v
        elif isinstance(v, dict):
            out[key] = _cap(v, smoke[key], f"{where}[{key!r}]")
        elif is_count_key(key) or v is None or isinstance(v, (list, tuple)):
            out[key] = smoke[key]
        else:
            out[key] = v
    return out


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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise ValueError(f"seed must be a whole number from 0 to 2**32 - 1 (NumPy's range), got {seed!r}.")
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


def _functions(cls) -> list:
    """The plain functions defined in ``cls``'s own body (methods, static and class methods, properties)."""
    out = []
    for v in vars(cls).values():
        v = getattr(v, "__func__", v)  # staticmethod, classmethod
        v = getattr(v, "fget", v)  # property
        if inspect.isfunction(v):
            out.append(v)
    return out


def class_source(cls) -> str | None:
    """The text of ``cls``'s definition (decorators included, dedented), or None if no source is available.

    Found from the file its methods were compiled from, read through ``linecache``: a module's file, or the
    cell IPython compiled (Jupyter keeps each cell's source in ``linecache``, where ``inspect.getsource``
    does not look for classes, since ``__main__`` has no file). The same text gives the same source
    whichever module the class lives in.
    """
    for f in sorted(_functions(cls), key=lambda f: f.__code__.co_firstlineno):
        code = f.__code__
        lines = linecache.getlines(code.co_filename)
        if not lines:
            continue
        try:
            tree = ast.parse("".join(lines))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__ \
                    and node.lineno <= code.co_firstlineno <= node.end_lineno:
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                return textwrap.dedent("".join(lines[start - 1:node.end_lineno]))
    try:  # a class without methods of its own
        return textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return None


def model_source(model) -> str:
    """The source code of the classes ``model`` is built from (torch's own layers by name only).

    Part of the cache key, so that weights trained with older model code are not served. Only the classes'
    source counts, not the module they live in: a class defined in a notebook (``__main__``) and the same
    class exported to ``anomaly_utils.lessons`` share their checkpoints. A class without available source
    falls back to its name, its bases and the bytecode and constants of its methods.
    """
    parts = []
    for cls in {type(m) for m in model.modules()}:
        if cls.__module__.startswith("torch."):
            parts.append(f"{cls.__module__}.{cls.__qualname__}")
            continue
        text = class_source(cls)
        if text is None:
            code = sorted(f"{f.__name__}:{f.__code__.co_code.hex()}:"
                          f"{[c for c in f.__code__.co_consts if not inspect.iscode(c)]!r}" for f in _functions(cls))
            text = f"{cls.__qualname__}({', '.join(b.__qualname__ for b in cls.__bases__)}):" + ",".join(code)
        parts.append(text)
    return "\n".join(sorted(parts))


def config_key(config: dict, model=None) -> str:
    """A short, stable hash of a config (the checkpoint's name), and of ``model``'s source code if given.

    Tensors and arrays anywhere in the config count by their exact bytes, shape and dtype.
    """
    text = json.dumps(_canonical(config), sort_keys=True, default=str)
    unstable = re.search(r'[^"]{0,60} at 0x[0-9a-fA-F]+>?', text)
    if unstable:
        warnings.warn(f"config_key: a config value has no stable text (its repr holds a memory address: "
                      f"{unstable.group(0)}); the key changes on every run, so the cache never hits. Put its "
                      "settings (numbers, strings) into the config instead.", stacklevel=3)
    if model is not None:
        text += "\n" + model_source(model)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z")


def cache_path(name: str, config: dict, suffix: str = ".pt", model=None, seed: int | None = None) -> Path:
    """Where the checkpoint of ``name`` trained with ``config`` lives: ``data/cache/<name>-<hash>.pt``.

    The hash includes ``seed``, by default ``torch.initial_seed()`` (what the last ``torch.manual_seed`` or
    ``seed_everything`` set): a model trained from seed 1 never loads the weights trained from seed 0.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"cache name {name!r} is not a plain file name; use letters, digits, '-', '_' and '.' "
                         "only, not starting with '.' (e.g. '05_l2_ae').")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    seeded = {**config, "torch_initial_seed": torch.initial_seed() if seed is None else int(seed)}
    return CACHE_DIR / f"{name}-{config_key(seeded, model)}{suffix}"


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
    ``model``'s classes and the torch seed set before the call (``torch.initial_seed()``, see ``cache_path``).
    ``train_fn(model) -> history`` trains in place and returns anything JSON-able (e.g. the losses). Returns ``(model, history, from_cache)``. Set ``AD_NO_CACHE=1`` to
    always retrain; an unreadable cache file is reported and retrained.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"load_or_train needs the torch.nn.Module to train or load, got {type(model).__name__}.")
    if not callable(train_fn):
        raise TypeError(f"train_fn must be a function train_fn(model) -> history, got {type(train_fn).__name__}.")
    path = cache_path(name, config, model=model)  # checks the name before any training
    use_cache = use_cache and os.environ.get("AD_NO_CACHE", "") != "1"
    saved = _read_checkpoint(path) if use_cache and path.exists() else None
    if saved is not None:
        model.load_state_dict(saved["state_dict"])
        return model, saved["history"], True
    history = train_fn(model)
    _save_atomically({"state_dict": model.state_dict(), "history": history, "config": _canonical(config)}, path)
    return model, history, False
