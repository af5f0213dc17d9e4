"""``make bench``: time fit and inference of every method on the embedded data, write ``results/bench.json``.

For each method of the leaderboard's registry (``anomaly_utils.lessons.leaderboard.METHODS``) and each
data set it applies to, in a fresh process (so that peak memory is the method's own):

* seconds to fit (median of ``--repeats`` fits),
* images per second at inference (median of ``--repeats`` passes over the test split),
* peak resident memory of the process (MB) and, on CUDA, peak GPU memory,
* for methods on the pretrained backbone: inference time divided by the backbone's own forward time on the
  images the method's backbone sees (the distillation methods, STFPM and Reverse Distillation: 128 px, their
  lesson's size; aim: at most 2x the backbone).

    python -m anomaly_utils.bench [--repeats 3] [--methods kNN PaDiM] [--profile cpu]
    python -m anomaly_utils.bench --only coreset     # only PatchCore's coreset row (224 px, 400 images)

The coreset row fits PatchCore on 400 brick crops (160-px tiles upsampled to 224 px: 313,600 patches, 10 % coreset) with the
reference greedy selection (one update of every point per step) and the fast, lazy one (same selection), in
the same process on the same embedding, and reports each one's fit seconds and test AUROCs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue as queue_module
import re
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


def backbone_input(detector, images: torch.Tensor) -> torch.Tensor:
    """The images a method's backbone sees: after the registry's ``AtSize`` wrapper (its size and channels) and
    the detector's own ``image_size`` (the memory banks resize inside), so the ratio compares like with like."""
    import torch.nn.functional as F

    seen = detector.prepare(images) if hasattr(detector, "prepare") else images
    size = getattr(getattr(detector, "detector", detector), "image_size", None)
    if size is not None and tuple(seen.shape[-2:]) != (size, size):
        seen = F.interpolate(seen, size=(size, size), mode="bilinear", align_corners=False)
    return seen


def _bench_one(name: str, dataset: str, repeats: int, queue) -> None:
    """Runs in a child process: fit and predict one method on one data set, put a dict on ``queue``."""
    try:
        from .lessons.leaderboard import METHODS, bench_data
        from .lessons.leaderboard import family as spec_family

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
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "threads": torch.get_num_threads()}
        if torch.cuda.is_available():
            row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if spec.uses_backbone:
            from .backbones import FeatureExtractor

            device = get_device()
            blocks = spec.settings(spec_family(dataset)).get("blocks") or spec.backbone_blocks  # as the method uses
            backbone = FeatureExtractor(tuple(blocks)).to(device)
            seen = backbone_input(detector, images)

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
    return _run_in_fresh_process(ctx, _bench_one, (name, dataset, repeats), {"method": name, "dataset": dataset})


CORESET_DATA = dict(category="brick", size=224, crop=160, n_train=400, n_test=25)  # 160-px tiles, upsampled


