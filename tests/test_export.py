"""The #@save export: the committed lesson modules must match the notebooks."""

import nbformat
import pytest

from anomaly_utils import export


def test_exported_lessons_are_up_to_date():
    stale = export.export_all(check=True)
    assert stale == [], (f"anomaly_utils/lessons is out of date with the notebooks ({', '.join(stale)}): "
                         "run `make export` and commit the result.")


def write_notebook(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 02 · Demo\n#@save is only a code-cell mark")]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in sources]
    nbformat.write(nb, str(path))
    return path


SOURCES = ["import numpy as np\nx = np.zeros(3)",  # not exported
           "#@save\nimport math\n\n\ndef double(x):\n    return 2 * x\n\n",
           "  #@save\nTAU = 2 * math.pi"]


def test_exported_source(tmp_path):
    nb = write_notebook(tmp_path / "02_demo.ipynb", SOURCES)
    text = export.exported_source(nb)
    assert text.startswith('"""Generated from notebooks/02_demo.ipynb by `make export`: do not edit.')
    body = text.split("# ruff: noqa\n\n", 1)[1]
    assert body == "import math\n\n\ndef double(x):\n    return 2 * x\n\n\nTAU = 2 * math.pi\n"
    namespace = {}
    exec(compile(text, "demo.py", "exec"), namespace)
    assert namespace["double"](3) == 6 and namespace["TAU"] == pytest.approx(6.283185307)
    assert "np.zeros" not in text
    assert export.exported_source(write_notebook(tmp_path / "03_none.ipynb", SOURCES[:1])) is None
    assert export.module_name(nb) == "demo"
    assert export.module_name(tmp_path / "10_leader-board.ipynb") == "leader_board"


def test_export_all_detects_and_fixes_stale_files(tmp_path, monkeypatch):
    notebooks, lessons = tmp_path / "notebooks", tmp_path / "lessons"
    notebooks.mkdir()
    lessons.mkdir()
    monkeypatch.setattr(export, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(export, "LESSONS", lessons)
    write_notebook(notebooks / "02_demo.ipynb", SOURCES)
    write_notebook(notebooks / "03_plain.ipynb", SOURCES[:1])
    assert export.export_all(check=True) == ["demo.py"]  # missing
    assert not (lessons / "demo.py").exists()  # check mode writes nothing
    assert export.export_all() == ["demo.py"]
    assert export.export_all(check=True) == []
    assert sorted(p.name for p in lessons.iterdir()) == ["demo.py"]
    write_notebook(notebooks / "02_demo.ipynb", SOURCES[1:2])  # the notebook changed
    assert export.export_all(check=True) == ["demo.py"]
    assert export.main(["--check"]) == 1
