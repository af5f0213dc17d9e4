"""One JSON per lesson with the numbers of its last full run, and the README table made from them.

``save_result`` is the last code cell of every notebook. It writes ``results/<lesson>.json`` only in
the ``cpu`` and ``gpu`` profiles (a ``smoke`` run's numbers mean nothing), unless ``force=True``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from .profiles import REPO_ROOT, get_device, get_profile

RESULTS_DIR = REPO_ROOT / "results"
README = REPO_ROOT / "README.md"
TABLE_BEGIN, TABLE_END = "<!-- results:begin -->", "<!-- results:end -->"
SYLLABUS_BEGIN, SYLLABUS_END = "<!-- syllabus:begin -->", "<!-- syllabus:end -->"
SCHEDULE_BEGIN, SCHEDULE_END = "<!-- schedule:begin -->", "<!-- schedule:end -->"  # teaching schedule


def result_row(method: str, dataset: str, image_auroc=None, pixel_auroc=None, aupro=None,
               train_seconds=None, infer_ms_per_image=None, **extra) -> dict:
    """One line of a lesson's results: a method on a data set."""
    def r(v, nd=4):
        return None if v is None else round(float(v), nd)
    row = {"method": method, "dataset": dataset, "image_auroc": r(image_auroc), "pixel_auroc": r(pixel_auroc),
           "aupro": r(aupro), "train_seconds": r(train_seconds, 2), "infer_ms_per_image": r(infer_ms_per_image, 3)}
    row.update(extra)
    return row


def save_result(lesson: str, rows: list[dict], notes: str = "", runtime_seconds: float | None = None,
                force: bool = False, results_dir: Path | None = None, settings: dict | None = None) -> Path | None:
    """Write ``results/<lesson>.json``: the rows plus profile, device, torch version and date.

    ``settings`` records what the lesson chose on its validation split, per method and data family, e.g.
    ``{"GANomaly": {"mnist": {"lr": 2e-3, "batch_size": 16}}}``; the leaderboard builds its detectors from it
    (``chosen_settings``), never from a hand copy.

    In the ``smoke`` profile nothing is written (returns ``None``) unless ``force``.
    """
    profile = get_profile()
    if profile == "smoke" and not force:
        print(f"smoke profile: results/{lesson}.json left as it is ({len(rows)} rows computed).")
        return None
    for row in rows:
        missing = {"method", "dataset"} - set(row)
        if missing:
            raise ValueError(f"every row needs 'method' and 'dataset' (use result_row); missing {missing}.")
    out_dir = Path(results_dir) if results_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    device = get_device()
    payload = {
        "lesson": lesson, "profile": profile,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
        "runtime_seconds": None if runtime_seconds is None else round(runtime_seconds, 1),
        "notes": notes, "chosen_settings": settings or {}, "rows": rows,
    }
    path = out_dir / f"{lesson}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} ({len(rows)} rows)")
    return path


