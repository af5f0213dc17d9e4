"""results: one JSON per lesson, and the README table made from them."""

import json

import pytest

from anomaly_utils.results import (
    SCHEDULE_BEGIN,
    SCHEDULE_END,
    SYLLABUS_BEGIN,
    SYLLABUS_END,
    TABLE_BEGIN,
    TABLE_END,
    result_row,
    results_table,
    save_result,
    syllabus_with_minutes,
    update_readme,
)


def test_result_row_rounds_and_keeps_extras():
    row = result_row("PatchCore", "textures/brick", image_auroc=0.912345, train_seconds=12.3456, coreset=0.1)
    assert row["image_auroc"] == 0.9123 and row["train_seconds"] == 12.35
    assert row["pixel_auroc"] is None and row["coreset"] == 0.1


def test_save_result_writes_json(tmp_path, monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "cpu")
    rows = [result_row("kNN", "mnist/0", image_auroc=0.95), result_row("kNN", "mnist/1", image_auroc=0.99)]
    path = save_result("00_primer", rows, notes="test", runtime_seconds=12.34, results_dir=tmp_path)
    assert path == tmp_path / "00_primer.json" and path.exists()
    payload = json.loads(path.read_text())
    assert payload["lesson"] == "00_primer" and payload["profile"] == "cpu"
    assert payload["rows"] == rows and payload["notes"] == "test" and payload["runtime_seconds"] == 12.3
    assert payload["device"] and payload["torch"] and payload["date"]


def test_smoke_profile_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AD_PROFILE", "smoke")
    assert save_result("00_primer", [result_row("kNN", "mnist/0")], results_dir=tmp_path) is None
    assert list(tmp_path.iterdir()) == []
    assert "smoke" in capsys.readouterr().out
    assert save_result("00_primer", [result_row("kNN", "mnist/0")], results_dir=tmp_path, force=True).exists()


def test_rows_need_method_and_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "cpu")
    with pytest.raises(ValueError, match="method"):
        save_result("00_primer", [{"image_auroc": 0.5}], results_dir=tmp_path)


@pytest.fixture
def two_lessons(tmp_path, monkeypatch):
    monkeypatch.setenv("AD_PROFILE", "cpu")
    save_result("01_deep_svdd", [result_row("Deep SVDD", "mnist/0", image_auroc=0.9, train_seconds=10),
                                 result_row("Deep SVDD", "mnist/1", image_auroc=0.8, train_seconds=20)],
                results_dir=tmp_path)
    save_result("07_memory_bank", [result_row("PatchCore", "textures/brick", 0.97, 0.95, 0.88, 30.0, 12.5)],
                results_dir=tmp_path)
    (tmp_path / "bench.json").write_text("{}")  # not a lesson: ignored
    return tmp_path


def test_results_table(two_lessons):
    lines = results_table(two_lessons).splitlines()
    assert lines[0].startswith("| lesson | method |") and len(lines) == 4
    assert lines[2] == "| 01_deep_svdd | Deep SVDD | mnist (mean of classes) | 0.850 | – | – | 15.0 | – | cpu |"
    assert lines[3] == "| 07_memory_bank | PatchCore | textures/brick | 0.970 | 0.950 | 0.880 | 30.0 | 12.5 | cpu |"
    per_class = results_table(two_lessons, mean_over_classes=False)
    assert "| mnist/0 | 0.900 |" in per_class and "| mnist/1 | 0.800 |" in per_class


def test_update_readme(two_lessons, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Course\n\nintro\n\n{TABLE_BEGIN}\nold table\n{TABLE_END}\n\nthe end\n")
    assert update_readme(readme, two_lessons) is True
    text = readme.read_text()
    assert "old table" not in text and "| 07_memory_bank | PatchCore |" in text
    assert text.startswith("# Course\n\nintro\n\n") and text.endswith("\n\nthe end\n")
    assert text.count(TABLE_BEGIN) == 1 and text.count(TABLE_END) == 1
    assert update_readme(readme, two_lessons) is False  # unchanged the second time
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, two_lessons)


SYLLABUS = """| # | lesson | cpu min | gpu min |
|---|---|---|---|
| 00 | [primer](notebooks/00_primer.ipynb) | 9 | – |
| 02 | [fcdd](notebooks/02_fcdd.ipynb) | 9 | 9 |
| all | **whole course** | 9 | 9 |"""


def test_syllabus_minutes_come_from_runtimes():
    table = syllabus_with_minutes(SYLLABUS, {"00_primer": {"cpu": 174.0}, "02_fcdd": {"cpu": 1146.0}})
    lines = table.splitlines()
    assert lines[:2] == SYLLABUS.splitlines()[:2]  # header and rule untouched
    assert lines[2] == "| 00 | [primer](notebooks/00_primer.ipynb) | 2.9 | – |"
    assert lines[3] == "| 02 | [fcdd](notebooks/02_fcdd.ipynb) | 19.1 | – |"  # never timed on a gpu: "–"
    assert lines[4] == "| all | **whole course** | 22.0 | – |"  # the sum, where every lesson was timed


def test_update_readme_fills_the_syllabus(two_lessons, tmp_path):
    (two_lessons / "runtimes.json").write_text(json.dumps({"02_fcdd": {"cpu": 600.0, "gpu": 90.0}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{SYLLABUS_BEGIN}\n{SYLLABUS}\n{SYLLABUS_END}\n\n{TABLE_BEGIN}\n{TABLE_END}\n")
    assert update_readme(readme, two_lessons) is True
    assert "| 02 | [fcdd](notebooks/02_fcdd.ipynb) | 10.0 | 1.5 |" in readme.read_text()
    assert "| 00 | [primer](notebooks/00_primer.ipynb) | – | – |" in readme.read_text()
    assert "| all | **whole course** | – | – |" in readme.read_text()  # the primer was never timed


# ----------------------------------------------------------------------------- the course runner's Runtime line

def runtime_notebook(text):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 05 · Demo\n\nintro"), nbformat.v4.new_markdown_cell(text),
                nbformat.v4.new_code_cell("x = 1")]
    return nb


def test_runtime_line_gets_the_measured_minutes():
    from anomaly_utils.course import update_runtime_line
    nb = runtime_notebook("**Runtime** (measured): `smoke` < 1 min · `cpu`\n3.4 min (three models) · "
                          "`gpu` (128 × 128) not\ntimed yet.")
    assert update_runtime_line(nb, "cpu", 150.0)
    assert update_runtime_line(nb, "gpu", 30.0)
    assert nb.cells[1].source == ("**Runtime** (measured): `smoke` < 1 min · `cpu`\n2.5 min (three models) · "
                                  "`gpu` (128 × 128) 0.5 min.")
    assert nb.cells[0].source == "# 05 · Demo\n\nintro"  # other cells untouched


def test_runtime_line_missing_is_reported():
    from anomaly_utils.course import update_runtime_line
    nb = runtime_notebook("**Runtime**: a few minutes.")
    assert not update_runtime_line(nb, "cpu", 60.0)
    assert nb.cells[1].source == "**Runtime**: a few minutes."


def test_summary_table_leads_with_piped(tmp_path, monkeypatch):
    from anomaly_utils.results import summary_table

    monkeypatch.setenv("AD_PROFILE", "cpu")
    rows = [result_row("z-score", "piped/a", 1.0, 0.9, 0.5, 0.1, 1.0, lesson="00"),
            result_row("z-score", "piped/b", 0.8, 0.7, 0.3, 0.3, 3.0, lesson="00"),
            result_row("z-score", "textures/brick", 0.6, 0.6, 0.2, 0.2, 2.0, lesson="00"),
            result_row("PaDiM", "piped/a", 1.0, 0.99, 0.9, 1.0, 10.0, lesson="07"),
            result_row("PaDiM", "piped/b", 1.0, 0.97, 0.8, 1.0, 10.0, lesson="07"),
            result_row("1-NN pixels", "mnist/0", 0.9, None, None, 0.0, 1.0, lesson="00"),
            result_row("1-NN pixels", "mnist/1", 0.7, None, None, 0.0, 1.0, lesson="00")]
    save_result("10_leaderboard", rows, results_dir=tmp_path)
    lines = summary_table(tmp_path).splitlines()
    assert lines[0].startswith("| lesson | method | PIPED image AUROC | PIPED pixel AUROC | PIPED AUPRO | textures")
    assert len(lines) == 5
    # sorted by PIPED AUPRO: PaDiM (0.85), z-score (0.4), then the method without PIPED rows
    assert lines[2] == "| 07 | PaDiM | 1.000 | 0.980 | 0.850 | – | – | – | – | 1.0 | 10.0 | cpu |"
    assert lines[3] == "| 00 | z-score | 0.900 | 0.800 | 0.400 | 0.600 | 0.600 | 0.200 | – | 0.2 | 2.0 | cpu |"
    assert lines[4] == "| 00 | 1-NN pixels | – | – | – | – | – | – | 0.800 | 0.0 | 1.0 | cpu |"


def test_update_readme_fills_the_teaching_schedule(two_lessons, tmp_path):
    (two_lessons / "runtimes.json").write_text(json.dumps({"02_fcdd": {"cpu": 600.0}, "00_primer": {"cpu": 30.0}}))
    readme = tmp_path / "README.md"
    schedule = ("| # | session | covers | cpu min | gpu min |\n|---|---|---|---|---|\n"
                "| 00 | 1. The problem | metrics | – | – |\n| 02 | 2. FCDD | maps | – | – |\n"
                "| all | **2 sessions** | | – | – |")
    readme.write_text(f"{TABLE_BEGIN}\n{TABLE_END}\n\n{SCHEDULE_BEGIN}\n{schedule}\n{SCHEDULE_END}\n")
    assert update_readme(readme, two_lessons) is True
    text = readme.read_text()
    assert "| 00 | 1. The problem | metrics | 0.5 | – |" in text
    assert "| 02 | 2. FCDD | maps | 10.0 | – |" in text
    assert "| all | **2 sessions** | | 10.5 | – |" in text
