"""Dry-run planning of a build (``adir build-index --images … --dry-run``): shards, rows and
bytes of every stage, computed from the listing alone — no image is fetched.

For the Open Images image-list CSV (~1.7M rows for the train split) the file is streamed
with ``pyarrow.csv.open_csv`` block by block (only ``ImageID``, the URI columns and
``OriginalSize``), so memory stays bounded by the block size; ``OriginalSize`` sums to the
bytes the embed stage would download. Folders and Parquet manifests are listed (folders
report their file sizes from the listing). Estimates per row: embeddings part = vector
(``dim`` float32) + thumbnail (``thumb_size``² × 3) + id and URI; the index as
``index.memory_estimate`` of the kind ``auto`` would pick.
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.csv as pacsv

from index_builder.corpus import _csv_header, build_manifest
from index_builder.index import DEFAULT_MEMORY_BUDGET, memory_estimate, resolve_params
from restore_core import storage
from restore_core.errors import InputError


def _stream_csv(csv_uri: str, url_column: str | None, block_size: int) -> tuple[int, int | None, int]:
    """(rows with an id and a URI, sum of OriginalSize or None, bytes of ids + URIs)."""
    header = _csv_header(csv_uri)
    uri_col = url_column or "Subset"
    needed = [c for c in ("ImageID", uri_col, "OriginalSize") if c in header]
    if "ImageID" not in needed or uri_col not in needed:
        raise InputError(f"Open Images CSV {csv_uri} lacks ImageID or {uri_col}; found {', '.join(header)}")
    types = {c: pa.string() for c in needed} | ({"OriginalSize": pa.int64()} if "OriginalSize" in needed else {})
    fs, path = storage.filesystem(csv_uri)
    rows, size, text = 0, 0 if "OriginalSize" in needed else None, 0
    with fs.open(path, "rb") as fh:
        reader = pacsv.open_csv(fh, read_options=pacsv.ReadOptions(block_size=block_size),
                                convert_options=pacsv.ConvertOptions(include_columns=needed, column_types=types))
        for batch in reader:
            ids, uris = batch.column("ImageID"), batch.column(uri_col)
            ok = pa.compute.and_(pa.compute.is_valid(ids), pa.compute.is_valid(uris))
            rows += pa.compute.sum(ok.cast(pa.int64())).as_py() or 0
            text += (pa.compute.sum(pa.compute.utf8_length(ids)).as_py() or 0) * 2 + 40 * batch.num_rows
            if size is not None:
                size += pa.compute.sum(batch.column("OriginalSize")).as_py() or 0
    return rows, size, text


def plan_corpus(images: str, shard_size: int = 1000, thumb_size: int = 16, url_column: str | None = None,
                dim: int = 512, memory_budget: int = DEFAULT_MEMORY_BUDGET, block_size: int = 1 << 22) -> dict:
    """The dry-run report of ``images`` (module doc)."""
    import pyarrow.compute  # noqa: F401 - registers pa.compute

    if images.lower().endswith(".csv"):
        rows, image_bytes, text = _stream_csv(images, url_column, block_size)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            table = build_manifest(images, f"{tmp}/corpus.parquet")
        rows, image_bytes = table.num_rows, None
        text = sum(len(i) + len(u) for i, u in zip(table.column("image_id").to_pylist(),
                                                   table.column("uri").to_pylist()))
        if storage.is_local(images) or "://" in images:
            fs, _ = storage.filesystem(images)
            image_bytes = sum(fs.size(u) for u in table.column("uri").to_pylist())
    if rows == 0:
        raise InputError(f"empty corpus: {images} lists no images")
    kind, params, _ = resolve_params("auto", rows, dim, None, memory_budget)
    embedding_bytes = rows * (dim * 4 + thumb_size * thumb_size * 3) + text
    return {"source": images, "rows": rows, "shards": math.ceil(rows / shard_size), "shard_size": shard_size,
            "image_bytes": image_bytes, "embedding_bytes_estimate": embedding_bytes,
            "index": {"kind": kind, "nlist": params.get("nlist"), "dim": dim,
                      "memory_bytes_estimate": memory_estimate(kind, rows, dim, params),
                      "train_size": params.get("train_size")},
            "note": f"dim {dim} assumed (a ViT-B CLIP); nothing was fetched"}
