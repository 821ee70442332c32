"""Sharded, resumable index build over Ray actors (the design's "Ray actors shard the index").

Input: embedding shards (``index_builder.embedding_source``: the embed stage's parts or
precomputed embeddings). Output: a parts-layout index folder (``index_builder.serving``).

1. **Plan** from the shards' headers only: rows, dimension, global row offsets; the kind
   and its parameters (``index.resolve_params``; ``auto`` → flat / ivf / ivfpq).
2. **Sample** ``train_size`` rows spread uniformly over the corpus (read shard by shard,
   so the driver holds the sample, never the corpus) and **train once**: the k-means
   coarse quantizer (and PQ codebooks) of IVF, nothing for flat. The trained empty index
   is kept in ``parts/trained.faiss`` with the sample's hash, so a rerun over the same
   corpus reuses it (parts built against it stay valid) and a changed sample retrains.
3. **Encode parts on actors**: each actor holds a copy of the trained empty index; per
   shard it reads the vectors, computes the part key — sha256 of the shard's content
   (ids, URIs, vectors: ``embedding_source.content_key``) and of the trained index — and,
   unless ``parts/part-NNNNN.parquet`` already carries that key, writes the shard's
   standalone codes (``sa_encode``: list number + vector or PQ code) with ids, URIs and
   thumbnails, atomically. The part file is the commit marker, so an interrupted build
   redoes exactly the parts that are missing or whose content changed (issue 12: a corpus
   swapped for another of the same size gives an index of the new images).
   The actor also adds the codes to its own copy (``add_sa_codes``) and returns the
   shard's exact top-K for the recall queries (brute force on that shard).
4. **Recall and tuning without the corpus in the driver**: the exact top-K of the recall
   queries is the exact merge of the per-shard lists; the index's answers come from a
   fan-out over the actors' copies (``serving.FanOut``), which equals the merged index;
   ``nprobe`` is bisected to the smallest value meeting the target (``index.tune_search``).
5. ``index.json`` lists the parts (rows, offset, key) in order; row i of the index is the
   i-th row of the concatenated parts, in shard order.

With ``workers=0`` the same :class:`PartWorker` runs in the driver (tests, tiny corpora).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_builder.embedding_source import Shard, content_key
from index_builder.index import (
    DEFAULT_MEMORY_BUDGET,
    index_manifest,
    resolve_params,
    train_empty,
    tune_search,
)
from index_builder.serving import (
    PARTS_DIR,
    TRAINED_NAME,
    FanOut,
    ShardIndex,
    fixed_binary_to_uint8,
    part_uri,
)
from index_builder.tuning import exclude_self, merge_topk, recall_at_k
from restore_core import storage
from restore_core.errors import ConfigError, InputError

log = logging.getLogger("adir.index.sharded")
SHARDED_KINDS = ("auto", "flat", "ivf", "ivfpq")
KEY_FIELD = b"adir.part_key"


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def part_key_of(uri: str) -> str | None:
    """The key a committed part was written with (Parquet footer only), None if absent."""
    if not storage.exists(uri):
        return None
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as fh:
        meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
    return meta.get(KEY_FIELD, b"").decode() or None


class PartWorker:
    """Actor state: a copy of the trained empty index; ``run`` encodes (or reuses) one part."""

    def __init__(self, trained_bytes: bytes, trained_key: str, kind: str, params: dict, output: str,
                 queries: np.ndarray, k: int, threads: int = 1):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.trained = faiss.deserialize_index(np.frombuffer(trained_bytes, dtype=np.uint8))
        self.trained_key, self.output = trained_key, output
        self.shard = ShardIndex(kind, params, faiss.clone_index(self.trained))
        self.queries, self.k = queries, k

    def ready(self) -> int:
        return os.getpid()

    def run(self, i: int, shard: Shard, offset: int) -> dict[str, Any]:
        import faiss

        start = time.perf_counter()
        data = shard.read()
        n = len(data.vectors)
        if n != shard.rows:
            raise InputError(f"embedding shard {shard.name} changed while building: {n} rows, planned {shard.rows}")
        key = hashlib.sha256((content_key(data) + self.trained_key).encode()).hexdigest()
        uri = part_uri(self.output, i)
        reused = part_key_of(uri) == key
        thumbs = None if data.thumbs is None else fixed_binary_to_uint8(data.thumbs)
        rows = pa.table({"image_id": pa.array(data.image_ids, pa.string()), "uri": pa.array(data.uris, pa.string())})
        if reused:
            table = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=["code"])
            codes = fixed_binary_to_uint8(table.column("code"))
        else:
            codes = self.trained.sa_encode(data.vectors) if n else np.zeros((0, self.trained.sa_code_size()), np.uint8)
            code_type = pa.binary(codes.shape[1])
            cols = {"image_id": rows.column("image_id"), "uri": rows.column("uri"),
                    "code": pa.FixedSizeBinaryArray.from_buffers(code_type, n, [None, pa.py_buffer(codes.tobytes())])}
            if data.thumbs is not None:
                cols["thumbnail"] = data.thumbs
            table = pa.table(cols).replace_schema_metadata({KEY_FIELD: key.encode()})
            storage.atomic_write_bytes(uri, _parquet_bytes(table))
        self.shard.add_part(codes, offset, rows, thumbs)
        kk = min(self.k, n)
        d2, local = faiss.knn(self.queries, data.vectors, kk) if kk else (np.zeros((len(self.queries), 0)),) * 2
        exact = (np.sqrt(np.maximum(d2, 0)).astype(np.float32), np.asarray(local, np.int64) + offset)
        return {"part": i, "rows": n, "key": key, "reused": reused, "exact": exact,
                "seconds": time.perf_counter() - start, "pid": os.getpid()}

    def search(self, queries: np.ndarray, k: int, params: dict | None = None):
        return self.shard.search(queries, k, params)


def _sample(shards: list[Shard], offsets: list[int], n: int, size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(global row ids, vectors) of ``size`` rows drawn uniformly, read shard by shard."""
    rows = np.sort(rng.choice(n, size=min(size, n), replace=False))
    out, ids = [], []
    for shard, off in zip(shards, offsets):
        mine = rows[(rows >= off) & (rows < off + shard.rows)]
        if len(mine):
            out.append(shard.read_rows(mine - off))
            ids.append(mine)
    return np.concatenate(ids), np.concatenate(out)


