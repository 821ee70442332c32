"""``adir bench pipeline`` (P3): does the Ray pipeline scale, and what does it cost?

On the same rows, in one run (same machine load, same seeds):

* **in-process**: one plain Python loop: ``jobs.restore.row.load_context`` once, then
  ``jobs.restore.row.commit_row`` per row (load → retrieve → ``restore_one`` → score → write),
  one torch thread — exactly what one Ray actor runs, without Ray;
* **ray ×1** and **ray ×2**: ``jobs.restore.pool.run_rows`` with 1 and 2 actors (one CPU and
  one torch thread each), the code path of ``adir restore``.

Two clocks: **wall** counts from the start of a run (actor start-up, model + index load
included, as a user waits for it) to its last record; **busy** is the run's makespan from
the records alone (the largest per-worker sum of row seconds), i.e. the steady-state
throughput a long manifest approaches, where start-up is amortised. Ray's own start-up
(``ray.init``, once) is reported apart. Goals: ray ×2 / ray ×1 ≥ 1.8 rows/s, ray ×1 /
in-process ≥ 0.9. The seconds per stage
(load, retrieve, adapt, sample, score, write) come from the result records. Rows are
held-out photo crops degraded with ``--task``, restored with ``--method`` on the demo's
index (``jobs.demo.build_corpus_index``); the restored PNGs of the three runs are
compared byte for byte (same seed → same output). Writes ``pipeline.json`` under
``--output``. On a shared machine, the load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time

TIMED_STAGES = ("load", "retrieve", "adapt", "sample", "score", "write", "total")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="outputs/bench/pipeline", help="work folder; pipeline.json lands here")
    p.add_argument("--rows", type=int, default=4, help="manifest rows restored by each run (default 4)")
    p.add_argument("--task", default="sr4", help="operator of every row (default sr4)")
    p.add_argument("--method", default="adir", help="method of every row (default adir)")
    p.add_argument("--corpus", type=int, default=120, help="training crops in the index (default 120)")
    p.add_argument("--model", help="diffusion prior spec (default: the shipped models/prior)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="restore overrides on top of the fast preset (default k=8, steps=50, adapt_iters=20, adapt_crop=32)")


def _record_times(output: str) -> tuple[dict, float]:
    """(mean seconds per stage over ok rows, busy seconds): busy is the largest sum of
    per-row seconds over the workers, i.e. the run's makespan without start-up."""
    from jobs.restore.results import read_results

    df = read_results(output)
    ok = df[df["status"] == "ok"]
    stages = {s: float(ok[f"seconds_{s}"].mean()) if len(ok) else None for s in TIMED_STAGES}
    busy = float(df.groupby("worker_pid")["seconds_total"].sum().max()) if len(df) else 0.0
    return stages, busy


def _digests(output: str, rows: list[dict]) -> dict[str, str]:
    from jobs.restore.row import image_path

    out = {}
    for row in rows:
        path = os.path.join(output, image_path("restored", row["image_id"]))
        out[row["image_id"]] = hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.exists(path) else ""
    return out


def _in_process(job, rows: list[dict], output: str) -> float:
    import torch

    from jobs.restore.row import commit_row, load_context

    torch.set_num_threads(1)  # what each Ray actor gets on this machine (1 CPU per actor)
    start = time.perf_counter()
    ctx = load_context(job)
    for row in rows:
        commit_row(row, ctx, output)
    return time.perf_counter() - start


def _ray(ray, job, rows: list[dict], output: str) -> float:
    from jobs.restore.pool import run_rows

    start = time.perf_counter()
    run_rows(ray, job, rows, output)
    return time.perf_counter() - start


