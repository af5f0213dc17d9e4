"""The course runner: notebooks carry the metadata JupyterLab writes (so they open unmodified), committed
outputs hold no dead progress bars, and `--no-execute` applies both without running anything."""

import json
import os
import re
import subprocess

import nbformat
import pytest

from anomaly_utils.course import (
    KERNELSPEC,
    WIDGET_VIEW,
    clean_notebook,
    language_info,
    main,
    normalise_metadata,
    run_notebook,
)
from anomaly_utils.profiles import REPO_ROOT

v4 = nbformat.v4
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BAR = "data sets:   0%|          | 0/25 [00:00<?, ?it/s]"


def widget_output(text=BAR):
    return v4.new_output("display_data", data={"text/plain": text, WIDGET_VIEW: {
        "version_major": 2, "version_minor": 0, "model_id": "48595736029f4b188913e1b351462264"}})


def old_notebook():
    nb = v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python", "version": "3.9.0"}, "widgets": {"state": {}},
                   "course": {"keep": True}}
    stderr = ("\rGANomaly:   0%|          | 0/15 [00:00<?, ?it/s]\rGANomaly:  53%|#####3    | 8/15 [00:01<00:01, "
              "6.1it/s]\rGANomaly: 100%|##########| 15/15 [00:02<00:00, 6.3it/s]\n"
              "UserWarning: something worth reading\nloading: 120it [00:01, 99.1it/s]\n")
    nb.cells = [v4.new_markdown_cell("# 99 · Demo"),
                v4.new_code_cell("train()", execution_count=7, outputs=[
                    widget_output(), v4.new_output("stream", name="stderr", text=stderr),
                    v4.new_output("stream", name="stdout", text="241 runs in 12.5 min\n"),
                    widget_output("GANomaly:   0%|          | 0/15 [00:00<?, ?it/s]")]),
                v4.new_code_cell("x = 1", execution_count=9,
                                 outputs=[v4.new_output("stream", name="stderr", text="\r 40%|####  | 2/5 [00:01<00:01]\n")])]
    return nb


def test_normalise_metadata_writes_what_jupyterlab_writes():
    nb = old_notebook()
    normalise_metadata(nb)
    assert nb.metadata["kernelspec"] == {"display_name": "Python 3 (ipykernel)", "language": "python",
                                         "name": "python3"}
    assert nb.metadata["language_info"] == language_info()
    assert nb.metadata["course"] == {"keep": True} and "widgets" not in nb.metadata
    assert nb.nbformat == 4 and nb.nbformat_minor >= 5 and all(c.get("id") for c in nb.cells)
    nbformat.validate(nb)


def test_language_info_is_what_the_kernel_reports():
    """What ipykernel reports for this Python is what JupyterLab copies into the notebook on open."""
    from nbclient import NotebookClient

    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell("1")]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert nb.metadata["language_info"] == language_info()


def test_clean_notebook_drops_dead_progress_bars_and_keeps_the_rest():
    nb = old_notebook()
    clean_notebook(nb)
    first, second = nb.cells[1], nb.cells[2]
    assert first.execution_count == 1 and second.execution_count == 2
    texts = [o.get("text", "") for o in first.outputs]
    assert not any(WIDGET_VIEW in o.get("data", {}) for o in first.outputs)
    assert texts == ["UserWarning: something worth reading\n", "241 runs in 12.5 min\n"]
    assert second.outputs == []  # a stderr stream that held only a bar is gone
    assert nb.metadata["kernelspec"] == KERNELSPEC


