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
   whose manifest entry changed since its record is redone.
4. Start ``workers`` actors and stream the rows over them (``jobs.restore.pool``); the
   driver commits the records in batched parts.
5. Run the reducer (``jobs.restore.reducer.reduce``) over the manifest's rows:
   summary.json, summary.parquet, report.html.

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

from jobs.ray_env import init_ray
from jobs.restore import preflight, run_state
from jobs.restore.job_config import build_job_config, load_config_file
from jobs.restore.manifest import read_manifest
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
    """Validate config, manifest, preflight and output settings; returns (job, rows,
    settings), each row with its ``row_key``. Raises AdirError."""
    file_data = load_config_file(args.config) if args.config else {}
    job = build_job_config(file_data, args.overrides, workers=args.workers,
                           gpus_per_worker=args.gpus_per_worker, preset=args.preset)
    rows = preflight.reach("manifest", args.manifest, lambda: read_manifest(args.manifest))
    preflight.check_methods(rows, job)
    preflight.check_paths(job)
    preflight.check_metrics(job.restore)
    storage.filesystem(args.output)  # unknown scheme -> InputError
    preflight.reach("output", args.output, lambda: preflight.probe_output(args.output))
    settings = run_state.run_settings(job)
    if not args.overwrite:
        preflight.reach("output", args.output, lambda: run_state.check_settings(args.output, settings))
    settings_digest = run_state.digest(settings)
    for row in rows:
        row["row_key"] = run_state.row_key(row, settings_digest)
    return job, rows, settings


def resume(args, rows: list[dict]) -> list[dict]:
    """The rows still to do (module docstring, step 3)."""
    if args.overwrite:
        return list(rows)
    done = scan(args.output)
    if args.retry_failed:
        done = done[done["status"] == "ok"]
    keys = dict(zip(done["image_id"], done["row_key"]))
    return [r for r in rows if keys.get(r["image_id"], "") != r["row_key"]]


def _error(message) -> int:
    print(f"adir restore: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(args: argparse.Namespace) -> int:
    try:
        job, rows, settings = plan(args)
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
        return _run(args, job, rows, settings)
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


def _write_job_json(args, job, settings, rows, todo) -> None:
    info = {"manifest": args.manifest, "output": args.output, "config": job.to_dict(), "settings": settings,
            "fingerprint": run_state.digest(settings), "rows": len(rows), "rows_todo": len(todo),
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


def _run(args, job, rows, settings) -> int:
    todo = resume(args, rows)
    storage.makedirs(args.output)
    _write_job_json(args, job, settings, rows, todo)
    skipped = len(rows) - len(todo)
    say(f"{len(rows)} rows in {args.manifest}; {skipped} already have a result record"
        + (" (resume)" if skipped else "") + f"; outputs in {args.output}")
    uncommitted: list[str] = []
    failed_now = 0
    if todo:
        ray, started_here = _start_ray(args.address)
        try:
            start = time.monotonic()
            done, failed_now, uncommitted = run_rows(ray, job, todo, args.output)
            say(f"finished {done} rows in {time.monotonic() - start:.1f}s, {failed_now} failed")
        finally:
            if started_here:
                ray.shutdown()
    if uncommitted:
        say(f"{len(uncommitted)} records could not be committed (storage unreachable); a rerun redoes those rows")
    try:
        from jobs.restore.reducer import reduce

        summary = reduce(args.output, rows=rows)
        n_failed = summary["failed"] + summary["missing"]
        report = summary.get("report_uri") or storage.join(args.output, "report.html")
        say(f"summary: {storage.join(args.output, 'summary.json')}; report: {report}")
        reduced = True
    except Exception:
        traceback.print_exc()
        say("the reducer failed; rerun `adir restore` on the same output to retry it")
        n_failed, reduced = failed_now + len(uncommitted), False
    if n_failed:
        say(f"{n_failed} of {len(rows)} rows failed; see the report's failures section")
        return 3
    if not reduced:
        return 1
    say(f"all {len(rows)} rows ok")
    return 0
