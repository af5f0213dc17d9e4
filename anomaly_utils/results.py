"""One JSON per lesson with the numbers of its last full run, and the README table made from them.

``save_result`` is the last code cell of every notebook. It writes ``results/<lesson>.json`` only in
the ``cpu`` and ``gpu`` profiles (a ``smoke`` run's numbers mean nothing), unless ``force=True``. It writes
atomically (a failed write leaves the previous file as it was), converts NumPy and torch numbers to plain JSON,
and refuses NaN or infinite values and lesson names that are not ``NN_name``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from .profiles import REPO_ROOT, capped, get_device, get_profile

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


LESSON_NAME = re.compile(r"^\d\d_[a-z0-9_]+$")  # "07_memory_bank": the notebook's file name without .ipynb


def check_lesson_name(lesson) -> str:
    """``lesson`` if it names a lesson like ``07_memory_bank``; a clear error otherwise."""
    if not isinstance(lesson, str) or not LESSON_NAME.match(lesson):
        raise ValueError(f"lesson name {lesson!r} is not of the form NN_name (two digits, an underscore, then "
                         "lower-case letters, digits and underscores, e.g. '07_memory_bank'): pass the notebook's "
                         "file name without '.ipynb'.")
    return lesson


def _json_key(key, where: str) -> str:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if isinstance(key, (int, float, bool)):
        return str(key)
    raise TypeError(f"{where} has a key of type {type(key).__name__} ({key!r}): use strings as keys.")


def to_json(value, where: str):
    """``value`` as plain JSON: NumPy and torch scalars and arrays become numbers and lists (recursively, in
    dicts, lists and tuples). A NaN or infinite number, or an object JSON cannot hold, is an error that names
    ``where`` it is."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    if isinstance(value, dict):
        return {_json_key(k, where): to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value}: a result that is not a finite number means something failed (e.g. a "
                         "detector returned NaN scores); fix that before saving, or pass None for a value not "
                         "measured.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{where} is a {type(value).__name__}, which a results JSON cannot hold: pass a number, a "
                    "string, or a list or dict of them.")


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (all or nothing)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~umask)  # mkstemp's is 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _how_to_regenerate(path: Path) -> str:
    if path.name == "runtimes.json":
        how = "rerun `make course` (it times every notebook)"
    elif LESSON_NAME.match(path.stem):
        how = (f"rerun that lesson in the cpu profile (`python -m anomaly_utils.course notebooks/{path.stem}.ipynb "
               "--profile cpu`)")
    else:
        how = "rerun the command that wrote it"
    return f"To regenerate it, {how}; or restore the committed copy with `git checkout -- results/{path.name}`."