def test_the_course_runner_disables_progress_bars_in_the_kernel(tmp_path):
    path = tmp_path / "99_demo.ipynb"
    nb = v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.cells = [v4.new_code_cell("from tqdm.auto import tqdm\nbar = tqdm(range(3), desc='x')\nfor i in bar:\n"
                                 "    pass\nprint('disabled', bar.disable)\nprint(sorted(k for k in globals() "
                                 "if not k.startswith('_')))")]
    nbformat.write(nb, path)
    before = os.environ.get("TQDM_DISABLE")
    run_notebook(path, "smoke")
    assert os.environ.get("TQDM_DISABLE") == before  # the runner's environment is restored
    done = nbformat.read(path, as_version=4)
    outputs = done.cells[0].outputs
    assert not any(WIDGET_VIEW in o.get("data", {}) for o in outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "disabled True" in text
    assert "['In', 'Out', 'bar', 'exit', 'get_ipython', 'i', 'open', 'quit', 'tqdm']" in text  # no name leaked
    assert done.metadata["kernelspec"] == KERNELSPEC


def test_no_execute_cleans_without_running(tmp_path, capsys):
    path = tmp_path / "99_demo.ipynb"
    nb = old_notebook()
    nb.cells.append(v4.new_code_cell("raise SystemExit('this must not run')"))
    nbformat.write(nb, path)
    assert main(["--no-execute", str(path)]) == 0
    done = nbformat.read(path, as_version=4)
    assert done.metadata["kernelspec"] == KERNELSPEC
    assert not any(WIDGET_VIEW in o.get("data", {}) for c in done.cells for o in c.get("outputs", []))
    assert done.cells[-1].outputs == [] and "cleaned" in capsys.readouterr().out
    assert [c.source for c in done.cells] == [c.source for c in nb.cells]
    assert done.cells[1].execution_count == 7 and done.cells[-1].execution_count is None  # counts untouched
    before = path.read_bytes()
    assert main(["--no-execute", str(path)]) == 0 and path.read_bytes() == before  # idempotent
    assert "already clean" in capsys.readouterr().out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_open_unmodified_in_jupyterlab(path):
    """Fails until the notebook is cleaned: `python -m anomaly_utils.course --no-execute` (or a course run)."""
    nb = json.loads(path.read_text())
    assert nb["metadata"].get("kernelspec") == KERNELSPEC, f"{path.name}: run python -m anomaly_utils.course --no-execute"
    info = nb["metadata"].get("language_info", {})
    assert {k: v for k, v in info.items() if k != "version"} == {
        k: v for k, v in language_info().items() if k != "version"}
    assert re.fullmatch(r"3\.\d+\.\d+", info.get("version", ""))  # the Python of the run that made the outputs
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5) and "widgets" not in nb["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_have_no_dead_progress_bars(path):
    """Fails until the notebook is cleaned: `python -m anomaly_utils.course --no-execute` (or a course run)."""
    nb = nbformat.read(path, as_version=4)
    for k, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert WIDGET_VIEW not in out.get("data", {}), f"{path.name} cell {k}: a widget view (a dead progress bar)"
            if out.get("name") == "stderr":
                assert not re.search(r"\d+%\|", out.get("text", "")), f"{path.name} cell {k}: a progress bar on stderr"


def test_make_lab_serves_the_repository_root():
    """The student copies (student/) must open from the lab the README starts."""
    out = subprocess.run(["make", "-n", "lab"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    lab = next(line for line in out.stdout.splitlines() if "jupyter" in line and " lab" in line)
    assert "--ServerApp.root_dir=." in lab and "notebooks/" not in lab.replace("tree/notebooks", "")


def _png(image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_large_png_figures_get_a_palette_and_small_ones_stay_as_they_are():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from anomaly_utils.course import LARGE_PNG, shrink_png

    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((600, 700, 3)) * 255).astype(np.uint8))  # many colours: a large PNG
    large = _png(photo)
    assert len(large) > LARGE_PNG
    shrunk = shrink_png(large)
    assert len(shrunk) < len(large)
    image = Image.open(io.BytesIO(base64.b64decode(shrunk)))
    assert image.mode == "P" and image.size == (700, 600)
    assert shrink_png(shrunk) == shrunk  # cleaning twice changes nothing more
    small = _png(photo.resize((70, 60)))
    assert shrink_png(small) == small


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_stay_under_3_mb(path):
    """Fails when a rerun stored large figures in full colour: `python -m anomaly_utils.course --no-execute`."""
    assert path.stat().st_size < 3_000_000, f"{path.name}: {path.stat().st_size / 1e6:.1f} MB"