def _bench_coreset(data: dict | None = None, queue=None) -> None:
    """Runs in a child process: PatchCore's reference vs fast coreset on the same 224-px embedding."""
    try:
        from . import metrics
        from .data import load_textures
        from .lessons.memory_bank import PatchCore, PatchEmbedding

        data = {**CORESET_DATA, **(data or {})}
        seed_everything(0)
        train, test = load_textures(data["category"], size=data["size"], crop=min(data["crop"], data["size"]),
                                    n_train=data["n_train"],
                                    n_test_normal=data["n_test"], n_test_defective=data["n_test"])
        embedding = PatchEmbedding()
        start = time.perf_counter()
        train_emb = embedding.batched(train.images)
        embed_s = time.perf_counter() - start
        test_emb = embedding.batched(test.images)
        rows, picks = [], {}
        for impl in ("reference", "fast"):
            det = PatchCore(coreset_ratio=0.1, coreset_impl=impl, embedding=embedding)
            start = time.perf_counter()
            det.build(train_emb)
            build_s = time.perf_counter() - start
            picks[impl] = set(det.coreset_indices.tolist())
            with torch.no_grad():
                scores, maps = det.scores_to_output(det.patch_scores(test_emb), test.image_size)
            rows.append({"method": f"PatchCore coreset={impl}",
                         "dataset": f"textures/{data['category']}@{data['size']}px x{data['n_train']}",
                         "fit_seconds": round(embed_s + build_s, 2), "coreset_seconds": round(build_s, 2),
                         "patches": int(train_emb.shape[0] * train_emb.shape[2] * train_emb.shape[3]),
                         "coreset": len(det.memory_bank),
                         "same_picks_as_reference": round(len(picks[impl] & picks["reference"]) / len(picks[impl]), 4),
                         "image_auroc": round(metrics.image_auroc(test.labels, scores), 4),
                         "pixel_auroc": round(metrics.pixel_auroc(test.masks, maps), 4),
                         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
        queue.put(rows)
    except Exception as err:  # report, do not hide
        queue.put([{"method": "PatchCore coreset", "dataset": "textures@224", "error": f"{type(err).__name__}: {err}"}])


def _run_in_fresh_process(ctx, target, args, fallback: dict):
    """``target(*args, queue)`` in a new process: what it put on the queue, or ``fallback`` with an error if that
    process dies without answering (killed for memory, say) instead of waiting for it forever."""
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:
        try:
            out = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                out = {**fallback, "error": f"the benchmark process died with exit code {proc.exitcode} "
                                            "(out of memory?)"}
                break
    proc.join()
    return out


def coreset_table(rows: list[dict]) -> str:
    """The coreset rows as a markdown table (old vs new selection, same run)."""
    lines = ["| coreset selection | data | patches -> coreset | same picks as reference | coreset s | fit s | "
             "image AUROC | pixel AUROC |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['dataset']} | error: {r['error']} | | | | | |")
            continue
        same = r.get("same_picks_as_reference")
        lines.append(f"| {r['method'].split('=')[-1]} | {r['dataset']} | {r['patches']:,} -> {r['coreset']:,} | "
                     f"{'–' if same is None else f'{same:.1%}'} | "
                     f"{r['coreset_seconds']:.1f} | {r['fit_seconds']:.1f} | {r['image_auroc']:.3f} | "
                     f"{r['pixel_auroc']:.3f} |")
    return "\n".join(lines)


def bench_table(payload: dict) -> str:
    """results/bench.json as the README's markdown table (a row timed with another thread count than the run's
    says so beside its data set)."""
    found = re.search(r"(\d+) threads?", payload.get("device", ""))
    payload_threads = int(found.group(1)) if found else None
    lines = [f"Profile `{payload['profile']}`, {payload['device']}, median of {payload['repeats']} runs.", "",
             "| method | data | fit s | images / s | peak RSS MB | inference / backbone |", "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['dataset']} | error: {r['error']} | | | |")
            continue
        ratio = r.get("inference_over_backbone")
        threads = r.get("threads")
        data = r["dataset"] + (f" ({threads} thread{'s' if threads != 1 else ''})"
                               if threads and threads != payload_threads else "")
        lines.append(f"| {r['method']} | {data} | {r['fit_seconds']:.2f} | {r['images_per_second']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {'–' if ratio is None else f'{ratio:.2f}'} |")
    if payload.get("coreset_rows"):
        lines += ["", "PatchCore's greedy coreset (float32, projection 128), reference loop vs lazy updates "
                  "(same selection up to float rounding), same run:", "", coreset_table(payload["coreset_rows"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--coreset-images", type=int, default=CORESET_DATA["n_train"],
                        help="training images of the coreset row (default 400: 313,600 patches at 224 px)")
    parser.add_argument("--only", choices=["methods", "coreset"], default=None,
                        help="run only the per-method rows or only the coreset row (default: both)")
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
    n = torch.get_num_threads()
    threads = "" if get_device().type == "cuda" else f", {n} thread{'s' if n != 1 else ''}"
    payload = {"profile": get_profile(), "repeats": args.repeats, "statistic": "median",
               "device": machine_description() + threads, "torch": torch.__version__, "rows": []}
    if args.methods and out.exists():  # re-benchmark some methods: keep the other rows of the last run
        previous = json.loads(out.read_text())
        if previous.get("profile") == payload["profile"]:
            payload["rows"] = [r for r in previous["rows"] if r["method"] not in names]
    if out.exists() and not payload["rows"]:
        previous = json.loads(out.read_text())
        if previous.get("profile") == payload["profile"] and args.only == "coreset":
            payload["rows"] = previous["rows"]  # keep the per-method rows of the last run
    if out.exists():
        previous = json.loads(out.read_text())
        if previous.get("profile") == payload["profile"] and args.only == "methods":
            payload["coreset_rows"] = previous.get("coreset_rows", [])
    if out.exists():  # kept rows: their thread count is the one their run recorded
        previous = json.loads(out.read_text())
        found = re.search(r"(\d+) threads?", previous.get("device", ""))
        for r in payload["rows"]:
            if found and "threads" not in r:
                r["threads"] = int(found.group(1))
    rows = payload["rows"]
    if args.only == "coreset":
        names = []
    if args.only != "methods":
        rows_or_error = _run_in_fresh_process(ctx, _bench_coreset, ({"n_train": args.coreset_images},),
                                              {"method": "PatchCore coreset", "dataset": "textures@224"})
        payload["coreset_rows"] = rows_or_error if isinstance(rows_or_error, list) else [rows_or_error]
        for row in payload["coreset_rows"]:
            print(json.dumps(row), flush=True)
        out.write_text(json.dumps(payload, indent=1) + "\n")
    for name in names:
        for dataset in BENCH_DATASETS:
            if dataset.split("/")[0] not in METHODS[name].families:
                continue
            row = _bench_in_fresh_process(ctx, name, dataset, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
            out.write_text(json.dumps(payload, indent=1) + "\n")  # after every row: a long run keeps its rows
    print(f"wrote {out.relative_to(REPO_ROOT)}")
    replace_between(README, "<!-- bench:begin -->", "<!-- bench:end -->", bench_table(payload))
    return 0 if all("error" not in r for r in rows + payload.get("coreset_rows", [])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
