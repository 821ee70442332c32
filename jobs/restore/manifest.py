"""Restoration manifests: reading, validating and writing them (``adir make-manifest``).

A manifest is one Parquet file with one row per image:

============  ========  ==========================================================
column        required  meaning
============  ========  ==========================================================
image_id      yes       unique; only ``[A-Za-z0-9._-]`` (it names the output files,
                        so anything else, e.g. ``../x``, is refused)
input_uri     yes       fsspec URI of the image
task          yes       operator spec: ``sr4``, ``deblur_gauss:sigma=3``, … (see
                        ``restore_core.operators``)
gt_uri        no        ground truth for production rows (``degrade=false``)
degrade       no        true: input is clean, y = A(x) + noise made with ``seed``
                        (benchmark mode, GT = input); false (default): input *is* y
noise_sigma   no        σ on the 0–255 scale (default 0)
method        no        a method of the registry (``restore_core.methods``): adir
                        (default), pinv, gd, ia_y, shred, diip, indi, …
seed          no        integer ≥ 0 (default 0): degradation noise and sampling
k, steps      no        per-row overrides of the config (null = job config)
prompt        no        text prompt of ``sd_edit`` / ``adir_edit`` rows (and of the
                        x4 upscaler, empty by default); null = the job's ``sd.prompt``
mask_uri      no        ``edit`` rows: image of the input's size, white = the region
                        to fill (required for task ``edit`` unless its spec names one)
============  ========  ==========================================================

``load_manifest`` refuses, before any work, a missing file, missing or unknown columns,
duplicate or unsafe ids and bad values, with an ``InputError`` naming the first rows and
each one's first problem. Whether an input *file* is readable is a per-row matter, found
out by the worker. The checks are vectorised over the Arrow columns (``pyarrow.compute``:
types, the id pattern, methods, ranges, duplicates by value counts), and each distinct
task string is parsed once, so a million rows validate in seconds.

The driver keeps the result as a ``Manifest``: the normalised Arrow table (a few columns
of compact buffers, not a million dicts) and the parsed tasks. ``Manifest.rows`` makes
the row dicts a batch at a time as the actor pool takes them; each carries its parsed task
under ``task_spec`` (``row_task``), which the worker hands to ``build_operator``.
``read_manifest`` / ``validate_rows`` give every row as a dict, for small manifests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from restore_core import storage
from restore_core.config import CHOICES
from restore_core.errors import InputError
from restore_core.operators import TaskSpec, parse_task

REQUIRED: tuple[str, ...] = ("image_id", "input_uri", "task")
DEFAULTS: dict[str, Any] = {
    "gt_uri": None, "degrade": False, "noise_sigma": 0.0, "method": "adir", "seed": 0, "k": None, "steps": None,
    "prompt": None, "mask_uri": None,
}
COLUMNS: tuple[str, ...] = REQUIRED + tuple(DEFAULTS)
ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,200}$")  # also the Arrow (RE2) pattern of the check
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("input_uri", pa.string()), ("task", pa.string()), ("gt_uri", pa.string()),
    ("degrade", pa.bool_()), ("noise_sigma", pa.float64()), ("method", pa.string()), ("seed", pa.int64()),
    ("k", pa.int64()), ("steps", pa.int64()), ("prompt", pa.string()), ("mask_uri", pa.string()),
])
_MAX_LISTED = 5
ROW_BATCH = 1024  # rows materialised as dicts at a time (``Manifest.rows``)
VALIDATE_ROWS = 65536  # rows validated at a time (``load_manifest``)


def row_task(row: dict) -> TaskSpec:
    """The parsed task of a validated row (parsed here when the row was built elsewhere)."""
    task = row.get("task_spec")
    return task if task is not None else parse_task(row["task"])


class Manifest:
    """A validated manifest, columnar: ``table`` (``MANIFEST_SCHEMA``, defaults filled, plus
    ``row_key`` once ``with_row_keys`` added it) and ``tasks`` (each distinct task string
    parsed once). Row dicts are made only by ``rows``, a batch at a time."""

    def __init__(self, table: pa.Table, tasks: dict[str, TaskSpec]):
        self.table, self.tasks = table, tasks

    @classmethod
    def from_table(cls, table: pa.Table, where: str = "manifest") -> Manifest:
        """Validate a manifest table (any column types): ``InputError`` naming the first
        problems, else the normalised manifest."""
        return cls.from_batches(table.column_names, len(table), table.to_batches(VALIDATE_ROWS), where)

    @classmethod
    def from_batches(cls, names: list[str], n_rows: int, batches: Iterable[pa.RecordBatch],
                     where: str = "manifest") -> Manifest:
        """Validate a manifest read batch by batch (``names``: its columns, ``n_rows``: its rows)."""
        _check_columns(names, n_rows, where)
        return _validate(batches, where)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, where: str = "manifest") -> Manifest:
        """Validate rows given as a DataFrame (``pd.DataFrame(dicts)``): each column becomes
        one Arrow array, so a column mixing value types is refused."""
        _check_columns([str(c) for c in df.columns], len(df), where)
        columns = {}
        for name in df.columns:
            try:
                columns[str(name)] = pa.array(df[name], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InputError(f"{where}: column {name} mixes value types ({exc})") from None
        return cls.from_table(pa.table(columns), where)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> pa.ChunkedArray:
        return self.table.column("image_id")

    @property
    def row_keys(self) -> pa.ChunkedArray | None:
        return self.table.column("row_key") if "row_key" in self.table.column_names else None

    def methods(self) -> list[str]:
        return sorted(pc.unique(self.table.column("method")).to_pylist())

    def with_row_keys(self, keys: pa.Array) -> Manifest:
        """This manifest with a ``row_key`` column (``jobs.restore.run_state.row_keys``)."""
        table = self.table if self.row_keys is None else self.table.drop_columns(["row_key"])
        return Manifest(table.append_column("row_key", keys), self.tasks)

    def match(self, ids, keys) -> tuple[np.ndarray, np.ndarray]:
        """For records given as ``ids`` and ``keys`` (at most one per id): each one's row
        position here (-1: not in the manifest) and whether it is that row's current record
        (its ``row_key`` matches; any record of the id before ``with_row_keys``)."""
        at = pc.index_in(ids, value_set=self.ids.combine_chunks())
        positions = at.fill_null(-1).to_numpy()
        if self.row_keys is None:
            return positions, positions >= 0
        wanted = self.row_keys.combine_chunks().take(at)
        return positions, _np(pc.equal(keys, wanted))

    def digest(self) -> str:
        """Of the rows' ids and keys, in order: manifests with one digest count the same records."""
        h = hashlib.sha256()
        for column in (self.ids, self.row_keys):
            if column is not None:
                column = column.cast(pa.binary())
                for start in range(0, len(column), 65536):
                    h.update(b"\n".join(column.slice(start, 65536).to_pylist()) + b"\n")
        return h.hexdigest()[:24]

    def rows(self, positions=None, batch_rows: int = ROW_BATCH) -> Iterator[dict]:
        """The row dicts at ``positions`` (default: all, in order), each with every column,
        its ``task_spec`` (and ``row_key``), read ``batch_rows`` at a time as they are taken."""
        positions = np.arange(len(self)) if positions is None else np.asarray(positions, dtype=np.int64)
        for start in range(0, len(positions), batch_rows):
            for row in self.table.take(positions[start:start + batch_rows]).to_pylist():
                row["task_spec"] = self.tasks[row["task"]]
                yield row


