"""Execute notebooks headless, keep their outputs, and refresh ``results/`` and the README table.

    python -m anomaly_utils.course                     # every notebook, this machine's profile
    python -m anomaly_utils.course notebooks/02_fcdd.ipynb --profile cpu

Outputs are kept (learners see real results on GitHub); execution counts are renumbered 1, 2, ...
and timing metadata is stripped, so that diffs stay small. Each notebook's wall time is printed, written to
``results/runtimes.json`` and into the notebook's own **Runtime** line (e.g. "`cpu` 2.5 min").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from .profiles import REPO_ROOT, get_profile, machine_description

NOTEBOOKS = REPO_ROOT / "notebooks"


def clean_notebook(nb) -> None:
    """Number code cells 1, 2, ... and strip timing metadata, in place (``nb`` is an nbformat node).

    Execution counts are made deterministic rather than removed: nbval treats a cell without an
    execution count as unrun and fails on its stored outputs ("Unrun reference cell has outputs").
    """
    nb.metadata.pop("widgets", None)
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        count += 1
        cell.execution_count = count
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        for out in cell.get("outputs", []):
            if "execution_count" in out:
                out["execution_count"] = count


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


def run_notebook(path: Path, profile: str, timeout: int = 3600) -> float:
    """Execute ``path`` in place in ``profile``; returns the wall seconds.

    Outside the ``smoke`` profile the notebook's **Runtime** line gets the measured minutes.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_profile = os.environ.get("AD_PROFILE")
    os.environ["AD_PROFILE"] = profile
    os.environ["AD_STATIC_WIDGETS"] = "1"  # committed outputs show static figures (GitHub renders no widgets)
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_profile is None:
            os.environ.pop("AD_PROFILE", None)
        else:
            os.environ["AD_PROFILE"] = env_profile
    seconds = time.perf_counter() - start
    clean_notebook(nb)
    if profile != "smoke" and not update_runtime_line(nb, profile, seconds):
        print(f"  note: {path.name} has no **Runtime** line with `{profile}` <minutes> to update", flush=True)
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--profile", default=None, help="smoke, cpu or gpu (default: this machine's)")
    parser.add_argument("--no-readme", action="store_true", help="do not regenerate the README table")
    args = parser.parse_args(argv)
    profile = args.profile or get_profile()
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
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