def read_json(path: Path) -> dict:
    """A results JSON as a dict; a corrupted or truncated file is an error that names it and how to regenerate it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is corrupted or truncated, not valid JSON ({e}). {_how_to_regenerate(path)}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a JSON object. {_how_to_regenerate(path)}")
    return payload


def save_result(lesson: str, rows: list[dict], notes: str = "", runtime_seconds: float | None = None,
                force: bool = False, results_dir: Path | None = None, settings: dict | None = None) -> Path | None:
    """Write ``results/<lesson>.json``: the rows plus profile, device, torch version and date.

    ``settings`` records what the lesson chose on its validation split, per method and data family, e.g.
    ``{"GANomaly": {"mnist": {"lr": 2e-3, "batch_size": 16}}}``; the leaderboard builds its detectors from it
    (``chosen_settings``), never from a hand copy.

    In the ``smoke`` profile nothing is written (returns ``None``) unless ``force``. Every check (the lesson's
    name, each row's keys and numbers, the settings) runs first, in every profile; the file is written atomically.
    """
    check_lesson_name(lesson)
    if isinstance(rows, dict) or not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows must be a list of dicts (one per method and data set, see result_row), "
                        f"got {type(rows).__name__}.")
    plain_rows = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"row {i} is a {type(row).__name__}, not a dict: build rows with result_row(...).")
        missing = {"method", "dataset"} - set(row)
        if missing:
            raise ValueError(f"every row needs 'method' and 'dataset' (use result_row); row {i} misses {missing}.")
        plain_rows.append(to_json(row, f"row {i} ({row['method']!r} on {row['dataset']!r})"))
    plain_settings = to_json(settings or {}, "settings")
    if runtime_seconds is not None:
        runtime_seconds = to_json(runtime_seconds, "runtime_seconds")
    profile = get_profile()
    if (profile == "smoke" or capped()) and not force:
        why = "smoke profile" if profile == "smoke" else f"AD_CAP=1 (the {profile} profile with capped counts)"
        print(f"{why}: results/{lesson}.json left as it is ({len(rows)} rows computed).")
        return None
    out_dir = Path(results_dir) if results_dir else RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    device = get_device()
    payload = {
        "lesson": lesson, "profile": profile,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
        "runtime_seconds": None if runtime_seconds is None else round(runtime_seconds, 1),
        "notes": str(notes), "chosen_settings": plain_settings, "rows": plain_rows,
    }
    path = out_dir / f"{lesson}.json"
    _write_atomic(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")
    print(f"wrote {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path} ({len(rows)} rows)")
    return path


def load_results(results_dir: Path | None = None) -> list[dict]:
    """Every lesson's JSON, sorted by lesson."""
    d = Path(results_dir) if results_dir else RESULTS_DIR
    results = []
    for path in sorted(d.glob("[0-9][0-9]_*.json")):
        payload = read_json(path)
        if not isinstance(payload.get("rows"), list) or "lesson" not in payload:
            raise ValueError(f"{path} has no 'lesson' and 'rows' list, so it is not a lesson's results. "
                             f"{_how_to_regenerate(path)}")
        results.append(payload)
    return results


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def results_table(results_dir: Path | None = None, mean_over_classes: bool = True) -> str:
    """A markdown table of every row of every lesson (one-vs-rest classes averaged into one row; the rows of
    several seeds of a method on a data set averaged into one)."""
    lines = ["| lesson | method | data | image AUROC | pixel AUROC | AUPRO | fit s | ms / image | profile |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in load_results(results_dir):
        groups: dict[tuple, list] = {}
        for row in res["rows"]:
            if row.get("summary"):  # the leaderboard's means with intervals: summary_table shows them
                continue
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


SUMMARY_COLUMNS = (("real", "image_auroc", "image AUROC"), ("real", "aupro", "AUPRO"),
                   ("elpv", "image_auroc", "image AUROC"), ("elpv-uncertain", "image_auroc", "doubtful cells"),
                   ("textures", "image_auroc", "image AUROC"), ("textures", "aupro", "AUPRO"),
                   ("mnist", "image_auroc", "image AUROC"))


def _interval(row: dict, key: str) -> str:
    """``0.93 [0.90, 0.95]``: a summary row's mean of ``key`` and its interval (``–`` where it has none)."""
    if row is None or row.get(key) is None:
        return "–"
    ci = row.get(f"{key}_ci")
    return f"{row[key]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def interval_summary_table(board: dict) -> str:
    """The README's table from the leaderboard's summary rows (``"summary": family``; see lesson 10).

    One row per method: the mean over the family's categories (and seeds) with its 95 % bootstrap interval, for
    the real images with masks (PIPED, or the ``AD_DATA`` source), ELPV (and its doubtful cells), the textures and
    mnist; fit seconds and ms per image averaged over every summary row. Sorted by real-data AUPRO, then by the
    ELPV image AUROC, then in lesson order.
    """
    rows = [r for r in board["rows"] if r.get("summary")]
    real_name = next((r["dataset"].split(" ")[0] for r in rows if r["summary"] == "real"), "piped")
    label = {"piped": "PIPED", "mvtec": "MVTec AD", "visa": "VisA"}.get(real_name, real_name)
    names = {"real": label, "elpv": "ELPV", "elpv-uncertain": "ELPV", "textures": "textures", "mnist": "mnist"}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["summary"]): r for r in rows}

    def mean(method, key):
        vals = [r.get(key) for r in rows if r["method"] == method and r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    def order(method):
        real, elpv = by.get((method, "real")), by.get((method, "elpv"))
        return (-(real or {}).get("aupro", -1) if real and real.get("aupro") is not None else 1,
                -(elpv or {}).get("image_auroc", -1) if elpv else 1, methods.index(method))

    head = " | ".join(f"{names[f]} {h}" for f, _, h in SUMMARY_COLUMNS)
    lines = [f"Means over the categories (and, where the profile runs several, the seeds of the methods that train: in "
             f"`cpu` on mnist only) with 95 % bootstrap intervals; "
             f"`{board.get('profile')}` profile, {board.get('device', '')}.", "",
             f"| lesson | method | {head} | fit s | ms / image |", "|---|---|" + "---|" * (len(SUMMARY_COLUMNS) + 2)]
    for m in sorted(methods, key=order):
        lesson = next(r.get("lesson", "") for r in rows if r["method"] == m)
        fit, ms = mean(m, "train_seconds"), mean(m, "infer_ms_per_image")
        lines.append(f"| {lesson} | {m} | " + " | ".join(_interval(by.get((m, f)), k) for f, k, _ in SUMMARY_COLUMNS)
                     + f" | {'–' if fit is None else f'{fit:.1f}'} | {'–' if ms is None else f'{ms:.1f}'} |")
    return "\n".join(lines)


def summary_table(results_dir: Path | None = None) -> str:
    """The README's compact table: one row per method, PIPED first, then textures, then mnist.

    When the leaderboard's JSON holds summary rows (means with intervals), :func:`interval_summary_table`.

    Columns: mean image AUROC, pixel AUROC and AUPRO over the real-data types (PIPED, or MVTec AD when the
    leaderboard ran with ``AD_DATA=mvtec``; the header names it), then the same over the texture categories,
    then the mean image AUROC over the mnist classes; fit seconds and ms per image are means over every row.
    Rows are sorted by real-data AUPRO (methods without it follow, in lesson order). Made from the
    leaderboard's JSON (every method on the same splits) when it exists, else from every lesson's JSON.
    """
    results = load_results(results_dir)
    board = [r for r in results if r["lesson"] == "10_leaderboard"]
    if board and any(r.get("summary") for r in board[0]["rows"]):
        return interval_summary_table(board[0])
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


def split_markers(text: str, begin: str, end: str, path) -> tuple[str, str, str]:
    """``(head, between, tail)`` of ``text`` around one ``begin`` marker followed by one ``end`` marker; a clear
    error naming the markers and ``path`` when one is missing, repeated or out of order."""
    n_begin, n_end = text.count(begin), text.count(end)
    if n_begin != 1 or n_end != 1 or text.index(end) < text.index(begin):
        found = (f"'{begin}' {n_begin} time(s) and '{end}' {n_end} time(s)" if (n_begin, n_end) != (1, 1)
                 else f"'{end}' before '{begin}'")
        raise ValueError(f"{path}: the generated table needs the markers '{begin}' and then '{end}', each once, "
                         f"on lines of their own; found {found}. Put the two marker lines back around the table.")
    head, rest = text.split(begin, 1)
    between, tail = rest.split(end, 1)
    return head, between, tail


def replace_between(path: Path, begin: str, end: str, text: str) -> bool:
    """Replace what stands between the markers ``begin`` and ``end`` in ``path``; True if it changed."""
    old = path.read_text()
    head, _, tail = split_markers(old, begin, end, path)
    new = f"{head}{begin}\n{text}\n{end}{tail}"
    path.write_text(new)
    return new != old


def _column(table: str, name: str, default: int) -> int:
    """The index (in ``line.split("|")``) of the column headed ``name`` in the table's first line, else ``default``."""
    header = [c.strip().lower() for c in table.splitlines()[0].split("|")] if table.strip() else []
    return header.index(name) if name in header else default


def syllabus_with_minutes(table: str, runtimes: dict) -> str:
    """Fill the ``cpu min`` and ``gpu min`` cells of each ``| NN | ...`` row from ``runtimes``.

    The columns are found by their header (without those headers: the last two). ``runtimes`` is
    ``results/runtimes.json``: ``{"02_fcdd": {"cpu": 1146.0}, ...}`` in seconds, as ``make course`` measures
    them. A profile that was never timed shows "–". A row whose first cell is ``all`` gets the sum over the
    lessons above it, or "–" unless every one of them was timed.
    """
    n_cells = len(table.splitlines()[0].split("|")) if table.strip() else 0
    columns = {"cpu": _column(table, "cpu min", n_cells - 3), "gpu": _column(table, "gpu min", n_cells - 2)}
    lines, timed = [], {"cpu": [], "gpu": []}
    for line in table.splitlines():
        cells = line.split("|")  # "| 02 | ... | 19 | – |" -> ["", " 02 ", ..., " 19 ", " – ", ""]
        number = cells[1].strip() if len(cells) > 3 else ""
        if (number.isdigit() or number == "all") and len(cells) == n_cells:
            times = next((t for name, t in runtimes.items() if name.startswith(number + "_")), {})
            for profile, i in columns.items():
                if number == "all":
                    seconds = None if None in timed[profile] else sum(timed[profile])
                else:
                    seconds = times.get(profile)
                    timed[profile].append(seconds)
                cells[i] = f" {seconds / 60:.1f} " if seconds is not None else " – "
            line = "|".join(cells)
        lines.append(line)
    return "\n".join(lines)


# How long a lesson takes in class (the README's teaching schedule): the rule is stated there too.
WORDS_PER_MINUTE = 200  # prose of the markdown cells
CODE_LINES_PER_MINUTE = 15  # non-blank lines of the code cells, read closely
EXERCISE_MINUTES = {1: 5, 2: 10, 3: 20}  # by difficulty: ★ 5, ★★ 10, ★★★ 20 minutes
UNMARKED_EXERCISE_MINUTES = 10  # an exercise without a difficulty mark
SESSION_MINUTES = 90
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
_WORD = re.compile(r"[^\W_][\w'’.-]*")
_HEADING = re.compile(r"(#{1,6})\s*(.*?)\s*$")


def lesson_load(path: Path) -> dict:
    """What a lesson asks of a class, measured on the notebook as a student gets it (answers left out).

    Returns ``words`` (markdown), ``code_lines`` (non-blank lines of code), ``reading_min`` (words at
    ``WORDS_PER_MINUTE`` plus code lines at ``CODE_LINES_PER_MINUTE``), ``exercises`` and ``exercise_min``
    (the exercises of its ``## Exercises`` section: ``### Exercise N ★★`` headings by their stars, see
    ``EXERCISE_MINUTES``; unmarked ones, including an older "1. ..." list, ``UNMARKED_EXERCISE_MINUTES`` each).
    """
    nb = read_json(path)
    words = code_lines = exercises = 0
    exercise_min, in_exercises = 0.0, False
    for cell in nb.get("cells", []):
        if "solution" in [str(t).lower() for t in cell.get("metadata", {}).get("tags", [])]:
            continue  # answers: hidden from the student copy, not read in class
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") != "markdown":
            code_lines += sum(1 for line in source.splitlines() if line.strip())
            continue
        prose = re.sub(r"<[^>]+>", " ", re.sub(r"\]\([^)]*\)", "]", source))  # no link targets, no HTML tags
        words += len(_WORD.findall(prose))
        for line in source.splitlines():  # line by line: a cell may end the Exercises section half-way
            heading = _HEADING.match(line)
            if heading and len(heading.group(1)) <= 2:
                in_exercises = bool(re.match(r"(\d+[.)]?\s*)?Exercises?\b", heading.group(2), re.IGNORECASE))
            elif in_exercises and (marked := re.match(r"#{3,4}\s*Exercise\b[^★]*(★*)", line)):
                exercises += 1
                exercise_min += EXERCISE_MINUTES.get(len(marked.group(1)), UNMARKED_EXERCISE_MINUTES)
            elif in_exercises and re.match(r"\d+\.\s", line):  # an older "1. ..." list of exercises
                exercises += 1
                exercise_min += UNMARKED_EXERCISE_MINUTES
    reading = words / WORDS_PER_MINUTE + code_lines / CODE_LINES_PER_MINUTE
    return {"words": words, "code_lines": code_lines, "reading_min": reading, "exercises": exercises,
            "exercise_min": exercise_min}


def _sessions(n: int, approximate: bool = False) -> str:
    return f"{'≥ ' if approximate else ''}{n} session{'s' if n != 1 else ''}"


def schedule_with_sessions(table: str, runtimes: dict, notebooks_dir: Path | None = None) -> str:
    """Fill the ``reading min``, ``exercise min`` and ``sessions`` columns of the teaching schedule, where the
    table has them (found by header), from each lesson's notebook (:func:`lesson_load`) and its cpu minutes.

    A lesson needs ``ceil((reading + cpu run + exercises) / SESSION_MINUTES)`` sessions ("≥" when its cpu time
    was never measured: the run time is then left out). The ``all`` row gets the sums.
    """
    d = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS_DIR
    n_cells = len(table.splitlines()[0].split("|")) if table.strip() else 0
    i_read, i_ex, i_sessions = (_column(table, name, -1) for name in ("reading min", "exercise min", "sessions"))
    if max(i_read, i_ex, i_sessions) < 0:
        return table
    lines, totals = [], []
    for line in table.splitlines():
        cells = line.split("|")
        number = cells[1].strip() if len(cells) > 3 else ""
        if len(cells) == n_cells and (number.isdigit() or number == "all"):
            if number == "all":
                known = [t for t in totals if t is not None]
                load = None if not known else {"reading_min": sum(t[0] for t in known),
                                               "exercise_min": sum(t[1] for t in known)}
                sessions = None if not known else _sessions(sum(t[2] for t in known),
                                                            approximate=any(t[3] for t in known)
                                                            or len(known) < len(totals))
            else:
                path = next(iter(sorted(d.glob(f"{number}_*.ipynb"))), None)
                load = lesson_load(path) if path else None
                seconds = next((t for name, t in runtimes.items() if name.startswith(number + "_")), {}).get("cpu")
                if load is None:
                    sessions = None
                    totals.append(None)
                else:
                    total = load["reading_min"] + load["exercise_min"] + (seconds or 0) / 60
                    n = max(1, math.ceil(total / SESSION_MINUTES))
                    sessions = _sessions(n, approximate=seconds is None)
                    totals.append((load["reading_min"], load["exercise_min"], n, seconds is None))
            for i, value in ((i_read, None if load is None else f"{load['reading_min']:.0f}"),
                             (i_ex, None if load is None else f"{load['exercise_min']:.0f}"),
                             (i_sessions, sessions)):
                if i >= 0:
                    cells[i] = f" {value} " if value is not None else " – "
            line = "|".join(cells)
        lines.append(line)
    return "\n".join(lines)


def update_readme(readme: Path | None = None, results_dir: Path | None = None,
                  notebooks_dir: Path | None = None) -> bool:
    """Regenerate the README's results table and, if it has them, the minutes columns of the syllabus and of
    the teaching schedule (from ``results/runtimes.json``), and the schedule's reading, exercise and sessions
    columns (measured on the notebooks in ``notebooks_dir``, default ``notebooks/``)."""
    readme = Path(readme) if readme else README
    changed = replace_between(readme, TABLE_BEGIN, TABLE_END, summary_table(results_dir))
    runtimes_path = (Path(results_dir) if results_dir else RESULTS_DIR) / "runtimes.json"
    runtimes = read_json(runtimes_path) if runtimes_path.exists() else {}
    for begin, end in ((SYLLABUS_BEGIN, SYLLABUS_END), (SCHEDULE_BEGIN, SCHEDULE_END)):
        text = readme.read_text()
        if begin not in text and end not in text:
            continue  # a README without this table
        table = split_markers(text, begin, end, readme)[1].strip("\n")
        new = syllabus_with_minutes(table, runtimes) if runtimes_path.exists() else table
        if begin == SCHEDULE_BEGIN:
            new = schedule_with_sessions(new, runtimes, notebooks_dir)
        changed |= replace_between(readme, begin, end, new)
    return changed


_SETTING_KEYS = {"alpha": "alpha", "lambda": "lam", "lam": "lam", "t": "n_steps", "n_steps": "n_steps"}
_MODEL_KEYS = {"l2-ae": "l2", "ssim-ae": "ssim", "vae": "vae", "l2": "l2", "ssim": "ssim"}


def _settings_from_notes(notes: str) -> dict:
    """Lesson 06's older JSON kept its choices in ``notes``: "L2-AE: alpha=5, lambda=0, T=40; SSIM-AE: ..."."""
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
    found = read_json(path).get("chosen_settings", {}).get(method, {}).get(family)
    if found is None:
        raise KeyError(f"{path} records no settings for {method!r} on {family!r}: rerun notebooks/{lesson}.ipynb "
                       "(cpu profile) so that its save_result(..., settings=...) records them.")
    return found


def _old_chosen_settings(chosen) -> dict:
    """``chosen`` if it is the older ``{model: {param: number}}`` shape (models l2 / ssim / vae), else ``{}``."""
    if not isinstance(chosen, dict) or not chosen or not set(chosen) <= set(_GRAD_METHODS.values()):
        return {}
    if not all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in chosen.values()):
        return {}
    return chosen