def _check_columns(names: list[str], n_rows: int, where: str) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise InputError(f"{where}: missing required column(s) {', '.join(missing)}; "
                         f"required: {', '.join(REQUIRED)}; optional: {', '.join(DEFAULTS)}")
    unknown = [c for c in names if c not in COLUMNS]
    if unknown:
        raise InputError(f"{where}: unknown column(s) {', '.join(unknown)}; accepted: {', '.join(COLUMNS)}")
    if n_rows == 0:
        raise InputError(f"{where}: no rows")


def _plain(table: pa.Table, name: str) -> pa.Array:
    """One column as one array: absent → nulls, dictionaries decoded, NaN → null (missing)."""
    if name not in table.column_names:
        return pa.nulls(len(table))
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    arr = col.combine_chunks()
    if pa.types.is_floating(arr.type):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
    return arr


def _np(mask) -> np.ndarray:
    return np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _present(arr: pa.Array) -> np.ndarray:
    return _np(arr.is_valid())


def _text(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_null(arr.type)


def _blank(arr: pa.Array) -> np.ndarray:
    """Not text, null, or only whitespace."""
    if not pa.types.is_string(arr.type):
        return np.ones(len(arr), dtype=bool)
    return _np(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr).fill_null("")), 0))


def _not_number(arr: pa.Array, minimum: float, integer: bool) -> np.ndarray:
    """Present values that are not numbers >= ``minimum`` (whole numbers when ``integer``)."""
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), dtype=bool)
    if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        return _present(arr)
    x = arr.cast(pa.float64())
    ok = pc.and_(pc.is_finite(x), pc.greater_equal(x, minimum))
    if integer:
        ok = pc.and_(ok, pc.equal(pc.floor(x), x))
    return _present(arr) & ~_np(ok)


