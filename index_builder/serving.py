"""Serving a parts-layout index: in one process, or sharded over Ray actors with fan-out.

A parts-layout index folder (written by ``index_builder.sharded_index``) holds
``index.json`` (the manifest, listing the parts with their row counts and global row
offsets), ``parts/trained.faiss`` (the trained empty index: IVF quantizer and PQ
codebooks, or an empty flat index) and ``parts/part-NNNNN.parquet`` (``image_id``,
``uri``, ``code`` — faiss standalone codes, ``sa_encode`` — and optionally ``thumbnail``
for ``mode=mse``). Thumbnails thus live with the shards: whoever holds a shard holds its
thumbnails, nobody loads all of them.

* :class:`ShardIndex` — some parts added to a copy of the trained empty index, with their
  global row ids, ids/URIs (an Arrow table, not Python strings) and thumbnails. ``search``
  answers in global row ids; ``mse`` is the brute-force thumbnail search of ``Retriever``'s
  ``mse`` mode. Holding every part, it is the merged index (what a single restore actor
  loads); once loaded it moves to the GPU (``faiss.index_cpu_to_gpu``) when faiss has GPUs.
  :meth:`ShardIndex.from_parts` sizes the storage before filling it (:func:`allocate_storage`):
  the parts' per-list counts are read first, every inverted list (or the flat code array) is
  allocated once at its final size and the codes are copied in place; appending part after
  part (``add_sa_codes``, what the build's actors do) grows each list by reallocation, and
  the outgrown buffers stay with the allocator.
* :class:`FanOut` — the same interface over several ``ShardIndex`` holders (Ray actors, or
  plain objects in tests): every query goes to every shard and the per-shard top-K are
  merged exactly (``index_builder.tuning.merge_topk``), so a fan-out answers what the merged
  index answers, row for row. :func:`start_shard_servers` starts named, detached-free shard
  actors that restore actors reach with :func:`connect`.

The third way, one memory-mapped copy per node shared by its processes, is
``index_builder.node_copy``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_builder.index import gpu_if_available
from index_builder.tuning import merge_topk
from restore_core import storage
from restore_core.errors import InputError

PARTS_DIR = "parts"
TRAINED_NAME = "trained.faiss"


def part_uri(index_uri: str, i: int) -> str:
    return storage.join(index_uri, PARTS_DIR, f"part-{i:05d}.parquet")


def read_manifest(index_uri: str) -> dict:
    uri = storage.join(index_uri, "index.json")
    if not storage.exists(uri):
        raise InputError(f"no index at {index_uri}: {uri} does not exist")
    return json.loads(storage.read_bytes(uri))


def load_trained(index_uri: str):
    import faiss

    data = storage.read_bytes(storage.join(index_uri, PARTS_DIR, TRAINED_NAME))
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def read_part(index_uri: str, i: int, columns: list[str] | None = None) -> pa.Table:
    """Part ``i`` of a parts-layout index (``columns``: only those)."""
    fs, path = storage.filesystem(part_uri(index_uri, i))
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def fixed_binary_to_uint8(col) -> np.ndarray:
    """(n, width) uint8 view of a fixed-size-binary Arrow column (codes, thumbnails)."""
    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    width = col.type.byte_width
    return np.frombuffer(col.buffers()[1], np.uint8, count=len(col) * width,
                         offset=col.offset * width).reshape(len(col), width)


def list_numbers(ivf, codes: np.ndarray) -> np.ndarray:
    """Inverted-list number of each IVF standalone code (``sa_encode``): its first
    ``coarse_code_size`` bytes, little-endian (faiss ``Level1Quantizer::encode_listno``)."""
    n = ivf.coarse_code_size()
    return (codes[:, :n].astype(np.int64) << (8 * np.arange(n, dtype=np.int64))).sum(1)


def list_sizes(index_uri: str, parts: list[int], ivf) -> np.ndarray:
    """Entries per inverted list of ``ivf`` over ``parts`` (read from their code columns)."""
    sizes = np.zeros(ivf.nlist, np.int64)
    for i in parts:
        codes = fixed_binary_to_uint8(read_part(index_uri, i, ["code"]).column("code"))
        sizes += np.bincount(list_numbers(ivf, codes), minlength=ivf.nlist)
    return sizes


def allocate_storage(index, list_sizes: np.ndarray | None, total: int) -> None:
    """Allocate ``index``'s storage once at its final size, empty: each inverted list of an
    IVF index at ``list_sizes[j]`` entries (``resize`` of ``ArrayInvertedLists`` or of
    faiss's ``OnDiskInvertedLists``), the code array of a flat index at ``total`` codes.
    :func:`fill_storage` then copies codes in place; ``ntotal`` counts what was filled."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        index.codes.resize(total * index.code_size)
    else:
        for j, size in enumerate(list_sizes):
            ivf.invlists.resize(j, int(size))
    index.ntotal = 0


def fill_storage(index, codes: np.ndarray, filled: np.ndarray | None) -> None:
    """Copy standalone ``codes`` into storage sized by :func:`allocate_storage`, after what is there:
    flat codes at row ``ntotal``; IVF codes (list number stripped) at offset ``filled[j]``
    of their list ``j``, with ids ``ntotal …`` in part order (``filled`` is updated)."""
    import faiss

    n, start = len(codes), int(index.ntotal)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        view = faiss.rev_swig_ptr(index.codes.data(), index.codes.size())
        view[start * index.code_size:(start + n) * index.code_size] = np.ascontiguousarray(codes).reshape(-1)
    elif n:
        lists = list_numbers(ivf, codes)
        order = np.argsort(lists, kind="stable")
        ids = (start + order).astype(np.int64)
        body = np.ascontiguousarray(codes[order, ivf.coarse_code_size():])
        bounds = np.searchsorted(lists[order], np.arange(ivf.nlist + 1))
        for j in np.flatnonzero(np.diff(bounds)):
            a, b = bounds[j], bounds[j + 1]
            ivf.invlists.update_entries(int(j), int(filled[j]), int(b - a), faiss.swig_ptr(ids[a:b]),
                                        faiss.swig_ptr(body[a:b]))
            filled[j] += b - a
    index.ntotal = start + n


def set_search_params(index, kind: str, params: dict) -> None:
    """efSearch / nprobe of ``params`` on a faiss index of ``kind``."""
    import faiss

    if kind in ("ivf", "ivfpq"):
        try:
            faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        except RuntimeError:  # a GPU IVF index (index.gpu_if_available) holds nprobe itself
            index.nprobe = int(params["nprobe"])
    elif kind == "hnsw":
        index.hnsw.efSearch = int(params["efSearch"])


def process_memory() -> dict:
    """This process's memory in bytes from ``/proc/self/smaps_rollup``: ``rss_bytes``,
    ``pss_bytes`` (shared pages divided among the processes mapping them), ``uss_bytes``
    (private pages) and ``anon_bytes`` (anonymous memory: what no other process can share)."""
    fields = {}
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"rss_bytes": fields.get("Rss", 0), "pss_bytes": fields.get("Pss", 0),
            "uss_bytes": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "anon_bytes": fields.get("Anonymous", 0)}