def main(args: argparse.Namespace) -> int:
    import dataclasses

    import pandas as pd

    from jobs.demo import build_corpus_index, heldout_crops, sample_size
    from jobs.ray_env import init_ray
    from jobs.restore.job_config import build_job_config
    from jobs.restore.manifest import validate_rows

    output = os.path.abspath(args.output)
    side = sample_size(args.model)
    index_uri = build_corpus_index(output, args.corpus, side, workers=2)
    crops = heldout_crops(os.path.join(output, "inputs", "heldout"), args.rows, side)
    rows = validate_rows(pd.DataFrame([
        {"image_id": f"{crop_id}.{args.task}.{args.method}", "input_uri": path, "task": args.task,
         "degrade": True, "method": args.method, "seed": i} for i, (crop_id, path) in enumerate(crops)]))
    overrides = ["k=8", "steps=50", "adapt_iters=20", "adapt_crop=32", *args.overrides, f"index={index_uri}"]
    if args.model:
        overrides.append(f"model={args.model}")
    job = build_job_config(None, overrides, preset="fast", workers=1)

    runs: dict[str, dict] = {}
    load_before = os.getloadavg()
    out = os.path.join(output, "runs", "in_process")
    print(f"[bench pipeline] {len(rows)} rows, in-process loop …", flush=True)
    runs["in_process"] = {"wall_s": _in_process(job, rows, out), "output": out}
    t0 = time.perf_counter()
    ray, started_here = init_ray(None)
    ray_init_s = time.perf_counter() - t0
    try:
        for workers in (1, 2):
            out = os.path.join(output, "runs", f"ray_x{workers}")
            print(f"[bench pipeline] {len(rows)} rows, Ray with {workers} worker(s) …", flush=True)
            wall = _ray(ray, dataclasses.replace(job, workers=workers), rows, out)
            runs[f"ray_x{workers}"] = {"wall_s": wall, "output": out}
    finally:
        if started_here:
            ray.shutdown()
    digests = {name: _digests(r["output"], rows) for name, r in runs.items()}
    for name, r in runs.items():
        r["rows_per_s"] = len(rows) / r["wall_s"]
        r["seconds_per_stage"], r["busy_s"] = _record_times(r["output"])
        r["busy_rows_per_s"] = len(rows) / r["busy_s"]
        r["rows_ok"] = sum(bool(d) for d in digests[name].values())
    result = {
        "rows": len(rows), "task": args.task, "method": args.method, "sample_size": side,
        "restore_config": job.restore.to_dict(), "ray_init_s": ray_init_s,
        "speedup_2_vs_1_workers": runs["ray_x2"]["rows_per_s"] / runs["ray_x1"]["rows_per_s"],
        "ray_x1_vs_in_process": runs["ray_x1"]["rows_per_s"] / runs["in_process"]["rows_per_s"],
        "busy_speedup_2_vs_1_workers": runs["ray_x2"]["busy_rows_per_s"] / runs["ray_x1"]["busy_rows_per_s"],
        "busy_ray_x1_vs_in_process": runs["ray_x1"]["busy_rows_per_s"] / runs["in_process"]["busy_rows_per_s"],
        "goals": {"speedup_2_vs_1_workers": 1.8, "ray_x1_vs_in_process": 0.9},
        "identical_outputs": len({tuple(sorted(d.items())) for d in digests.values()}) == 1,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count(),
        "runs": runs,
    }
    path = os.path.join(output, "pipeline.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\n{'run':<12}{'wall s':>9}{'rows/s':>9}{'busy s':>9}{'rows/s':>9}  mean s/row:"
          + "".join(f"{s:>9}" for s in TIMED_STAGES))
    for name, r in runs.items():
        stages = "".join(f"{(r['seconds_per_stage'][s] or 0):>9.2f}" for s in TIMED_STAGES)
        print(f"{name:<12}{r['wall_s']:>9.1f}{r['rows_per_s']:>9.3f}{r['busy_s']:>9.1f}"
              f"{r['busy_rows_per_s']:>9.3f}  {'':11}{stages}")
    print(f"\n2 workers vs 1: {result['speedup_2_vs_1_workers']:.2f}x wall, "
          f"{result['busy_speedup_2_vs_1_workers']:.2f}x busy (goal >= 1.8); "
          f"Ray x1 vs in-process: {result['ray_x1_vs_in_process']:.2f}x wall, "
          f"{result['busy_ray_x1_vs_in_process']:.2f}x busy (goal >= 0.9); "
          f"identical outputs: {result['identical_outputs']}; ray.init {ray_init_s:.1f}s; "
          f"load average {load_before[0]:.1f} -> {result['loadavg_after'][0]:.1f} on {os.cpu_count()} CPUs")
    print(path)
    return 0
