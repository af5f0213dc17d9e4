"""Execute notebooks headless, keep their outputs, and refresh ``results/`` and the README table.

    python -m anomaly_utils.course                     # every notebook, this machine's profile
    python -m anomaly_utils.course notebooks/02_fcdd.ipynb --profile cpu
    python -m anomaly_utils.course --no-execute        # only metadata and dead progress bars, no run

Outputs are kept (learners see real results on GitHub); execution counts are renumbered 1, 2, ...
and timing metadata is stripped, so that diffs stay small. Each notebook's wall time is printed, written to
``results/runtimes.json`` and into the notebook's own **Runtime** line (e.g. "`cpu` 2.5 min").

The runner disables tqdm progress bars in the kernel, and :func:`clean_notebook` drops what a saved
notebook cannot show anyway: widget views (a progress bar saved without its widget state reads
"0%| | 0/15") and progress-bar lines on stderr. It also writes the notebook metadata JupyterLab 4 writes
on open (:func:`normalise_metadata`), so that a notebook opens unmodified.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

from .profiles import REPO_ROOT, get_profile, machine_description

NOTEBOOKS = REPO_ROOT / "notebooks"


# What JupyterLab 4 writes into a notebook when it opens it with the course's kernel (ipykernel): a notebook
# that already carries it is not marked as modified on open.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def language_info() -> dict:
    """The ``language_info`` ipykernel reports (JupyterLab copies it into the notebook), for this Python."""
    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3", "version": platform.python_version()}


def normalise_metadata(nb) -> None:
    """Give ``nb`` (an nbformat node) the notebook metadata JupyterLab 4 writes on open, in place.

    JupyterLab rewrites ``kernelspec`` from the kernel it starts ("Python 3" becomes "Python 3 (ipykernel)")
    and ``language_info`` from the kernel's reply, and saves nbformat 4.5 (cells with ids); ``widgets``
    (saved widget state) is dropped. Other notebook metadata is kept.
    """
    nb.nbformat, nb.nbformat_minor = 4, max(int(nb.get("nbformat_minor", 5)), 5)
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = language_info()
    for k, cell in enumerate(nb.cells):
        if not cell.get("id"):
            cell["id"] = f"cell-{k}"


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# a tqdm line: "desc:  40%|####      | 6/15 [00:01<00:02, 4.1it/s]" or, without a total, "desc: 12it [00:01, 9.1it/s]"
_PROGRESS = re.compile(r"\d{1,3}%\|.*\|\s*\S+/\S+|\d[\d.]*\w*it \[\d+:\d\d")


def _without_progress_bars(text: str) -> str:
    """``text`` (a stderr stream) without its progress-bar lines (tqdm redraws a line with ``\\r``)."""
    kept = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p.strip() and not _PROGRESS.search(p)]
        if parts or not line.strip():
            kept.append(parts[-1] if parts else line)
    return "\n".join(kept)


def clean_outputs(cell) -> None:
    """Drop widget views and stderr progress-bar lines from a code cell's outputs, in place."""
    outputs = []
    for out in cell.get("outputs", []):
        if WIDGET_VIEW in out.get("data", {}):
            continue  # a widget saved without its state: a dead "0%| | 0/15" line for a reader
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = "".join(out.get("text", ""))
            out["text"] = _without_progress_bars(text)
            if not out["text"].strip():
                continue
        outputs.append(out)
    cell.outputs = outputs


LARGE_PNG = 300_000  # characters of base64 (about 220 kB): a figure this large is stored with a 256-colour palette


def shrink_png(b64: str) -> str:
    """A large PNG output (base64) re-encoded with a 256-colour palette when that makes it smaller, else unchanged.

    Galleries of photographs and heatmaps are the figures that grow a notebook past a few MB; a palette keeps them
    readable (no dithering, so flat areas stay flat) at a third to half of the size. Small figures stay as they are.
    """
    import base64
    import io

    from PIL import Image

    if len(b64) < LARGE_PNG:
        return b64
    image = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
    buffer = io.BytesIO()
    image.quantize(colors=256, dither=Image.Dither.NONE).save(buffer, format="PNG", optimize=True)
    smaller = base64.b64encode(buffer.getvalue()).decode("ascii")
    return smaller if len(smaller) < len(b64) else b64


