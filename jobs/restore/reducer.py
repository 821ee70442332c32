"""The reducer: one summary and one report from a job's result parts, in one streaming pass.

It reads ``<out>/results/`` (parts of records, schema in ``jobs/restore/results.py``) and
writes, under the same output URI and each atomically through ``storage``:

* ``summary.parquet``: the counted records, one per row;
* ``summary.json``: row counts, per (task, method) means of every metric and of the
  seconds per stage, failures counted by error with the first ``MAX_FAILURES`` listed
  (the full list is ``summary.parquet`` filtered on ``status``), and what else the folder
  holds (records of rows outside the manifest, or made for another version of a row);
* ``report.html`` plus its assets under ``report/`` (see ``jobs/restore/report.py``).

Which records count: with ``manifest`` (the job's ``manifest.Manifest``, with its
``row_key`` column), the latest record of each of its rows whose key matches; without, the
latest record of every id in the folder (``reduce(uri)`` on any output). The work is flat
in the rows: two columns of every part pick the counted records (``Manifest.match``), then each part is read once, its counted rows appended to
``summary.parquet`` and folded into running sums, counters and small samples (the report's
grid rows, the first failures); no table of every row is held.

Nothing new, nothing redone: ``summary.json`` records what it was made from (``inputs``: a
digest of the manifest's ids and row keys, a digest of the part listing, the output URI and
``per_group``). Parts are immutable once committed and every commit or compaction makes a
new name, so when the next ``reduce`` finds the same ``inputs`` (a rerun with nothing to
do) it returns that summary instead of reducing again. A reduction that does run first
removes the old ``summary.json``, so a crash midway never leaves a stale one that matches.
No Ray here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import heapq
import io
import json
import math
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.restore.manifest import Manifest
from jobs.restore.results import (
    METRIC_COLUMNS,
    RESULT_SCHEMA,
    SECONDS_COLUMNS,
    latest_table,
    part_uris,
    read_part,
)
from restore_core import storage

# metrics where lower is better (pyiqa's ``lower_better``); everything else: higher is better
LOWER_BETTER = {"gmsd", "piqe", "nlpd", "lpips", "niqe", "brisque", "dists", "consistency", "mse"}
MAX_FAILURES = 100  # failures listed in summary.json and the report; all are in summary.parquet
FAILURE_KEYS = ("image_id", "task", "method", "input_uri", "error")


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _unified_schema(uris: list[str]) -> pa.Schema:
    """RESULT_SCHEMA plus every extra (float metric) column some part carries."""
    fields = list(RESULT_SCHEMA)
    seen = set(RESULT_SCHEMA.names)
    for uri in uris:
        for field in pq.read_schema(io.BytesIO(storage.read_bytes(uri))):
            if field.name not in seen and pa.types.is_floating(field.type):
                fields.append(field)
                seen.add(field.name)
    return pa.schema(fields)


class _Fold:
    """Running sums per (task, method), failure counters and the small samples."""

    def __init__(self, columns: list[str], per_group: int):
        self.columns, self.per_group = columns, per_group
        self.groups: dict = defaultdict(lambda: {"rows": 0, "ok": 0, "sum": Counter(), "n": Counter()})
        self.errors: Counter = Counter()
        self.first_failures: list = []  # max-heap (negated order) of the MAX_FAILURES smallest ids
        self.samples: dict = defaultdict(list)  # (task, method) -> max-heap of per_group smallest ids
        self.rows = self.ok = 0
        self.filled: set[str] = set()
        self.worker_seconds = 0.0

    def add(self, df: pd.DataFrame) -> None:
        ok = df["status"] == "ok"
        self.rows += len(df)
        self.ok += int(ok.sum())
        self.worker_seconds += float(df["seconds_total"].fillna(0).sum())
        self.filled |= {c for c in self.columns if df[c].notna().any()}
        for (task, method), g in df.groupby(["task", "method"], sort=False):
            acc = self.groups[(task, method)]
            g_ok = g[g["status"] == "ok"]
            acc["rows"] += len(g)
            acc["ok"] += len(g_ok)
            for c in self.columns:
                values = g_ok[c].dropna()
                acc["sum"][c] += float(values.sum())
                acc["n"][c] += len(values)
            for r in g_ok.sort_values("image_id").head(self.per_group).to_dict("records"):
                _push(self.samples[(task, method)], r["image_id"], r, self.per_group)
        failed = df[~ok]
        self.errors.update(failed["error"].fillna("").tolist())
        for r in failed.sort_values("image_id").head(MAX_FAILURES)[list(FAILURE_KEYS)].to_dict("records"):
            _push(self.first_failures, r["image_id"], {k: r.get(k) or "" for k in FAILURE_KEYS}, MAX_FAILURES)

    def sample_frame(self) -> pd.DataFrame:
        rows = [r for heap in self.samples.values() for _, _, r in heap]
        return pd.DataFrame(rows) if rows else RESULT_SCHEMA.empty_table().to_pandas()


def _push(heap: list, key: str, item, cap: int) -> None:
    """Keep the ``cap`` items with the smallest keys (heap of negated keys)."""
    entry = (_Neg(key), id(item), item)
    if len(heap) < cap:
        heapq.heappush(heap, entry)
    elif key < heap[0][0].key:
        heapq.heapreplace(heap, entry)


class _Neg:
    """Reverses string order so ``heapq`` (a min-heap) keeps the largest of the smallest on top."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __lt__(self, other: _Neg) -> bool:
        return self.key > other.key

    def __eq__(self, other) -> bool:
        return self.key == other.key


