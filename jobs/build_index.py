"""``adir build-index``: corpus → embeddings (Ray actors, sharded, resumable) → index.

Stages with files between them (clip-retrieval style), all under ``--output`` (any fsspec URI):

1. ``corpus.parquet`` — the manifest (``index_builder.corpus``: folder, Parquet manifest
   or Open Images CSV, streamed);
2. ``embeddings/part-NNNNN.parquet`` + ``skipped/part-NNNNN.parquet`` —
   ``index_builder.shard_build`` over ``--workers`` actors; a rerun redoes only missing shards;
3. the index folder at the output root: ``index.json`` + ``index.faiss``/``vectors.npy``,
   ``ids.parquet``, ``thumbs.npy``, ``embedder.json`` — what ``Retriever.load(output)`` and
   ``adir restore --index`` read.

Example::

    adir build-index --images corpus/ --output file:///data/index --kind auto --workers 2
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
from index_builder.index import DEFAULT_MEMORY_BUDGET, KINDS, build_index
from index_builder.shard_build import (DEFAULT_SHARD_SIZE, DEFAULT_THUMB_SIZE, build_embeddings, read_embeddings,
                                       read_skipped, vectors_of)
from restore_core import storage
from restore_core.errors import InputError

log = logging.getLogger("adir.build_index")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, help="image folder, manifest.parquet (image_id, uri) or Open Images CSV")
    p.add_argument("--output", required=True, help="output URI (index folder; shards under it)")
    p.add_argument("--model", default=None, help=f"open_clip model name (default {DEFAULT_EMBEDDER['model']})")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights path/URI")
    p.add_argument("--config", default=None, help="open_clip model-config JSON for a custom architecture")
    p.add_argument("--embedder", default=None, help="embedder folder (config JSON + weights) instead of --model")
    p.add_argument("--kind", default="auto", choices=KINDS)
    p.add_argument("--workers", type=int, default=2, help="embedding actors")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--thumb-size", type=int, default=DEFAULT_THUMB_SIZE, help="thumbnail side for mode=mse")
    p.add_argument("--memory-budget-gb", type=float, default=DEFAULT_MEMORY_BUDGET / 2**30,
                   help="index memory budget used by --kind auto")
    p.add_argument("--recall-k", type=int, default=20)
    p.add_argument("--url-column", default=None,
                   help="Open Images CSV: take URIs from this column (OriginalURL, Thumbnail300KURL, ...)")
    p.add_argument("--openimages-root", default=OPENIMAGES_ROOT,
                   help="Open Images CSV without --url-column: URIs are <root>/<Subset>/<ImageID>.jpg")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")


def embedder_spec_of(args) -> dict[str, Any]:
    if args.embedder:
        return normalize_spec(args.embedder)
    if args.model:
        return normalize_spec({"model": args.model, "pretrained": args.pretrained, "config": args.config})
    return normalize_spec(None)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_index_folder(output: str, embeddings: pa.Table, spec: dict, kind: str = "auto",
                       memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_k: int = 20) -> dict:
    """Build the index over the embedding shards and write the retriever's files; returns
    the index manifest."""
    if embeddings.num_rows == 0:
        raise InputError(f"empty corpus: every image under {output} was skipped (see skipped/)")
    vectors = vectors_of(embeddings)
    index = build_index(vectors, kind, model=spec, memory_budget=memory_budget, recall_k=recall_k)
    thumb = embeddings.column("thumbnail").combine_chunks()
    side = int(round((thumb.type.byte_width / 3) ** 0.5))
    thumbs = np.frombuffer(thumb.buffers()[1], np.uint8, count=len(thumb) * thumb.type.byte_width,
                           offset=thumb.offset * thumb.type.byte_width).reshape(len(thumb), side, side, 3)
    buf = io.BytesIO()
    pq.write_table(embeddings.select(["image_id", "uri"]), buf)
    storage.atomic_write_bytes(storage.join(output, "ids.parquet"), buf.getvalue())
    storage.atomic_write_bytes(storage.join(output, "thumbs.npy"), _npy_bytes(thumbs))
    storage.atomic_write_bytes(storage.join(output, "embedder.json"), json.dumps(spec, indent=1).encode())
    index.save(output)
    return index.manifest


def run_build(images: str, output: str, spec: dict | str | None = None, kind: str = "auto", workers: int = 2,
              shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64, thumb_size: int = DEFAULT_THUMB_SIZE,
              memory_budget: int = DEFAULT_MEMORY_BUDGET, recall_k: int = 20, url_column: str | None = None,
              openimages_root: str = OPENIMAGES_ROOT, device: str | None = None) -> dict:
    """The three stages (module doc); returns a summary (embedding run + index manifest)."""
    spec = normalize_spec(spec)
    start = time.perf_counter()
    manifest = build_manifest(images, storage.join(output, "corpus.parquet"), url_column=url_column,
                              root=openimages_root)
    log.info("corpus: %d images from %s", manifest.num_rows, images)
    embed = build_embeddings(manifest, output, spec, workers=workers, shard_size=shard_size,
                             thumb_size=thumb_size, device=device, batch_size=batch_size)
    skipped = read_skipped(output)
    for row in skipped.slice(0, 10).to_pylist():
        log.warning("skipped %s: %s", row["uri"], row["reason"])
    index_manifest = write_index_folder(output, read_embeddings(output), spec, kind, memory_budget, recall_k)
    summary = {"images": manifest.num_rows, "skipped_total": skipped.num_rows, "embedding": embed,
               "index": index_manifest, "seconds": round(time.perf_counter() - start, 2), "output": output}
    log.info("index %s over %d vectors (dim %d), recall@%s %s, written to %s", index_manifest["kind"],
             index_manifest["count"], index_manifest["dim"], index_manifest["recall"]["k"],
             index_manifest["recall"]["value"], output)
    return summary


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    summary = run_build(args.images, args.output, embedder_spec_of(args), kind=args.kind, workers=args.workers,
                        shard_size=args.shard_size, batch_size=args.batch_size, thumb_size=args.thumb_size,
                        memory_budget=int(args.memory_budget_gb * 2**30), recall_k=args.recall_k,
                        url_column=args.url_column, openimages_root=args.openimages_root, device=args.device)
    print(json.dumps({k: summary[k] for k in ("images", "skipped_total", "seconds", "output")}
                     | {"kind": summary["index"]["kind"], "recall": summary["index"]["recall"]}, indent=1))
    return 0