def _trained(output: str, kind: str, params: dict, sample: np.ndarray, train_size: int):
    """(trained empty index bytes, its key): reused from ``parts/`` when the key matches."""
    import faiss

    structural = {k: v for k, v in params.items() if k not in ("nprobe", "efSearch")}
    h = hashlib.sha256(json.dumps([kind, structural], sort_keys=True).encode())
    h.update(np.ascontiguousarray(sample[:train_size]).tobytes())
    key = h.hexdigest()
    meta_uri = storage.join(output, PARTS_DIR, "trained.json")
    index_uri = storage.join(output, PARTS_DIR, TRAINED_NAME)
    if storage.exists(meta_uri) and json.loads(storage.read_bytes(meta_uri)).get("key") == key \
            and storage.exists(index_uri):
        return storage.read_bytes(index_uri), key, True
    data = faiss.serialize_index(train_empty(kind, sample[:train_size], params)).tobytes()
    storage.atomic_write_bytes(index_uri, data)
    storage.atomic_write_bytes(meta_uri, json.dumps({"key": key, "kind": kind, "params": structural}).encode())
    return data, key, False


def _workers(n_workers: int, args: tuple, cpus_per_worker: float | None):
    """``n_workers`` PartWorker Ray actors (fractional CPUs, leaving room for the driver), or
    one in-process PartWorker when ``n_workers == 0``."""
    if n_workers == 0:
        return [PartWorker(*args)], False
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)
    n_cpus = float(ray.cluster_resources().get("CPU", 1))
    cpus = cpus_per_worker or min(1.0, n_cpus / (n_workers + 1))
    cls = ray.remote(num_cpus=cpus)(PartWorker)
    trained_ref = ray.put(args[0])
    actors = [cls.remote(trained_ref, *args[1:]) for _ in range(n_workers)]
    ray.get([a.ready.remote() for a in actors])
    return actors, True


