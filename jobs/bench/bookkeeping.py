"""``adir bench bookkeeping``: does the restore job's bookkeeping stay flat as rows grow?

For each ``--rows`` N (default 10,000 and 100,000), on a synthetic finished output of N
``method=pinv`` rows committed the way the driver commits them (``results.PartWriter``:
parts of 512 records, compacted every 32 parts):

* **commit** — driver seconds per row to buffer and commit a record;
* **resume scan** — ``results.scan``: the three columns the resume needs;
* **reducer** — ``reducer.reduce`` over the manifest's rows (summary.parquet/json, report);
* **rerun** — ``adir restore`` on the finished output with nothing to do (manifest read and
  validation, preflight, settings check, lease, scan, reducer), the user's wait;

plus the driver's peak memory (RSS). Then **driver overhead per row** on a real Ray run of
``--ray-rows`` pinv rows on 32² crops with 2 workers: the wall time of the row loop minus
the workers' own row seconds (divided by the workers), per row: what the driver and Ray add
around each row. Each measured time is extrapolated linearly to 1,000,000 rows from the two
largest sizes. Writes ``bookkeeping.json`` under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time

GOALS = {"rerun_s_1m": 60.0, "reducer_s_1m": 600.0, "driver_overhead_ms_per_row": 2.0, "driver_rss_gb": 1.0}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="outputs/bench/bookkeeping", help="work folder; bookkeeping.json lands here")
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000], help="output sizes (default 10k 100k)")
    p.add_argument("--ray-rows", type=int, default=1000, help="pinv rows of the Ray overhead run (0: skip)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers of the overhead run (default 2)")
    p.add_argument("--model", help="prior spec (default: the shipped prior)")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _restore_args(manifest: str, out: str, model: str | None, workers: int = 2) -> argparse.Namespace:
    from jobs.restore.driver import configure_parser as restore_parser

    p = argparse.ArgumentParser()
    restore_parser(p)
    argv = ["--manifest", manifest, "--output", out, "--workers", str(workers), "--set", "metrics=psnr"]
    return p.parse_args(argv + (["--set", f"model={model}"] if model else []))


def _manifest(folder: str, n: int, photo: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"manifest-{n}.parquet")
    pq.write_table(pa.table({"image_id": [f"r{i:07d}" for i in range(n)], "input_uri": [photo] * n,
                             "task": ["sr4"] * n, "degrade": [True] * n, "method": ["pinv"] * n,
                             "seed": list(range(n))}), path)
    return path


def measure_size(folder: str, n: int, photo: str, model: str | None) -> dict:
    """Commit, scan, reduce and rerun times of a finished output of ``n`` rows."""
    from jobs.restore import driver, reducer, results, run_state

    manifest = _manifest(folder, n, photo)
    out = os.path.join(folder, f"out-{n}")
    shutil.rmtree(out, ignore_errors=True)
    args = _restore_args(manifest, out, model)
    t0 = time.perf_counter()
    _, rows, settings = driver.plan(args)
    plan_s = time.perf_counter() - t0
    os.makedirs(out)
    with open(os.path.join(out, run_state.JOB_NAME), "w") as fh:
        json.dump({"settings": settings}, fh, default=str)
    writer = results.PartWriter(out, flush_s=float("inf"))
    t0 = time.perf_counter()
    for i, r in enumerate(rows):
        writer.add({k: r[k] for k in ("image_id", "row_key", "task", "method", "seed", "input_uri", "noise_sigma",
                                      "degrade")} | {"status": "ok" if i % 50 else "failed",
                                                     "error": None if i % 50 else f"synthetic error {i % 3}",
                                                     "psnr": 20.0 + i % 7, "seconds_total": 0.01})
    writer.close()
    commit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scanned = results.scan(out)
    scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = reducer.reduce(out, rows=rows)
    reduce_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    code = driver.main(args)
    rerun_s = time.perf_counter() - t0
    assert code == 3 and len(scanned) == n and summary["rows"] == n, (code, len(scanned), summary["rows"])
    return {"rows": n, "parts": len(results.part_uris(out)), "plan_s": plan_s, "commit_ms_per_row": 1e3 * commit_s / n,
            "scan_s": scan_s, "reducer_s": reduce_s, "rerun_s": rerun_s, "rss_gb": _rss_gb()}


def measure_ray(folder: str, n: int, workers: int, photo: str, model: str | None) -> dict:
    """Driver overhead per row of a real Ray run of ``n`` pinv rows."""
    from jobs.ray_env import init_ray
    from jobs.restore import driver
    from jobs.restore.pool import run_rows
    from jobs.restore.results import read_results

    manifest = _manifest(folder, n, photo)
    out = os.path.join(folder, f"ray-{n}")
    shutil.rmtree(out, ignore_errors=True)
    job, rows, _ = driver.plan(_restore_args(manifest, out, model, workers))
    ray, started_here = init_ray(None)
    stats: dict = {}
    try:
        _, failed, _ = run_rows(ray, job, rows, out, stats=stats)
    finally:
        if started_here:
            ray.shutdown()
    busy = float(read_results(out)["seconds_total"].sum())
    overhead = (stats["loop_s"] - busy / workers) / n
    return {"rows": n, "workers": workers, "failed": failed, "ready_s": stats["ready_s"], "loop_s": stats["loop_s"],
            "row_busy_ms": 1e3 * busy / n, "driver_overhead_ms_per_row": 1e3 * overhead}


def extrapolate(sizes: list[dict], key: str, n: int = 1_000_000) -> float | None:
    """Linear extrapolation of ``key`` to ``n`` rows through the two largest sizes."""
    if len(sizes) < 2:
        return None
    a, b = sorted(sizes, key=lambda s: s["rows"])[-2:]
    slope = (b[key] - a[key]) / (b["rows"] - a["rows"])
    return b[key] + slope * (n - b["rows"])


def main(args: argparse.Namespace) -> int:
    import torch

    from restore_core.bundled_photos import random_crops
    from restore_core.images import write_png

    torch.set_num_threads(1)
    folder = os.path.abspath(args.output)
    os.makedirs(folder, exist_ok=True)
    photo = os.path.join(folder, "photo.png")
    write_png(random_crops(("chelsea",), 1, 32, seed=0)[0], photo)
    measure_size(folder, 100, photo, args.model)  # warm-up: one-time imports (matplotlib, pyiqa) not counted
    sizes = []
    for n in sorted(args.rows):
        print(f"[bench bookkeeping] {n} rows …", flush=True)
        sizes.append(measure_size(folder, n, photo, args.model))
        print("  " + ", ".join(f"{k} {v:.3g}" for k, v in sizes[-1].items()), flush=True)
    result = {"sizes": sizes, "goals": GOALS, "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
              "extrapolated_1m": {k: extrapolate(sizes, k) for k in ("scan_s", "reducer_s", "rerun_s", "rss_gb")}}
    if args.ray_rows:
        print(f"[bench bookkeeping] Ray run of {args.ray_rows} pinv rows …", flush=True)
        result["ray"] = measure_ray(folder, args.ray_rows, args.workers, photo, args.model)
        print("  " + ", ".join(f"{k} {v:.3g}" for k, v in result["ray"].items()), flush=True)
    path = os.path.join(folder, "bookkeeping.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result["extrapolated_1m"], indent=2))
    print(path)
    return 0
