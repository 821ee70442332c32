"""Sharded, resumable embedding of a corpus manifest over a pool of Ray actors.

Stage 1 of the index build (clip-retrieval's "inference" stage): the manifest is cut into
fixed-size shards; each shard becomes, under ``<output>/``:

* ``skipped/part-NNNNN.parquet`` — ``image_id, uri, reason`` of the images that could not
  be read (missing, empty, corrupt, …; the reason is ``read_image``'s one-line message);
* ``embeddings/part-NNNNN.parquet`` — ``image_id, uri, embedding`` (fixed_size_list<float32>,
  L2-normalised) and ``thumbnail`` (fixed_size_binary: a ``thumb_size``² RGB uint8 image,
  for the ``mse`` retrieval ablation of ADIR Table 6).

Both files are written atomically (``restore_core.storage.atomic_write_bytes``), the
skipped table first; the embeddings part is the shard's commit marker. Resume is keyed by
content (issue 12): each embeddings part carries, in its Parquet metadata, the hash of its
shard's listing (ids and URIs) and of the embedder spec and thumbnail size
(:func:`listing_key`); a rerun skips exactly the shards whose part carries the key of the
current listing and redoes the others, so a corpus with swapped images, another shard size
or another embedder never reuses stale vectors.

The per-shard work (:func:`embed_rows`) is plain Python and runs without Ray; the actor
(:class:`ShardEmbedder`) only loads the embedder once and calls it. On a 2-core machine
actors get fractional ``num_cpus`` (the pool must not ask for more CPUs than exist, or
actors wait forever) and one torch thread each.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from restore_core import storage
from restore_core.errors import AdirError, InputError
from restore_core.images import center_crop, read_image, to_uint8

log = logging.getLogger("adir.index.shards")
SKIPPED_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("reason", pa.string())])
DEFAULT_SHARD_SIZE = 1000
DEFAULT_THUMB_SIZE = 16


def embedding_schema(dim: int, thumb_size: int) -> pa.Schema:
    return pa.schema([("image_id", pa.string()), ("uri", pa.string()),
                      ("embedding", pa.list_(pa.float32(), dim)),
                      ("thumbnail", pa.binary(thumb_size * thumb_size * 3))])


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def plan_shards(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of consecutive shards of ``shard_size`` rows."""
    if shard_size <= 0:
        raise InputError(f"shard size must be > 0, got {shard_size}")
    return [(s, min(s + shard_size, n_rows)) for s in range(0, n_rows, shard_size)]


def thumbnail(x, size: int) -> bytes:
    """``size``² RGB uint8 bytes of a [-1, 1] image (short side resized, centre crop)."""
    return to_uint8(center_crop(x, size)).tobytes()


def _to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def embed_rows(embedder, image_ids: list[str], uris: list[str],
               thumb_size: int = DEFAULT_THUMB_SIZE) -> tuple[pa.Table, pa.Table]:
    """Read, embed and thumbnail the images of one shard → (embeddings, skipped) tables.

    Unreadable images (any ``AdirError`` from ``read_image``) are skipped with their reason;
    images are reduced to the tower's input size as they are read, so memory is bounded by
    the shard size times the (small) tower input.
    """
    kept_ids, kept_uris, small, thumbs, skipped = [], [], [], [], []
    for image_id, uri in zip(image_ids, uris):
        try:
            x = read_image(uri)
        except AdirError as exc:
            skipped.append((image_id, uri, str(exc)))
            continue
        small.append(embedder.prepare(x))
        thumbs.append(thumbnail(x, thumb_size))
        kept_ids.append(image_id)
        kept_uris.append(uri)
    vectors = embedder.embed(small) if small else np.zeros((0, embedder.dim), np.float32)
    emb = pa.table({
        "image_id": pa.array(kept_ids, pa.string()), "uri": pa.array(kept_uris, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), embedder.dim),
        "thumbnail": pa.array(thumbs, pa.binary(thumb_size * thumb_size * 3)),
    }, schema=embedding_schema(embedder.dim, thumb_size))
    skip = pa.table({k: [r[j] for r in skipped] for j, k in enumerate(("image_id", "uri", "reason"))},
                    schema=SKIPPED_SCHEMA)
    return emb, skip


