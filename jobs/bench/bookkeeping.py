"""``adir bench bookkeeping``: does the restore job's bookkeeping stay flat as rows grow?

For each ``--rows`` N (default 10,000 and 100,000), on a synthetic finished output of N
``method=pinv`` rows committed the way the driver commits them (``results.PartWriter``:
parts of 512 records, compacted every 32 parts):

* **plan** — ``driver.plan``: manifest read and vectorised validation, row keys, preflight;
* **commit** — driver milliseconds per row to take a row from the manifest (made into a
  dict in its batch) and to buffer and commit its record;
* **resume scan** — ``results.scan``: the three columns the resume needs;
* **reducer** — ``reducer.reduce`` over the manifest (summary.parquet/json, report);
* **rerun** — ``adir restore`` on the finished output with nothing to do, in a fresh
  process as a user runs it (interpreter and imports, manifest, preflight, settings check,
  lease, scan, the reducer finding its summary up to date): its wall time and its own
  peak memory (VmHWM), the driver's memory at N rows.

Then **driver overhead per row** on a real Ray run of ``--ray-rows`` pinv rows on 32²
crops with 2 workers: the wall time of the row loop minus the workers' own row seconds
(divided by the workers), per row: what the driver and Ray add around each row. Each
measure is extrapolated linearly to 1,000,000 rows from the two largest sizes; memory is
not linear at small sizes (allocator arenas and library pages are touched as data grows,
then stay), so ``--rows 100000 1000000`` measures the 1M rerun itself. Writes
``bookkeeping.json`` under ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

GOALS = {"rerun_s_1m": 60.0, "reducer_s_1m": 600.0, "driver_overhead_ms_per_row": 2.0, "driver_rss_gb": 1.0}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="outputs/bench/bookkeeping", help="work folder; bookkeeping.json lands here")
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000], help="output sizes (default 10k 100k)")
    p.add_argument("--ray-rows", type=int, default=1000, help="pinv rows of the Ray overhead run (0: skip)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers of the overhead run (default 2)")
    p.add_argument("--model", help="prior spec (default: the shipped prior)")


def _restore_argv(manifest: str, out: str, model: str | None, workers: int = 2) -> list[str]:
    argv = ["--manifest", manifest, "--output", out, "--workers", str(workers), "--set", "metrics=psnr"]
    return argv + (["--set", f"model={model}"] if model else [])


def _restore_args(manifest: str, out: str, model: str | None, workers: int = 2) -> argparse.Namespace:
    from jobs.restore.driver import configure_parser as restore_parser

    p = argparse.ArgumentParser()
    restore_parser(p)
    return p.parse_args(_restore_argv(manifest, out, model, workers))


# ``adir`` in a child that reports its own peak RSS (VmHWM of its memory map) as it exits: a
# child's ru_maxrss also counts the parent's pages it was forked from
_CHILD = """import sys
from jobs.cli import main
code = main(sys.argv[1:])
print("peak-rss-kib", next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
sys.exit(code)
"""


def rerun(argv: list[str]) -> tuple[int, str, float, float]:
    """``adir restore argv`` in a fresh process: (exit code, its output, wall seconds, its
    own peak RSS in GiB)."""
    import jobs

    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(jobs.__file__)))}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "restore", *argv], capture_output=True, text=True,
                          env=env, check=False)
    seconds = time.perf_counter() - start
    reported = proc.stdout.rsplit("peak-rss-kib", 1)[1:]  # absent when the child crashed
    gib = int(reported[0].split()[0]) / 2**20 if reported else float("nan")
    return proc.returncode, proc.stdout + proc.stderr, seconds, gib


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
    """Plan, commit, scan, reduce and rerun times of a finished output of ``n`` rows."""
    from jobs.restore import driver, reducer, results, run_state

    manifest_uri = _manifest(folder, n, photo)
    out = os.path.join(folder, f"out-{n}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    _, manifest, settings = driver.plan(_restore_args(manifest_uri, out, model))
    plan_s = time.perf_counter() - t0
    os.makedirs(out)
    with open(os.path.join(out, run_state.JOB_NAME), "w") as fh:
        json.dump({"settings": settings}, fh, default=str)
    writer = results.PartWriter(out, flush_s=float("inf"))
    t0 = time.perf_counter()
    for i, r in enumerate(manifest.rows()):
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
    summary = reducer.reduce(out, manifest=manifest)
    reduce_s = time.perf_counter() - t0
    code, log, rerun_s, rerun_rss_gb = rerun(_restore_argv(manifest_uri, out, model))
    assert code == 3 and f"{n} already have a result record (resume)" in log, (code, log[-2000:])
    assert len(scanned) == n and summary["rows"] == n, (len(scanned), summary["rows"])
    return {"rows": n, "parts": len(results.part_uris(out)), "plan_s": plan_s, "commit_ms_per_row": 1e3 * commit_s / n,
            "scan_s": scan_s, "reducer_s": reduce_s, "rerun_s": rerun_s, "rerun_rss_gb": rerun_rss_gb}


def measure_ray(folder: str, n: int, workers: int, photo: str, model: str | None) -> dict:
    """Driver overhead per row of a real Ray run of ``n`` pinv rows."""
    from jobs.ray_env import init_ray
    from jobs.restore import driver
    from jobs.restore.pool import run_rows
    from jobs.restore.results import read_results

    manifest = _manifest(folder, n, photo)
    out = os.path.join(folder, f"ray-{n}")
    shutil.rmtree(out, ignore_errors=True)
    job, planned, _ = driver.plan(_restore_args(manifest, out, model, workers))
    ray, started_here = init_ray(None)
    stats: dict = {}
    try:
        _, failed, _ = run_rows(ray, job, planned.rows(), out, stats=stats, total=len(planned))
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
              "extrapolated_1m": {k: extrapolate(sizes, k) for k in ("plan_s", "scan_s", "reducer_s", "rerun_s",
                                                                        "rerun_rss_gb")}}
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