def load_results(results_dir: Path | None = None) -> list[dict]:
    """Every lesson's JSON, sorted by lesson."""
    d = Path(results_dir) if results_dir else RESULTS_DIR
    return [json.loads(p.read_text()) for p in sorted(d.glob("[0-9][0-9]_*.json"))]


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def results_table(results_dir: Path | None = None, mean_over_classes: bool = True) -> str:
    """A markdown table of every row of every lesson (one-vs-rest classes averaged into one row)."""
    lines = ["| lesson | method | data | image AUROC | pixel AUROC | AUPRO | fit s | ms / image | profile |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in load_results(results_dir):
        groups: dict[tuple, list] = {}
        for row in res["rows"]:
            ds = row["dataset"]
            family, _, which = ds.rpartition("/")
            if mean_over_classes and which.isdigit():  # one-vs-rest rows: "mnist/3", "mnist-inverted/3"
                ds = family + " (mean of classes)"
            groups.setdefault((row["method"], ds), []).append(row)
        for (method, ds), rows in groups.items():
            def mean(key):
                vals = [r.get(key) for r in rows if r.get(key) is not None]
                return sum(vals) / len(vals) if vals else None
            fit = mean("train_seconds")
            ms = mean("infer_ms_per_image")
            lines.append(f"| {res['lesson']} | {method} | {ds} | {_fmt(mean('image_auroc'))} | "
                         f"{_fmt(mean('pixel_auroc'))} | {_fmt(mean('aupro'))} | "
                         f"{'–' if fit is None else f'{fit:.1f}'} | {'–' if ms is None else f'{ms:.1f}'} | "
                         f"{res['profile']} |")
    return "\n".join(lines)


REAL_FAMILIES = ("piped", "mvtec")  # the real-data families, as the leaderboard names them ("piped/<type>")


def _family(dataset: str) -> str:
    head = dataset.split("/")[0]
    return "real" if head in REAL_FAMILIES else head


def summary_table(results_dir: Path | None = None) -> str:
    """The README's compact table: one row per method, PIPED first, then textures, then mnist.

    Columns: mean image AUROC, pixel AUROC and AUPRO over the real-data types (PIPED, or MVTec AD when the
    leaderboard ran with ``AD_DATA=mvtec``; the header names it), then the same over the texture categories,
    then the mean image AUROC over the mnist classes; fit seconds and ms per image are means over every row.
    Rows are sorted by real-data AUPRO (methods without it follow, in lesson order). Made from the
    leaderboard's JSON (every method on the same splits) when it exists, else from every lesson's JSON.
    """
    results = load_results(results_dir)
    board = [r for r in results if r["lesson"] == "10_leaderboard"]
    results = board or results
    real_name = next((row["dataset"].split("/")[0] for res in results for row in res["rows"]
                      if _family(row["dataset"]) == "real"), "piped")
    label = {"piped": "PIPED", "mvtec": "MVTec AD"}.get(real_name, real_name)

    def mean(sel, key):
        vals = [r.get(key) for r in sel if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    entries = []
    for res in results:
        for method in dict.fromkeys(row["method"] for row in res["rows"]):
            rows = [r for r in res["rows"] if r["method"] == method]
            real = [r for r in rows if _family(r["dataset"]) == "real"]
            tex = [r for r in rows if _family(r["dataset"]) == "textures"]
            mnist = [r for r in rows if r["dataset"].rpartition("/")[0] == "mnist"]
            if not (real or tex or mnist):
                continue
            everything = real + tex + mnist
            fit, ms = mean(everything, "train_seconds"), mean(everything, "infer_ms_per_image")
            cells = [mean(real, "image_auroc"), mean(real, "pixel_auroc"), mean(real, "aupro"),
                     mean(tex, "image_auroc"), mean(tex, "pixel_auroc"), mean(tex, "aupro"),
                     mean(mnist, "image_auroc")]
            lesson = rows[0].get("lesson", res["lesson"])
            entries.append((cells[2], len(entries), f"| {lesson} | {method} | " + " | ".join(_fmt(v) for v in cells)
                            + f" | {'–' if fit is None else f'{fit:.1f}'} | {'–' if ms is None else f'{ms:.1f}'} | "
                            f"{res['profile']} |"))
    entries.sort(key=lambda e: (e[0] is None, -(e[0] or 0.0), e[1]))
    lines = [f"| lesson | method | {label} image AUROC | {label} pixel AUROC | {label} AUPRO | "
             "textures image AUROC | textures pixel AUROC | textures AUPRO | mnist image AUROC | fit s | "
             "ms / image | profile |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [e[2] for e in entries])


def replace_between(path: Path, begin: str, end: str, text: str) -> bool:
    """Replace what stands between the markers ``begin`` and ``end`` in ``path``; True if it changed."""
    old = path.read_text()
    if begin not in old or end not in old:
        raise ValueError(f"{path} has no '{begin}' ... '{end}' markers for the generated table.")
    head, rest = old.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{begin}\n{text}\n{end}{tail}"
    path.write_text(new)
    return new != old


def syllabus_with_minutes(table: str, runtimes: dict) -> str:
    """Fill the last two cells (cpu min, gpu min) of each ``| NN | ...`` row from ``runtimes``.

    ``runtimes`` is ``results/runtimes.json``: ``{"02_fcdd": {"cpu": 1146.0}, ...}`` in seconds, as
    ``make course`` measures them. A profile that was never timed shows "–". A row whose first cell is
    ``all`` gets the sum over the lessons above it, or "–" unless every one of them was timed.
    """
    lines, timed = [], {"cpu": [], "gpu": []}
    for line in table.splitlines():
        cells = line.split("|")  # "| 02 | ... | 19 | – |" -> ["", " 02 ", ..., " 19 ", " – ", ""]
        number = cells[1].strip() if len(cells) > 3 else ""
        if number.isdigit() or number == "all":
            times = next((t for name, t in runtimes.items() if name.startswith(number + "_")), {})
            for i, profile in ((-3, "cpu"), (-2, "gpu")):
                if number == "all":
                    seconds = None if None in timed[profile] else sum(timed[profile])
                else:
                    seconds = times.get(profile)
                    timed[profile].append(seconds)
                cells[i] = f" {seconds / 60:.1f} " if seconds is not None else " – "
            line = "|".join(cells)
        lines.append(line)
    return "\n".join(lines)


def update_readme(readme: Path | None = None, results_dir: Path | None = None) -> bool:
    """Regenerate the README's results table and, if it has them, the minutes columns of the syllabus and of
    the teaching schedule (both from ``results/runtimes.json``)."""
    readme = Path(readme) if readme else README
    changed = replace_between(readme, TABLE_BEGIN, TABLE_END, summary_table(results_dir))
    runtimes_path = (Path(results_dir) if results_dir else RESULTS_DIR) / "runtimes.json"
    for begin, end in ((SYLLABUS_BEGIN, SYLLABUS_END), (SCHEDULE_BEGIN, SCHEDULE_END)):
        text = readme.read_text()
        if begin in text and runtimes_path.exists():
            table = text.split(begin, 1)[1].split(end, 1)[0].strip("\n")
            runtimes = json.loads(runtimes_path.read_text())
            changed |= replace_between(readme, begin, end, syllabus_with_minutes(table, runtimes))
    return changed


_SETTING_KEYS = {"alpha": "alpha", "lambda": "lam", "lam": "lam", "t": "n_steps", "n_steps": "n_steps"}
_MODEL_KEYS = {"l2-ae": "l2", "ssim-ae": "ssim", "vae": "vae", "l2": "l2", "ssim": "ssim"}


def _settings_from_notes(notes: str) -> dict:
    """Lesson 06's older JSON kept its choices in ``notes``: "L2-AE: alpha=5, lambda=0, T=40; SSIM-AE: ..."."""
    import re

    found = {}
    for model, body in re.findall(r"([A-Za-z0-9-]+):\s*((?:\s*[A-Za-z_]+\s*=\s*[-0-9.eE]+\s*,?)+)", notes):
        key = _MODEL_KEYS.get(model.lower())
        if key is None:
            continue
        pairs = re.findall(r"([A-Za-z_]+)\s*=\s*([-0-9.eE]+)", body)
        values = {_SETTING_KEYS[k.lower()]: float(v) for k, v in pairs if k.lower() in _SETTING_KEYS}
        if "n_steps" in values:
            values["n_steps"] = int(values["n_steps"])
        if values:
            found[key] = values
    return found


_GRAD_METHODS = {"L2-AE-grad": "l2", "SSIM-AE-grad": "ssim", "VAE-grad": "vae"}


def _settings_from_rows(rows: list, data: str) -> dict:
    """Lesson 06 writes each projection row's ``grad_settings``; one choice per model for data set family ``data``."""
    found = {}
    for row in rows:
        model = _GRAD_METHODS.get(row.get("method"))
        if model is None or "grad_settings" not in row or not row.get("dataset", "").startswith(data + "/"):
            continue
        settings = {k: (int(v) if k == "n_steps" else float(v)) for k, v in row["grad_settings"].items()}
        if found.setdefault(model, settings) != settings:
            raise ValueError(f"lesson 06 chose different settings for {row['method']} on two {data} categories "
                             f"({found[model]} and {settings}); the leaderboard needs one per data set family.")
    return found


def chosen_settings(lesson: str, method: str, family: str, results_dir: Path | None = None) -> dict:
    """What ``lesson`` chose for ``method`` on data family ``family`` (``save_result(..., settings=...)``).

    An error that says which lesson to rerun when the lesson's JSON has no such choice.
    """
    d = Path(results_dir) if results_dir else RESULTS_DIR
    path = d / f"{lesson}.json"
    if not path.exists():
        raise FileNotFoundError(f"no {path}: run that lesson in the cpu profile first "
                                f"(`python -m anomaly_utils.course --profile cpu notebooks/{lesson}.ipynb`).")
    found = json.loads(path.read_text()).get("chosen_settings", {}).get(method, {}).get(family)
    if found is None:
        raise KeyError(f"{path} records no settings for {method!r} on {family!r}: rerun notebooks/{lesson}.ipynb "
                       "(cpu profile) so that its save_result(..., settings=...) records them.")
    return found


def lesson_settings(lesson: str, data: str = "textures", results_dir: Path | None = None) -> dict:
    """The settings a lesson chose on its validation split for data set family ``data``, read from ``results/``.

    Lesson 06 writes them into each projection row of ``results/06_gradient_projection.json`` as
    ``grad_settings`` (``{"alpha", "lam", "n_steps"}``), chosen separately on the textures' and on PIPED's
    validation splits; a ``chosen_settings`` key (``{model: {...}}``) or, for an older JSON, its ``notes``
    ("L2-AE: alpha=5, lambda=0, T=40; ...") are read too. This is the one place the leaderboard takes another
    lesson's choices from: never a hand copy.
    """
    d = Path(results_dir) if results_dir else RESULTS_DIR
    matches = sorted(d.glob(f"{lesson}*.json")) if not (d / f"{lesson}.json").exists() else [d / f"{lesson}.json"]
    if not matches:
        raise FileNotFoundError(f"no {d}/{lesson}*.json: run that lesson in the cpu profile first "
                                f"(`python -m anomaly_utils.course --profile cpu notebooks/{lesson}*.ipynb`).")
    payload = json.loads(matches[0].read_text())
    settings = (payload.get("chosen_settings") or _settings_from_rows(payload.get("rows", []), data)
                or _settings_from_notes(payload.get("notes", "")))
    if not settings:
        raise KeyError(f"{matches[0]} holds no 'chosen_settings' (and none could be read from its rows or "
                       "notes): rerun that lesson so that its save_result records the settings it chose.")
    return settings