KEY_FIELD = b"adir.listing_key"


def listing_key(spec: dict, thumb_size: int, image_ids: list[str], uris: list[str]) -> str:
    """sha256 of what decides a shard's embeddings: embedder spec, thumbnail size, ids, URIs."""
    h = hashlib.sha256(json.dumps([spec, thumb_size], sort_keys=True).encode())
    for values in (image_ids, uris):
        h.update("\0".join(values).encode())
        h.update(b"\1")
    return h.hexdigest()


def write_shard(output_uri: str, index: int, emb: pa.Table, skipped: pa.Table, key: str | None = None) -> None:
    """Skipped table first, then the embeddings part (the commit marker, carrying ``key``); atomic."""
    storage.atomic_write_bytes(storage.join(output_uri, "skipped", part_name(index)), _to_parquet_bytes(skipped))
    if key is not None:
        emb = emb.replace_schema_metadata({KEY_FIELD: key.encode()})
    storage.atomic_write_bytes(storage.join(output_uri, "embeddings", part_name(index)), _to_parquet_bytes(emb))


def shard_done(output_uri: str, index: int, key: str) -> bool:
    """Whether shard ``index``'s embeddings part exists and was made from the listing ``key``."""
    uri = storage.join(output_uri, "embeddings", part_name(index))
    if not storage.exists(uri):
        return False
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as fh:
        meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
    return meta.get(KEY_FIELD, b"").decode() == key


