"""Retrieval of ADIR's K neighbours for a degraded observation y (paper 000, eq. 19).

An index folder (written by ``jobs.build_index``) holds:

* ``index.json`` + ``index.faiss`` / ``vectors.npy`` — the :class:`RetrievalIndex`;
* ``ids.parquet`` — ``image_id, uri`` per index row (row i of the index = row i here);
* ``thumbs.npy`` — (n, s, s, 3) uint8 thumbnails for the ``mse`` ablation;
* ``embedder.json`` — the embedder spec the vectors were made with.

Modes (paper 000, Table 6 ablation): ``clip`` — the K nearest in embedding space, with
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
from restore_core import storage
from restore_core.errors import InputError
from restore_core.images import center_crop, read_image, to_uint8

MODES = ("clip", "random", "mse")


class Retriever:
    """Index + row metadata + embedder, loaded once per worker."""

    def __init__(self, index: RetrievalIndex, image_ids: list[str], uris: list[str],
                 thumbs: np.ndarray | None, embedder_spec, device: str | None = None):
        if len(image_ids) != index.count:
            raise InputError(f"index has {index.count} rows but ids.parquet has {len(image_ids)}")
        self.index = index
        self.image_ids = image_ids
        self.uris = uris
        self.thumbs = thumbs
        self.embedder_spec = embedder_spec
        self.embedder = load_embedder(embedder_spec, device=device)
        if self.embedder.dim != index.dim:
            raise InputError(f"embedder {self.embedder.spec['model']} gives {self.embedder.dim}-d vectors but the "
                             f"index has dimension {index.dim}")

    @classmethod
    def load(cls, index_uri: str, device: str | None = None, embedder=None) -> "Retriever":
        """Load an index folder; ``embedder`` overrides the spec recorded in it."""
        index = RetrievalIndex.load(index_uri)
        ids = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(index_uri, "ids.parquet"))))
        thumbs_uri = storage.join(index_uri, "thumbs.npy")
        thumbs = np.load(io.BytesIO(storage.read_bytes(thumbs_uri))) if storage.exists(thumbs_uri) else None
        if embedder is None:
            embedder = json.loads(storage.read_bytes(storage.join(index_uri, "embedder.json")))
        return cls(index, ids.column("image_id").to_pylist(), ids.column("uri").to_pylist(), thumbs,
                   embedder, device=device)

    def _rows(self, rows, distances) -> list[dict]:
        return [{"image_id": self.image_ids[r], "uri": self.uris[r], "distance": float(d)}
                for r, d in zip(rows, distances) if r >= 0]

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
            if self.thumbs is None:
                raise InputError("this index has no thumbs.npy; rebuild it to use mode='mse'")
            size = self.thumbs.shape[1]
            q = to_uint8(center_crop(y.expand(-1, 3, -1, -1) if y.shape[1] == 1 else y, size))
            q = q.astype(np.float32).reshape(-1) / 255.0
            d2 = np.empty(len(self.thumbs), np.float32)
            flat = self.thumbs.reshape(len(self.thumbs), -1)
            for s in range(0, len(flat), 65536):
                chunk = flat[s:s + 65536].astype(np.float32) / 255.0
                d2[s:s + 65536] = ((chunk - q) ** 2).mean(1)
            rows = np.argsort(d2, kind="stable")[:k]
            return self._rows(rows, np.sqrt(d2[rows]))
        distances, rows = self.index.search(self.embedder.embed(y), k)
        return self._rows(rows[0], spherical_distance(distances[0]))

    def fetch(self, neighbours: list[dict], size: int | None = None) -> torch.Tensor:
        """Read the neighbours' images through fsspec → (K, 3, s, s) in [-1, 1], each resized
        (short side) and centre-cropped to ``size`` (default: the smallest short side)."""
        if not neighbours:
            raise InputError("no neighbours to fetch")
        images = [read_image(n["uri"]) for n in neighbours]
        size = size or min(min(x.shape[-2:]) for x in images)
        return torch.cat([center_crop(x, size) for x in images])