def thumb_mse(thumbs: np.ndarray, global_ids: np.ndarray, query: np.ndarray, k: int):
    """(rms distances (1, k), global ids (1, k)) of the ``k`` thumbnails (n, s·s·3 uint8)
    nearest to ``query`` (s·s·3 floats in [0, 1]), by brute force in chunks."""
    d2 = np.empty(len(thumbs), np.float32)
    for s in range(0, len(thumbs), 65536):
        d2[s:s + 65536] = ((thumbs[s:s + 65536].astype(np.float32) / 255.0 - query) ** 2).mean(1)
    top = np.argsort(d2, kind="stable")[:k]
    return merge_topk([(np.sqrt(d2[top])[None], global_ids[top][None])], k)


class ShardIndex:
    """Parts of one index in this process (module doc). ``index`` is the faiss index to fill
    (a clone of the trained empty one) or already filled (``index_builder.node_copy``)."""

    def __init__(self, kind: str, params: dict, index, threads: int | None = None):
        import faiss

        if threads:
            faiss.omp_set_num_threads(threads)
        self.kind, self.params = kind, dict(params)
        self.index = index
        self.dim = self.index.d
        self.global_ids = np.zeros(0, np.int64)
        self.row_tables: list[pa.Table] = []  # image_id, uri per part, in order
        self.thumbs: list[np.ndarray] = []
        self._lookup: tuple | None = None
        self._filled: np.ndarray | bool | None = None  # set by presize

    @classmethod
    def from_parts(cls, index_uri: str, parts: list[int] | None = None, threads: int | None = None) -> ShardIndex:
        """Load ``parts`` (default: all) of a parts-layout index folder into storage pre-sized
        from the parts' list counts (module doc)."""
        import faiss

        m = read_manifest(index_uri)
        parts = list(range(len(m["parts"]))) if parts is None else list(parts)
        shard = cls(m["kind"], m["params"], faiss.clone_index(load_trained(index_uri)), threads)
        shard.presize(index_uri, parts, sum(m["parts"][i]["rows"] for i in parts))
        for i in parts:
            table = read_part(index_uri, i)
            shard.add_part(fixed_binary_to_uint8(table.column("code")), m["parts"][i]["offset"],
                           table.select(["image_id", "uri"]),
                           fixed_binary_to_uint8(table.column("thumbnail"))
                           if "thumbnail" in table.column_names else None)
        pa.default_memory_pool().release_unused()  # the parts' code columns, freed but kept by the pool
        shard.index = gpu_if_available(shard.index)  # faiss on GPU when this build sees one
        return shard

    def presize(self, index_uri: str, parts: list[int], total: int) -> None:
        """Size the empty index for ``parts`` (their list counts read from the code columns);
        :meth:`add_part` then fills in place."""
        import faiss

        ivf = faiss.try_extract_index_ivf(self.index)
        allocate_storage(self.index, None if ivf is None else list_sizes(index_uri, parts, ivf), total)
        self._filled = np.zeros(ivf.nlist, np.int64) if ivf is not None else True

    def add_part(self, codes: np.ndarray, offset: int, rows: pa.Table, thumbs: np.ndarray | None) -> None:
        """Append one part's standalone codes (into the pre-sized storage after
        :meth:`presize`, else by faiss ``add_sa_codes``); its rows are ``offset … offset + n − 1``,
        ``rows`` their ``image_id, uri``."""
        if self._filled is None:
            self.index.add_sa_codes(np.ascontiguousarray(codes))
        else:
            fill_storage(self.index, codes, None if self._filled is True else self._filled)
        self.global_ids = np.concatenate([self.global_ids, offset + np.arange(len(codes), dtype=np.int64)])
        self.row_tables.append(rows)
        if thumbs is not None:
            self.thumbs.append(thumbs)
        self._lookup = None

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def image_ids(self) -> list[str]:
        return [x for t in self.row_tables for x in t.column("image_id").to_pylist()]

    def ready(self) -> dict:
        """Rows held, process id, memory (:func:`process_memory`) and the bytes of the codes and
        ids the index stores (for the serving memory report)."""
        import os

        import faiss

        ivf = faiss.try_extract_index_ivf(self.index)
        per_row = ivf.code_size + 8 if ivf is not None else getattr(self.index, "code_size", 4 * self.dim)
        return {"rows": self.count, "pid": os.getpid(), "code_bytes": self.count * per_row} | process_memory()

    def search(self, queries: np.ndarray, k: int, params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(‖q − v‖ float32, global row ids) of the ``k`` nearest in this shard; −1 / inf pad."""
        q = np.ascontiguousarray(queries, np.float32)
        if self.count == 0:
            return np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        set_search_params(self.index, self.kind, params or self.params)
        d2, local = self.index.search(q, min(k, self.count))
        ids = np.where(local >= 0, self.global_ids[np.maximum(local, 0)], -1)
        d = np.sqrt(np.maximum(d2, 0)).astype(np.float32)
        return merge_topk([(d, ids)], k)

    def mse(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Root-mean-square thumbnail difference in [0, 1] to a flat float query (brute force)."""
        if not self.thumbs:
            raise InputError("this index has no thumbnails; rebuild it to use mode='mse'")
        self.thumbs = [np.concatenate(self.thumbs)] if len(self.thumbs) > 1 else self.thumbs
        return thumb_mse(self.thumbs[0], self.global_ids, query, k)

    def rows(self, global_ids) -> list[tuple[str, str] | None]:
        """``(image_id, uri)`` of global rows held here (None for rows of other shards)."""
        if self._lookup is None:  # row positions by global id (no copies when parts came in order)
            ids = self.global_ids
            order = None if np.all(ids[1:] > ids[:-1]) else np.argsort(ids, kind="stable")
            table = pa.concat_tables(self.row_tables) if len(self.row_tables) != 1 else self.row_tables[0]
            self.row_tables, self._lookup = [table], (order, ids if order is None else ids[order])
        order, sorted_ids = self._lookup
        g = np.asarray(list(global_ids), np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, g), max(len(sorted_ids) - 1, 0))
        held = (sorted_ids[pos] == g) if len(sorted_ids) else np.zeros(len(g), bool)
        at = pos[held] if order is None else order[pos[held]]
        # element access finds the chunk by binary search; Table.take would concatenate them
        ids, uris = self.row_tables[0].column("image_id"), self.row_tables[0].column("uri")
        out: list[tuple[str, str] | None] = [None] * len(g)
        for j, p in zip(np.flatnonzero(held), at):
            out[j] = (ids[int(p)].as_py(), uris[int(p)].as_py())
        return out

    def thumb_size(self) -> int | None:
        return int(round((self.thumbs[0].shape[1] / 3) ** 0.5)) if self.thumbs else None