def _shown(value: Any, key: str) -> Any:
    """A bad value as an error names it: whole floats of integer columns as ints, ints of
    ``noise_sigma`` as floats (how the column is read)."""
    if key in ("seed", "k", "steps") and isinstance(value, float) and value.is_integer():
        return int(value)
    if key == "noise_sigma" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _parse(value: Any) -> tuple[TaskSpec | None, str | None]:
    try:
        return parse_task(value), None  # unknown task or parameter, or empty: InputError
    except InputError as exc:
        return None, str(exc)


def _parse_tasks(arr: pa.Array, parsed: dict) -> tuple[np.ndarray, list, list]:
    """(per row the index of its distinct task value, per distinct value its spec or None and
    its problem or None). Each distinct string is parsed once per manifest (``parsed``:
    value -> (spec, problem), shared by the batches)."""
    if _text(arr):
        encoded = pc.dictionary_encode(arr.cast(pa.string()), null_encoding="encode")
        values, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)
        results = [parsed[v] if v in parsed else parsed.setdefault(v, _parse(v)) for v in values]
    else:  # not text: each row refused with its own value
        codes, results = np.arange(len(arr)), [_parse(v) for v in arr.to_pylist()]
    return codes, [spec for spec, _ in results], [problem for _, problem in results]


def _check_batch(table: pa.Table, offset: int, parsed: dict, listed: int) -> tuple[pa.Table | None, list, int]:
    """Every row check of the module docstring on one batch (rows ``offset`` on), vectorised:
    (the normalised batch, or None when a row is refused; the first ``listed`` refused rows
    with their first problem; how many rows are refused)."""
    n = len(table)
    col = {name: _plain(table, name) for name in COLUMNS}
    task_of, specs, task_problems = _parse_tasks(col["task"], parsed)
    bad_task = np.array([p is not None for p in task_problems], dtype=bool)[task_of]
    ids = col["image_id"]
    if pa.types.is_string(ids.type):
        good_id = pc.and_(pc.match_substring_regex(ids, ID_PATTERN.pattern),
                          pc.invert(pc.is_in(ids, pa.array([".", ".."]))))
        bad_id = ~_np(good_id)
    else:
        bad_id = np.ones(n, dtype=bool)
    method = col["method"]
    bad_method = _present(method) & (~_np(pc.is_in(method, pa.array(CHOICES["method"])))
                                     if pa.types.is_string(method.type) else True)
    value = {key: (lambda i, key=key: _shown(col[key][i].as_py(), key)) for key in COLUMNS}
    edit = np.array([spec is not None and spec.name == "edit" and not {"mask", "size"} & set(spec.params)
                     for spec in specs], dtype=bool)
    no_mask = (_np(pc.equal(pc.utf8_length(col["mask_uri"].fill_null("")), 0))
               if pa.types.is_string(col["mask_uri"].type) else ~_present(col["mask_uri"]))
    checks = [  # (rows refused, their message), in the order a row reports them
        (bad_id, lambda i: f"image_id {value['image_id'](i)!r} must be 1-200 characters of [A-Za-z0-9._-]"),
        (_blank(col["input_uri"]), lambda i: "input_uri is empty"),
        (_present(col["gt_uri"]) & _blank(col["gt_uri"]), lambda i: "gt_uri must be a URI or null"),
        (bad_task, lambda i: task_problems[task_of[i]]),
        (_present(col["degrade"]) & (not pa.types.is_boolean(col["degrade"].type)),
         lambda i: f"degrade must be true or false, got {value['degrade'](i)!r}"),
        (_not_number(col["noise_sigma"], 0, integer=False),
         lambda i: f"noise_sigma must be a number >= 0 (0-255 scale), got {value['noise_sigma'](i)!r}"),
        (bad_method, lambda i: f"unknown method {value['method'](i)!r}; accepted: {', '.join(CHOICES['method'])}"),
        (_not_number(col["seed"], 0, integer=True), lambda i: f"seed must be an integer >= 0, got {value['seed'](i)!r}"),
        *[(_not_number(col[key], 1, integer=True),
           lambda i, key=key: f"{key} must be an integer > 0 or null, got {value[key](i)!r}") for key in ("k", "steps")],
        *[(_present(col[key]) & (not _text(col[key])),
           lambda i, key=key: f"{key} must be text or null, got {value[key](i)!r}") for key in ("prompt", "mask_uri")],
        (edit[task_of] & no_mask,
         lambda i: "task edit needs mask_uri (an image of the input's size, white = the region to fill)"),
    ]
    first = np.full(n, -1, dtype=np.int16)
    for j, (bad, _) in enumerate(checks):
        first[(first < 0) & bad] = j
    refused = np.flatnonzero(first >= 0)
    if len(refused):
        return None, [f"row {offset + i} ({value['image_id'](i)!r}): {checks[first[i]][1](i)}"
                      for i in refused[:listed]], len(refused)
    arrays = []
    for field in MANIFEST_SCHEMA:
        arr = col[field.name]
        arr = pa.nulls(n, field.type) if pa.types.is_null(arr.type) else arr.cast(field.type)
        arrays.append(arr if DEFAULTS.get(field.name) is None else arr.fill_null(DEFAULTS[field.name]))
    return pa.Table.from_arrays(arrays, schema=MANIFEST_SCHEMA), [], 0


