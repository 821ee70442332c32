"""``adir restore``: every row of a manifest through a pool of Ray actors, then the reducer.

Order of work:

1. Validate everything before any work (exit 2 with a one-line message): the job config
   (``jobs.restore.job_config``, built once), the manifest (``jobs.restore.manifest``), and
   the preflight checks (``jobs.restore.preflight``: methods, index, model, metric weights,
   storage reachable with the given credentials). A rerun into an output made with other
   settings is refused, naming what differs (``jobs.restore.run_state``), unless
   ``--overwrite``.
2. Take the output's lease (``run_state.Lease``): a second driver on the same output exits
   2 naming the owner, or waits for it with ``--wait``; a stale lease is taken over.
3. Resume: rows whose latest record has their current ``row_key`` are skipped
   (``--overwrite`` redoes every row; ``--retry-failed`` also redoes failed ones). A row
   whose manifest entry changed since its record is redone. The manifest stays columnar
   (``manifest.Manifest``): keys and resume are vectorised over its columns and the
   scan's, giving the positions of the rows to do, not a list of dicts.
4. Start ``workers`` actors and stream the rows over them (``jobs.restore.pool``), made
   into dicts a batch at a time as actors free up; the driver commits the records in
   batched parts.
5. Run the reducer (``jobs.restore.reducer.reduce``) over the manifest's rows:
   summary.json, summary.parquet, report.html (kept as they are when they already describe
   this manifest and these result parts).

Exit codes: 0 every row ok; 3 finished with failed rows (the count printed); 2 usage,
config, manifest, storage or lease error before any work; 1 crash, or a Ray cluster that
cannot run the job (one line; a rerun resumes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
import traceback

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.ray_env import init_ray
from jobs.restore import preflight, run_state
from jobs.restore.job_config import build_job_config, load_config_file
from jobs.restore.manifest import Manifest, load_manifest
from jobs.restore.pool import RayUnavailable, run_rows, say
from jobs.restore.results import scan
from restore_core import storage
from restore_core.config import PRESETS
from restore_core.errors import AdirError, ConfigError, InputError, ModelLoadError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="Parquet manifest (path or fsspec URI)")
    p.add_argument("--output", required=True, help="output folder (path or fsspec URI)")
    p.add_argument("--config", help="YAML job config (see jobs/restore/job_config.py)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a job or restore key, e.g. --set steps=50 --set index=s3://b/idx")
    p.add_argument("--workers", type=int, help="number of Ray actors (default 2)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (default 0)")
    p.add_argument("--preset", choices=tuple(PRESETS), help="base restore settings")
    p.add_argument("--overwrite", action="store_true",
                   help="redo every row (also when the output was made with other settings)")
    p.add_argument("--retry-failed", action="store_true", help="redo rows whose record says failed")
    p.add_argument("--wait", action="store_true", help="wait for another driver on the same output to finish")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray)")


def plan(args) -> tuple:
    """Validate config, manifest, preflight and output settings; returns (job, manifest,
    settings), the manifest with its ``row_key`` column. Raises AdirError."""
    file_data = load_config_file(args.config) if args.config else {}
    job = build_job_config(file_data, args.overrides, workers=args.workers,
                           gpus_per_worker=args.gpus_per_worker, preset=args.preset)
    manifest = preflight.reach("manifest", args.manifest, lambda: load_manifest(args.manifest))
    preflight.check_methods(manifest, job)
    preflight.check_paths(job)
    preflight.check_metrics(job.restore)
    storage.filesystem(args.output)  # unknown scheme -> InputError
    preflight.reach("output", args.output, lambda: preflight.probe_output(args.output))
    settings = run_state.run_settings(job)
    if not args.overwrite:
        preflight.reach("output", args.output, lambda: run_state.check_settings(args.output, settings))
    keys = run_state.row_keys(manifest.table, run_state.digest(settings))
    pa.default_memory_pool().release_unused()  # the validation's temporaries go back to the OS before the scan
    return job, manifest.with_row_keys(keys), settings


def resume(args, manifest: Manifest) -> np.ndarray:
    """Positions of the manifest rows still to do (module docstring, step 3)."""
    if args.overwrite:
        return np.arange(len(manifest))
    done = scan(args.output)
    if args.retry_failed:
        done = done.filter(pc.equal(done.column("status"), "ok"))
    positions, current = manifest.match(done.column("image_id"), done.column("row_key"))
    todo = np.ones(len(manifest), dtype=bool)
    todo[positions[current]] = False
    return np.flatnonzero(todo)


def _error(message) -> int:
    print(f"adir restore: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(args: argparse.Namespace) -> int:
    # Arrow memory freed by the manifest validation and the scans goes back to the OS at once
    # (mimalloc, the default, keeps it cached), so the driver's peak RSS stays that of the data
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        job, manifest, settings = plan(args)
    except AdirError as exc:
        return _error(exc)
    lease = run_state.Lease(args.output)
    try:
        preflight.reach("output", args.output, lambda: lease.acquire(wait=args.wait))
    except AdirError as exc:
        return _error(exc)
    if lease.took_over:
        say(f"took over the stale lease of {run_state.Lease.describe(lease.took_over)}")
    try:
        return _run(args, job, manifest, settings)
    except (ConfigError, InputError, ModelLoadError) as exc:  # found while starting the workers: no row ran
        return _error(exc)
    except RayUnavailable as exc:
        print(f"adir restore: Ray failed: {exc}; committed rows are kept, rerun to resume", file=sys.stderr,
              flush=True)
        return 1
    except Exception:
        traceback.print_exc()
        print("adir restore: crashed (see the traceback above); rerun to resume", file=sys.stderr, flush=True)
        return 1
    finally:
        lease.release()


def _write_job_json(args, job, settings, rows: int, todo: int) -> None:
    info = {"manifest": args.manifest, "output": args.output, "config": job.to_dict(), "settings": settings,
            "fingerprint": run_state.digest(settings), "rows": rows, "rows_todo": todo,
            "overwrite": bool(args.overwrite),
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv}
    storage.atomic_write_bytes(storage.join(args.output, run_state.JOB_NAME),
                               json.dumps(info, indent=2, default=str).encode())


def _start_ray(address):
    try:
        return init_ray(address)
    except Exception as exc:
        raise RayUnavailable(f"could not start or reach Ray ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]})") from None


def _run(args, job, manifest: Manifest, settings) -> int:
    todo = resume(args, manifest)
    n_rows = len(manifest)
    storage.makedirs(args.output)
    _write_job_json(args, job, settings, n_rows, len(todo))
    skipped = n_rows - len(todo)
    say(f"{n_rows} rows in {args.manifest}; {skipped} already have a result record"
        + (" (resume)" if skipped else "") + f"; outputs in {args.output}")
    uncommitted: list[str] = []
    failed_now = 0
    if len(todo):
        ray, started_here = _start_ray(args.address)
        try:
            start = time.monotonic()
            done, failed_now, uncommitted = run_rows(ray, job, manifest.rows(todo), args.output, total=len(todo))
            say(f"finished {done} rows in {time.monotonic() - start:.1f}s, {failed_now} failed")
        finally:
            if started_here:
                ray.shutdown()
    if uncommitted:
        say(f"{len(uncommitted)} records could not be committed (storage unreachable); a rerun redoes those rows")
    try:
        from jobs.restore.reducer import reduce

        summary = reduce(args.output, manifest=manifest)
        n_failed = summary["failed"] + summary["missing"]
        report = summary.get("report_uri") or storage.join(args.output, "report.html")
        say(f"summary: {storage.join(args.output, 'summary.json')}; report: {report}")
        reduced = True
    except Exception:
        traceback.print_exc()
        say("the reducer failed; rerun `adir restore` on the same output to retry it")
        n_failed, reduced = failed_now + len(uncommitted), False
    if n_failed:
        say(f"{n_failed} of {n_rows} rows failed; see the report's failures section")
        return 3
    if not reduced:
        return 1
    say(f"all {n_rows} rows ok")
    return 0
