"""Student copies of the notebooks: ``make student`` (or ``python -m anomaly_utils.student``).

**How a lesson marks its answers** (the one documented way; ``make student`` relies on nothing else).
Every cell that belongs to an answer carries the cell tag ``solution`` (cell metadata
``"tags": ["solution"]``), code and markdown alike:

- the worked solution: a code cell whose first line is ``# Solution (exercise N)``;
- its discussion (what the output shows): markdown cells whose first line is ``**Solution (exercise N).**``;
- the answers to the pen-and-paper questions: one markdown cell ``**Answers (check yourself).**``.

The exercise itself stays untagged, one markdown cell per exercise (``### Exercise N ★`` with ★ to ★★★, its
statement, and its hint as ``<details><summary>Hint</summary>…</details>``). No untagged cell (hint, summary,
"what goes wrong", any prose) may quote a result that only a solution computes.

**The student copy** of a notebook:

- turns each tagged code cell into the stub ``# Your code here (exercise N)``, without the tag (N from the
  solution's first line, else from the ``### Exercise N`` heading above it);
- removes each tagged markdown cell;
- clears every output and execution count, and carries the notebook metadata JupyterLab writes on open
  (:func:`anomaly_utils.course.normalise_metadata`), so that it opens unmodified.

:func:`find_leaks` checks a student copy against its teacher's notebook (a tagged cell left, a number that only
a solution shows, an untagged cell quoting a solution's output); ``make student`` prints what it finds.

**Never loses work.** The copies go to ``student/`` (git-ignored); the solutions stay in ``notebooks/``.
``student/.student-manifest.json`` records the SHA-256 of every notebook as it was written. Run again, a copy
that still has that hash is replaced by the new one; a copy that differs (a student edited it) is kept as it
is, and, if the course's copy changed meanwhile, the new one is written beside it as ``<name>.new.ipynb``; the
command says so. A destination
that is the source (or inside it, or around it), a missing source folder and a folder without notebooks are
refused with a message and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import nbformat

from .course import normalise_metadata
from .profiles import REPO_ROOT

SOLUTION_TAG = "solution"
MANIFEST = ".student-manifest.json"
_EXERCISE = re.compile(r"#\s*Solution\s*\(exercise\s*([^)]*)\)", re.IGNORECASE)
_HEADING = re.compile(r"^#{2,4}\s*Exercise\s+([0-9]+[a-z]?)", re.IGNORECASE | re.MULTILINE)
# first lines that mark an answer: an untagged cell that starts like this would leak into the student copy
_ANSWER_START = ("# solution", "**solution", "**answers")


class StudentCopyError(ValueError):
    """A bad ``--src`` / ``--dest``: the message says what to do."""


def tags(cell) -> list[str]:
    return [str(t).lower() for t in cell.get("metadata", {}).get("tags", [])]


def is_solution(cell) -> bool:
    """True for every cell tagged ``solution``, code or markdown."""
    return SOLUTION_TAG in tags(cell)


def looks_like_answer(cell) -> bool:
    """An answer's first line (``# Solution``, ``**Solution``, ``**Answers``), tagged or not."""
    return cell.get("source", "").lstrip().lower().startswith(_ANSWER_START)


def stub_for(source: str, exercise: str | None = None) -> str:
    """``# Your code here (exercise N)``: N from the solution's first line, else ``exercise``."""
    first = source.lstrip().splitlines()[0] if source.strip() else ""
    m = _EXERCISE.match(first)
    number = m.group(1).strip() if m else exercise
    return f"# Your code here (exercise {number})" if number else "# Your code here"