def _counted(uris: list[str], manifest: Manifest | None) -> tuple[dict[int, np.ndarray], dict]:
    """(part index -> sorted positions of the records counted in it, facts about what else
    the folder holds)."""
    other = {"records_outside_manifest": 0, "records_of_other_row_versions": 0}
    tables = []
    for i, uri in enumerate(uris):
        t = read_part(uri, ("image_id", "row_key"))
        if "row_key" not in t.column_names:  # a part of the previous layout
            t = t.append_column("row_key", pa.nulls(len(t), pa.string()))
        tables.append(t.select(["image_id", "row_key"]).append_column("part", pa.array(np.full(len(t), i)))
                      .append_column("pos", pa.array(np.arange(len(t)))))
    if not tables:
        return {}, other
    latest = latest_table(tables)
    if manifest is not None:
        positions, current = manifest.match(latest.column("image_id"), latest.column("row_key"))
        other["records_outside_manifest"] = int((positions < 0).sum())
        other["records_of_other_row_versions"] = int(((positions >= 0) & ~current).sum())
        latest = latest.filter(pa.array(current))
    part, pos = (latest.column(c).to_numpy() for c in ("part", "pos"))
    order = np.lexsort((pos, part))
    part, pos = part[order], pos[order]
    cuts = np.flatnonzero(np.diff(part)) + 1
    return {int(p[0]): q for p, q in zip(np.split(part, cuts), np.split(pos, cuts)) if len(p)}, other


