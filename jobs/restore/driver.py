"""``adir restore``: every row of a manifest through a pool of Ray actors, then the reducer.

Order of work:

1. Validate everything before any work (exit 2 with a one-line message): the job config
   (``jobs.restore.job_config``), the manifest (``jobs.restore.manifest``), the methods named in it, that
   methods using neighbours have an index, and that the cluster has the GPUs asked for.
2. Resume: rows that already have a result record under ``--output`` are skipped
   (``--overwrite`` redoes them; ``--retry-failed`` redoes only failed ones).
3. Start ``workers`` actors (``jobs.restore.row.RowRestorer``, sent the validated
   ``JobConfig`` itself). Each loads the prior, the embedder and the index once; a load
   error stops the job with exit 2 before any row.
4. Stream the rows: each actor holds one row at a time and gets the next when it returns,
   so rows spread evenly and progress is exact (rows done/failed, rows/s, ETA, output).
5. Run the reducer (``jobs.restore.reducer.reduce``): summary.json, summary.parquet, report.html.

Why actors and not Ray Data ``map_batches``: both restart a dead actor, but here each row
takes seconds and is its own unit of work and of commit, so a small scheduling loop over
actors gives exact per-row progress, a bounded retry per row and a clean failure record
for a row that keeps killing its worker. ``map_batches`` with whole-CPU actors can also
starve its own coordinator on a small node; the actors here default to
min(1, CPUs / workers) CPUs each, so the pool never starves the driver's tasks.

Worker death: actors are created with ``max_restarts=-1`` and ``max_task_retries`` = 2,
so a row whose worker died is re-run on the restarted actor; a row that still cannot
finish gets a failed record written by the driver. Records are keyed by image_id and
written atomically, so a re-run row replaces its record: no row is lost or counted twice.

Exit codes: 0 every row ok; 3 finished with failed rows (the count printed); 2 usage,
config or manifest error before any work; 1 crash.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import traceback

from jobs.ray_env import forwarded_env, init_ray
from jobs.restore.job_config import build_job_config, load_config_file
from jobs.restore.manifest import read_manifest
from jobs.restore.results import completed_ids, read_results, write_result
from jobs.restore.row import RowRestorer, failed_record
from restore_core import storage
from restore_core.config import PRESETS
from restore_core.errors import ConfigError, InputError, ModelLoadError
from restore_core.methods import get_method

ROW_ATTEMPTS = 3  # first try + max_task_retries


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="Parquet manifest (path or fsspec URI)")
    p.add_argument("--output", required=True, help="output folder (path or fsspec URI)")
    p.add_argument("--config", help="YAML job config (see jobs/restore/job_config.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job or restore key, e.g. --set steps=50 --set index=s3://b/idx")
    p.add_argument("--workers", type=int, help="number of Ray actors (default 2)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (default 0)")
    p.add_argument("--preset", choices=tuple(PRESETS), help="base restore settings")
    p.add_argument("--overwrite", action="store_true", help="redo rows that already have a result record")
    p.add_argument("--retry-failed", action="store_true", help="redo rows whose record says failed")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")


def _say(message: str) -> None:
    print(f"[adir restore] {message}", flush=True)


def _check_methods(rows: list[dict], job) -> None:
    for name in sorted({r["method"] for r in rows}):
        method = get_method(name)  # unknown (or not installed) -> ConfigError
        if getattr(method, "uses_neighbours", False) and not job.index:
            raise ConfigError(f"method {name!r} retrieves neighbours but no index is set; "
                              "pass --set index=URI (build one with adir build-index)")


def _check_paths(job) -> None:
    for key in ("model", "index"):
        uri = getattr(job, key)
        looks_like_path = uri and ("://" in uri or os.path.sep in uri or uri.startswith("."))
        if looks_like_path and not storage.exists(uri):
            raise ModelLoadError(f"{key} not found: {uri}")


def plan(args) -> tuple:
    """Validate config, manifest and output; returns (job, rows, todo). Raises AdirError."""
    file_data = load_config_file(args.config) if args.config else {}
    job = build_job_config(file_data, args.overrides, workers=args.workers,
                           gpus_per_worker=args.gpus_per_worker, preset=args.preset)
    rows = read_manifest(args.manifest)
    _check_methods(rows, job)
    _check_paths(job)
    storage.filesystem(args.output)  # unknown scheme -> InputError
    if args.overwrite:
        skip: set[str] = set()
    elif args.retry_failed:
        skip = completed_ids(args.output, status="ok")
    else:
        skip = completed_ids(args.output)
    todo = [r for r in rows if r["image_id"] not in skip]
    return job, rows, todo


class Progress:
    """Throttled progress lines in the user's terms."""

    def __init__(self, total: int, output: str, every_s: float = 5.0):
        self.total, self.output, self.every_s = total, output, every_s
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            _say(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        return (f"{self.done}/{self.total} rows done ({self.failed} failed), {rate:.2f} rows/s, "
                f"ETA {eta}, outputs in {self.output}")


def _resources(ray, job) -> tuple[float, int]:
    """(num_cpus per actor, torch threads per actor); GPU availability checked here."""
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1.0))
    if job.gpus_per_worker > 0 and float(resources.get("GPU", 0.0)) < job.gpus_per_worker:
        raise ConfigError(f"gpus_per_worker={job.gpus_per_worker} but the Ray cluster has "
                          f"{resources.get('GPU', 0)} GPUs")
    per_worker = job.cpus_per_worker or min(1.0, cpus / job.workers)
    return per_worker, max(1, int(per_worker))