def _duplicates(ids: list[pa.Array]) -> list[str]:
    """The image ids that occur more than once, sorted."""
    if all(pa.types.is_string(a.type) for a in ids):
        counts = pc.value_counts(pa.chunked_array(ids, pa.string()).drop_null())
        return sorted(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())
    counts = pd.Series([i for a in ids for i in a.to_pylist()]).value_counts()
    return sorted(str(i) for i in counts[counts > 1].index)


def _validate(batches: Iterable[pa.RecordBatch], where: str) -> Manifest:
    """The manifest of ``batches``, checked ``VALIDATE_ROWS`` rows at a time (bounded
    intermediates), or ``InputError`` naming the duplicates and the first refused rows."""
    parsed: dict = {}
    chunks, ids, problems = [], [], []
    offset = refused = 0
    for batch in batches:
        table = pa.Table.from_batches([batch])
        ids.append(_plain(table, "image_id"))
        checked, listed, bad = _check_batch(table, offset, parsed, _MAX_LISTED - len(problems))
        chunks.append(checked)
        problems += listed
        refused += bad
        offset += len(table)
    dups = _duplicates(ids)
    if dups:
        problems.insert(0, f"duplicate image_id(s): {', '.join(dups[:_MAX_LISTED])}"
                           + (f" and {len(dups) - _MAX_LISTED} more" if len(dups) > _MAX_LISTED else ""))
    if problems:
        total = refused + bool(dups)
        more = f" (and {total - _MAX_LISTED} more problems)" if total > _MAX_LISTED else ""
        raise InputError(f"{where}: " + "; ".join(problems[:_MAX_LISTED]) + more)
    tasks = {value: spec for value, (spec, _) in parsed.items() if spec is not None}
    return Manifest(pa.concat_tables(chunks), tasks)


