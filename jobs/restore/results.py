"""Result records of a restore job, committed in batched Parquet parts.

A record is one row of ``RESULT_SCHEMA``: the row's parameters and its ``row_key``
(``jobs.restore.run_state.row_key``), ``status`` ("ok" | "failed") and its one-line
``error``, the relative paths of the written images, the retrieved neighbours, the quality
metrics (named as pyiqa names them, plus ``consistency``; missing ones are null), seconds
per stage, and who finished it when.

Records live in part files ``<output>/results/<ns>-<tag>.parquet``, each written
atomically (``storage.atomic_write_bytes``) by the driver's ``PartWriter`` from the
records its workers return, every ``flush_rows`` records or ``flush_s`` seconds. A worker
writes a row's images *before* returning its record, so a committed record implies
complete images; a row whose record was not committed yet (the driver died) is redone on
resume, rewriting the same images. ``<ns>`` (nanoseconds at commit) orders the parts: when
a row has several records (a retried row, ``--overwrite``), the last committed one counts.
Parts of a previous layout (one ``<image_id>.parquet`` per row) read as the oldest parts.

Why parts and not one file per row: every read of the bookkeeping (the resume scan, the
reducer) costs one object per file, so files per row made each invocation grow with the
rows ever done. ``compact`` merges the small parts into one once there are
``COMPACT_AT`` of them, so the file count stays about rows / ``COMPACT_ROWS`` + COMPACT_AT.

Owns the schema and the record I/O; imports only pyarrow/pandas and ``restore_core``.
"""

from __future__ import annotations

import io
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from restore_core import storage
from restore_core.metrics import DEFAULT_FR, DEFAULT_NR, WEIGHT_FILES

log = logging.getLogger(__name__)

RESULTS_DIR = "results"
STATUSES = ("ok", "failed")
#: Quality-metric columns, in report order: pyiqa names, then the data-consistency error.
METRIC_COLUMNS: tuple[str, ...] = DEFAULT_FR + DEFAULT_NR + tuple(WEIGHT_FILES) + ("consistency",)
SECONDS_COLUMNS: tuple[str, ...] = tuple(
    f"seconds_{s}" for s in ("load", "retrieve", "adapt", "sample", "score", "write", "total"))
SCAN_COLUMNS = ("image_id", "status", "row_key")
COMPACT_AT = 32  # small parts that trigger a compaction
COMPACT_ROWS = 50_000  # parts with fewer rows than this are "small"

RESULT_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("row_key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("method", pa.string()),
        ("task", pa.string()),
        ("noise_sigma", pa.float64()),
        ("seed", pa.int64()),
        ("degrade", pa.bool_()),
        ("input_uri", pa.string()),
        ("gt_uri", pa.string()),
        ("output_path", pa.string()),
        ("observed_path", pa.string()),
        ("gt_path", pa.string()),
        ("neighbour_ids", pa.list_(pa.string())),
        ("neighbour_uris", pa.list_(pa.string())),
    ]
    + [(m, pa.float64()) for m in METRIC_COLUMNS]
    + [(s, pa.float64()) for s in SECONDS_COLUMNS]
    + [
        ("steps", pa.int64()),
        ("iterations", pa.int64()),
        ("stop_reason", pa.string()),
        ("worker_pid", pa.int64()),
        ("finished_at", pa.string()),
    ]
)
_REQUIRED = ("image_id", "status")
_PART = re.compile(r"^(\d{20})-[0-9a-z]+\.parquet$")


def _clean(value):
    """NaN/inf floats become null so the reducer's means skip them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check(record: dict) -> None:
    for key in _REQUIRED:
        if not record.get(key):
            raise ValueError(f"result record needs {key!r}")
    if record["status"] not in STATUSES:
        raise ValueError(f"result status must be one of {STATUSES}, got {record['status']!r}")


def to_table(records: list[dict]) -> pa.Table:
    """Records as a table of ``RESULT_SCHEMA``; missing columns are null.

    Unknown keys are refused (``ValueError``), except numeric ones, which are kept as
    extra float metric columns (a pyiqa metric this schema does not list yet).
    """
    fields = list(RESULT_SCHEMA)
    extra: set[str] = set()
    for record in records:
        _check(record)
        for key in set(record) - set(RESULT_SCHEMA.names):
            value = record[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"unknown result column {key!r} with non-numeric value {value!r}")
            extra.add(key)
    fields += [pa.field(key, pa.float64()) for key in sorted(extra)]
    schema = pa.schema(fields)
    columns = {}
    for field in schema:
        values = [_clean(r.get(field.name)) for r in records]
        if field.name in ("neighbour_ids", "neighbour_uris"):
            values = [[str(v) for v in (value or [])] for value in values]
        elif pa.types.is_floating(field.type):
            values = [None if v is None else float(v) for v in values]
        elif pa.types.is_integer(field.type):
            values = [None if v is None else int(v) for v in values]
        columns[field.name] = values
    return pa.Table.from_pydict(columns, schema=schema)


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _part_uri(output_uri: str, ns: int | None = None) -> str:
    return storage.join(output_uri, RESULTS_DIR, f"{ns or time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")


def write_part(output_uri: str, records: list[dict]) -> str:
    """Commit ``records`` as one part (atomically); returns its URI. Write the rows'
    images first: a committed record is the row's commit."""
    uri = _part_uri(output_uri)
    storage.atomic_write_bytes(uri, _parquet_bytes(to_table(records)))
    return uri


def write_result(output_uri: str, record: dict) -> str:
    """Commit one record (a part of one row)."""
    return write_part(output_uri, [record])


