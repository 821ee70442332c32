"""The restore job's actor pool: rows streamed over ``RowRestorer`` actors, records committed in parts.

Each actor restores one row at a time and has ``ROWS_PER_ACTOR`` (2) rows queued, so it
never waits for the driver's round trip between rows (what dominates with millisecond
rows); rows still spread evenly, as the next row goes to the actor that just returned one.
An actor writes a row's images and returns its record; the driver commits the
records in batched parts (``jobs.restore.results.PartWriter``), so the bookkeeping per row
is a list append, not an object write. Once a row's record is committed, the adapter its
actor saved for it (``jobs.restore.row.adapter_uri``: the resume point of a row interrupted
after its adaptation) is deleted, in one batch per part.

Progress inside a row: ``progress`` runs in its own concurrency group (one thread of its
own; ``run`` calls stay one at a time, in order, in the default group), so while ``run``
works on a row, ``progress`` answers with the row's stage and step
(``restore_core.progress``). While it waits, the driver asks every ``PROGRESS_POLL_S``
seconds without waiting for the answers (``LivePoll``), and prints throttled lines
(``Progress``)::

    3/10 rows done (0 failed), 0.01 rows/s; in flight: cat-1 adapting 12/40, dog-2 sampling 60/100;
    ETA 7m40s by work left; outputs in out/

The ETA is the work left, not the rows left (``Progress``): a row's work is its planned
units per stage (``row.row_work``) at measured seconds per unit.

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

import math
import os
import time
from collections.abc import Iterable

from jobs.ray_env import forwarded_env
from jobs.restore.results import PartWriter
from jobs.restore.row import (
    RowRestorer,
    adapter_uri,
    drop_adapters,
    failed_record,
    row_work,
)
from restore_core.errors import AdirError, ConfigError, ModelLoadError

ROW_ATTEMPTS = 3  # first try + max_task_retries
POLL_S = 2.0  # how often a wait checks that the cluster still has a live node
READY_TIMEOUT_S = 600.0  # actors not ready by then: the cluster cannot place them
PROGRESS_POLL_S = 2.0  # how often the driver asks the in-flight rows' actors where they are
PROGRESS_EVERY_S = 5.0  # at most one progress line per this many seconds (and one at the end)
SHOWN_IN_FLIGHT = 4  # in-flight rows named in a progress line; the others are counted
ROWS_PER_ACTOR = 2  # rows sent to an actor ahead of its results: the one it runs and the next
PROGRESS_GROUP = "progress"  # the actors' concurrency group of ``progress``


class RayUnavailable(RuntimeError):
    """The Ray cluster cannot run the job (no live node, actors never placed)."""


def say(message: str) -> None:
    print(f"[adir restore] {message}", flush=True)


def duration(seconds: float) -> str:
    """``45s``, ``7m40s``, ``2h05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Throttled progress lines in the user's terms; the ETA from the work left.

    A row's work is its planned units per stage, in order (``started``: ``row.row_work``,
    adaptation iterations then sampling steps × samples, …), each at a measured rate in
    seconds per unit: the row's own rate for the stage it is in (its live reports,
    ``live``), else the rate of the rows of its method (finished rows' final reports and
    the in-flight rows' live ones), else that of the stage over every method. An in-flight
    row has its stages' units left (a planned stage it skipped, as a resumed adaptation,
    counts 0); each row not dispatched yet the mean planned work of the rows dispatched so
    far (the manifest is streamed: they are not read yet) plus the mean time finished rows
    spent outside their stages (load, retrieve, write, score). With W workers,
    ETA = max(the longest in-flight row, (in-flight work + waiting work) / W); unknown
    ("?") until every stage it needs has a rate.
    """

    def __init__(self, total: int, output: str, workers: int = 1, every_s: float = PROGRESS_EVERY_S):
        self.total, self.output, self.workers, self.every_s = total, output, max(1, workers), every_s
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()
        self.flight: dict[str, dict] = {}  # image_id -> {"method", "plan", "live"}
        self.measured: dict[tuple[str, str], list] = {}  # (method, stage) -> [units, seconds], finished rows
        self.planned: dict[tuple[str, str], int] = {}  # (method, stage) -> units planned by the dispatched rows
        self.dispatched = 0
        self.outside = [0.0, 0]  # seconds finished rows spent outside their stages, their count

    def started(self, image_id: str, method: str, plan: dict[str, int]) -> None:
        """A row was sent to an actor with ``plan`` (units per stage, in order)."""
        self.flight[image_id] = {"method": method, "plan": plan, "live": None}
        self.dispatched += 1
        for stage, units in plan.items():
            self.planned[(method, stage)] = self.planned.get((method, stage), 0) + units

    def live(self, snapshot: dict) -> None:
        """An in-flight row's ``RowProgress.snapshot`` (ignored once the row has ended)."""
        row = self.flight.get(snapshot["image_id"])
        if row is not None:
            row["live"] = snapshot

    def finished(self, image_id: str, snapshot: dict | None, seconds_total: float | None) -> None:
        """A row ended with its final snapshot (None: its worker died) and ``seconds_total``."""
        row = self.flight.pop(image_id, None)
        if row is None or snapshot is None:
            return
        inside = 0.0
        for stage, s in snapshot["stages"].items():
            measured = self.measured.setdefault((row["method"], stage), [0, 0.0])
            measured[0] += s["step"]
            measured[1] += s["seconds"]
            inside += s["seconds"]
        if seconds_total is not None:
            self.outside[0] += max(0.0, seconds_total - inside)
            self.outside[1] += 1

    def update(self, ok: bool) -> None:
        """A row's record was taken (after ``finished``); prints a line when one is due."""
        self.done += 1
        self.failed += 0 if ok else 1
        self.tick(force=self.done == self.total)

    def tick(self, force: bool = False) -> None:
        """Print a line if ``every_s`` seconds passed since the last one (or ``force``)."""
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            say(self.line())

    def _rates(self) -> dict:
        """Seconds per unit by (method, stage) and by stage alone."""
        totals = {key: list(value) for key, value in self.measured.items()}
        for row in self.flight.values():
            for stage, s in (row["live"] or {}).get("stages", {}).items():
                t = totals.setdefault((row["method"], stage), [0, 0.0])
                t[0] += s["step"]
                t[1] += s["seconds"]
        rates, by_stage = {}, {}
        for (method, stage), (units, seconds) in totals.items():
            if units > 0:
                rates[(method, stage)] = seconds / units
            b = by_stage.setdefault(stage, [0, 0.0])
            b[0] += units
            b[1] += seconds
        rates.update({stage: seconds / units for stage, (units, seconds) in by_stage.items() if units > 0})
        return rates

    def _row_left(self, row: dict, rates: dict) -> float | None:
        """Seconds of work left in an in-flight row; None when a rate it needs is unknown."""
        stages = (row["live"] or {}).get("stages", {})
        order = list(row["plan"]) + [s for s in stages if s not in row["plan"]]
        left = 0.0
        for i, stage in enumerate(order):
            if stage in stages:
                s = stages[stage]
                units = s["total"] - s["step"]
                rate = s["seconds"] / s["step"] if s["step"] > 0 else _rate(rates, row["method"], stage)
            elif any(later in stages for later in order[i + 1:]):
                continue  # skipped: a later stage has started
            else:
                units, rate = row["plan"][stage], _rate(rates, row["method"], stage)
            if units > 0:
                if rate is None:
                    return None
                left += units * rate
        return left

    def eta_s(self) -> float | None:
        """Wall seconds until every row is done (class docstring); None while unknown."""
        rates = self._rates()
        lefts = [self._row_left(row, rates) for row in self.flight.values()]
        if None in lefts:
            return None
        waiting = self.total - self.done - len(self.flight)
        per_row = 0.0
        if waiting > 0:
            if not self.dispatched:
                return None
            for (method, stage), units in self.planned.items():
                rate = _rate(rates, method, stage)
                if rate is None:
                    return None
                per_row += units * rate / self.dispatched
            if self.outside[1]:
                per_row += self.outside[0] / self.outside[1]
            elif per_row == 0:
                return None  # rows without stages: known once one has finished
        return max(max(lefts, default=0.0), (sum(lefts) + waiting * per_row) / self.workers)

    def _in_flight(self) -> str:
        shown = []
        for image_id, row in list(self.flight.items())[:SHOWN_IN_FLIGHT]:
            live = row["live"] or {}
            stage = live.get("stage")
            text = f"{image_id} {stage} {live['stages'][stage]['step']}/{live['stages'][stage]['total']}" \
                if stage else f"{image_id} starting"
            shown.append(text + (" (adapter resumed)" if live.get("adapter") == "resumed" else ""))
        more = len(self.flight) - len(shown)
        return ", ".join(shown) + (f" and {more} more" if more else "")

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        text = f"{self.done}/{self.total} rows done ({self.failed} failed), {self.done / elapsed:.2f} rows/s"
        if self.flight:
            text += f"; in flight: {self._in_flight()}"
        eta = self.eta_s()
        text += f"; ETA {duration(eta)} by work left" if eta is not None else "; ETA ? (measuring)"
        return f"{text}; outputs in {self.output}"