def summarise(fold: _Fold, manifest_rows: int | None, other: dict) -> dict:
    """The ``summary.json`` content from the folded records (see the module docstring)."""
    metric_order = [*METRIC_COLUMNS, *[c for c in fold.columns if c not in METRIC_COLUMNS and c not in
                                       SECONDS_COLUMNS]]
    metrics = [c for c in metric_order if c in fold.filled]
    seconds = [c for c in SECONDS_COLUMNS if c in fold.filled]
    groups = []
    for (task, method) in sorted(fold.groups):
        acc = fold.groups[(task, method)]

        def mean(c, acc=acc):
            return _finite_or_none(acc["sum"][c] / acc["n"][c]) if acc["n"][c] else None

        groups.append({"task": task, "method": method, "rows": acc["rows"], "ok": acc["ok"],
                       "failed": acc["rows"] - acc["ok"], "metrics": {m: mean(m) for m in metrics},
                       "seconds": {s: mean(s) for s in seconds}})
    failed = fold.rows - fold.ok
    rows = fold.rows if manifest_rows is None else manifest_rows
    return {
        "rows": rows, "ok": fold.ok, "failed": failed, "missing": rows - fold.rows,
        "metrics": metrics, "lower_better": sorted(set(metrics) & LOWER_BETTER), "seconds": seconds,
        "groups": groups,
        "failures": [item for _, _, item in sorted(fold.first_failures, key=lambda e: e[0].key)],
        "failures_listed": min(failed, MAX_FAILURES),
        "failures_by_error": [{"error": e, "rows": n} for e, n in fold.errors.most_common(MAX_FAILURES)],
        "worker_seconds": _finite_or_none(fold.worker_seconds), **other,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _inputs(output_uri: str, uris: list[str], manifest: Manifest | None, per_group: int) -> dict:
    """What a summary is made from (module docstring)."""
    listing = "\n".join(u.rsplit("/", 1)[-1] for u in uris)
    return {"output_uri": output_uri, "per_group": per_group, "manifest": None if manifest is None else
            manifest.digest(), "parts": hashlib.sha256(listing.encode()).hexdigest()[:24]}


def _reusable(output_uri: str, inputs: dict) -> dict | None:
    """The summary on disk when it was made from ``inputs`` and its files are all there."""
    uri = storage.join(output_uri, "summary.json")
    if not storage.exists(uri):
        return None
    try:
        summary = json.loads(storage.read_bytes(uri))
    except ValueError:
        return None
    made = [storage.join(output_uri, "summary.parquet"), summary.get("report_uri") or ""]
    if summary.get("inputs") != inputs or not all(storage.exists(u) for u in made):
        return None
    return summary


def reduce(output_uri: str, manifest: Manifest | None = None, per_group: int = 4) -> dict:
    """Write ``summary.parquet``, ``summary.json`` and ``report.html`` under ``output_uri``
    from its result parts (only ``manifest``'s current records when given), or keep them when
    they were made from the same inputs; returns the summary dict (with ``report_uri``).
    ``per_group``: rows per (task, method) in the grid."""
    from jobs.restore.report import (
        write_report,  # matplotlib is imported only when reporting
    )

    uris = part_uris(output_uri)
    inputs = _inputs(output_uri, uris, manifest, per_group)
    previous = _reusable(output_uri, inputs)
    if previous is not None:
        return previous
    summary_uri = storage.join(output_uri, "summary.json")
    if storage.exists(summary_uri):  # no stale summary.json may outlive a crash below
        fs, path = storage.filesystem(summary_uri)
        fs.rm(path)
    picked, other = _counted(uris, manifest)
    schema = _unified_schema(uris)
    summed = set(METRIC_COLUMNS) | set(SECONDS_COLUMNS)  # plus extra metric columns, not row parameters
    fold = _Fold([f.name for f in schema if pa.types.is_floating(f.type)
                  and (f.name in summed or f.name not in RESULT_SCHEMA.names)], per_group)
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema) as writer:
        for i, uri in enumerate(uris):
            if i not in picked:
                continue
            table = read_part(uri).take(picked[i])
            table = pa.concat_tables([schema.empty_table(), table], promote_options="permissive").select(schema.names)
            writer.write_table(table.cast(schema))
            fold.add(table.to_pandas())
    storage.atomic_write_bytes(storage.join(output_uri, "summary.parquet"), buf.getvalue())
    summary = summarise(fold, None if manifest is None else len(manifest), other)
    summary["output_uri"] = output_uri
    summary["report_uri"] = write_report(output_uri, fold.sample_frame(), summary, per_group=per_group)
    summary["inputs"] = inputs
    storage.atomic_write_bytes(summary_uri, json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary
