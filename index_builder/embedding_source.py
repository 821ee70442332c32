"""Precomputed embedding shards: what ``adir build-index --embeddings URI`` reads.

Two layouts, detected from the folder (any fsspec URI):

* **Parquet shards** — ``*.parquet`` files (in the folder, or one file) with columns
  ``image_id``, ``uri`` and ``embedding`` (a list or fixed-size list of floats), and
  optionally ``thumbnail`` (RGB uint8 bytes for ``mode=mse``). This is also what the embed
  stage writes (``embeddings/part-NNNNN.parquet``, ``index_builder.shard_build``).
* **clip-retrieval** — ``img_emb/img_emb_N.npy`` (float (n, d)) paired by N with
  ``metadata/metadata_N.parquet`` (rows in the same order). The URI is the metadata's
  ``uri``, ``image_path`` or ``url`` column; the id its ``image_id`` or ``key`` column, else
  the sanitised URI (``index_builder.corpus.sanitize_id``).

A :class:`Shard` knows its row count and dimension from the file headers alone (Parquet
footer, npy header), so the driver plans a sharded build without reading any vectors;
:meth:`Shard.read` gives the rows, L2-normalised (the index metric assumes unit vectors).
A shard with a missing column, another dimension, a row count that does not match its
metadata, or non-finite / zero vectors is refused with an ``InputError`` naming it.
:func:`content_key` hashes a shard's ids, URIs and vectors: the resume key of issue 12.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_builder.corpus import sanitize_id
from restore_core import storage
from restore_core.errors import InputError

_NPY_INDEX = re.compile(r"(\d+)\.npy$")


@dataclass
class ShardData:
    """The rows of one shard: ids, URIs, (n, d) unit float32 vectors, optional thumbnails."""

    image_ids: list[str]
    uris: list[str]
    vectors: np.ndarray
    thumbs: pa.Array | None = None


def content_key(data: ShardData) -> str:
    """sha256 of a shard's ids, URIs and vector bytes (what decides an index part)."""
    h = hashlib.sha256()
    for values in (data.image_ids, data.uris):
        h.update("\0".join(values).encode())
        h.update(b"\1")
    h.update(np.ascontiguousarray(data.vectors, np.float32).tobytes())
    return h.hexdigest()


def _open_parquet(uri: str) -> pq.ParquetFile:
    return pq.ParquetFile(io.BytesIO(storage.read_bytes(uri)))


def _npy_header(uri: str) -> tuple[tuple[int, ...], np.dtype]:
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    return shape, dtype


