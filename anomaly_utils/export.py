"""Export the ``#@save`` cells of every notebook to ``anomaly_utils/lessons/<lesson>.py``.

Run ``make export`` (or ``python -m anomaly_utils.export``) after editing a notebook. A lesson
``notebooks/02_fcdd.ipynb`` becomes the module ``anomaly_utils.lessons.fcdd``. ``--check`` exits 1
when an exported file is stale instead of writing it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .profiles import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
LESSONS = REPO_ROOT / "anomaly_utils" / "lessons"
MARK = "#@save"


def module_name(notebook: Path) -> str:
    """``02_fcdd.ipynb`` -> ``fcdd`` (the lesson number is dropped; names are valid identifiers)."""
    return re.sub(r"^\d+_", "", notebook.stem).replace("-", "_")


def exported_source(notebook: Path) -> str | None:
    """The module text made from a notebook's ``#@save`` cells, or ``None`` if it has none."""
    cells = json.loads(notebook.read_text())["cells"]
    chunks = []
    for cell in cells:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and src.lstrip().startswith(MARK):
            body = src.lstrip()[len(MARK):].lstrip("\n")
            chunks.append(body.rstrip() + "\n")
    if not chunks:
        return None
    header = (f'"""Generated from notebooks/{notebook.name} by `make export`: do not edit.\n\n'
              f'Edit the notebook\'s `{MARK}` cells instead, then run `make export`.\n"""\n'
              "# ruff: noqa\n\n")
    return header + "\n\n".join(chunks)


def export_all(check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) every lesson module. Returns the stale or written names."""
    changed = []
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        text = exported_source(nb)
        if text is None:
            continue
        target = LESSONS / f"{module_name(nb)}.py"
        if not target.exists() or target.read_text() != text:
            changed.append(target.name)
            if not check:
                target.write_text(text)
    return changed


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    changed = export_all(check=check)
    if check and changed:
        print("stale exports (run `make export`): " + ", ".join(changed))
        return 1
    print(("stale: " if check else "exported: ") + (", ".join(changed) if changed else "nothing changed"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
