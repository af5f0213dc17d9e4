"""Student copies: every answer removed (tagged code -> stub, tagged markdown -> gone), outputs cleared, no
number of an answer left anywhere, and `make student` never overwrites a notebook a student has edited."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from anomaly_utils.course import KERNELSPEC
from anomaly_utils.profiles import REPO_ROOT
from anomaly_utils.student import (
    MANIFEST,
    StudentCopyError,
    find_leaks,
    is_solution,
    main,
    stub_for,
    student_notebook,
    write_student_copies,
)

v4 = nbformat.v4
SOL = {"tags": ["solution"]}


def stream(text):
    return [v4.new_output("stream", text=text)]


def lesson(discussion="**Solution (exercise 1).** The answer is 0.8734, as printed.", discussion_tags=SOL,
           hint="*Hint:* multiply.", untagged_output="42\n"):
    """A small lesson that follows the convention: statement + hint, tagged solution code and discussion,
    check-yourself questions with tagged answers."""
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = [
        v4.new_markdown_cell("# 99 · Demo"),
        v4.new_code_cell("x = 6 * 7\nprint(x)", outputs=stream(untagged_output), execution_count=1),
        v4.new_markdown_cell("## Check yourself\n\n- **Q1.** Why 42?"),
        v4.new_markdown_cell("**Answers (check yourself).** Q1: 0.5512 of the time.", metadata=SOL),
        v4.new_markdown_cell("## Exercises"),
        v4.new_markdown_cell(f"### Exercise 1 ★ Multiply\n\nCompute 6 * 7.\n\n<details><summary>Hint</summary>"
                             f"{hint}</details>"),
        v4.new_code_cell("# Solution (exercise 1)\nanswer = x / 48.09\nprint('SECRET', round(answer, 4))",
                         outputs=stream("SECRET 0.8734\n"), execution_count=2, metadata=SOL),
        v4.new_markdown_cell(discussion, metadata=discussion_tags),
        v4.new_markdown_cell("### Exercise 2 ★★ Again\n\nOnce more.\n\n<details><summary>Hint</summary>"
                             "Same.</details>"),
        v4.new_code_cell("answer2 = 2  # the worked solution, its first line not naming the exercise",
                         metadata={"tags": ["solution", "other"]}),
        v4.new_code_cell("# not a solution (exercise 9)\ny = 1", metadata={"tags": ["other"]}),
        v4.new_markdown_cell("## References"),
    ]
    return nb


def test_stub_keeps_the_exercise_number():
    assert stub_for("# Solution (exercise 3)\nprint(1)") == "# Your code here (exercise 3)"
    assert stub_for("  # solution (Exercise 2b)\n") == "# Your code here (exercise 2b)"
    assert stub_for("print(1)") == "# Your code here"
    assert stub_for("print(1)", exercise="4") == "# Your code here (exercise 4)"
    assert stub_for("") == "# Your code here"


def test_student_copy_removes_every_answer_and_runs():
    nb = lesson()
    copy = student_notebook(nb)
    nbformat.validate(copy)
    sources = [c.source for c in copy.cells]
    assert len(copy.cells) == len(nb.cells) - 2  # the tagged discussion and the check-yourself answers are gone
    assert not any("Answers" in s or "Solution (exercise 1)." in s for s in sources)
    assert "# Your code here (exercise 1)" in sources
    assert "# Your code here (exercise 2)" in sources  # N from the "### Exercise 2" heading above it
    assert not any(is_solution(c) for c in copy.cells)  # stubs carry no solution tag ...
    stub2 = next(c for c in copy.cells if c.source == "# Your code here (exercise 2)")
    assert stub2.metadata["tags"] == ["other"]  # ... but keep their other tags
    assert "# not a solution (exercise 9)\ny = 1" in sources  # untagged cells are kept
    assert "SECRET" not in "".join(sources) and "0.8734" not in json.dumps(copy)
    assert all(c.outputs == [] and c.execution_count is None for c in copy.cells if c.cell_type == "code")
    assert copy.metadata["kernelspec"] == KERNELSPEC  # what JupyterLab writes: opens unmodified
    assert "SECRET" in nb.cells[6].source and nb.cells[1].outputs  # the original is untouched
    assert find_leaks(nb, copy) == []
    executed = NotebookClient(copy, timeout=60, kernel_name="python3").execute()
    assert executed.cells[1].outputs[0]["text"] == "42\n"


# ----------------------------------------------------------------------------------------- the leak check

def leaks_of(nb):
    return find_leaks(nb, student_notebook(nb))


def test_a_tagged_cell_left_in_a_student_copy_is_a_leak():
    nb = lesson()
    copy = student_notebook(nb)
    copy.cells.append(v4.new_markdown_cell("just a tagged note", metadata=SOL))
    assert any("tagged 'solution'" in m for m in find_leaks(nb, copy))
    untagged_answer = lesson(discussion="**Solution (exercise 1).** See above.", discussion_tags={})
    assert any("not tagged" in m for m in leaks_of(untagged_answer))


def test_an_untagged_discussion_is_a_leak():
    # the case: the markdown cell after a solution keeps the worked answer with its numbers
    nb = lesson(discussion="The ratio is 0.8734, a bit below 0.9012.", discussion_tags={})
    leaks = leaks_of(nb)
    assert any("0.8734" in m and "0.9012" in m and "only an answer" in m for m in leaks)  # (b)
    assert any("follows a solution" in m for m in leaks)  # (d)
    no_number = lesson(discussion="Multiplying is commutative, as the output shows.", discussion_tags={})
    assert any("follows a solution" in m for m in leaks_of(no_number))


@pytest.mark.parametrize("hint", ["it comes out near 0.87.", "about 0.873 (rounded)", "0.8734 exactly"])
def test_a_hint_quoting_a_solutions_output_is_a_leak(hint):
    # (c): the hint's number also appears in an untagged cell (the hint itself), so (b) cannot see it
    leaks = leaks_of(lesson(hint=hint))
    assert any("printed only by a solution's output" in m for m in leaks), leaks


def test_a_number_an_untagged_output_prints_too_is_no_leak():
    assert leaks_of(lesson(hint="it comes out near 0.87", untagged_output="42 0.87\n")) == []
    assert leaks_of(lesson(hint="about 1.67e-2 of the pixels")) == []  # no solution prints it


def test_scientific_notation_is_a_number_too():
    nb = lesson(hint="spread 1.67e-2")
    nb.cells[6].outputs = stream("spread 1.672e-02\n")
    assert any("1.67e-2" in m for m in leaks_of(nb))


def test_student_copies_of_the_course_have_no_answer_cell(tmp_path):
    copies = write_student_copies(REPO_ROOT / "notebooks", tmp_path)
    originals = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    assert [c.source.name for c in copies] == [p.name for p in originals]
    n_solutions = 0
    for c in copies:
        src, nb = nbformat.read(c.source, as_version=4), nbformat.read(c.path, as_version=4)
        nbformat.validate(nb)
        kept = [cell for cell in src.cells if not (is_solution(cell) and cell.cell_type == "markdown")]
        assert len(nb.cells) == len(kept)
        for a, b in zip(kept, nb.cells):
            assert not is_solution(b)
            if b.cell_type == "code":
                assert b.outputs == [] and b.execution_count is None
            if is_solution(a):
                n_solutions += 1
                assert b.source.startswith("# Your code here") and len(b.source.splitlines()) == 1
            else:
                assert a.source == b.source
    assert n_solutions >= 1


def test_student_copies_of_the_course_give_no_answer_away(tmp_path):
    """Fails while a lesson's answers are not tagged the way anomaly_utils/student.py documents."""
    leaks = []
    for c in write_student_copies(REPO_ROOT / "notebooks", tmp_path):
        teacher, student = nbformat.read(c.source, as_version=4), nbformat.read(c.path, as_version=4)
        leaks += [f"{c.source.name}: {m}" for m in find_leaks(teacher, student)]
    assert not leaks, f"{len(leaks)} answer(s) given away:\n" + "\n".join(leaks)