def run_rows(ray, job, todo: list[dict], output: str) -> tuple[int, int]:
    """Stream ``todo`` over the actor pool; returns (rows finished, rows failed)."""
    from ray.exceptions import RayActorError, RayTaskError

    num_cpus, threads = _resources(ray, job)
    actor_cls = ray.remote(RowRestorer).options(
        num_cpus=num_cpus, num_gpus=job.gpus_per_worker, max_restarts=-1, max_task_retries=ROW_ATTEMPTS - 1,
        runtime_env={"env_vars": forwarded_env()})
    n_actors = min(job.workers, len(todo))
    actors = [actor_cls.remote(job, output, threads) for _ in range(n_actors)]
    try:
        ready = ray.get([a.ready.remote() for a in actors])
        for info in ready:
            if info["error"]:
                is_user_error, message = info["error"]
                raise (ModelLoadError if is_user_error else RuntimeError)(f"worker could not start: {message}")
        _say(f"{n_actors} workers ready (pids {', '.join(str(i['pid']) for i in ready)}), "
             f"{num_cpus:g} CPU and {job.gpus_per_worker:g} GPU each; {len(todo)} rows to do")
        progress = Progress(len(todo), output)
        queue = list(reversed(todo))
        in_flight: dict = {}  # ref -> (actor, row)
        for actor in actors:
            if queue:
                row = queue.pop()
                in_flight[actor.run.remote(row)] = (actor, row)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            actor, row = in_flight.pop(done[0])
            try:
                result = ray.get(done[0])
                ok = result["status"] == "ok" and result["record_written"]
            except (RayActorError, RayTaskError) as exc:
                # the worker died on every attempt (or Ray itself failed): a failed record
                message = f"worker died while restoring this row ({ROW_ATTEMPTS} attempts): " \
                          f"{type(exc).__name__}"
                try:
                    write_result(output, failed_record(row, message))
                except Exception:  # noqa: BLE001 - storage down: counted failed, redone on resume
                    pass
                ok = False
            progress.update(ok)
            if queue:
                row = queue.pop()
                in_flight[actor.run.remote(row)] = (actor, row)
        return progress.done, progress.failed
    finally:
        for actor in actors:
            ray.kill(actor)


def _write_job_json(args, job, rows, todo) -> None:
    info = {"manifest": args.manifest, "output": args.output, "config": job.to_dict(), "rows": len(rows),
            "rows_todo": len(todo), "overwrite": bool(args.overwrite),
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "argv": sys.argv}
    storage.atomic_write_bytes(storage.join(args.output, "job.json"),
                               json.dumps(info, indent=2, default=str).encode())


def main(args: argparse.Namespace) -> int:
    try:
        job, rows, todo = plan(args)
    except (ConfigError, InputError, ModelLoadError) as exc:
        print(f"adir restore: error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        return _run(args, job, rows, todo)
    except (ConfigError, ModelLoadError) as exc:  # found while starting the workers: no row ran
        print(f"adir restore: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception:  # noqa: BLE001 - a crash of the job itself
        traceback.print_exc()
        print("adir restore: crashed (see the traceback above); rerun to resume", file=sys.stderr, flush=True)
        return 1


def _run(args, job, rows, todo) -> int:
    storage.makedirs(args.output)
    _write_job_json(args, job, rows, todo)
    skipped = len(rows) - len(todo)
    _say(f"{len(rows)} rows in {args.manifest}; {skipped} already have a result record"
         + (" (resume)" if skipped else "") + f"; outputs in {args.output}")
    failed_now = 0
    if todo:
        ray, started_here = init_ray(args.address)
        try:
            start = time.monotonic()
            done, failed_now = run_rows(ray, job, todo, args.output)
            _say(f"finished {done} rows in {time.monotonic() - start:.1f}s, {failed_now} failed")
        finally:
            if started_here:
                ray.shutdown()
    try:
        df = read_results(args.output)
        ids = {r["image_id"] for r in rows}
        mine = df[df["image_id"].isin(ids)]
        # rows without a record: storage refused it; a rerun redoes them
        n_failed = int((mine["status"] == "failed").sum()) + len(ids) - len(mine)
    except Exception as exc:  # noqa: BLE001 - storage unreachable after the run
        _say(f"cannot read the result records back ({type(exc).__name__}: {exc}); counting this run only")
        n_failed = failed_now
    try:
        from jobs.restore.reducer import reduce

        summary = reduce(args.output)
        report = summary.get("report_uri") or storage.join(args.output, "report.html")
        _say(f"summary: {storage.join(args.output, 'summary.json')}; report: {report}")
        reduced = True
    except Exception:  # noqa: BLE001 - the rows are done; say so and keep their exit code
        traceback.print_exc()
        _say("the reducer failed; rerun `adir restore` on the same output to retry it")
        reduced = False
    if n_failed:
        _say(f"{n_failed} of {len(rows)} rows failed; see the report's failures section")
        return 3
    if not reduced:
        return 1
    _say(f"all {len(rows)} rows ok")
    return 0