def build_from_shards(shards: list[Shard], output: str, kind: str = "auto", *, model: Any = None, workers: int = 2,
                      memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_k: int = 20, recall_queries: int = 500,
                      target_recall: float = 0.95, params: dict | None = None, seed: int = 0,
                      cpus_per_worker: float | None = None, threads: int = 1,
                      progress: Callable[[str], None] | None = None) -> dict:
    """Build a parts-layout index at ``output`` from ``shards`` (module doc); returns the manifest
    with a ``build`` entry (parts done / reused, seconds, worker pids)."""
    if kind not in SHARDED_KINDS:
        raise ConfigError(f"the sharded build makes {', '.join(SHARDED_KINDS)} indexes; {kind!r} is built in one "
                          "process (jobs.build_index.write_index_folder)")
    say = progress or log.info
    n, d = sum(s.rows for s in shards), shards[0].dim
    offsets = list(np.cumsum([0] + [s.rows for s in shards[:-1]]).astype(int))
    requested = kind
    kind, p, fixed = resolve_params(kind, n, d, params, memory_budget)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    train_size = int(p.get("train_size", 0))
    n_q = min(recall_queries, n)
    sample_ids, sample = _sample(shards, offsets, n, max(train_size, n_q), rng)
    trained, trained_key, reused_trained = _trained(output, kind, p, sample, train_size)
    pick = np.sort(rng.choice(len(sample), n_q, replace=False))
    queries, self_ids = np.ascontiguousarray(sample[pick]), sample_ids[pick]
    del sample
    k = min(recall_k, n - 1)
    say(f"{kind} index over {n} vectors (dim {d}) in {len(shards)} parts on {workers or 'no'} worker(s); "
        f"trained index {'reused' if reused_trained else 'trained'} in {time.perf_counter() - start:.1f}s")
    actors, remote = _workers(workers, (trained, trained_key, kind, p, output, queries, k + 1, threads),
                              cpus_per_worker)
    results: list[dict] = []
    try:
        if remote:
            from ray.util import ActorPool

            stream = ActorPool(actors).map_unordered(lambda a, job: a.run.remote(*job),
                                                     [(i, s, offsets[i]) for i, s in enumerate(shards)])
        else:
            stream = (actors[0].run(i, s, offsets[i]) for i, s in enumerate(shards))
        running = None  # exact top-(k+1) of the recall queries, merged part by part (bounded memory)
        for r in stream:
            part_exact = r.pop("exact")
            running = part_exact if running is None else merge_topk([running, part_exact], k + 1)
            results.append(r)
            if len(results) % max(1, len(shards) // 20) == 0 or len(results) == len(shards):
                say(f"parts {len(results)}/{len(shards)} ({sum(x['reused'] for x in results)} reused), "
                    f"{time.perf_counter() - start:.1f}s")
        results.sort(key=lambda r: r["part"])
        build_seconds = time.perf_counter() - start
        recall: dict[str, Any] = {"k": k, "queries": 0, "value": None}
        if k >= 1:
            exact = exclude_self(running[1], self_ids, k)
            view = FanOut(actors, n, d, kind, p)

            def measure(trial: dict) -> float:
                return recall_at_k(exclude_self(view.search(queries, k + 1, trial)[1], self_ids, k), exact)

            recall = tune_search(kind, p, fixed, k, target_recall, measure) | {"queries": n_q}
    finally:
        if remote:
            import ray

            for a in actors:
                ray.kill(a)
    manifest = index_manifest(kind, requested, d, n, p, model, build_seconds, recall, memory_budget)
    manifest |= {"layout": "parts", "trained_key": trained_key,
                 "parts": [{"name": shards[r["part"]].name, "rows": r["rows"], "offset": int(offsets[r["part"]]),
                            "key": r["key"]} for r in results],
                 "build": {"parts": len(results), "parts_reused": sum(r["reused"] for r in results),
                           "trained_reused": reused_trained, "workers": workers,
                           "worker_pids": sorted({r["pid"] for r in results}),
                           "seconds": round(time.perf_counter() - start, 3)}}
    storage.atomic_write_bytes(storage.join(output, "index.json"), json.dumps(manifest, indent=1).encode())
    return manifest