# ----------------------------------------------------------------------------------------- never lose work

@pytest.fixture
def course(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    nbformat.write(lesson(), src / "99_demo.ipynb")
    return src, tmp_path / "student"


def test_a_second_run_never_overwrites_an_edited_notebook(course, capsys):
    src, dest = course
    assert [c.status for c in write_student_copies(src, dest)] == ["new"]
    assert (dest / MANIFEST).exists()
    assert [c.status for c in write_student_copies(src, dest)] == ["unchanged"]
    mine = dest / "99_demo.ipynb"
    work = nbformat.read(mine, as_version=4)
    work.cells[5].source = "answer = 6 * 7  # my own work"
    nbformat.write(work, mine)
    edited = mine.read_bytes()
    # the course has not changed: the edited copy is left alone, no copy beside it
    assert [c.status for c in write_student_copies(src, dest)] == ["edited"]
    assert mine.read_bytes() == edited and not (dest / "99_demo.new.ipynb").exists()
    teacher = nbformat.read(src / "99_demo.ipynb", as_version=4)
    teacher.cells[0].source = "# 99 · Demo, revised"
    nbformat.write(teacher, src / "99_demo.ipynb")

    assert main(["--src", str(src), "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert mine.read_bytes() == edited  # the student's work is untouched
    beside = dest / "99_demo.new.ipynb"
    assert "revised" in beside.read_text() and "kept" in out and "99_demo.new.ipynb" in out
    # a third run: still kept; the unedited new copy beside it is simply refreshed (no .new2)
    copies = write_student_copies(src, dest)
    assert [(c.status, c.path.name) for c in copies] == [("kept", "99_demo.new.ipynb")]
    assert mine.read_bytes() == edited and not (dest / "99_demo.new2.ipynb").exists()
    # the student edits the new copy too: a third file, never an overwrite
    beside.write_text(beside.read_text().replace("revised", "revised by me"))
    copies = write_student_copies(src, dest)
    assert copies[0].path.name == "99_demo.new2.ipynb" and "revised by me" in beside.read_text()


def test_an_unedited_copy_is_updated(course):
    src, dest = course
    write_student_copies(src, dest)
    teacher = nbformat.read(src / "99_demo.ipynb", as_version=4)
    teacher.cells[0].source = "# 99 · Demo, revised"
    nbformat.write(teacher, src / "99_demo.ipynb")
    assert [c.status for c in write_student_copies(src, dest)] == ["updated"]
    assert "revised" in (dest / "99_demo.ipynb").read_text()


def test_without_a_manifest_an_existing_different_notebook_is_kept(course):
    src, dest = course
    dest.mkdir()
    (dest / "99_demo.ipynb").write_text("my notes, not even a notebook")
    assert [c.status for c in write_student_copies(src, dest)] == ["kept"]
    assert (dest / "99_demo.ipynb").read_text() == "my notes, not even a notebook"
    (dest / MANIFEST).write_text("{truncated")  # a corrupted manifest: nothing is trusted, nothing lost
    assert [c.status for c in write_student_copies(src, dest)] == ["kept"]
    assert (dest / "99_demo.ipynb").read_text() == "my notes, not even a notebook"


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_a_destination_that_is_the_source_is_refused(course, capsys, where):
    src, _ = course
    dest = {"same": src, "inside": src / "student", "around": src.parent}[where]
    before = (src / "99_demo.ipynb").read_bytes()
    with pytest.raises(StudentCopyError, match="--src"):
        write_student_copies(src, dest)
    assert main(["--src", str(src), "--dest", str(dest)]) != 0
    assert "--src" in capsys.readouterr().err
    assert (src / "99_demo.ipynb").read_bytes() == before  # the solutions are still there
    assert not (src / "student").exists()
    same_by_another_name = src / ".." / src.name
    with pytest.raises(StudentCopyError, match="same folder"):
        write_student_copies(src, same_by_another_name)


def test_a_missing_or_empty_source_fails_clearly(tmp_path, capsys):
    assert main(["--src", str(tmp_path / "nowhere"), "--dest", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "does not exist" in err and "nowhere" in err
    (tmp_path / "empty").mkdir()
    assert main(["--src", str(tmp_path / "empty"), "--dest", str(tmp_path / "out")]) != 0
    assert "holds no notebooks" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_notebook_writes_nothing(course):
    src, dest = course
    (src / "98_broken.ipynb").write_text('{"cells": [')
    with pytest.raises(StudentCopyError, match="98_broken.ipynb"):
        write_student_copies(src, dest)
    assert not dest.exists()


@pytest.mark.skipif(os.environ.get("AD_STUDENT_RUN") != "1",
                    reason="runs a real student notebook in smoke (slow); set AD_STUDENT_RUN=1")
def test_real_student_notebook_runs_up_to_the_first_exercise(tmp_path):
    nb = student_notebook(nbformat.read(REPO_ROOT / "notebooks" / "00_primer.ipynb", as_version=4))
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  and c.source.startswith("# Your code here")), len(nb.cells))
    nb.cells = nb.cells[:first]
    env = dict(os.environ, AD_PROFILE="smoke")
    os.environ.update(env)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT / "notebooks")}}).execute()


def test_copies_get_ordinary_permissions(course):
    src, dest = course
    umask = os.umask(0o022)
    try:
        write_student_copies(src, dest)
    finally:
        os.umask(umask)
    assert (dest / "99_demo.ipynb").stat().st_mode & 0o777 == 0o644  # readable by the class, like any file


def test_a_heading_after_the_answers_is_no_discussion():
    nb = lesson()
    # the Exercises intro follows the check-yourself answers and mentions solutions: still not a discussion
    nb.cells[4].source = "## Exercises\n\nEach exercise has a hint; its worked solution follows it."
    assert leaks_of(nb) == []
