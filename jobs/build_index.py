"""``adir build-index``: corpus → embeddings (Ray actors, sharded, resumable) → index (sharded).

Stages with files between them (clip-retrieval style), all under ``--output`` (any fsspec URI):

1. ``corpus.parquet`` — the manifest (``index_builder.corpus``: folder, Parquet manifest
   or Open Images CSV, streamed);
2. ``embeddings/part-NNNNN.parquet`` + ``skipped/part-NNNNN.parquet`` —
   ``index_builder.shard_build`` over ``--workers`` actors; a rerun redoes only the shards
   whose listing (ids, URIs) changed or is missing;
3. the index folder at the output root. Kinds ``auto``/``flat``/``ivf``/``ivfpq``: the
   sharded build (``index_builder.sharded_index``: quantizer trained once on a sample,
   parts encoded by ``--workers`` actors, resumable per part by content), giving
   ``index.json`` + ``parts/``. Kinds ``hnsw``/``kdtree`` are built in this process
   (:func:`write_index_folder`: ``index.faiss``/``vectors.npy``, ``ids.parquet``,
   ``thumbs.npy``). Both add ``embedder.json``; ``Retriever.load(output)`` reads either.

``--embeddings URI`` starts at stage 3 from precomputed embeddings (Parquet shards with
``image_id, uri, embedding``, or clip-retrieval's ``img_emb/*.npy`` + ``metadata/*.parquet``;
``index_builder.embedding_source``). ``--dry-run`` with an Open Images CSV plans the shards
without fetching anything (``index_builder.plan``).

Examples::

    adir build-index --images corpus/ --output file:///data/index --kind auto --workers 2
    adir build-index --embeddings s3://bucket/clip-embs/ --model ViT-B-32 --pretrained laion2b_s34b_b79k \\
        --output s3://bucket/index --workers 8
    adir build-index --images image_ids.csv --dry-run
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_builder.corpus import OPENIMAGES_ROOT, build_manifest
from index_builder.embedder import DEFAULT_EMBEDDER, normalize_spec
from index_builder.embedding_source import open_source, parquet_shard
from index_builder.index import DEFAULT_MEMORY_BUDGET, KINDS, build_index
from index_builder.shard_build import (
    DEFAULT_SHARD_SIZE,
    DEFAULT_THUMB_SIZE,
    build_embeddings,
    part_uris,
    read_skipped,
    vectors_of,
)
from index_builder.sharded_index import SHARDED_KINDS, build_from_shards
from restore_core import storage
from restore_core.errors import InputError

log = logging.getLogger("adir.build_index")


def configure_parser(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder, manifest.parquet (image_id, uri) or Open Images CSV")
    src.add_argument("--embeddings", help="precomputed embeddings: Parquet shards (image_id, uri, embedding) or "
                                          "clip-retrieval's img_emb/*.npy + metadata/*.parquet (skips embedding)")
    p.add_argument("--output", help="output URI (index folder; shards under it)")
    p.add_argument("--dry-run", action="store_true", help="plan the shards of --images and report; fetch nothing")
    p.add_argument("--model", default=None, help=f"open_clip model name (default {DEFAULT_EMBEDDER['model']})")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights path/URI")
    p.add_argument("--config", default=None, help="open_clip model-config JSON for a custom architecture")
    p.add_argument("--embedder", default=None, help="embedder folder (config JSON + weights) instead of --model")
    p.add_argument("--kind", default="auto", choices=KINDS)
    p.add_argument("--workers", type=int, default=2, help="embedding and index-building actors")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--thumb-size", type=int, default=DEFAULT_THUMB_SIZE, help="thumbnail side for mode=mse")
    p.add_argument("--memory-budget-gb", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30,
                   help="index memory budget used by --kind auto")
    p.add_argument("--recall-k", type=int, default=20)
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@K the search parameter is tuned to")
    p.add_argument("--url-column", default=None,
                   help="Open Images CSV: take URIs from this column (OriginalURL, Thumbnail300KURL, ...)")
    p.add_argument("--openimages-root", default=OPENIMAGES_ROOT,
                   help="Open Images CSV without --url-column: URIs are <root>/<Subset>/<ImageID>.jpg")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")


def embedder_spec_of(args) -> dict[str, Any] | None:
    """The embedder the arguments name; None when none is named (the default for --images)."""
    if args.embedder:
        return normalize_spec(args.embedder)
    if args.model:
        return normalize_spec({"model": args.model, "pretrained": args.pretrained, "config": args.config})
    return None


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _write_embedder(output: str, spec: dict | None) -> None:
    storage.atomic_write_bytes(storage.join(output, "embedder.json"), json.dumps(spec, indent=1).encode())


def write_index_folder(output: str, embeddings: pa.Table, spec: dict | None, kind: str = "auto",
                       memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_k: int = 20,
                       target_recall: float = 0.95) -> dict:
    """Build a single-file index in this process over an embeddings table (``image_id, uri,
    embedding`` and optionally ``thumbnail``) and write the retriever's files; returns the
    index manifest. For small corpora, tests, and the kinds the sharded build cannot make."""
    if embeddings.num_rows == 0:
        raise InputError(f"empty corpus: every image under {output} was skipped (see skipped/)")
    index = build_index(vectors_of(embeddings), kind, model=spec, memory_budget=memory_budget, recall_k=recall_k,
                        target_recall=target_recall)
    buf = io.BytesIO()
    pq.write_table(embeddings.select(["image_id", "uri"]), buf)
    storage.atomic_write_bytes(storage.join(output, "ids.parquet"), buf.getvalue())
    if "thumbnail" in embeddings.column_names:
        thumb = embeddings.column("thumbnail").combine_chunks()
        side = int(round((thumb.type.byte_width / 3) ** 0.5))
        thumbs = np.frombuffer(thumb.buffers()[1], np.uint8, count=len(thumb) * thumb.type.byte_width,
                               offset=thumb.offset * thumb.type.byte_width).reshape(len(thumb), side, side, 3)
        storage.atomic_write_bytes(storage.join(output, "thumbs.npy"), _npy_bytes(thumbs))
    _write_embedder(output, spec)
    index.save(output)
    return index.manifest


def index_stage(shards_uri: str | list[str], output: str, spec: dict | None, kind: str = "auto", workers: int = 2,
                memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_k: int = 20, target_recall: float = 0.95,
                dim: int | None = None) -> dict:
    """Stage 3 over embedding shards (a folder / file URI, or a list of Parquet part URIs)."""
    if isinstance(shards_uri, list):
        shards = [parquet_shard(u) for u in shards_uri]
    else:
        shards = open_source(shards_uri, dim)
    if sum(s.rows for s in shards) == 0:
        raise InputError(f"empty corpus: every image under {output} was skipped (see skipped/)")
    if kind in SHARDED_KINDS:
        manifest = build_from_shards(shards, output, kind, model=spec, workers=workers, memory_budget=memory_budget,
                                     recall_k=recall_k, target_recall=target_recall)
        _write_embedder(output, spec)
        return manifest
    log.warning("kind %s is built in this process: the driver holds all %d vectors", kind, sum(s.rows for s in shards))
    tables = []
    for s in shards:
        data = s.read()
        cols = {"image_id": pa.array(data.image_ids, pa.string()), "uri": pa.array(data.uris, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(data.vectors.reshape(-1), pa.float32()),
                                                               s.dim)}
        if data.thumbs is not None:
            cols["thumbnail"] = data.thumbs
        tables.append(pa.table(cols))
    return write_index_folder(output, pa.concat_tables(tables), spec, kind, memory_budget, recall_k, target_recall)


def run_build(images: str, output: str, spec: dict | str | None = None, kind: str = "auto", workers: int = 2,
              shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64, thumb_size: int = DEFAULT_THUMB_SIZE,
              memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_k: int = 20, url_column: str | None = None,
              openimages_root: str = OPENIMAGES_ROOT, device: str | None = None, target_recall: float = 0.95) -> dict:
    """The three stages (module doc); returns a summary (embedding run + index manifest)."""
    spec = normalize_spec(spec)
    start = time.perf_counter()
    manifest = build_manifest(images, storage.join(output, "corpus.parquet"), url_column=url_column,
                              root=openimages_root)
    log.info("corpus: %d images from %s", manifest.num_rows, images)
    embed = build_embeddings(manifest, output, spec, workers=workers, shard_size=shard_size,
                             thumb_size=thumb_size, device=device, batch_size=batch_size)
    skipped = read_skipped(output, embed["shards"])
    for row in skipped.slice(0, 10).to_pylist():
        log.warning("skipped %s: %s", row["uri"], row["reason"])
    index_manifest = index_stage(part_uris(output, "embeddings", embed["shards"]), output, spec, kind, workers,
                                 memory_budget, recall_k, target_recall)
    summary = {"images": manifest.num_rows, "skipped_total": skipped.num_rows, "embedding": embed,
               "index": index_manifest, "seconds": round(time.perf_counter() - start, 2), "output": output}
    _log_index(index_manifest, output)
    return summary


def run_from_embeddings(embeddings: str, output: str, spec: dict | str | None = None, kind: str = "auto",
                        workers: int = 2, memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_k: int = 20,
                        target_recall: float = 0.95, device: str | None = None) -> dict:
    """Stage 3 only, from precomputed embeddings; with an embedder, its dimension is checked
    against every shard before any work."""
    dim = None
    if spec is not None:
        from index_builder.embedder import load_embedder

        spec = normalize_spec(spec)
        dim = load_embedder(spec, device=device or "cpu").dim
    start = time.perf_counter()
    manifest = index_stage(embeddings, output, spec, kind, workers, memory_budget, recall_k, target_recall, dim)
    _log_index(manifest, output)
    return {"images": manifest["count"], "skipped_total": 0, "index": manifest,
            "seconds": round(time.perf_counter() - start, 2), "output": output}


def _log_index(m: dict, output: str) -> None:
    log.info("index %s over %d vectors (dim %d), recall@%s %s, written to %s", m["kind"], m["count"], m["dim"],
             m["recall"]["k"], m["recall"]["value"], output)


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    if args.dry_run:
        from index_builder.plan import plan_corpus

        if not args.images:
            raise InputError("--dry-run plans an --images corpus (folder, manifest or Open Images CSV)")
        print(json.dumps(plan_corpus(args.images, shard_size=args.shard_size, thumb_size=args.thumb_size,
                                     url_column=args.url_column, memory_budget=int(args.memory_budget_gb * 2**30)),
                         indent=1))
        return 0
    if not args.output:
        raise InputError("--output is required (except with --dry-run)")
    common = {"kind": args.kind, "workers": args.workers, "memory_budget": int(args.memory_budget_gb * 2**30),
              "recall_k": args.recall_k, "target_recall": args.target_recall, "device": args.device}
    if args.embeddings:
        summary = run_from_embeddings(args.embeddings, args.output, embedder_spec_of(args), **common)
    else:
        summary = run_build(args.images, args.output, embedder_spec_of(args), shard_size=args.shard_size,
                            batch_size=args.batch_size, thumb_size=args.thumb_size, url_column=args.url_column,
                            openimages_root=args.openimages_root, **common)
    print(json.dumps({k: summary[k] for k in ("images", "skipped_total", "seconds", "output")}
                     | {"kind": summary["index"]["kind"], "recall": summary["index"]["recall"]}, indent=1))
    return 0