def student_notebook(nb):
    """The student copy of ``nb`` (a new notebook; ``nb`` is not changed): see the module docstring."""
    nb = nbformat.from_dict(nb)  # a deep copy
    cells, exercise = [], None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = _HEADING.findall(cell.source)
            exercise = heading[-1] if heading else exercise
        if is_solution(cell):
            if cell.cell_type != "code":
                continue  # a solution's discussion, or the check-yourself answers: removed
            cell.source = stub_for(cell.source, exercise)
            kept = [t for t in cell.metadata.get("tags", []) if str(t).lower() != SOLUTION_TAG]
            if kept:
                cell.metadata["tags"] = kept
            else:
                cell.metadata.pop("tags", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    normalise_metadata(nb)
    return nb


# ------------------------------------------------------------------------------------------- leak check

# a result: a decimal with two or more places ("0.973", also "0.973." ending a sentence, and "1.67e-2"); list
# numbers ("1.") and version strings ("1.2.3") are not
NUM = re.compile(r"(?<![\w.])\d+\.\d{2,}(?:[eE][-+]?\d+)?(?!\w|\.\d)")
_TEXT_MIMES = ("text/plain", "text/markdown", "text/html", "text/latex")
_STATEMENT = re.compile(r"\s*(\d+\.|#+|\*\*Exercise|<details>\s*<summary>\s*Hint)", re.IGNORECASE)


def _outputs_text(cell, mimes=_TEXT_MIMES) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        parts += ["".join(out.get("data", {}).get(mime, "")) for mime in mimes]
    return "\n".join(parts)


def _text(cell, mimes=_TEXT_MIMES) -> str:
    return "".join(cell.get("source", "")) + "\n" + _outputs_text(cell, mimes)


def answer_cells(nb) -> list[bool]:
    """For each cell of a teacher's notebook: does it belong to an answer?

    Tagged cells and cells that start like an answer, and also (as the course's reviewing tool reads them)
    the untagged markdown cells that follow an answer up to the next exercise statement, heading or hint.
    """
    flags, after = [], False
    for cell in nb.cells:
        if is_solution(cell) or looks_like_answer(cell):
            after = True
            flags.append(True)
            continue
        if cell.cell_type == "markdown" and after:
            source = cell.source
            if _STATEMENT.match(source) and not re.search(r"\b(answer|solution)\b", source[:80], re.IGNORECASE):
                after = False
            else:
                flags.append(True)
                continue
        if cell.cell_type == "code":
            after = False
        flags.append(False)
    return flags


def _same_quote(quoted: str, printed: str) -> bool:
    """True if ``quoted`` is ``printed``, or ``printed`` rounded to ``quoted``'s decimals."""
    mantissa, _, exponent = quoted.lower().partition("e")
    decimals = len(mantissa.split(".")[1])
    rounded = f"{float(printed):.{decimals}{'e' if exponent else 'f'}}"
    return quoted == printed or float(rounded) == float(quoted)


def find_leaks(teacher, student) -> list[str]:
    """What the student copy ``student`` gives away of the answers in ``teacher`` (nbformat nodes).

    - (a) a cell tagged ``solution``, or an untagged cell that starts like an answer;
    - (b) a number (a decimal with two or more places) that, in the teacher's notebook, appears only in
      answer cells (:func:`answer_cells`) or their outputs;
    - (c) a number that an untagged markdown cell quotes, which a solution's output prints (exactly or
      rounded) and no other cell's output does: a hint or summary that quotes an exercise's result;
    - (d) an untagged markdown cell that reads as the discussion of a solution: it follows a solution,
      before the next exercise statement, heading or hint, and is none of them (tag it).

    Returns one message per finding (empty: no leak).
    """
    flags = answer_cells(teacher)
    answer_nums, other_nums = set(), set()
    answer_out, other_out = set(), set()
    for cell, flag in zip(teacher.cells, flags):
        # an answer's numbers from every text output; the others' from plain text only, so never fewer answer-only
        # numbers than the reviewing tool finds
        (answer_nums if flag else other_nums).update(NUM.findall(_text(cell, _TEXT_MIMES if flag else ("text/plain",))))
        if cell.cell_type == "code":
            (answer_out if flag else other_out).update(NUM.findall(_outputs_text(cell)))
    only_answer = answer_nums - other_nums
    discussions = {cell.source for cell, flag in zip(teacher.cells, flags)  # (d); a heading is never one
                   if flag and cell.cell_type == "markdown" and not is_solution(cell) and not looks_like_answer(cell)
                   and not _STATEMENT.match(cell.source)}
    leaks = []
    for k, cell in enumerate(student.cells):
        first = cell.source.strip().splitlines()[0][:50] if cell.source.strip() else ""
        where = f"student cell {k} ({first!r})"
        if is_solution(cell):
            leaks.append(f"{where} is tagged 'solution'")
        elif looks_like_answer(cell):
            leaks.append(f"{where} starts like an answer but is not tagged 'solution': tag it")
        elif cell.cell_type == "markdown" and cell.source in discussions:
            leaks.append(f"{where} follows a solution, before the next exercise: it reads as the solution's "
                         "discussion; tag it 'solution'")
        found = set(NUM.findall(_text(cell)))
        if found & only_answer:
            leaks.append(f"{where} shows {', '.join(sorted(found & only_answer))}, which only an answer shows")
        if cell.cell_type == "markdown":
            quoted = {q for q in found - only_answer
                      if any(_same_quote(q, p) for p in answer_out) and not any(_same_quote(q, p) for p in other_out)}
            if quoted:
                leaks.append(f"{where} quotes {', '.join(sorted(quoted))}, printed only by a solution's output")
    return leaks


# ------------------------------------------------------------------------------------------- writing

class Copy(NamedTuple):
    """One student notebook: ``status`` is "new", "updated" (an unedited copy replaced), "unchanged",
    "edited" (edited by the student, and the course's copy has not changed since: left as it is) or "kept"
    (edited by the student, ``edited``, and the course's copy changed: the new one went to ``path`` beside it)."""
    source: Path
    path: Path
    status: str
    edited: Path | None = None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_mode(path: Path) -> int:
    """The permissions a new file gets (``0o666`` less the umask), or those of ``path`` if it exists."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes it private (0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_folders(src: Path, dest: Path) -> list[Path]:
    """The notebooks of ``src``; a :class:`StudentCopyError` for a source or destination that would lose work."""
    if not src.exists():
        raise StudentCopyError(f"--src {src} does not exist: give the folder of the lesson notebooks "
                               "(default notebooks/).")
    if not src.is_dir():
        raise StudentCopyError(f"--src {src} is not a folder: give the folder of the lesson notebooks.")
    s, d = src.resolve(), dest.resolve()
    if d == s or d.is_relative_to(s):
        raise StudentCopyError(f"--dest {dest} is {'the same folder as' if d == s else 'inside'} --src {src}: the "
                               "student copies would replace or mix with the notebooks that hold the solutions. "
                               "Choose a folder outside it (default student/).")
    if s.is_relative_to(d):
        raise StudentCopyError(f"--src {src} is inside --dest {dest}: choose a destination outside the source "
                               "(default student/).")
    if dest.exists() and not dest.is_dir():
        raise StudentCopyError(f"--dest {dest} is a file, not a folder: choose a folder (default student/).")
    notebooks = sorted(src.glob("*.ipynb"))
    if not notebooks:
        raise StudentCopyError(f"--src {src} holds no notebooks (*.ipynb): give the folder of the lesson "
                               "notebooks (default notebooks/).")
    return notebooks


def _read_manifest(dest: Path) -> dict:
    path = dest / MANIFEST
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
        if isinstance(files, dict):
            return {str(k): str(v) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        pass
    print(f"warning: {path} is unreadable: every existing student notebook that differs from the new copy "
          "is kept as it is.", file=sys.stderr)
    return {}


def _write_manifest(dest: Path, files: dict) -> None:
    payload = {"about": "written by `make student`: the SHA-256 of each student notebook as it was written. A "
                        "notebook whose content differs was edited, and `make student` never overwrites it.",
               "files": dict(sorted(files.items()))}
    _write_atomic(dest / MANIFEST, (json.dumps(payload, indent=1) + "\n").encode())


def _beside(out: Path, manifest: dict) -> Path:
    """Where the new copy goes when ``out`` was edited: ``<name>.new.ipynb`` (or ``.new2``, ...), never
    another edited file."""
    for k in range(1, 100):
        path = out.with_name(f"{out.stem}.new{'' if k == 1 else k}.ipynb")
        if not path.exists() or _sha256(path.read_bytes()) == manifest.get(path.name):
            return path
    raise StudentCopyError(f"{out.parent} holds 99 edited copies of {out.name}: clean up that folder first.")


def write_student_copies(src: Path | None = None, dest: Path | None = None) -> list[Copy]:
    """Write the student copy of every ``src/*.ipynb`` into ``dest``; never overwrites an edited copy.

    Returns one :class:`Copy` per notebook. Raises :class:`StudentCopyError` (nothing written) for a missing
    or empty ``src``, a ``dest`` that is ``src`` or inside it (or around it), or an unreadable notebook.
    """
    src = Path(src) if src else REPO_ROOT / "notebooks"
    dest = Path(dest) if dest else REPO_ROOT / "student"
    copies = []
    for path in _check_folders(src, dest):
        try:
            nb = student_notebook(nbformat.read(path, as_version=4))
            nbformat.validate(nb)
        except Exception as e:  # unreadable JSON, not a notebook, an invalid notebook
            raise StudentCopyError(f"{path} is not a readable notebook ({type(e).__name__}: {e}); "
                                   "nothing was written.") from e
        text = nbformat.writes(nb)
        copies.append((path, (text if text.endswith("\n") else text + "\n").encode()))
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(dest)
    done = []
    for path, data in copies:
        out = dest / path.name
        if not out.exists():
            status, target = "new", out
        elif out.read_bytes() == data:
            status, target = "unchanged", None
        elif _sha256(out.read_bytes()) == manifest.get(out.name):
            status, target = "updated", out  # not edited since it was written
        elif _sha256(data) == manifest.get(out.name):
            status, target = "edited", None  # edited, and nothing new to hand out
        else:
            status, target = "kept", _beside(out, manifest)
        if target is not None:
            _write_atomic(target, data)
        if target is not None or status == "unchanged":
            manifest[(target or out).name] = _sha256(data)
            _write_manifest(dest, manifest)  # after each file: an interrupted run never trusts an unrecorded one
        done.append(Copy(path, target or out, status, out if status == "kept" else None))
    return done


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.resolve().is_relative_to(REPO_ROOT) else str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=None, help="folder of notebooks (default notebooks/)")
    parser.add_argument("--dest", type=Path, default=None, help="output folder (default student/)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a student copy gives an answer away")
    args = parser.parse_args(argv)
    try:
        copies = write_student_copies(args.src, args.dest)
    except StudentCopyError as e:
        print(f"make student: {e}", file=sys.stderr)
        return 2
    counts = {s: sum(c.status == s for c in copies) for s in ("new", "updated", "unchanged", "edited", "kept")}
    dest = copies[0].path.parent
    print(f"student copies in {_shown(dest)}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for c in copies:
        if c.status == "edited":
            print(f"  {_shown(c.path)}: edited by you, and the course's copy has not changed: left as it is.")
        if c.status == "kept":
            print(f"  kept {_shown(c.edited)}: it was edited since `make student` wrote it, so it stays as it is; "
                  f"the new copy is {_shown(c.path)} (compare the two, or delete yours and rerun).")
    leaks = []
    for c in copies:
        teacher = nbformat.read(c.source, as_version=4)
        leaks += [f"{c.source.name}: {m}" for m in find_leaks(teacher, nbformat.read(c.path, as_version=4))]
    if leaks:
        print(f"warning: the student copies give {len(leaks)} answer(s) away; tag those cells 'solution' "
              "(see anomaly_utils/student.py):", file=sys.stderr)
        for m in leaks:
            print(f"  {m}", file=sys.stderr)
    return 1 if leaks and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