def _rate(rates: dict, method: str, stage: str) -> float | None:
    return rates.get((method, stage), rates.get(stage))


class LivePoll:
    """Asks the actors of the in-flight rows for their progress every ``every_s`` seconds
    and hands the answers to ``progress``; never waits for one (an actor that is
    restarting answers later, or its row's own result reports its death)."""

    def __init__(self, ray, progress: Progress, every_s: float):
        self.ray, self.progress, self.every_s = ray, progress, every_s
        self.pending: dict = {}  # ref -> actor asked
        self.last = -math.inf

    def __call__(self, actors) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        if self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in ready:
                self.pending.pop(ref)
                try:
                    snapshot = self.ray.get(ref)
                except self.ray.exceptions.RayError:  # its worker died: the row's own result says so
                    continue
                if snapshot:
                    self.progress.live(snapshot)
        asked = set(self.pending.values())
        for actor in actors:
            if actor not in asked:
                self.pending[actor.progress.options(concurrency_group=PROGRESS_GROUP).remote()] = actor
        self.progress.tick()


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


def wait_any(ray, refs: list, timeout_s: float | None = None, idle=None) -> list:
    """``ray.wait`` for one of ``refs``, checking the cluster (and calling ``idle()``, when
    given) every ``POLL_S`` seconds."""
    start = time.monotonic()
    while True:
        done, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
        if done:
            return done
        check_cluster(ray)
        if idle is not None:
            idle()
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
    actor_cls = ray.remote(concurrency_groups={PROGRESS_GROUP: 1})(RowRestorer).options(  # module docstring
        num_cpus=num_cpus, num_gpus=job.gpus_per_worker, max_restarts=-1, max_task_retries=ROW_ATTEMPTS - 1,
        runtime_env={"env_vars": forwarded_env()})
    total = len(todo) if total is None else total
    n_actors = min(job.workers, total)
    service, index_shards = start_index_servers(job) if total else (None, [])
    actors = [actor_cls.remote(job, output, threads, service) for _ in range(n_actors)]
    adapters: dict[str, str] = {}  # image_id -> the adapter its worker saved or loaded, until committed
    writer = PartWriter(output, on_commit=lambda records: drop_adapters(
        [adapters.pop(r["image_id"]) for r in records if r["image_id"] in adapters]))
    try:
        ready = _start(ray, actors, ready_timeout_s)
        stats["ready_s"] = time.perf_counter() - start
        say(f"{n_actors} workers ready (pids {', '.join(str(i['pid']) for i in ready)}), "
            f"{num_cpus:g} CPU and {job.gpus_per_worker:g} GPU each; {total} rows to do")
        progress = Progress(total, output, workers=n_actors, every_s=PROGRESS_EVERY_S)
        poll = LivePoll(ray, progress, PROGRESS_POLL_S)
        queue = iter(todo)
        in_flight: dict = {}  # ref -> (actor, row)
        lanes: dict = {actor: [] for actor in actors}  # actor -> its rows in order; the first is running

        def begin(row) -> None:  # the row its actor works on now: its planned work joins the ETA
            try:
                plan = row_work(row, job)
            except AdirError:  # the row fails on its worker and says why
                plan = {}
            progress.started(row["image_id"], row["method"], plan)

        def dispatch(actor) -> None:
            row = next(queue, None)
            if row is not None:
                in_flight[actor.run.remote(row)] = (actor, row)
                lanes[actor].append(row)
                if len(lanes[actor]) == 1:
                    begin(row)

        def poll_in_flight() -> None:
            poll([actor for actor, lane in lanes.items() if lane])

        for _ in range(ROWS_PER_ACTOR):
            for actor in actors:
                dispatch(actor)
        while in_flight:
            ref = wait_any(ray, list(in_flight), idle=poll_in_flight)[0]
            actor, row = in_flight.pop(ref)
            lane = lanes[actor]
            head = lane[0] is row
            lane.remove(row)
            if head and lane:
                begin(lane[0])
            snapshot = None
            try:
                record, snapshot = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                check_cluster(ray)  # no live node: the job ends (exit 1), the row is redone on rerun
                # the worker died on every attempt (or Ray itself failed): a failed record
                record = failed_record(row, f"worker died while restoring this row ({ROW_ATTEMPTS} attempts): "
                                            f"{type(exc).__name__}")
            if snapshot is None or snapshot["adapter"]:  # a dead worker may have saved one
                uri = adapter_uri(output, row)
                if uri is not None:
                    adapters[row["image_id"]] = uri
            progress.finished(row["image_id"], snapshot, record.get("seconds_total"))
            writer.add(record)
            progress.update(record["status"] == "ok")
            dispatch(actor)
            poll_in_flight()
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
