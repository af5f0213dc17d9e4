"""``make bench``: time fit and inference of every method on the embedded data, write ``results/bench.json``.

For each method of the leaderboard's registry (``anomaly_utils.lessons.leaderboard.METHODS``) and each
data set it applies to, in a fresh process (so that peak memory is the method's own):

* seconds to fit (median of ``--repeats`` fits),
* images per second at inference (median of ``--repeats`` passes over the test split),
* peak resident memory of the process (MB) and, on CUDA, peak GPU memory,
* for methods on the pretrained backbone: inference time divided by the backbone's own forward time.

    python -m anomaly_utils.bench [--repeats 3] [--methods kNN PaDiM] [--profile cpu]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_module
import resource
import statistics
import time

import torch

from .profiles import REPO_ROOT, get_device, get_profile, machine_description, seed_everything
from .results import README, replace_between


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bench_one(name: str, dataset: str, repeats: int, queue) -> None:
    """Runs in a child process: fit and predict one method on one data set, put a dict on ``queue``."""
    try:
        from .lessons.leaderboard import METHODS, bench_data

        os.environ["AD_NO_CACHE"] = "1"  # time real training, never a checkpoint load
        seed_everything(0)
        spec = METHODS[name]
        train, test = bench_data(dataset)
        images = test.images
        fitted = []
        fit_s = _median_seconds(lambda: fitted.append(spec.make(dataset).fit(train)), repeats)
        detector = fitted[-1]

        def predict_all():
            return [detector.predict(images[i:i + 32]) for i in range(0, len(images), 32)]

        with torch.no_grad():
            detector.predict(images[:8])  # warm-up
            infer_s = _median_seconds(predict_all, repeats)
        row = {"method": name, "dataset": dataset, "fit_seconds": round(fit_s, 3),
               "images_per_second": round(len(images) / infer_s, 2),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        if torch.cuda.is_available():
            row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if spec.uses_backbone:
            from .backbones import FeatureExtractor

            device = get_device()
            backbone = FeatureExtractor(spec.backbone_blocks).to(device)
            # the backbone on the images the method's backbone sees (Resized methods upsample them first)
            seen = detector._resize(images) if hasattr(detector, "_resize") else images

            def backbone_all():
                return [backbone(seen[i:i + 32].to(device)) for i in range(0, len(seen), 32)]

            # backbone and method timed in turn, so that a slow spell of the machine hits both of a pair;
            # the ratio is the median of the pairs' ratios
            pairs = []
            with torch.no_grad():
                backbone(seen[:8].to(device))  # warm-up
                for _ in range(repeats):
                    pairs.append((_median_seconds(backbone_all, 1), _median_seconds(predict_all, 1)))
            backbone_s = statistics.median(b for b, _ in pairs)
            row["backbone_images_per_second"] = round(len(images) / backbone_s, 2)
            row["inference_over_backbone"] = round(statistics.median(m / b for b, m in pairs), 2)
        queue.put(row)
    except Exception as err:  # report, do not hide: the row carries the error
        queue.put({"method": name, "dataset": dataset, "error": f"{type(err).__name__}: {err}"})


def _bench_in_fresh_process(ctx, name: str, dataset: str, repeats: int) -> dict:
    """``_bench_one`` in a new process; a row with an error if that process dies without answering."""
    queue = ctx.Queue()
    proc = ctx.Process(target=_bench_one, args=(name, dataset, repeats, queue))
    proc.start()
    while True:
        try:
            row = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():  # killed (out of memory, say) before it could put its row
                row = {"method": name, "dataset": dataset,
                       "error": f"the benchmark process died with exit code {proc.exitcode} (out of memory?)"}
                break
    proc.join()
    return row


def bench_table(payload: dict) -> str:
    """results/bench.json as the README's markdown table."""
    lines = [f"Profile `{payload['profile']}`, {payload['device']}, median of {payload['repeats']} runs.", "",
             "| method | data | fit s | images / s | peak RSS MB | inference / backbone |", "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['dataset']} | error: {r['error']} | | | |")
            continue
        ratio = r.get("inference_over_backbone")
        lines.append(f"| {r['method']} | {r['dataset']} | {r['fit_seconds']:.2f} | {r['images_per_second']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {'–' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    if args.profile:
        os.environ["AD_PROFILE"] = args.profile
    from .lessons.leaderboard import BENCH_DATASETS, METHODS

    names = args.methods or list(METHODS)
    unknown = set(names) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    ctx = mp.get_context("spawn")
    out = REPO_ROOT / "results" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    threads = "" if get_device().type == "cuda" else f", {torch.get_num_threads()} threads"
    payload = {"profile": get_profile(), "repeats": args.repeats, "statistic": "median",
               "device": machine_description() + threads, "torch": torch.__version__, "rows": []}
    if args.methods and out.exists():  # re-benchmark some methods: keep the other rows of the last run
        previous = json.loads(out.read_text())
        if previous.get("profile") == payload["profile"]:
            payload["rows"] = [r for r in previous["rows"] if r["method"] not in names]
    rows = payload["rows"]
    for name in names:
        for dataset in BENCH_DATASETS:
            if dataset.split("/")[0] not in METHODS[name].data:
                continue
            row = _bench_in_fresh_process(ctx, name, dataset, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write_text(json.dumps(payload, indent=1) + "\n")  # after every row: a long run keeps its rows
    print(f"wrote {out.relative_to(REPO_ROOT)}")
    replace_between(README, "<!-- bench:begin -->", "<!-- bench:end -->", bench_table(payload))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
