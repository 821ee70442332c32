"""Retrieval of ADIR's K neighbours for a degraded observation y (ADIR eq. 19).

An index folder (written by ``jobs.build_index``) is one of two layouts:

* **parts** (``index.json`` says ``"layout": "parts"``; the sharded build's output,
  ``index_builder.serving``): ``parts/trained.faiss`` + ``parts/part-NNNNN.parquet`` (codes,
  ``image_id``, ``uri``, thumbnails). Loaded whole in this process
  (``serving.ShardIndex``), or served by shard actors (``serving.FanOut``: pass
  ``shards=`` to :meth:`Retriever.load`).

Either layout can instead be memory-mapped from one copy per node that every process on
the node shares (``mmap=True``; ``index_builder.node_copy``).
* **single file** (kinds ``hnsw``/``kdtree`` and indexes written before the parts layout):
  ``index.json`` + ``index.faiss`` / ``vectors.npy`` (:class:`RetrievalIndex`),
  ``ids.parquet`` (``image_id, uri`` per row) and ``thumbs.npy`` ((n, s, s, 3) uint8).

Both carry ``embedder.json``, the embedder spec the vectors were made with.

Modes (ADIR Table 6 ablation): ``clip`` — the K nearest in embedding space, with
distance φ = 2·arcsin(½‖ξ(y) − ξ(z)‖); ``random`` — K uniform picks (seeded; distance is
NaN); ``mse`` — the K nearest in downsampled pixel space (root-mean-square difference of
the s×s thumbnails in [0, 1], brute force, as the paper notes it is hard to index).
Imports restore_core (images, storage, errors) and this package only.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import torch

from index_builder.embedder import load_embedder
from index_builder.index import RetrievalIndex, spherical_distance
from index_builder.node_copy import open_mapped
from index_builder.serving import FanOut, ShardIndex, read_manifest, thumb_mse
from restore_core import storage
from restore_core.errors import InputError
from restore_core.images import center_crop, read_image, to_uint8

MODES = ("clip", "random", "mse")


class SingleFileIndex:
    """A single-file index folder behind the interface of ``serving.ShardIndex``."""

    def __init__(self, index: RetrievalIndex, image_ids: list[str], uris: list[str], thumbs: np.ndarray | None):
        if len(image_ids) != index.count:
            raise InputError(f"index has {index.count} rows but ids.parquet has {len(image_ids)}")
        self.index, self.image_ids, self.uris = index, image_ids, uris
        self.thumbs = None if thumbs is None else thumbs.reshape(len(thumbs), -1)
        self._side = None if thumbs is None else thumbs.shape[1]
        self.kind, self.count, self.dim, self.manifest = index.kind, index.count, index.dim, index.manifest

    @classmethod
    def load(cls, index_uri: str) -> SingleFileIndex:
        index = RetrievalIndex.load(index_uri)
        ids = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(index_uri, "ids.parquet"))))
        thumbs_uri = storage.join(index_uri, "thumbs.npy")
        thumbs = np.load(io.BytesIO(storage.read_bytes(thumbs_uri))) if storage.exists(thumbs_uri) else None
        return cls(index, ids.column("image_id").to_pylist(), ids.column("uri").to_pylist(), thumbs)

    def search(self, queries, k: int):
        return self.index.search(queries, k)

    def mse(self, query: np.ndarray, k: int):
        if self.thumbs is None:
            raise InputError("this index has no thumbnails; rebuild it to use mode='mse'")
        return thumb_mse(self.thumbs, np.arange(self.count, dtype=np.int64), query, k)

    def rows(self, global_ids):
        return [(self.image_ids[g], self.uris[g]) for g in global_ids]

    def thumb_size(self) -> int | None:
        return self._side


def load_index(index_uri: str, shards: FanOut | None = None, mmap: bool = False):
    """The search backend of an index folder: ``shards`` if given, this node's memory-mapped
    copy with ``mmap``, the merged parts, or the single-file index (module doc)."""
    manifest = read_manifest(index_uri)
    if shards is not None:
        backend = shards
    elif mmap:
        backend = open_mapped(index_uri)
    elif manifest.get("layout") == "parts":
        backend = ShardIndex.from_parts(index_uri)
    else:
        return SingleFileIndex.load(index_uri)
    backend.manifest = manifest
    if backend.count != manifest["count"]:
        raise InputError(f"index {index_uri} lists {manifest['count']} rows but its parts hold {backend.count}")
    return backend


def rows_of(index, rows, distances) -> list[dict]:
    """``image_id, uri, distance`` dicts of global rows (−1 padding dropped)."""
    rows = [int(r) for r in rows if r >= 0]
    return [{"image_id": meta[0], "uri": meta[1], "distance": float(d)} for meta, d in zip(index.rows(rows), distances)]


def search_vectors(index, vectors: np.ndarray, k: int) -> list[list[dict]]:
    """The K nearest rows of each query embedding in ``index`` (spherical distance φ)."""
    distances, rows = index.search(np.asarray(vectors, np.float32), min(k, index.count))
    return [rows_of(index, r, spherical_distance(d)) for r, d in zip(rows, distances)]


def recorded_embedder(index_uri: str) -> dict:
    """The embedder spec in ``embedder.json``; an index built from precomputed embeddings
    without naming their embedder records none, and image or text queries need one."""
    spec = json.loads(storage.read_bytes(storage.join(index_uri, "embedder.json")))
    if spec is None:
        raise InputError(f"index {index_uri} was built from precomputed embeddings without naming their embedder "
                         "(--model/--embedder); pass the embedder, or query it with --vector")
    return spec


class Retriever:
    """Index backend + embedder, loaded once per worker."""

    def __init__(self, index, embedder_spec, device: str | None = None, embedder=None):
        self.index = index
        self.embedder_spec = embedder_spec
        self.embedder = embedder or load_embedder(embedder_spec, device=device)
        if self.embedder.dim != index.dim:
            raise InputError(f"embedder {self.embedder.spec['model']} gives {self.embedder.dim}-d vectors but the "
                             f"index has dimension {index.dim}")

    @classmethod
    def load(cls, index_uri: str, device: str | None = None, embedder=None,
             shards: FanOut | None = None, mmap: bool = False) -> Retriever:
        """Load an index folder; ``embedder`` overrides the spec recorded in it; ``shards``
        (``serving.start_shard_servers`` / ``serving.connect``) serves it from shard actors;
        ``mmap`` maps this node's shared copy (``node_copy.open_mapped``)."""
        index = load_index(index_uri, shards, mmap)
        if embedder is None:
            embedder = recorded_embedder(index_uri)
        return cls(index, embedder, device=device)

    @property
    def image_ids(self) -> list[str]:
        """Every row's ``image_id`` in row order (in-process backends only)."""
        return list(self.index.image_ids)

    def _rows(self, rows, distances) -> list[dict]:
        return rows_of(self.index, rows, distances)

    def neighbours(self, y: torch.Tensor, k: int, mode: str = "clip", seed: int = 0) -> list[dict]:
        """The K corpus images for observation ``y`` ((1, 1|3, h, w) in [-1, 1]; any size),
        as dicts ``image_id, uri, distance``, nearest first (``random``: in draw order)."""
        if mode not in MODES:
            raise InputError(f"unknown retrieval mode {mode!r}; accepted: {', '.join(MODES)}")
        if k <= 0:
            raise InputError(f"k must be > 0, got {k}")
        if y.dim() == 3:
            y = y[None]
        y = y[:1].detach().float().cpu()
        k = min(k, self.index.count)
        if mode == "random":
            rows = np.random.default_rng(seed).choice(self.index.count, size=k, replace=False)
            return self._rows(rows, [float("nan")] * k)
        if mode == "mse":
            size = self.index.thumb_size()
            if size is None:
                raise InputError("this index has no thumbnails; rebuild it to use mode='mse'")
            q = to_uint8(center_crop(y.expand(-1, 3, -1, -1) if y.shape[1] == 1 else y, size))
            distances, rows = self.index.mse(q.astype(np.float32).reshape(-1) / 255.0, k)
            return self._rows(rows[0], distances[0])
        return self.search_vectors(self.embedder.embed(y), k)[0]

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[dict]]:
        """The K nearest rows of each query embedding (spherical distance φ), nearest first."""
        return search_vectors(self.index, vectors, k)

    def fetch(self, neighbours: list[dict], size: int | None = None) -> torch.Tensor:
        """Read the neighbours' images through fsspec → (K, 3, s, s) in [-1, 1], each resized
        (short side) and centre-cropped to ``size`` (default: the smallest short side)."""
        if not neighbours:
            raise InputError("no neighbours to fetch")
        images = [read_image(n["uri"]) for n in neighbours]
        size = size or min(min(x.shape[-2:]) for x in images)
        return torch.cat([center_crop(x, size) for x in images])
