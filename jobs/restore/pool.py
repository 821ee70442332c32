"""The restore job's actor pool: rows streamed over ``RowRestorer`` actors, records committed in parts.

Each actor holds one row at a time and gets the next when it returns, so rows spread
evenly and progress is exact (rows done/failed, rows/s, ETA, where the outputs are). An
actor writes a row's images and returns its record; the driver commits the records in
batched parts (``jobs.restore.results.PartWriter``), so the bookkeeping per row is a list
append, not an object write.

Why actors and not Ray Data ``map_batches``: both restart a dead actor, but here each row
takes seconds and is its own unit of work and of commit, so a small scheduling loop over
actors gives exact per-row progress, a bounded retry per row and a clean failure record
for a row that keeps killing its worker. ``map_batches`` with whole-CPU actors can also
starve its own coordinator on a small node; the actors here default to
min(1, CPUs / workers) CPUs each, so the pool never starves the driver's tasks.

Worker death: actors are created with ``max_restarts=-1`` and ``max_task_retries`` = 2, so
a row whose worker died is re-run on the restarted actor; a row that still cannot finish
gets a failed record. A cluster that cannot run the actors (no live node, a raylet that
died) is found by polling while waiting: ``RayUnavailable`` ends the job (exit 1, one
line) instead of a silent hang; committed rows are kept and a rerun resumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from jobs.ray_env import forwarded_env
from jobs.restore.results import PartWriter
from jobs.restore.row import RowRestorer, failed_record
from restore_core.errors import ConfigError, ModelLoadError

ROW_ATTEMPTS = 3  # first try + max_task_retries
POLL_S = 2.0  # how often a wait checks that the cluster still has a live node
READY_TIMEOUT_S = 600.0  # actors not ready by then: the cluster cannot place them


class RayUnavailable(RuntimeError):
    """The Ray cluster cannot run the job (no live node, actors never placed)."""


def say(message: str) -> None:
    print(f"[adir restore] {message}", flush=True)


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
            say(self.line())

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


def check_cluster(ray) -> None:
    """``RayUnavailable`` when no node of the cluster is alive."""
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
    except Exception as exc:
        raise RayUnavailable(f"the Ray cluster stopped answering ({type(exc).__name__})") from None
    if not alive:
        raise RayUnavailable("the Ray cluster has no live node (its raylet died)")


def wait_any(ray, refs: list, timeout_s: float | None = None) -> list:
    """``ray.wait`` for one of ``refs``, checking the cluster every ``POLL_S`` seconds."""
    start = time.monotonic()
    while True:
        done, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
        if done:
            return done
        check_cluster(ray)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise RayUnavailable(f"the workers were not ready after {timeout_s:.0f}s (the cluster cannot "
                                 "place them: not enough CPUs/GPUs or memory?)")


def _start(ray, actors: list, ready_timeout_s: float) -> list[dict]:
    from ray.exceptions import RayActorError

    pending = {a.ready.remote(): a for a in actors}
    infos = []
    while pending:
        for ref in wait_any(ray, list(pending), ready_timeout_s):
            pending.pop(ref)
            try:
                infos.append(ray.get(ref))
            except RayActorError as exc:  # its process or its node died before it was ready
                check_cluster(ray)
                raise RayUnavailable(f"a worker died while starting ({type(exc).__name__}: "
                                     f"{str(exc).strip().splitlines()[0][:200]})") from None
    for info in infos:
        if info["error"]:
            is_user_error, message = info["error"]
            raise (ModelLoadError if is_user_error else RuntimeError)(f"worker could not start: {message}")
    return infos


def start_index_servers(job) -> tuple[str | None, list]:
    """With ``index_servers`` > 0: the index's shard actors, named for the restore actors to
    connect to (``row.load_context``); they take no CPU of their own, as they only answer one
    query per row. Returns (their name, the actors); (None, []) otherwise, when each restore
    actor loads the index itself."""
    if not (job.index and job.index_servers):
        return None, []
    from index_builder.serving import start_shard_servers

    name = f"adir-index-{os.getpid()}"
    fan = start_shard_servers(job.index, job.index_servers, name=name, cpus=0)
    rss = ", ".join(f"{s.get('rss_bytes', 0) / 2**30:.2f}" for s in getattr(fan, "server_stats", []))
    say(f"index served by {len(fan.shards)} shard actors (RSS GiB: {rss})")
    return name, list(fan.shards)


def run_rows(ray, job, todo: Iterable[dict], output: str, ready_timeout_s: float = READY_TIMEOUT_S,
             stats: dict | None = None, total: int | None = None) -> tuple[int, int, list[str]]:
    """Stream ``todo`` (validated rows, a list or an iterator that reads them in batches) over
    the actor pool; ``total`` is their count (``len(todo)`` when omitted). Rows are taken from
    ``todo`` only as actors free up. Returns (rows finished, rows failed, ids whose record
    could not be committed). ``stats``, when given, receives ``ready_s`` (actor start-up)
    and ``loop_s`` (first row sent to last record committed)."""
    stats = {} if stats is None else stats
    start = time.perf_counter()
    from ray.exceptions import RayActorError, RayTaskError

    num_cpus, threads = _resources(ray, job)
    actor_cls = ray.remote(RowRestorer).options(
        num_cpus=num_cpus, num_gpus=job.gpus_per_worker, max_restarts=-1, max_task_retries=ROW_ATTEMPTS - 1,
        runtime_env={"env_vars": forwarded_env()})
    total = len(todo) if total is None else total
    n_actors = min(job.workers, total)
    service, index_shards = start_index_servers(job) if total else (None, [])
    actors = [actor_cls.remote(job, output, threads, service) for _ in range(n_actors)]
    writer = PartWriter(output)
    try:
        ready = _start(ray, actors, ready_timeout_s)
        stats["ready_s"] = time.perf_counter() - start
        say(f"{n_actors} workers ready (pids {', '.join(str(i['pid']) for i in ready)}), "
            f"{num_cpus:g} CPU and {job.gpus_per_worker:g} GPU each; {total} rows to do")
        progress = Progress(total, output)
        queue = iter(todo)
        in_flight: dict = {}  # ref -> (actor, row)
        for actor in actors:
            row = next(queue, None)
            if row is not None:
                in_flight[actor.run.remote(row)] = (actor, row)
        while in_flight:
            ref = wait_any(ray, list(in_flight))[0]
            actor, row = in_flight.pop(ref)
            try:
                record = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                check_cluster(ray)  # no live node: the job ends (exit 1), the row is redone on rerun
                # the worker died on every attempt (or Ray itself failed): a failed record
                record = failed_record(row, f"worker died while restoring this row ({ROW_ATTEMPTS} attempts): "
                                            f"{type(exc).__name__}")
            writer.add(record)
            progress.update(record["status"] == "ok")
            row = next(queue, None)
            if row is not None:
                in_flight[actor.run.remote(row)] = (actor, row)
        uncommitted = writer.close()
        stats["loop_s"] = time.perf_counter() - start - stats["ready_s"]
        return progress.done, progress.failed, uncommitted
    finally:
        writer.close()
        for actor in actors + index_shards:
            try:
                ray.kill(actor)
            except Exception:
                pass