def clean_notebook(nb, renumber: bool = True) -> None:
    """Number code cells 1, 2, ..., strip timing metadata, drop widget views and stderr progress bars, store large
    PNG figures with a palette (:func:`shrink_png`), and write the metadata JupyterLab writes
    (:func:`normalise_metadata`), in place (``nb`` is an nbformat node).

    Execution counts are made deterministic rather than removed: nbval treats a cell without an
    execution count as unrun and fails on its stored outputs ("Unrun reference cell has outputs").
    ``renumber=False`` leaves them as they are (for a notebook that was not just executed).
    """
    normalise_metadata(nb)
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        count += 1
        if renumber:
            cell.execution_count = count
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        clean_outputs(cell)
        for out in cell.get("outputs", []):
            if renumber and "execution_count" in out:
                out["execution_count"] = count
            if "image/png" in out.get("data", {}):
                out["data"]["image/png"] = shrink_png(out["data"]["image/png"])


def update_runtime_line(nb, profile: str, seconds: float) -> bool:
    """Write the measured minutes into the markdown line that starts with **Runtime**, in place.

    "`cpu` 3.1 min" becomes "`cpu` 2.5 min" and "`gpu` not timed yet" becomes "`gpu` 4.0 min"; a remark
    in parentheses between the profile and its time ("`gpu` (128 × 128) not timed yet") is kept.
    Returns False if the notebook has no such line for ``profile``.
    """
    pattern = re.compile(rf"(`{profile}`\s+(?:\([^)]*\)\s+)?)(?:\d+(?:\.\d+)? min|not\s+timed\s+yet)")
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "**Runtime**" in cell.source:
            cell.source, found = pattern.subn(lambda m: f"{m.group(1)}{seconds / 60:.1f} min", cell.source, count=1)
            return found == 1
    return False


# tqdm 4.70's notebook bar (what tqdm.auto gives in a kernel) ignores TQDM_DISABLE: its __init__ passes
# disable=False explicitly. This line, run by the kernel at start (exec_lines, in a namespace of its own, so no
# name reaches the notebook), makes every notebook bar disabled.
_QUIET_TQDM_CODE = """\
import tqdm.notebook as n
init = n.tqdm_notebook.__init__
def quiet(self, *args, **kwargs):
    kwargs["disable"] = True
    init(self, *args, **kwargs)
n.tqdm_notebook.__init__ = quiet
"""
QUIET_TQDM = f"--IPKernelApp.exec_lines=exec({_QUIET_TQDM_CODE!r}, {{}})"


def run_notebook(path: Path, profile: str, timeout: int = 3600) -> float:
    """Execute ``path`` in place in ``profile``; returns the wall seconds.

    Outside the ``smoke`` profile the notebook's **Runtime** line gets the measured minutes.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {"AD_PROFILE": profile,
           "AD_STATIC_WIDGETS": "1",  # committed outputs show static figures (GitHub renders no widgets)
           "TQDM_DISABLE": "1"}  # tqdm's text bars (tqdm.std) read it; the widget bars need QUIET_TQDM too
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", extra_arguments=[QUIET_TQDM],
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - start
    clean_notebook(nb)
    if profile != "smoke" and not update_runtime_line(nb, profile, seconds):
        print(f"  note: {path.name} has no **Runtime** line with `{profile}` <minutes> to update", flush=True)
    nbformat.write(nb, path)
    return seconds


def clean_only(paths) -> int:
    """:func:`clean_notebook` on each notebook without executing it (execution counts and sources left as they
    are); writes only the ones that change."""
    import nbformat

    for path in paths:
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        clean_notebook(nb, renumber=False)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, path)
            print(f"cleaned {path}")
        else:
            print(f"{path}: already clean")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--profile", default=None, help="smoke, cpu or gpu (default: this machine's)")
    parser.add_argument("--no-readme", action="store_true", help="do not regenerate the README table")
    parser.add_argument("--no-execute", "--metadata-only", action="store_true",
                        help="run nothing: only give the notebooks JupyterLab's metadata and drop widget views and "
                             "progress bars from their outputs (sources and execution counts untouched)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.no_execute:
        return clean_only(paths)
    profile = args.profile or get_profile()
    runtimes_path = REPO_ROOT / "results" / "runtimes.json"
    runtimes = json.loads(runtimes_path.read_text()) if runtimes_path.exists() else {}
    total = 0.0
    for path in paths:
        print(f"running {path.name} in the {profile} profile ...", flush=True)
        seconds = run_notebook(Path(path), profile)
        total += seconds
        print(f"  {path.name}: {seconds / 60:.1f} min", flush=True)
        if profile != "smoke":  # written after each notebook, so an interrupted run keeps what it measured
            runtimes.setdefault(path.stem, {})[profile] = round(seconds, 1)
            runtimes.setdefault("_machine", {})[profile] = machine_description(profile)
            runtimes_path.parent.mkdir(exist_ok=True)
            runtimes_path.write_text(json.dumps(runtimes, indent=1, sort_keys=True) + "\n")
    print(f"total: {total / 60:.1f} min")
    if profile != "smoke":
        if not args.no_readme:
            from .results import update_readme
            update_readme()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