def _normalised(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"embedding shard {name} has NaN or inf values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError(f"embedding shard {name} has all-zero embedding rows")
    return np.ascontiguousarray(x / norms)


@dataclass
class Shard:
    """One shard of precomputed embeddings (module doc); ``read()`` loads it."""

    name: str
    rows: int
    dim: int
    layout: str  # "parquet" | "clip-retrieval"
    uri: str
    metadata_uri: str | None = None

    def read(self) -> ShardData:
        if self.layout == "parquet":
            table = _open_parquet(self.uri).read()
            col = table.column("embedding").combine_chunks()
            flat = col.flatten().to_numpy(zero_copy_only=False)
            if len(flat) != len(table) * self.dim:
                raise InputError(f"embedding shard {self.name} has rows of unequal length (expected {self.dim})")
            thumbs = table.column("thumbnail").combine_chunks() if "thumbnail" in table.column_names else None
            return ShardData(table.column("image_id").to_pylist(), table.column("uri").to_pylist(),
                             _normalised(flat.reshape(-1, self.dim), self.name), thumbs)
        x = np.load(io.BytesIO(storage.read_bytes(self.uri)))
        meta = _open_parquet(self.metadata_uri).read()
        if len(meta) != len(x):
            raise InputError(f"embedding shard {self.name}: {len(x)} vectors but {self.metadata_uri} has "
                             f"{len(meta)} rows")
        uri_col = next(c for c in ("uri", "image_path", "url") if c in meta.column_names)
        uris = [str(u) for u in meta.column(uri_col).to_pylist()]
        id_col = next((c for c in ("image_id", "key") if c in meta.column_names), None)
        ids = [str(i) for i in meta.column(id_col).to_pylist()] if id_col else [sanitize_id(u) for u in uris]
        return ShardData(ids, uris, _normalised(x, self.name))

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Unit vectors of some rows (a training sample): a local npy shard is memory-mapped,
        so only those rows are read; other shards are read whole."""
        if self.layout == "clip-retrieval" and storage.is_local(self.uri):
            x = np.load(storage.local_path(self.uri), mmap_mode="r")
            if x.shape != (self.rows, self.dim):
                raise InputError(f"embedding shard {self.name} changed: shape {x.shape}, planned "
                                 f"{(self.rows, self.dim)}")
            return _normalised(x[rows], self.name)
        return self.read().vectors[rows]


def _footer(uri: str, first_embedding: bool = False) -> tuple[pa.Schema, int, int | None]:
    """(schema, rows, length of the first ``embedding``) from the Parquet footer (and at most
    the first row group), without reading the file."""
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        first = None
        if first_embedding and pf.metadata.num_rows:
            first = len(pf.read_row_group(0, columns=["embedding"]).column(0)[0].as_py())
        return pf.schema_arrow, pf.metadata.num_rows, first


def parquet_shard(uri: str) -> Shard:
    schema, rows, _ = _footer(uri)
    missing = [c for c in ("image_id", "uri", "embedding") if c not in schema.names]
    if missing:
        raise InputError(f"embedding shard {uri} lacks column(s) {', '.join(missing)}; "
                         "needs image_id, uri, embedding")
    t = schema.field("embedding").type
    if not (pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)) \
            or not pa.types.is_floating(t.value_type):
        raise InputError(f"embedding shard {uri}: column embedding must be a list of floats, got {t}")
    # variable lists: the first row's length (Shard.read checks every row)
    dim = t.list_size if pa.types.is_fixed_size_list(t) else (_footer(uri, True)[2] or 0)
    return Shard(uri.rsplit("/", 1)[-1], rows, dim, "parquet", uri)


def _clip_retrieval_shards(root: str) -> list[Shard]:
    meta = {m.group(1): u for u in storage.listdir(storage.join(root, "metadata"), ".parquet")
            if (m := re.search(r"(\d+)\.parquet$", u))}
    shards = []
    for uri in sorted(storage.listdir(storage.join(root, "img_emb"), ".npy"),
                      key=lambda u: int(_NPY_INDEX.search(u).group(1)) if _NPY_INDEX.search(u) else -1):
        name = "img_emb/" + uri.rsplit("/", 1)[-1]
        m = _NPY_INDEX.search(uri)
        if m is None or m.group(1) not in meta:
            raise InputError(f"embedding shard {name} has no metadata/metadata_N.parquet with the same N")
        shape, dtype = _npy_header(uri)
        if len(shape) != 2 or dtype.kind != "f":
            raise InputError(f"embedding shard {name} must be a 2-D float array; got shape {shape} {dtype}")
        names = _footer(meta[m.group(1)])[0].names
        if not {"uri", "image_path", "url"} & set(names):
            raise InputError(f"embedding shard {name}: {meta[m.group(1)]} lacks a uri, image_path or url column")
        shards.append(Shard(name, int(shape[0]), int(shape[1]), "clip-retrieval", uri, meta[m.group(1)]))
    return shards


def open_source(uri: str, dim: int | None = None) -> list[Shard]:
    """The shards under ``uri`` (module doc), in order; every shard must have ``dim`` (default:
    the first shard's) and a non-empty corpus overall."""
    uri = uri.rstrip("/")
    if uri.endswith(".parquet"):
        if not storage.exists(uri):
            raise InputError(f"embeddings not found: {uri}")
        shards = [parquet_shard(uri)]
    elif storage.listdir(storage.join(uri, "img_emb"), ".npy"):
        shards = _clip_retrieval_shards(uri)
    else:
        shards = [parquet_shard(u) for u in storage.listdir(uri, ".parquet")]
    if not shards:
        raise InputError(f"no embedding shards under {uri}: expected *.parquet (image_id, uri, embedding) or "
                         "clip-retrieval's img_emb/*.npy + metadata/*.parquet")
    want = dim if dim is not None else shards[0].dim
    for s in shards:
        if s.dim != want:
            raise InputError(f"embedding shard {s.name} has dimension {s.dim}, expected {want}")
    if sum(s.rows for s in shards) == 0:
        raise InputError(f"empty corpus: the embedding shards under {uri} have no rows")
    return shards
