"""Corpus manifests: the list of images (``image_id, uri``) an index is built from.

Three sources, one output (a Parquet table with string columns ``image_id`` and ``uri``):

* a folder (any fsspec URI), searched recursively for image extensions; ``image_id`` is the
  path relative to the folder with every character outside ``[A-Za-z0-9._-]`` replaced by
  ``_`` (``a/b c.png`` → ``a_b_c.png``);
* a Parquet manifest that already has ``image_id`` and ``uri`` columns;
* the official Open Images image-list CSV (``ImageID, Subset, OriginalURL,
  OriginalLandingURL, License, AuthorProfileURL, Author, Title, OriginalSize, OriginalMD5,
  Thumbnail300KURL, Rotation``). The URI is either a URL column (``url_column``) or the
  bucket layout ``<root>/<Subset>/<ImageID>.jpg`` with ``root`` defaulting to
  ``s3://open-images-dataset``. The ~1.7M-row file is streamed with
  ``pyarrow.csv.open_csv`` (only the needed columns, one block at a time) and the Parquet
  is written incrementally, so memory stays bounded by the block size.

Images are read later through ``restore_core.images.read_image`` (fsspec), so file://,
s3:// and gs:// all work. Imports only restore_core (storage, errors) and pyarrow.
"""

from __future__ import annotations

import io
import os
import re
import tempfile

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from restore_core import storage
from restore_core.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
OPENIMAGES_COLUMNS = ("ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL",
                      "Author", "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation")
OPENIMAGES_ROOT = "s3://open-images-dataset"
MANIFEST_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string())])
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def sanitize_id(relative_path: str) -> str:
    """``image_id`` of a relative path: characters outside [A-Za-z0-9._-] become ``_``."""
    return _BAD_ID_CHARS.sub("_", relative_path.strip("/"))


def _require_rows(table: pa.Table, source: str) -> pa.Table:
    if table.num_rows == 0:
        raise InputError(f"empty corpus: no images found in {source} (image extensions: "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    return table


def folder_manifest(folder_uri: str) -> pa.Table:
    """All images under ``folder_uri`` (recursive), sorted by path, as ``image_id, uri``."""
    fs, root = storage.filesystem(folder_uri)
    if not fs.exists(root) or not fs.isdir(root):
        raise InputError(f"image folder not found: {folder_uri}")
    root = root.rstrip("/")
    paths = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS)
                   and not os.path.basename(p).startswith("."))
    prefix = folder_uri.split("://", 1)[0] + "://" if "://" in folder_uri and not folder_uri.startswith("file://") else ""
    ids = [sanitize_id(p[len(root):]) for p in paths]
    uris = [p if p.startswith(prefix) else prefix + p for p in paths]
    return _require_rows(pa.table({"image_id": ids, "uri": uris}, schema=MANIFEST_SCHEMA), folder_uri)


def read_manifest(uri: str) -> pa.Table:
    """A Parquet manifest with ``image_id`` and ``uri`` (other columns are dropped)."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    missing = [c for c in ("image_id", "uri") if c not in table.column_names]
    if missing:
        raise InputError(f"manifest {uri} lacks column(s) {', '.join(missing)}; needs image_id, uri")
    table = table.select(["image_id", "uri"]).cast(MANIFEST_SCHEMA)
    return _require_rows(table, uri)


def _csv_header(csv_uri: str) -> list[str]:
    fs, path = storage.filesystem(csv_uri)
    if not fs.exists(path):
        raise InputError(f"Open Images CSV not found: {csv_uri}")
    with fs.open(path, "rb") as fh:
        line = fh.readline().decode("utf-8-sig").strip()
    return [c.strip().strip('"') for c in line.split(",")] if line else []


def openimages_manifest(csv_uri: str, output_uri: str, url_column: str | None = None,
                        root: str = OPENIMAGES_ROOT, block_size: int = 1 << 22) -> int:
    """Stream an Open Images image-list CSV into a Parquet manifest at ``output_uri``.

    ``url_column`` (e.g. ``OriginalURL`` or ``Thumbnail300KURL``) takes the URI from that
    column; ``None`` builds ``<root>/<Subset>/<ImageID>.jpg``. Reads ``block_size`` bytes of
    CSV at a time and appends one Parquet row group per block. Returns the row count.
    """
    header = _csv_header(csv_uri)
    needed = ["ImageID", url_column] if url_column else ["ImageID", "Subset"]
    if url_column and url_column not in OPENIMAGES_COLUMNS:
        raise InputError(f"unknown Open Images URL column {url_column!r}; accepted: OriginalURL, "
                         "OriginalLandingURL, Thumbnail300KURL")
    missing = [c for c in needed if c not in header]
    if missing:
        raise InputError(f"Open Images CSV {csv_uri} lacks column(s) {', '.join(missing)}; "
                         f"found {', '.join(header) or 'no header'}")
    fs, path = storage.filesystem(csv_uri)
    tmp_dir = tempfile.mkdtemp(prefix="adir-manifest-")
    tmp = os.path.join(tmp_dir, "manifest.parquet")
    rows = 0
    root = root.rstrip("/")
    with fs.open(path, "rb") as fh:
        reader = pacsv.open_csv(
            fh, read_options=pacsv.ReadOptions(block_size=block_size),
            convert_options=pacsv.ConvertOptions(include_columns=needed,
                                                 column_types={c: pa.string() for c in needed}))
        with pq.ParquetWriter(tmp, MANIFEST_SCHEMA) as writer:
            for batch in reader:
                ids = batch.column("ImageID").to_pylist()
                if url_column:
                    uris = batch.column(url_column).to_pylist()
                else:
                    uris = [f"{root}/{s}/{i}.jpg" for s, i in zip(batch.column("Subset").to_pylist(), ids)]
                keep = [j for j, (i, u) in enumerate(zip(ids, uris)) if i and u]
                if not keep:
                    continue
                writer.write_table(pa.table({"image_id": [sanitize_id(ids[j]) for j in keep],
                                             "uri": [uris[j] for j in keep]}, schema=MANIFEST_SCHEMA))
                rows += len(keep)
    try:
        if rows == 0:
            raise InputError(f"empty corpus: Open Images CSV {csv_uri} has no rows with an ImageID and a URI")
        if storage.is_local(output_uri):
            os.makedirs(os.path.dirname(os.path.abspath(storage.local_path(output_uri))), exist_ok=True)
            os.replace(tmp, storage.local_path(output_uri))
        else:
            out_fs, out_path = storage.filesystem(output_uri)
            out_fs.put_file(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.rmdir(tmp_dir)
    return rows


def build_manifest(images: str, output_uri: str, url_column: str | None = None,
                   root: str = OPENIMAGES_ROOT) -> pa.Table:
    """The corpus manifest of ``images`` (a folder, a ``.parquet`` manifest or an Open Images
    ``.csv``), written to ``output_uri`` and returned."""
    lower = images.lower()
    if lower.endswith(".csv"):
        openimages_manifest(images, output_uri, url_column=url_column, root=root)
        return read_manifest(output_uri)
    if lower.endswith(".parquet"):
        if not storage.exists(images):
            raise InputError(f"manifest not found: {images}")
        table = read_manifest(images)
    else:
        table = folder_manifest(images)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.atomic_write_bytes(output_uri, buf.getvalue())
    return table
