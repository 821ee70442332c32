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

``read_manifest`` refuses, before any work, a missing file, missing or unknown columns,
duplicate or unsafe ids and bad values, with an ``InputError`` naming the rows. Whether
an input *file* is readable is a per-row matter, found out by the worker. Each validated
row carries its parsed task under ``task_spec`` (``row_task``), so the task string is
parsed once per row, here, and the worker hands the parsed task to ``build_operator``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import re
from typing import Any

import pandas as pd
import pyarrow as pa
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
ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("input_uri", pa.string()), ("task", pa.string()), ("gt_uri", pa.string()),
    ("degrade", pa.bool_()), ("noise_sigma", pa.float64()), ("method", pa.string()), ("seed", pa.int64()),
    ("k", pa.int64()), ("steps", pa.int64()), ("prompt", pa.string()), ("mask_uri", pa.string()),
])
_MAX_LISTED = 5


def row_task(row: dict) -> TaskSpec:
    """The parsed task of a validated row (parsed here when the row was built elsewhere)."""
    task = row.get("task_spec")
    return task if task is not None else parse_task(row["task"])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _check_row(row: dict, tasks: dict) -> str | None:
    """The first problem of one (defaults-filled) row, or None."""
    image_id = row["image_id"]
    if not isinstance(image_id, str) or not ID_PATTERN.match(image_id) or image_id in (".", ".."):
        return f"image_id {image_id!r} must be 1-200 characters of [A-Za-z0-9._-]"
    if not isinstance(row["input_uri"], str) or not row["input_uri"].strip():
        return "input_uri is empty"
    if row["gt_uri"] is not None and (not isinstance(row["gt_uri"], str) or not row["gt_uri"].strip()):
        return "gt_uri must be a URI or null"
    try:
        spec = tasks.get(row["task"]) if isinstance(row["task"], str) else None
        if spec is None:  # parsed once per distinct spec string; rows share the read-only TaskSpec
            spec = tasks[row["task"]] = parse_task(row["task"])  # unknown task or parameter: InputError
        row["task_spec"] = spec
    except InputError as exc:
        return str(exc)
    if not isinstance(row["degrade"], bool):
        return f"degrade must be true or false, got {row['degrade']!r}"
    sigma = row["noise_sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        return f"noise_sigma must be a number >= 0 (0-255 scale), got {sigma!r}"
    if row["method"] not in CHOICES["method"]:
        return f"unknown method {row['method']!r}; accepted: {', '.join(CHOICES['method'])}"
    seed = row["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        return f"seed must be an integer >= 0, got {seed!r}"
    for key in ("k", "steps"):
        value = row[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            return f"{key} must be an integer > 0 or null, got {value!r}"
    for key in ("prompt", "mask_uri"):
        if row[key] is not None and not isinstance(row[key], str):
            return f"{key} must be text or null, got {row[key]!r}"
    if row["task_spec"].name == "edit" and not row["mask_uri"] and not {"mask", "size"} & set(row["task_spec"].params):
        return "task edit needs mask_uri (an image of the input's size, white = the region to fill)"
    return None


def _normalise(value: Any, key: str) -> Any:
    """numpy/pandas scalars → Python values; integral floats → int for integer columns."""
    if _missing(value):
        return DEFAULTS.get(key)
    if hasattr(value, "item"):
        value = value.item()
    if key in ("seed", "k", "steps") and isinstance(value, float) and value.is_integer():
        value = int(value)
    if key == "noise_sigma" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def validate_rows(df: pd.DataFrame, where: str = "manifest") -> list[dict]:
    """Validated rows (dicts with every column of ``COLUMNS`` and ``task_spec``) of a manifest table."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing required column(s) {', '.join(missing)}; "
                         f"required: {', '.join(REQUIRED)}; optional: {', '.join(DEFAULTS)}")
    unknown = [c for c in df.columns if c not in COLUMNS]
    if unknown:
        raise InputError(f"{where}: unknown column(s) {', '.join(map(str, unknown))}; accepted: {', '.join(COLUMNS)}")
    if len(df) == 0:
        raise InputError(f"{where}: no rows")
    rows, problems, tasks = [], [], {}
    for i, raw in enumerate(df.to_dict("records")):
        row = {key: _normalise(raw.get(key), key) for key in COLUMNS}
        problem = _check_row(row, tasks)
        if problem:
            problems.append(f"row {i} ({row['image_id']!r}): {problem}")
        rows.append(row)
    counts = pd.Series([r["image_id"] for r in rows]).value_counts()
    dups = sorted(str(i) for i in counts[counts > 1].index)
    if dups:
        problems.insert(0, f"duplicate image_id(s): {', '.join(dups[:_MAX_LISTED])}"
                           + (f" and {len(dups) - _MAX_LISTED} more" if len(dups) > _MAX_LISTED else ""))
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more problems)" if len(problems) > _MAX_LISTED else ""
        raise InputError(f"{where}: " + "; ".join(problems[:_MAX_LISTED]) + more)
    return rows


def read_manifest(uri: str) -> list[dict]:
    """Read and validate the manifest at ``uri`` (a Parquet file); see the module docstring."""
    data = storage.read_bytes(uri)
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        raise InputError(f"manifest {uri} is not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    return validate_rows(table.to_pandas(), where=f"manifest {uri}")


def write_manifest(rows: list[dict], uri: str) -> None:
    """Validate ``rows`` and write them as a manifest Parquet file, atomically."""
    clean = validate_rows(pd.DataFrame(rows), where="manifest rows")
    table = pa.Table.from_pylist(clean, schema=MANIFEST_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
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
