"""One copy of an index per node, memory-mapped by every restore actor on it.

The alternative to shard servers (``index_builder.serving``): instead of loading the index
(each actor holding every code, id and thumbnail) or asking shard actors over Ray, the
actors of a node share one node-local copy of the index through the kernel's page cache.
The copy, in ``<cache>/index-mmap/<key>/`` (``cache`` defaults to ``$ADIR_CACHE`` or
~/.cache/adir; ``key`` hashes the index URI and its manifest, so a rebuilt index gets a
new copy), holds:

* ``index.faiss`` — the merged faiss index. Parts-layout IVF indexes keep their inverted
  lists in ``index.ivfdata`` (faiss ``OnDiskInvertedLists``, the lists laid out back to
  back at their final sizes and filled in place, part by part, so the writer holds one
  part at a time: ``serving.fill_storage``); a parts-layout flat index is filled in memory
  and written whole (``auto`` makes flat indexes only up to 100k rows); a single-file
  index (hnsw, …) is copied as it is.
* ``rows.arrow`` — ``image_id, uri`` per row, an uncompressed Arrow IPC file.
* ``thumbs.npy`` — (n, s·s·3) uint8 thumbnails for ``mode=mse``, when the index has them.

Readers map all three read-only and shared: ``faiss.read_index`` with ``IO_FLAG_MMAP_IFC``
(zero-copy views of flat codes, array inverted lists and HNSW storage in the file's
mapping; ``ilod`` lists are mapped by faiss's on-disk reader), ``pyarrow.memory_map`` for
the rows and ``np.load(mmap_mode="r")`` for thumbnails. What an actor holds privately is
the coarse quantizer (nlist × d floats), the row-id map and Python objects.

The first actor on a node writes the copy (in a child process, so that none of the
reading's transient memory stays with the actor) under an exclusive ``fcntl.flock`` and
marks it complete last (``copy.json``); the others wait on the lock and map the finished
copy. A
remote index (s3://, gs://, …) is read through ``restore_core.storage`` as it is copied,
so the index URI may be anything fsspec reads; only the cache must be a local folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index_builder.serving import (
    ShardIndex,
    allocate_storage,
    fill_storage,
    fixed_binary_to_uint8,
    list_sizes,
    load_trained,
    read_manifest,
    read_part,
)
from restore_core import storage
from restore_core.errors import ConfigError

COPY_DIR = "index-mmap"
MARKER = "copy.json"
ROW_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string())])


def copy_folder(index_uri: str, manifest: dict, cache_dir: str | None = None) -> str:
    """Where the node copy of ``index_uri`` lives (module doc); the cache must be local."""
    cache = cache_dir or storage.DEFAULT_CACHE
    if not storage.is_local(cache):
        raise ConfigError(f"the index cache must be a local folder to memory-map the index; got {cache}")
    key = hashlib.sha256(json.dumps([index_uri, manifest], sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(storage.local_path(cache), COPY_DIR, key)


def _write_parts_index(index_uri: str, m: dict, folder: str) -> None:
    """``index.faiss`` (+ ``index.ivfdata``), rows and thumbnails of a parts-layout index,
    one part in memory at a time."""
    import faiss

    index = faiss.clone_index(load_trained(index_uri))
    ivf = faiss.try_extract_index_ivf(index)
    parts = list(range(len(m["parts"])))
    filled = None
    if ivf is None:
        allocate_storage(index, None, int(m["count"]))
    else:
        sizes = list_sizes(index_uri, parts, ivf)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, os.path.join(folder, "index.ivfdata"))
        nbytes = int(sizes.sum()) * (ivf.code_size + 8)  # codes then int64 ids, per list
        if nbytes:
            lists.update_totsize(nbytes)
            lists.allocate_slot(nbytes)  # one slot, the whole file: lists back to back
        sizes_t = sizes.astype(np.uint64)  # held while faiss reads it through the pointer
        lists.set_all_lists_sizes(faiss.swig_ptr(sizes_t))
        ivf.replace_invlists(lists, True)
        lists.this.disown()
        filled = np.zeros(ivf.nlist, np.int64)
    thumbs = None
    with pa.OSFile(os.path.join(folder, "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, ROW_SCHEMA) as rows:
        for i in parts:
            table = read_part(index_uri, i)
            fill_storage(index, fixed_binary_to_uint8(table.column("code")), filled)
            rows.write_table(table.select(["image_id", "uri"]).cast(ROW_SCHEMA))
            if "thumbnail" in table.column_names:
                t = fixed_binary_to_uint8(table.column("thumbnail"))
                if thumbs is None:
                    thumbs = np.lib.format.open_memmap(os.path.join(folder, "thumbs.npy"), "w+", np.uint8,
                                                       (int(m["count"]), t.shape[1]))
                off = m["parts"][i]["offset"]
                thumbs[off:off + len(t)] = t
    if thumbs is not None:
        thumbs.flush()
    faiss.write_index(index, os.path.join(folder, "index.faiss"))


def _write_single_file_index(index_uri: str, m: dict, folder: str) -> None:
    """A single-file index folder copied: ``index.faiss`` and ``thumbs.npy`` as they are,
    ``ids.parquet`` rewritten as ``rows.arrow``."""
    for name in ("index.faiss", "thumbs.npy"):
        uri = storage.join(index_uri, name)
        if storage.exists(uri):
            fs, path = storage.filesystem(uri)
            fs.get(path, os.path.join(folder, name))
    fs, path = storage.filesystem(storage.join(index_uri, "ids.parquet"))
    with fs.open(path, "rb") as fh:
        ids = pq.read_table(fh, columns=["image_id", "uri"]).cast(ROW_SCHEMA)
    with pa.OSFile(os.path.join(folder, "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, ROW_SCHEMA) as rows:
        rows.write_table(ids)


def check_mappable(index_uri: str, m: dict | None = None) -> None:
    """``ConfigError`` when the index at ``index_uri`` (its manifest ``m``) cannot be mapped."""
    m = read_manifest(index_uri) if m is None else m
    if m["kind"] == "kdtree":
        raise ConfigError(f"index {index_uri} is a k-d tree (rebuilt in memory on load); it cannot be "
                          "memory-mapped: set index_mmap=false or rebuild it as another kind")


def node_copy(index_uri: str, cache_dir: str | None = None) -> str:
    """The local folder of this node's copy of ``index_uri``, written once (module doc)."""
    m = read_manifest(index_uri)
    folder = copy_folder(index_uri, m, cache_dir)
    if os.path.exists(os.path.join(folder, MARKER)):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with open(folder + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not os.path.exists(os.path.join(folder, MARKER)):
            check_mappable(index_uri, m)
            shutil.rmtree(folder, ignore_errors=True)  # an interrupted copy
            os.makedirs(folder)
            write = _write_parts_index if m.get("layout") == "parts" else _write_single_file_index
            # in a child process: what reading the parts leaves with the allocators goes with it
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                child.submit(write, index_uri, m, folder).result()
            storage.atomic_write_bytes(os.path.join(folder, MARKER), json.dumps({"index": index_uri}).encode())
    return folder


def open_mapped(index_uri: str, cache_dir: str | None = None) -> ShardIndex:
    """The whole index as a :class:`serving.ShardIndex` over this node's memory-mapped copy."""
    import faiss

    m = read_manifest(index_uri)
    folder = node_copy(index_uri, cache_dir)
    index = faiss.read_index(os.path.join(folder, "index.faiss"), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    shard = ShardIndex(m["kind"], m["params"], index)
    shard.manifest = m
    shard.global_ids = np.arange(shard.count, dtype=np.int64)
    shard.row_tables = [pa.ipc.open_file(pa.memory_map(os.path.join(folder, "rows.arrow"))).read_all()]
    thumbs = os.path.join(folder, "thumbs.npy")
    if os.path.exists(thumbs):
        t = np.load(thumbs, mmap_mode="r")
        shard.thumbs = [t.reshape(len(t), -1)]
    return shard
