"""Student copies of the notebooks: ``make student`` (or ``python -m anomaly_utils.student``).

A worked solution is a code cell tagged ``solution`` (cell metadata ``"tags": ["solution"]``) whose first
line is ``# Solution (exercise N)``. The student copy keeps every cell, clears every output and execution
count, and replaces each solution cell's code by the stub ``# Your code here (exercise N)``. The copies go
to ``student/`` (git-ignored); the solutions stay in ``notebooks/``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import nbformat

from .profiles import REPO_ROOT

SOLUTION_TAG = "solution"
_EXERCISE = re.compile(r"#\s*Solution\s*\(exercise\s*([^)]*)\)", re.IGNORECASE)


def is_solution(cell) -> bool:
    return cell.cell_type == "code" and SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def stub_for(source: str) -> str:
    """``# Your code here (exercise N)``, N taken from the solution's first line when it names one."""
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    m = _EXERCISE.match(first)
    return f"# Your code here (exercise {m.group(1).strip()})" if m else "# Your code here"


def student_notebook(nb):
    """A copy of ``nb`` with solution cells emptied to a stub and every output cleared."""
    nb = nbformat.from_dict(nb)  # a deep copy
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        if is_solution(cell):
            cell.source = stub_for(cell.source)
    return nb


def write_student_copies(src: Path | None = None, dest: Path | None = None) -> list[Path]:
    """Write ``dest/<name>.ipynb`` for every ``src/*.ipynb``; returns the paths written."""
    src = Path(src) if src else REPO_ROOT / "notebooks"
    dest = Path(dest) if dest else REPO_ROOT / "student"
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(src.glob("*.ipynb")):
        nb = student_notebook(nbformat.read(path, as_version=4))
        nbformat.validate(nb)
        out = dest / path.name
        nbformat.write(nb, out)
        written.append(out)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=None, help="folder of notebooks (default notebooks/)")
    parser.add_argument("--dest", type=Path, default=None, help="output folder (default student/)")
    args = parser.parse_args(argv)
    written = write_student_copies(args.src, args.dest)
    n_solutions = sum(is_solution(c) for p in sorted((args.src or REPO_ROOT / "notebooks").glob("*.ipynb"))
                      for c in nbformat.read(p, as_version=4).cells)
    print(f"wrote {len(written)} student notebooks to {written[0].parent if written else args.dest} "
          f"({n_solutions} solution cells emptied)")


if __name__ == "__main__":
    main()