def validate_rows(df: pd.DataFrame, where: str = "manifest") -> list[dict]:
    """Validated rows (dicts with every column of ``COLUMNS`` and ``task_spec``) of a manifest table."""
    return list(Manifest.from_frame(df, where).rows())


def load_manifest(uri: str) -> Manifest:
    """Read and validate the manifest at ``uri`` (a Parquet file); see the module docstring."""
    data = storage.read_bytes(uri)

    def unreadable(exc: Exception) -> InputError:
        return InputError(f"manifest {uri} is not a readable Parquet file ({type(exc).__name__}: {exc})")

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from file.iter_batches(VALIDATE_ROWS)
        except Exception as exc:
            raise unreadable(exc) from None

    try:
        file = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:
        raise unreadable(exc) from None
    return Manifest.from_batches(file.schema_arrow.names, file.metadata.num_rows, batches(), f"manifest {uri}")


def read_manifest(uri: str) -> list[dict]:
    """The validated rows of the manifest at ``uri`` as dicts (``load_manifest(uri).rows()``)."""
    return list(load_manifest(uri).rows())


def write_manifest(rows: list[dict], uri: str) -> None:
    """Validate ``rows`` and write them as a manifest Parquet file, atomically."""
    buf = io.BytesIO()
    pq.write_table(Manifest.from_frame(pd.DataFrame(rows), where="manifest rows").table, buf)
    storage.atomic_write_bytes(uri, buf.getvalue())


def safe_id(name: str) -> str:
    """A file stem turned into a valid image_id (other characters become ``_``)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "image"
    return stem[:200]


def rows_from_folder(images: str, task: str, noise: float = 0.0, method: str = "adir", degrade: bool = False,
                     seed: int = 0) -> list[dict]:
    """One manifest row per image file directly under ``images`` (sorted by name)."""
    uris = [u for u in storage.listdir(images) if u.lower().endswith(IMAGE_SUFFIXES)]
    if not uris:
        raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {images}")
    rows, seen = [], set()
    for uri in uris:
        base = safe_id(os.path.splitext(uri.rsplit("/", 1)[-1])[0])
        image_id, n = base, 1
        while image_id in seen:
            n += 1
            image_id = f"{base}-{n}"
        seen.add(image_id)
        rows.append({"image_id": image_id, "input_uri": uri, "task": task, "gt_uri": None, "degrade": degrade,
                     "noise_sigma": float(noise), "method": method, "seed": seed, "k": None, "steps": None})
    return rows


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="folder (local path or fsspec URI) of input images")
    p.add_argument("--task", required=True, help="operator spec, e.g. sr4, deblur_gauss:sigma=3, colorize")
    p.add_argument("--noise", type=float, default=0.0, help="noise sigma on the 0-255 scale (default 0)")
    p.add_argument("--method", default="adir", help=f"one of {', '.join(CHOICES['method'])} (default adir)")
    p.add_argument("--degrade", action="store_true",
                   help="inputs are clean images: make y with the task (benchmark mode, GT metrics)")
    p.add_argument("--seed", type=int, default=0, help="seed of every row (default 0)")
    p.add_argument("--output", required=True, help="manifest Parquet file to write (path or URI)")
    p.add_argument("--resize", type=int, default=None, help="first centre-crop every image to a square and resize it to "
                   "N x N (ADIR Table 2: --degrade --resize 512); copies go to --resized-dir")
    p.add_argument("--resized-dir", default=None, help="folder of the --resize copies (default: <output>-<N>px)")


def main(args: argparse.Namespace) -> int:
    try:
        images = args.images
        if args.resize is not None:  # jobs.restore.resize_inputs: the Table 2 geometry / the resize policy
            from jobs.restore.resize_inputs import resize_folder

            images = resize_folder(images, args.resized_dir or f"{args.output.removesuffix('.parquet')}-{args.resize}px",
                                   args.resize)
        rows = rows_from_folder(images, args.task, args.noise, args.method, args.degrade, args.seed)
        write_manifest(rows, args.output)
    except InputError as exc:
        print(f"adir make-manifest: error: {exc}", flush=True)
        return 2
    print(f"wrote {len(rows)} rows to {args.output}", flush=True)
    return 0
