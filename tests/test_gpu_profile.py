"""Every lesson's ``gpu`` configuration, run on the CPU with its counts capped (``AD_PROFILE=gpu AD_CAP=1``).

No GPU has run the gpu profile yet, so its sizes and keys are checked here in CI: a key the gpu dict lacks, a shape
that only the gpu sizes produce (a 256-px feature map, a wider network) fails here, not in a classroom. The rule
that caps the counts is in ``anomaly_utils.profiles`` (module docstring): entries that count things (epochs,
steps, image counts, category lists) take the smoke value, sizes and widths keep the gpu value.

Each notebook runs in its own kernel (nbclient, in a child process), two at a time on a machine with two or more
cores (one inside ``/work/tools/cpu_slot``, or ``AD_GPU_CAP_JOBS=n``), with a scratch results folder and
checkpoint cache: nothing in ``results/``, the README or ``data/cache/`` is touched. Limits: loops that do not go
through ``pick`` (a module-level list of candidates, say) are not capped; on a machine without CUDA every tensor
is on the CPU, so a missing ``.to(device)`` cannot show (where CUDA is present the same test runs on the GPU and
catches it).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu_profile

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TEST = "test_gpu_configuration_runs_capped_on_the_cpu"
ENV = {"AD_PROFILE": "gpu", "AD_CAP": "1", "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}

# Run first in every kernel: results and checkpoints go to a scratch folder (a copy of results/, which the
# leaderboard reads its lessons' chosen settings from), never into the repository.
SCRATCH = '''\
import pathlib, shutil, tempfile
import anomaly_utils.profiles as _profiles, anomaly_utils.results as _results
_scratch = pathlib.Path(tempfile.mkdtemp(prefix="ad_gpu_cap_"))
shutil.copytree(_results.RESULTS_DIR, _scratch / "results")
_results.RESULTS_DIR, _results.README = _scratch / "results", _scratch / "README.md"
_profiles.CACHE_DIR = _scratch / "cache"
'''


def run_notebook(path: Path) -> dict:
    """Execute one notebook (in this process's environment); what failed where, and the seconds it took."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SCRATCH))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start, result = time.perf_counter(), {"ok": True}
    try:
        client.execute()
    except Exception as err:  # CellExecutionError, a dead kernel, a cell timeout
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        for k, cell in enumerate(nb.cells[1:]):
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            if errors:
                plain = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(errors[0].get("traceback", [])))
                result.update(cell=k, source=cell.source.splitlines()[0] if cell.source else "",
                              error=f"{errors[0]['ename']}: {errors[0]['evalue']}", traceback=plain[-2500:])
                break
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def jobs() -> int:
    if os.environ.get("AD_GPU_CAP_JOBS"):
        return max(1, int(os.environ["AD_GPU_CAP_JOBS"]))
    return 1 if os.environ.get("AD_CPU_SLOT") else max(1, min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def outcomes(request):
    """Run the selected notebooks, ``jobs()`` at a time, each in a child process; ``{path: result}``."""
    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", "") == TEST and hasattr(item, "callspec")]
    n = jobs()
    threads = str(max(1, (os.cpu_count() or 1) // n)) if not os.environ.get("AD_CPU_SLOT") else "1"
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    env.pop("AD_DATA", None)
    env.pop("AD_NO_CACHE", None)
    out = Path(tempfile.mkdtemp(prefix="ad_gpu_cap_results_"))

    def one(path):
        target = out / f"{path.stem}.json"
        try:
            subprocess.run([sys.executable, __file__, str(path), str(target)], env=env, timeout=1500,
                           capture_output=True, check=False)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "the notebook did not finish within 25 minutes"}
        return json.loads(target.read_text()) if target.exists() else {"ok": False, "error": "no result"}

    with ThreadPoolExecutor(n) as pool:
        results = dict(zip(selected, pool.map(one, selected)))
    if os.environ.get("AD_GPU_CAP_TIMINGS"):  # a file to append "notebook seconds ok" lines to
        with open(os.environ["AD_GPU_CAP_TIMINGS"], "a") as f:
            for path, r in results.items():
                f.write(f"{path.stem} {r.get('seconds')} {'ok' if r['ok'] else r.get('error', '')[:200]}\n")
    return results


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_gpu_configuration_runs_capped_on_the_cpu(path, outcomes):
    r = outcomes[path]
    if not r["ok"]:
        where = f"cell {r['cell']} ({r['source']!r})" if "cell" in r else "?"
        pytest.fail(f"{path.name} fails in the gpu profile (AD_PROFILE=gpu AD_CAP=1, on the CPU) at {where}: "
                    f"{r['error']}\n{r.get('traceback', '')}", pytrace=False)


if __name__ == "__main__":  # the child process: python tests/test_gpu_profile.py NOTEBOOK RESULT.json
    Path(sys.argv[2]).write_text(json.dumps(run_notebook(Path(sys.argv[1]))))