def _order(uri: str) -> tuple[int, str]:
    name = uri.rsplit("/", 1)[-1]
    match = _PART.match(name)
    return (int(match.group(1)) if match else 0, name)


def part_uris(output_uri: str) -> list[str]:
    """Part URIs under ``output_uri``, oldest first, listed fresh (object-store listings
    are cached per process and parts appear while a job runs)."""
    return sorted(storage.listdir(storage.join(output_uri, RESULTS_DIR), suffix=".parquet"), key=_order)


def read_part(uri: str, columns=None) -> pa.Table:
    """One part; only the ``columns`` it has are decoded, when given."""
    file = pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))
    if columns is not None:
        columns = [c for c in columns if c in file.schema_arrow.names]
    return file.read(columns=columns)


def _read_all(uris: list[str], output_uri: str, columns=None) -> list[pa.Table]:
    workers = 1 if storage.is_local(output_uri) else 16  # object stores: overlap round trips
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda u: read_part(u, columns), uris))


def latest_table(tables: list[pa.Table]) -> pa.Table:
    """``tables`` (oldest first) as one table holding the last record of each image_id."""
    if not tables:
        return RESULT_SCHEMA.empty_table()
    table = pa.concat_tables(tables, promote_options="permissive")
    keep = ~table.column("image_id").to_pandas().duplicated(keep="last").to_numpy()
    return table.filter(pa.array(keep))


def _latest(tables: list[pa.Table]) -> pd.DataFrame:
    return latest_table(tables).to_pandas()


def scan(output_uri: str) -> pa.Table:
    """The latest ``image_id, status, row_key`` of every row with a record, as an Arrow
    table (the resume scan: three columns of each part, so it stays cheap when rows grow)."""
    table = latest_table(_read_all(part_uris(output_uri), output_uri, SCAN_COLUMNS))
    if "row_key" not in table.column_names:  # every part is of the previous layout
        table = table.append_column("row_key", pa.nulls(len(table), pa.string()))
    return table.select(list(SCAN_COLUMNS))


def read_results(output_uri: str, ids=None) -> pd.DataFrame:
    """The latest record of every row (only ``ids`` when given) as one DataFrame sorted by
    ``image_id``; always has the ``RESULT_SCHEMA`` columns, plus any extra metric columns
    some record carries (null where another record lacks them)."""
    df = _latest(_read_all(part_uris(output_uri), output_uri))
    if ids is not None:
        df = df[df["image_id"].isin(set(ids))]
    for name in RESULT_SCHEMA.names:  # records written by an older schema
        if name not in df.columns:
            df[name] = None
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def completed_ids(output_uri: str, status: str | None = None) -> set[str]:
    """Ids whose latest record exists (and has ``status`` when given)."""
    table = scan(output_uri)
    if status is not None:
        table = table.filter(pc.equal(table.column("status"), status))
    return set(table.column("image_id").to_pylist())


def compact(output_uri: str, at: int = COMPACT_AT, small_rows: int = COMPACT_ROWS) -> int:
    """Merge the small parts into one when there are ``at`` of them (the merged part
    keeps the position of the newest input, so "last record wins" still holds); returns
    the number of parts merged. The merged part is committed before its inputs are
    deleted, so a crash in between leaves duplicates, which readers resolve."""
    uris = part_uris(output_uri)
    sizes = {u: pq.ParquetFile(io.BytesIO(storage.read_bytes(u))).metadata.num_rows for u in uris}
    small = [u for u in uris if sizes[u] < small_rows]
    if len(small) < at:
        return 0
    merged = latest_table(_read_all(small, output_uri))
    storage.atomic_write_bytes(_part_uri(output_uri, _order(small[-1])[0]), _parquet_bytes(merged))
    fs, _ = storage.filesystem(output_uri)
    for uri in small:
        fs.rm(storage.filesystem(uri)[1])
    return len(small)


class PartWriter:
    """The driver's buffer of returned records: ``add`` commits the first record at once,
    then a part every ``flush_rows`` records or ``flush_s`` seconds; a failed commit keeps
    the records for the next one; ``close`` commits what is left and returns the ids it
    could not. ``on_commit(records)``, when given, is called with the records of each part
    once it is committed (the pool deletes those rows' saved adapters); an error in it is
    logged and leaves the commit standing."""

    def __init__(self, output_uri: str, flush_rows: int = 512, flush_s: float = 10.0,
                 on_commit: Callable[[list[dict]], None] | None = None):
        self.output_uri, self.flush_rows, self.flush_s = output_uri, flush_rows, flush_s
        self.on_commit = on_commit
        self.buffer: list[dict] = []
        self.last = -math.inf
        self.parts = 0

    def add(self, record: dict) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.flush_rows or time.monotonic() - self.last >= self.flush_s:
            self.flush()

    def flush(self) -> bool:
        self.last = time.monotonic()
        if not self.buffer:
            return True
        try:
            write_part(self.output_uri, self.buffer)
        except Exception:
            return False
        committed, self.buffer, self.parts = self.buffer, [], self.parts + 1
        if self.on_commit is not None:
            try:
                self.on_commit(committed)
            except Exception as exc:
                log.warning("after committing %d records: %s: %s", len(committed), type(exc).__name__, exc)
        if self.parts % COMPACT_AT == 0:
            try:
                compact(self.output_uri)
            except Exception:
                pass
        return True

    def close(self) -> list[str]:
        """Commit the rest; the image ids whose records could not be committed."""
        return [] if self.flush() else [r["image_id"] for r in self.buffer]