class ShardEmbedder:
    """Actor state: one embedder, loaded once; ``run`` embeds and writes one shard."""

    def __init__(self, spec: dict, output_uri: str, thumb_size: int = DEFAULT_THUMB_SIZE,
                 device: str | None = None, threads: int = 1, batch_size: int = 64):
        import torch

        from index_builder.embedder import load_embedder

        torch.set_num_threads(threads)
        self.embedder = load_embedder(spec, device=device, batch_size=batch_size)
        self.output_uri = output_uri
        self.thumb_size = thumb_size

    def ready(self) -> int:
        """Returns once the embedder is loaded (so throughput excludes actor start-up)."""
        return os.getpid()

    def run(self, index: int, image_ids: list[str], uris: list[str], key: str | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        emb, skipped = embed_rows(self.embedder, image_ids, uris, self.thumb_size)
        write_shard(self.output_uri, index, emb, skipped, key)
        return {"shard": index, "images": emb.num_rows, "skipped": skipped.num_rows,
                "seconds": time.perf_counter() - start, "pid": os.getpid()}


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def build_embeddings(manifest: pa.Table, output_uri: str, embedder_spec: dict | str | None = None,
                     workers: int = 2, shard_size: int = DEFAULT_SHARD_SIZE,
                     thumb_size: int = DEFAULT_THUMB_SIZE, device: str | None = None,
                     cpus_per_worker: float | None = None, batch_size: int = 64,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Embed every manifest row over ``workers`` Ray actors; resumable (see module doc).

    Returns a summary: shards (total, done now, already complete), images embedded and
    skipped in this run, actor start-up seconds, seconds (after start-up), images/s,
    images/s per worker.
    """
    import ray
    from ray.util import ActorPool

    from index_builder.embedder import normalize_spec

    if manifest.num_rows == 0:
        raise InputError("empty corpus: the manifest has no rows")
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    spec = normalize_spec(embedder_spec)
    say = progress or log.info
    shards = plan_shards(manifest.num_rows, shard_size)
    ids = manifest.column("image_id").to_pylist()
    uris = manifest.column("uri").to_pylist()
    keys = [listing_key(spec, thumb_size, ids[a:b], uris[a:b]) for a, b in shards]
    pending = [i for i in range(len(shards)) if not shard_done(output_uri, i, keys[i])]
    summary = {"shards": len(shards), "shards_done": 0, "shards_already_complete": len(shards) - len(pending),
               "images": 0, "skipped": 0, "seconds": 0.0, "workers": workers}
    if not pending:
        say(f"all {len(shards)} shards already complete under {output_uri}")
        return summary
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=True)
    resources = ray.cluster_resources()
    n_cpus = float(resources.get("CPU", 1))
    use_gpu = resources.get("GPU", 0) >= workers and device != "cpu"
    cpus = cpus_per_worker or min(1.0, n_cpus / (workers + 1))  # leave room for the driver
    actor_cls = ray.remote(num_cpus=cpus, num_gpus=1 if use_gpu else 0)(ShardEmbedder)
    n_actors = min(workers, len(pending))
    actors = [actor_cls.remote(spec, output_uri, thumb_size, "cuda" if use_gpu else (device or "cpu"),
                               max(1, int(cpus)), batch_size) for _ in range(n_actors)]
    todo_images = sum(shards[i][1] - shards[i][0] for i in pending)
    say(f"embedding {todo_images} images in {len(pending)} shards ({summary['shards_already_complete']} already "
        f"complete) on {n_actors} worker(s) x {cpus:.2f} CPU{' + 1 GPU' if use_gpu else ''} -> {output_uri}")
    startup = time.perf_counter()
    ray.get([a.ready.remote() for a in actors])
    summary["startup_seconds"] = time.perf_counter() - startup
    start = time.perf_counter()
    pool = ActorPool(actors)
    jobs = [(i, ids[shards[i][0]:shards[i][1]], uris[shards[i][0]:shards[i][1]], keys[i]) for i in pending]
    seen_rows, pids = 0, set()
    try:
        for stats in pool.map_unordered(lambda a, job: a.run.remote(*job), jobs):
            summary["shards_done"] += 1
            summary["images"] += stats["images"]
            summary["skipped"] += stats["skipped"]
            pids.add(stats["pid"])
            seen_rows += stats["images"] + stats["skipped"]
            elapsed = time.perf_counter() - start
            rate = seen_rows / max(elapsed, 1e-9)
            eta = (todo_images - seen_rows) / rate if rate > 0 else 0.0
            say(f"shards {summary['shards_already_complete'] + summary['shards_done']}/{len(shards)} done, "
                f"images {seen_rows}/{todo_images} ({summary['skipped']} skipped), {rate:.1f} images/s, "
                f"ETA {_fmt_seconds(eta)}")
    finally:
        for actor in actors:
            ray.kill(actor)
    summary["seconds"] = time.perf_counter() - start
    summary["images_per_s"] = seen_rows / max(summary["seconds"], 1e-9)
    summary["images_per_s_per_worker"] = summary["images_per_s"] / n_actors
    summary["worker_pids"] = sorted(pids)
    return summary


def part_uris(output_uri: str, folder: str, count: int | None = None) -> list[str]:
    """URIs of ``folder``'s parts: the first ``count`` (the current plan) or all present."""
    if count is None:
        return storage.listdir(storage.join(output_uri, folder), suffix=".parquet")
    return [storage.join(output_uri, folder, part_name(i)) for i in range(count)]


def _read_parts(output_uri: str, folder: str, count: int | None) -> list[pa.Table]:
    return [pq.read_table(io.BytesIO(storage.read_bytes(u))) for u in part_uris(output_uri, folder, count)]


def read_embeddings(output_uri: str, count: int | None = None) -> pa.Table:
    """Embedding parts concatenated in shard order (image_id, uri, embedding, thumbnail): the
    first ``count`` (the current plan), or all present."""
    parts = _read_parts(output_uri, "embeddings", count)
    if not parts:
        raise InputError(f"no embedding shards under {storage.join(output_uri, 'embeddings')}")
    return pa.concat_tables(parts)


def read_skipped(output_uri: str, count: int | None = None) -> pa.Table:
    """Skipped tables concatenated (image_id, uri, reason); ``count`` as for read_embeddings."""
    parts = _read_parts(output_uri, "skipped", count)
    return pa.concat_tables(parts) if parts else SKIPPED_SCHEMA.empty_table()


def vectors_of(table: pa.Table) -> np.ndarray:
    """(N, D) float32 matrix of an embeddings table's fixed-size-list column."""
    col = table.column("embedding").combine_chunks()
    dim = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