class FanOut:
    """Query every shard, merge exactly (module doc). ``shards`` are Ray actor handles of
    ``ShardIndex`` or plain ``ShardIndex`` objects."""

    def __init__(self, shards: list, count: int, dim: int, kind: str, params: dict):
        self.shards, self.count, self.dim, self.kind, self.params = shards, count, dim, kind, dict(params)
        self._remote = bool(shards) and hasattr(shards[0].search, "remote")

    def _all(self, method: str, *args) -> list:
        if self._remote:
            import ray

            return ray.get([getattr(s, method).remote(*args) for s in self.shards])
        return [getattr(s, method)(*args) for s in self.shards]

    def search(self, queries: np.ndarray, k: int, params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        return merge_topk(self._all("search", np.ascontiguousarray(queries, np.float32), k, params or self.params), k)

    def mse(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return merge_topk(self._all("mse", query, k), k)

    def rows(self, global_ids) -> list[tuple[str, str] | None]:
        found: list[Any] = [None] * len(global_ids)
        for answer in self._all("rows", list(global_ids)):
            found = [f if f is not None else a for f, a in zip(found, answer)]
        return found

    def thumb_size(self) -> int | None:
        return self._all("thumb_size")[0] if self.shards else None


def _groups(counts: list[int], n_groups: int) -> list[list[int]]:
    """Contiguous part ranges with about equal rows."""
    total, groups, current, acc = sum(counts), [], [], 0
    for i, c in enumerate(counts):
        current.append(i)
        acc += c
        if acc >= total * (len(groups) + 1) / n_groups and len(groups) < n_groups - 1:
            groups.append(current)
            current = []
    return groups + ([current] if current else [])


class ShardServer(ShardIndex):
    """Ray actor body: a :class:`ShardIndex` loaded from ``parts`` of a parts-layout folder."""

    def __init__(self, index_uri: str, parts: list[int], threads: int = 1):
        self.__dict__.update(ShardIndex.from_parts(index_uri, parts, threads).__dict__)


def start_shard_servers(index_uri: str, n_servers: int, name: str | None = None, cpus: float = 0.5,
                        threads: int = 1) -> FanOut:
    """Start ``n_servers`` Ray actors, each holding a contiguous range of the index's parts
    (about equal rows); named ``<name>-<i>`` when ``name`` is given (see :func:`connect`)."""
    import ray

    m = read_manifest(index_uri)
    if m.get("layout") != "parts":
        raise InputError(f"index {index_uri} is a single-file index; only parts-layout indexes are served sharded")
    cls = ray.remote(num_cpus=cpus)(ShardServer)
    groups = _groups([p["rows"] for p in m["parts"]], max(1, min(n_servers, len(m["parts"]))))
    actors = [(cls.options(name=f"{name}-{i}") if name else cls).remote(index_uri, g, threads)
              for i, g in enumerate(groups)]
    fan = FanOut(actors, int(m["count"]), int(m["dim"]), m["kind"], m["params"])
    fan.server_stats = ray.get([a.ready.remote() for a in actors])
    return fan


def connect(index_uri: str, name: str, n_servers: int) -> FanOut:
    """A :class:`FanOut` over shard servers started by :func:`start_shard_servers` with ``name``."""
    import ray

    m = read_manifest(index_uri)
    return FanOut([ray.get_actor(f"{name}-{i}") for i in range(n_servers)], int(m["count"]), int(m["dim"]),
                  m["kind"], m["params"])
