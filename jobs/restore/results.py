"""Per-row result records of a restore job: one Parquet file per manifest row.

A record lives at ``<output>/results/<image_id>.parquet`` and holds one row with the
columns of ``RESULT_SCHEMA`` (see /work/INTERFACES.md): the row's parameters, ``status``
("ok" | "failed") and its one-line ``error``, the relative paths of the written images,
the retrieved neighbours, the quality metrics (named as pyiqa names them, plus
``consistency``; missing ones are null), seconds per stage, and who finished it when.

Why one file per row: the record is the commit point of a row. It is written
atomically (``storage.atomic_write_bytes``) *after* the row's images, so a record implies
complete images, a resumed job skips exactly the rows that have one, and a row that is
processed twice (a task retried after its worker died) overwrites the same object
instead of appearing twice.

Owns the schema and the record I/O; imports only pyarrow/pandas and ``restore_core.storage``.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from restore_core import storage
from restore_core.metrics import DEFAULT_FR, DEFAULT_NR, WEIGHT_FILES

RESULTS_DIR = "results"
STATUSES = ("ok", "failed")
#: Quality-metric columns, in report order: pyiqa names, then the data-consistency error.
METRIC_COLUMNS: tuple[str, ...] = DEFAULT_FR + DEFAULT_NR + tuple(WEIGHT_FILES) + ("consistency",)
SECONDS_COLUMNS: tuple[str, ...] = tuple(
    f"seconds_{s}" for s in ("load", "retrieve", "adapt", "sample", "score", "write", "total"))

RESULT_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
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


def record_uri(output_uri: str, image_id: str) -> str:
    return storage.join(output_uri, RESULTS_DIR, f"{image_id}.parquet")


def _clean(value):
    """NaN/inf floats become null so the reducer's means skip them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_table(record: dict) -> pa.Table:
    """One record as a one-row table of ``RESULT_SCHEMA``; missing columns are null.

    Unknown keys are refused (``ValueError``), except numeric ones, which are kept as
    extra float metric columns (a pyiqa metric this schema does not list yet).
    """
    for key in _REQUIRED:
        if not record.get(key):
            raise ValueError(f"result record needs {key!r}")
    if record["status"] not in STATUSES:
        raise ValueError(f"result status must be one of {STATUSES}, got {record['status']!r}")
    fields = list(RESULT_SCHEMA)
    extra = sorted(set(record) - set(RESULT_SCHEMA.names))
    for key in extra:
        value = record[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"unknown result column {key!r} with non-numeric value {value!r}")
        fields.append(pa.field(key, pa.float64()))
    schema = pa.schema(fields)
    columns = {}
    for field in schema:
        value = _clean(record.get(field.name))
        if field.name in ("neighbour_ids", "neighbour_uris"):
            value = [str(v) for v in (value or [])]
        elif value is not None and pa.types.is_floating(field.type):
            value = float(value)
        elif value is not None and pa.types.is_integer(field.type):
            value = int(value)
        columns[field.name] = [value]
    return pa.Table.from_pydict(columns, schema=schema)


def write_result(output_uri: str, record: dict) -> str:
    """Write ``record`` atomically to ``results/<image_id>.parquet``; returns its URI.

    Call it only after the row's images are written: the record is the row's commit.
    """
    buf = io.BytesIO()
    pq.write_table(to_table(record), buf)
    uri = record_uri(output_uri, record["image_id"])
    storage.atomic_write_bytes(uri, buf.getvalue())
    return uri


def _record_uris(output_uri: str) -> list[str]:
    """Record URIs under ``output_uri``, listed fresh: s3fs/gcsfs cache directory listings
    per process, and records appear while a job runs (written by other processes)."""
    folder = storage.join(output_uri, RESULTS_DIR)
    fs, path = storage.filesystem(folder)
    fs.invalidate_cache(path)
    return storage.listdir(folder, suffix=".parquet")


def _read_one(uri: str) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


def read_results(output_uri: str) -> pd.DataFrame:
    """Every record under ``output_uri`` as one DataFrame sorted by ``image_id``.

    Always has the ``RESULT_SCHEMA`` columns (empty when there are no records), plus any
    extra metric columns some record carries (null where another record lacks them).
    """
    uris = _record_uris(output_uri)
    if not uris:
        return RESULT_SCHEMA.empty_table().to_pandas()
    workers = 1 if storage.is_local(output_uri) else 16  # object stores: overlap round trips
    with ThreadPoolExecutor(workers) as pool:
        tables = list(pool.map(_read_one, uris))
    table = pa.concat_tables(tables, promote_options="default")
    df = table.to_pandas()
    for name in RESULT_SCHEMA.names:  # records written by an older schema
        if name not in df.columns:
            df[name] = None
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def completed_ids(output_uri: str, status: str | None = None) -> set[str]:
    """Ids that have a result record (only those with ``status`` when given).

    Without ``status`` this lists file names only (cheap on object stores).
    """
    uris = _record_uris(output_uri)
    ids = {uri.rsplit("/", 1)[-1][: -len(".parquet")] for uri in uris}
    if status is None or not ids:
        return ids
    df = read_results(output_uri)
    return set(df.loc[df["status"] == status, "image_id"])
