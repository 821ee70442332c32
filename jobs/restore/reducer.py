"""The reducer: one summary and one report from a job's per-row result records.

It reads ``<out>/results/*.parquet`` (one record per manifest row, ok or failed; schema in
``jobs/restore/results.py``) and writes, under the same output URI and each atomically through
``restore_core.storage.atomic_write_bytes``:

* ``summary.parquet``: every result record in one file (one row per manifest row);
* ``summary.json``: row counts, per (task, method) means of every metric and of the
  seconds per stage, and the failures with their errors;
* ``report.html`` plus its assets under ``report/`` (see ``jobs/restore/report.py``).

It runs after every restore job and on its own (``reduce(uri)``) on any finished or
partial output, so a report exists whatever failed along the way. No Ray here.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.restore.results import METRIC_COLUMNS, RESULT_SCHEMA, SECONDS_COLUMNS, read_results
from restore_core import storage

# metrics where lower is better (pyiqa's ``lower_better``); everything else: higher is better
LOWER_BETTER = {"gmsd", "piqe", "nlpd", "lpips", "niqe", "brisque", "dists", "consistency", "mse"}


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Quality-metric columns that some row filled: the schema's ``METRIC_COLUMNS`` in
    report order, then any extra float column a record carried (a newer pyiqa metric)."""
    extra = [c for c in df.columns if c not in RESULT_SCHEMA.names and pd.api.types.is_numeric_dtype(df[c])]
    return [c for c in (*METRIC_COLUMNS, *extra) if c in df.columns and df[c].notna().any()]


def stage_columns(df: pd.DataFrame) -> list[str]:
    """``seconds_<stage>`` columns some row filled, in pipeline order, ``seconds_total`` last."""
    return [c for c in SECONDS_COLUMNS if c in df.columns and df[c].notna().any()]


def _finite_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def summarise(df: pd.DataFrame) -> dict:
    """The ``summary.json`` content of a results table (see the module docstring)."""
    metrics, seconds = metric_columns(df), stage_columns(df)
    ok = df["status"] == "ok" if len(df) else pd.Series([], dtype=bool)
    groups = []
    for (task, method), g in df.groupby(["task", "method"], sort=True):
        g_ok = g[g["status"] == "ok"]
        groups.append({
            "task": task, "method": method, "rows": int(len(g)), "ok": int(len(g_ok)),
            "failed": int(len(g) - len(g_ok)),
            # means over the rows that finished; a metric missing on every row stays null
            "metrics": {m: _finite_or_none(g_ok[m].mean()) if g_ok[m].notna().any() else None for m in metrics},
            "seconds": {s: _finite_or_none(g_ok[s].mean()) if g_ok[s].notna().any() else None for s in seconds},
        })
    failures = [
        {"image_id": r.image_id, "task": r.task, "method": r.method, "input_uri": r.input_uri,
         "error": r.error or ""}
        for r in df[~ok].sort_values("image_id").itertuples()
    ]
    return {
        "rows": int(len(df)), "ok": int(ok.sum()), "failed": int((~ok).sum()),
        "metrics": metrics, "lower_better": sorted(set(metrics) & LOWER_BETTER),
        "seconds": seconds, "groups": groups, "failures": failures,
        "worker_seconds": _finite_or_none(df["seconds_total"].sum()) if "seconds_total" in df and len(df) else 0.0,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def reduce(output_uri: str, per_group: int = 4) -> dict:
    """Write ``summary.parquet``, ``summary.json`` and ``report.html`` under ``output_uri``
    from its ``results/`` records; returns the summary dict (with ``report_uri`` added).

    ``per_group``: rows per (task, method) shown in the report's image grid.
    """
    from jobs.restore.report import write_report  # matplotlib is imported only when reporting

    df = read_results(output_uri)
    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.atomic_write_bytes(storage.join(output_uri, "summary.parquet"), buf.getvalue())
    summary = summarise(df)
    summary["output_uri"] = output_uri
    summary["report_uri"] = write_report(output_uri, df, summary, per_group=per_group)
    storage.atomic_write_bytes(storage.join(output_uri, "summary.json"),
                               json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary
