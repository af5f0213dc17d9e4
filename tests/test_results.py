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


# ----------------------------------------------------------------------------------------- hostile inputs

def test_a_failed_write_keeps_the_previous_results(tmp_path):
    """A write that fails half-way (here: a file-size limit, as a full disk would) leaves the old file intact."""
    import subprocess
    import sys

    code = f"""
import os, resource, signal
from pathlib import Path
os.environ["AD_PROFILE"] = "cpu"
from anomaly_utils.results import result_row, save_result
d = Path({str(tmp_path)!r})
save_result("01_demo", [result_row("kNN", "mnist/0", image_auroc=0.9)], results_dir=d)
good = (d / "01_demo.json").read_text()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (len(good) + 200, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_result("01_demo", [result_row("kNN", f"mnist/{{i}}", image_auroc=0.5) for i in range(300)], results_dir=d)
except OSError as e:
    print("write failed:", e)
assert (d / "01_demo.json").read_text() == good, "the previous results were damaged"
assert sorted(p.name for p in d.iterdir()) == ["01_demo.json"], "a temporary file was left behind"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "write failed" in out.stdout and "ok" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("lesson", ["01 deep svdd", "../01_escape", "01_x/../../escape", "1_primer", "01_Primer",
                                    "01_", "01_primer.json", ""])
@pytest.mark.parametrize("profile", ["cpu", "smoke"])
def test_lesson_names_are_checked(tmp_path, monkeypatch, lesson, profile):
    monkeypatch.setenv("AD_PROFILE", profile)
    out = tmp_path / "results"
    with pytest.raises(ValueError, match="NN_name"):
        save_result(lesson, [result_row("kNN", "mnist/0")], results_dir=out, force=True)
    assert not any(tmp_path.rglob("*.json"))  # nothing written, inside results/ or outside it


def test_numpy_and_torch_numbers_become_plain_json(tmp_path, monkeypatch):
    import numpy as np
    import torch

    monkeypatch.setenv("AD_PROFILE", "cpu")
    rows = [result_row("kNN", "mnist/0", image_auroc=np.float32(0.9), pixel_auroc=torch.tensor(0.8),
                       train_seconds=torch.tensor(1.5, dtype=torch.bfloat16), k=np.int64(3),
                       per_class=np.array([0.5, 0.25]), curve=torch.tensor([[0.0, 1.0]]), flag=np.bool_(True),
                       nested={"a": (np.float64(0.125), torch.tensor(2))})]
    settings = {"kNN": {"textures": {"k": np.int64(3), "sigma": torch.tensor(4.0), "sizes": (64, np.int32(128))}}}
    path = save_result("07_demo", rows, settings=settings, runtime_seconds=np.float64(12.3), results_dir=tmp_path)
    payload = json.loads(path.read_text())
    row = payload["rows"][0]
    assert row["image_auroc"] == 0.9 and row["pixel_auroc"] == 0.8 and row["train_seconds"] == 1.5
    assert row["k"] == 3 and row["per_class"] == [0.5, 0.25] and row["curve"] == [[0.0, 1.0]]
    assert row["flag"] is True and row["nested"] == {"a": [0.125, 2]}
    assert payload["chosen_settings"] == {"kNN": {"textures": {"k": 3, "sigma": 4.0, "sizes": [64, 128]}}}
    assert payload["runtime_seconds"] == 12.3
    with pytest.raises(TypeError, match="row 0"):
        save_result("07_demo", [result_row("kNN", "mnist/0", model=object())], results_dir=tmp_path)


def test_nan_and_inf_are_refused_with_the_row_named(tmp_path, monkeypatch):
    import numpy as np
    import torch

    monkeypatch.setenv("AD_PROFILE", "cpu")
    good = result_row("kNN", "mnist/0", image_auroc=0.9)
    for bad in (float("nan"), np.float32("nan"), torch.tensor(float("inf"))):
        with pytest.raises(ValueError, match=r"row 1 \('kNN' on 'mnist/1'\)\['image_auroc'\] is (nan|inf)"):
            save_result("00_demo", [good, result_row("kNN", "mnist/1", image_auroc=bad)], results_dir=tmp_path)
    with pytest.raises(ValueError, match=r"row 0 .*\['per_class'\]\[1\] is nan"):
        save_result("00_demo", [{**good, "per_class": np.array([0.5, np.nan])}], results_dir=tmp_path)
    with pytest.raises(ValueError, match=r"settings\['kNN'\]\['mnist'\]\['sigma'\] is nan"):
        save_result("00_demo", [good], settings={"kNN": {"mnist": {"sigma": float("nan")}}}, results_dir=tmp_path)
    assert not (tmp_path / "00_demo.json").exists()


def test_a_corrupted_results_file_names_itself_and_the_fix(tmp_path, two_lessons):
    from anomaly_utils.results import chosen_settings, lesson_settings, load_results

    bad = two_lessons / "07_memory_bank.json"
    bad.write_text(bad.read_text()[:50])  # truncated
    for call in (lambda: load_results(two_lessons), lambda: results_table(two_lessons),
                 lambda: chosen_settings("07_memory_bank", "PatchCore", "textures", two_lessons),
                 lambda: lesson_settings("07_memory_bank", "textures", two_lessons)):
        with pytest.raises(ValueError, match="07_memory_bank.json is corrupted or truncated") as e:
            call()
        assert "notebooks/07_memory_bank.ipynb" in str(e.value) and "git checkout" in str(e.value)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="07_memory_bank.json"):
        load_results(two_lessons)
    bad.write_text('{"lesson": "07_memory_bank"}')  # valid JSON, no rows
    with pytest.raises(ValueError, match="07_memory_bank.json has no 'lesson' and 'rows'"):
        load_results(two_lessons)


def test_a_corrupted_runtimes_file_names_itself(two_lessons, tmp_path):
    bad = two_lessons / "07_memory_bank.json"
    bad.unlink()
    (two_lessons / "runtimes.json").write_text('{"02_fcdd": {"cpu": 60')
    readme = tmp_path / "README.md"
    readme.write_text(f"{SYLLABUS_BEGIN}\n{SYLLABUS}\n{SYLLABUS_END}\n\n{TABLE_BEGIN}\n{TABLE_END}\n")
    with pytest.raises(ValueError, match="runtimes.json is corrupted or truncated.*make course"):
        update_readme(readme, two_lessons)


@pytest.mark.parametrize("layout", ["swapped", "twice", "no end", "no begin"])
def test_readme_markers_in_the_wrong_order_are_a_clear_error(two_lessons, tmp_path, layout):
    readme = tmp_path / "README.md"
    text = {"swapped": f"{TABLE_END}\nold\n{TABLE_BEGIN}\n",
            "twice": f"{TABLE_BEGIN}\nold\n{TABLE_END}\n{TABLE_BEGIN}\n{TABLE_END}\n",
            "no end": f"{TABLE_BEGIN}\nold\n", "no begin": f"old\n{TABLE_END}\n"}[layout]
    readme.write_text(text)
    with pytest.raises(ValueError, match="markers") as e:
        update_readme(readme, two_lessons)
    assert str(readme) in str(e.value) and TABLE_BEGIN in str(e.value) and TABLE_END in str(e.value)
    assert readme.read_text() == text  # nothing written
    readme.write_text(f"{TABLE_BEGIN}\n{TABLE_END}\n\n{SCHEDULE_END}\n| 00 | x |\n{SCHEDULE_BEGIN}\n")
    with pytest.raises(ValueError, match="schedule:begin"):
        update_readme(readme, two_lessons)


def test_lesson_settings_ignores_the_new_chosen_settings_shape(tmp_path):
    from anomaly_utils.results import lesson_settings

    grad = {"alpha": 5.0, "lam": 0.15, "n_steps": 40}
    rows = [{"method": "L2-AE-grad", "dataset": "textures/brick", "grad_settings": grad},
            {"method": "L2-AE-grad", "dataset": "piped/PA_X", "grad_settings": {**grad, "alpha": 1.0}}]
    new_shape = {"L2-AE-grad": {"textures": {"alpha": 99.0, "lam": 0.0, "n_steps": 1}},
                 "PatchCore": {"real": {"coreset": 0.1}}}
    (tmp_path / "06_gradient_projection.json").write_text(json.dumps(
        {"lesson": "06_gradient_projection", "notes": "", "chosen_settings": new_shape, "rows": rows}))
    assert lesson_settings("06_gradient_projection", "textures", tmp_path) == {"l2": grad}
    assert lesson_settings("06_gradient_projection", "piped", tmp_path)["l2"]["alpha"] == 1.0


# ----------------------------------------------------------------------------------------- the schedule's sessions

def schedule_notebook(path, words, code_lines, stars, solution_words=0):
    import nbformat

    v4 = nbformat.v4
    nb = v4.new_notebook()
    nb.cells = [v4.new_markdown_cell(" ".join(["word"] * words)),
                v4.new_code_cell("\n".join(f"x{i} = {i}" for i in range(code_lines))),
                v4.new_markdown_cell("## Exercises\n\nOne cell per exercise.")]
    for k, s in enumerate(stars, 1):
        nb.cells += [v4.new_markdown_cell(f"### Exercise {k} {s} Title\n\nDo it.\n\n<details><summary>Hint</summary>"
                                          "a hint</details>"),
                     v4.new_code_cell("# Solution\n" + "y = 1\n" * 50, metadata={"tags": ["solution"]}),
                     v4.new_markdown_cell(" ".join(["answer"] * solution_words), metadata={"tags": ["solution"]})]
    nb.cells.append(v4.new_markdown_cell("## References\n\n1. A paper."))
    nbformat.write(nb, path)


SCHEDULE = ("| # | session | covers | reading min | exercise min | cpu min | gpu min | sessions |\n"
            "|---|---|---|---|---|---|---|---|\n"
            "| 00 | 1. Short | a | – | – | – | – | – |\n"
            "| 01 | 2. Long | b | – | – | – | – | – |\n"
            "| 02 | 3. Untimed | c | – | – | – | – | – |\n"
            "| 03 | 4. Not written yet | d | – | – | – | – | – |\n"
            "| all | **whole course** | | – | – | – | – | – |")


def test_lesson_load_counts_what_a_student_reads(tmp_path):
    from anomaly_utils.results import lesson_load

    schedule_notebook(tmp_path / "00_short.ipynb", words=1000, code_lines=30, stars=["★", "★★★", ""],
                      solution_words=5000)
    load = lesson_load(tmp_path / "00_short.ipynb")
    # 1000 words + the headings, exercise texts and references (answers are not read: 5000 words left out)
    assert 1000 < load["words"] < 1100 and load["code_lines"] == 30
    assert load["reading_min"] == pytest.approx(load["words"] / 200 + 30 / 15)
    assert load["exercises"] == 3 and load["exercise_min"] == 5 + 20 + 10  # ★, ★★★, unmarked


def test_schedule_says_which_lessons_need_two_sessions(tmp_path):
    from anomaly_utils.results import schedule_with_sessions

    schedule_notebook(tmp_path / "00_short.ipynb", words=1000, code_lines=30, stars=["★", "★★"])  # ~7 + 15 min
    schedule_notebook(tmp_path / "01_long.ipynb", words=10000, code_lines=300, stars=["★★"] * 3)  # ~70 + 30 min
    schedule_notebook(tmp_path / "02_untimed.ipynb", words=200, code_lines=0, stars=["★"])
    runtimes = {"00_short": {"cpu": 600.0}, "01_long": {"cpu": 120.0}}
    lines = schedule_with_sessions(SCHEDULE, runtimes, tmp_path).splitlines()
    assert lines[:2] == SCHEDULE.splitlines()[:2]
    assert lines[2] == "| 00 | 1. Short | a | 7 | 15 | – | – | 1 session |"  # 7 + 15 + 10 run = 32 min
    assert lines[3] == "| 01 | 2. Long | b | 70 | 30 | – | – | 2 sessions |"  # 70 + 30 + 2 = 102 > 90
    assert lines[4] == "| 02 | 3. Untimed | c | 1 | 5 | – | – | ≥ 1 session |"  # run time never measured
    assert lines[5] == "| 03 | 4. Not written yet | d | – | – | – | – | – |"
    assert lines[6] == "| all | **whole course** | | 78 | 50 | – | – | ≥ 4 sessions |"


def test_update_readme_fills_reading_minutes_and_sessions(two_lessons, tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    schedule_notebook(nbs / "00_short.ipynb", words=1000, code_lines=30, stars=["★", "★★"])
    schedule_notebook(nbs / "01_long.ipynb", words=10000, code_lines=300, stars=["★★"] * 3)
    schedule_notebook(nbs / "02_untimed.ipynb", words=200, code_lines=0, stars=["★"])
    (two_lessons / "runtimes.json").write_text(json.dumps({"00_short": {"cpu": 600.0}, "01_long": {"cpu": 120.0}}))
    readme = tmp_path / "README.md"
    readme.write_text(f"{TABLE_BEGIN}\n{TABLE_END}\n\n{SCHEDULE_BEGIN}\n{SCHEDULE}\n{SCHEDULE_END}\n")
    assert update_readme(readme, two_lessons, notebooks_dir=nbs) is True
    text = readme.read_text()
    assert "| 00 | 1. Short | a | 7 | 15 | 10.0 | – | 1 session |" in text  # cpu min in its own column
    assert "| 01 | 2. Long | b | 70 | 30 | 2.0 | – | 2 sessions |" in text
    assert "| all | **whole course** | | 78 | 50 | – | – | ≥ 4 sessions |" in text
    assert update_readme(readme, two_lessons, notebooks_dir=nbs) is False


def test_syllabus_minutes_follow_the_header_not_the_position():
    table = ("| # | lesson | cpu min | gpu min | notes |\n|---|---|---|---|---|\n"
             "| 00 | primer | 9 | 9 | keep me |\n| all | **whole course** | 9 | 9 | |")
    lines = syllabus_with_minutes(table, {"00_primer": {"cpu": 120.0}}).splitlines()
    assert lines[2] == "| 00 | primer | 2.0 | – | keep me |" and lines[3] == "| all | **whole course** | 2.0 | – | |"


def test_lesson_load_reads_an_older_numbered_list_of_exercises(tmp_path):
    import nbformat

    from anomaly_utils.results import lesson_load

    v4 = nbformat.v4
    nb = v4.new_notebook()
    nb.cells = [v4.new_markdown_cell("## Summary\n\n1. not an exercise"),
                v4.new_markdown_cell("## Exercises\n\n1. **One.** Do it.\n\n   *Hint:* this."),
                v4.new_code_cell("# Solution (exercise 1)", metadata={"tags": ["solution"]}),
                v4.new_markdown_cell("2. **Two.** Again.\n\n## References\n\n1. A paper.\n2. Another.")]
    nbformat.write(nb, tmp_path / "00_old.ipynb")
    load = lesson_load(tmp_path / "00_old.ipynb")
    assert load["exercises"] == 2 and load["exercise_min"] == 20


def test_results_files_get_ordinary_permissions(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("AD_PROFILE", "cpu")
    umask = os.umask(0o022)
    try:
        path = save_result("00_demo", [result_row("kNN", "mnist/0")], results_dir=tmp_path)
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_capped_runs_write_no_results(tmp_path, monkeypatch):
    # AD_CAP=1 runs a profile with smoke-sized counts: its numbers mean nothing, like a smoke run's
    monkeypatch.setenv("AD_PROFILE", "cpu")
    monkeypatch.setenv("AD_CAP", "1")
    assert save_result("02_fcdd", [result_row("m", "d", image_auroc=0.5)], results_dir=tmp_path) is None
    assert not list(tmp_path.iterdir())
    monkeypatch.delenv("AD_CAP")
    assert save_result("02_fcdd", [result_row("m", "d", image_auroc=0.5)], results_dir=tmp_path).exists()
