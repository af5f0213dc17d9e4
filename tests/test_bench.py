"""make bench: each method runs in a child process; its row comes back, or an error row if the child dies."""

import multiprocessing as mp
import os

from anomaly_utils import bench


def test_child_row_comes_back(monkeypatch):
    def fake_bench_one(name, dataset, repeats, queue):
        queue.put({"method": name, "dataset": dataset, "fit_seconds": float(repeats)})

    monkeypatch.setattr(bench, "_bench_one", fake_bench_one)
    row = bench._bench_in_fresh_process(mp.get_context("fork"), "PaDiM", "textures/brick", 3)
    assert row == {"method": "PaDiM", "dataset": "textures/brick", "fit_seconds": 3.0}


def test_dead_child_gives_an_error_row_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(bench, "_bench_one", lambda *args: os._exit(9))  # as if killed for memory
    row = bench._bench_in_fresh_process(mp.get_context("fork"), "kNN", "mnist/0", 1)
    assert row["method"] == "kNN" and row["dataset"] == "mnist/0"
    assert "exit code 9" in row["error"]


def test_bench_table_shows_errors_and_ratios():
    payload = {"profile": "cpu", "device": "cpu (2 threads)", "repeats": 3, "rows": [
        {"method": "PaDiM", "dataset": "textures/brick", "fit_seconds": 3.39, "images_per_second": 89.4,
         "peak_rss_mb": 1010.2, "inference_over_backbone": 1.1},
        {"method": "kNN", "dataset": "mnist/0", "error": "the benchmark process died with exit code 9"}]}
    lines = bench.bench_table(payload).splitlines()
    assert lines[0] == "Profile `cpu`, cpu (2 threads), median of 3 runs."
    assert lines[4] == "| PaDiM | textures/brick | 3.39 | 89 | 1010 | 1.10 |"
    assert lines[5].startswith("| kNN | mnist/0 | error: the benchmark process died")


class _ListQueue(list):
    put = list.append


def test_coreset_row_times_reference_and_fast_on_the_same_data():
    q = _ListQueue()
    bench._bench_coreset(dict(size=64, n_train=4, n_test=2), q)
    rows = q[0]
    assert [r["method"] for r in rows] == ["PatchCore coreset=reference", "PatchCore coreset=fast"], rows
    assert rows[0]["patches"] == rows[1]["patches"] == 4 * 8 * 8
    assert rows[0]["coreset"] == rows[1]["coreset"] == round(0.1 * 4 * 8 * 8)
    table = bench.coreset_table(rows).splitlines()
    assert rows[0]["same_picks_as_reference"] == 1.0 and rows[1]["same_picks_as_reference"] >= 0.9
    assert table[2].startswith("| reference | textures/brick@64px x4 | 256 -> 26 | 100.0% |")
    assert table[3].startswith("| fast |")


def test_backbone_sees_what_the_wrapped_detector_sees():
    import torch

    from anomaly_utils.lessons.leaderboard import AtSize

    class Inner:
        image_size = None

    images = torch.rand(2, 1, 64, 64)
    assert bench.backbone_input(AtSize(Inner(), 128, 1), images).shape == (2, 1, 128, 128)  # STFPM, RD: 128 px
    inner = Inner()
    inner.image_size = 96  # a memory bank that resizes inside
    assert bench.backbone_input(AtSize(inner, None, 3), images).shape == (2, 3, 96, 96)
    assert bench.backbone_input(object(), images) is images