def lesson_settings(lesson: str, data: str = "textures", results_dir: Path | None = None) -> dict:
    """Lesson 06's choices of the gradient projection (``{model: {"alpha", "lam", "n_steps"}}`` for
    ``model`` in l2 / ssim / vae) on its validation split for data set family ``data``, read from ``results/``.

    Its sources, in order: each projection row's ``grad_settings`` in ``results/06_gradient_projection.json``
    (chosen separately on the textures' and on PIPED's validation splits), then, for an older JSON, its ``notes``
    ("L2-AE: alpha=5, lambda=0, T=40; ...") or a ``chosen_settings`` key in the older shape ``{model: {...}}``.
    ``chosen_settings`` in the course's shape (``{method: {family: {...}}}``, see :func:`chosen_settings`) is
    never read here. This is the one place the leaderboard takes lesson 06's choices from: never a hand copy.
    """
    d = Path(results_dir) if results_dir else RESULTS_DIR
    matches = sorted(d.glob(f"{lesson}*.json")) if not (d / f"{lesson}.json").exists() else [d / f"{lesson}.json"]
    if not matches:
        raise FileNotFoundError(f"no {d}/{lesson}*.json: run that lesson in the cpu profile first "
                                f"(`python -m anomaly_utils.course --profile cpu notebooks/{lesson}*.ipynb`).")
    payload = read_json(matches[0])
    old_shape = _old_chosen_settings(payload.get("chosen_settings"))
    settings = (old_shape or _settings_from_rows(payload.get("rows", []), data)
                or _settings_from_notes(payload.get("notes", "")))
    if not settings:
        raise KeyError(f"{matches[0]} holds no gradient-projection settings for {data!r}: no row with "
                       "'grad_settings', none in its notes, no 'chosen_settings' in the older {model: {...}} shape. "
                       "Rerun that lesson so that its save_result records the settings it chose.")
    return settings
