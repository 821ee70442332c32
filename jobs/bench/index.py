"""``adir bench index``: retrieval index speed/recall (P1), embedding build scaling (P4), and
retrieval of degraded queries.

* ``--what p1`` — synthetic vectors (see :func:`clustered_vectors`), default 1.7M × 512 like
  Open Images under a 512-d CLIP. Exact ``flat`` (faiss) vs the index ``auto`` picks vs
  scipy ``cKDTree`` (the paper's structure). Held-out queries from the same generator:
  half tune the auto index (efSearch/nprobe), the other half measure it. Reports recall@K,
  ms/query batched (all queries in one call) and single (one query per call), build
  seconds and index memory (estimate and the process RSS growth). cKDTree is timed on
  ``--kdtree-queries`` single queries (it is slow). ``--n`` runs it smaller.
* ``--what shards`` — writes ``--n`` generator vectors as clip-retrieval shards
  (``img_emb/img_emb_N.npy`` + ``metadata/metadata_N.parquet``, ``--shard-rows`` each) under
  ``--shards-dir``, one shard at a time, in a child process.
* ``--what sharded`` — ``index_builder.sharded_index`` over those shards on ``--workers`` Ray
  actors: build seconds, driver peak RSS (``ru_maxrss`` of this process, measured before
  anything else is loaded), the build's recall; then, loading the parts in this process,
  recall@K on held-out generator queries against exact search (streamed shard by shard),
  ms/query single and batched, and cKDTree over the same vectors unless ``--no-kdtree``.
* ``--what serving`` — the three ways restore actors reach a parts-layout index
  (``--index``, default ``<output>/sharded_index``, e.g. the ``sharded`` bench's), each
  from ``--actors`` Ray actors standing in for restore actors (one faiss thread each):
  ``load`` (each actor loads the whole index; one actor is measured, the cost is per
  actor), ``servers`` (``--workers`` shard servers, pre-sized; the actors query them) and
  ``mmap`` (the node copy, written once by the first actor, mapped by all). Per option:
  open seconds, ms/query single and batched on the ``--queries`` held-out queries, ms per
  row's lookup (one query + its K rows), the actors' memory (RSS, PSS, USS, anonymous, from
  ``/proc/self/smaps_rollup``; grown since before the open = the index state) after the
  queries and again after one query has scanned every list (``nprobe = nlist``: what a long
  job eventually touches), the servers' RSS against their code bytes, and whether every
  option returns the same neighbours (each option's are kept in ``<output>/serving-ids/``,
  and options measured by separate runs accumulate in ``serving.json``).
* ``--what p4`` — the Ray embedding build of the same crop corpus with 1 and then 2 workers;
  images/s and images/s per worker (actor start-up excluded).
* ``--what degraded`` — a corpus of clean crops of every bundled photo; queries are held-out
  crops (other seeds, the held-out photos) degraded by each task (``restore_core.operators``);
  recall@K = fraction of the K retrieved crops that share the query's source photo.

Writes the JSON of each part to ``--output`` (default ``runs/bench_index``). Examples::

    adir bench index --what p1                  # full scale (heavy: ~10+ GB RAM, minutes)
    adir bench index --what p1 --n 200000
    adir bench index --what p4 --images 256
    adir bench index --what degraded -k 20
    adir bench index --what serving --index OUT/sharded_index --output OUT --actors 4
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("adir.bench_index")
DEGRADED_TASKS = ("sr4", "sr8", "deblur_box5", "deblur_gauss", "colorize")



def kdtree_baseline(x: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int, n_queries: int) -> dict:
    """scipy's cKDTree over ``x``: build time, and recall and single-query ms over the first
    ``n_queries`` queries (exact search, so recall is 1 up to ties): the speed reference."""
    from scipy.spatial import cKDTree

    from index_builder.tuning import recall_at_k

    start = time.perf_counter()
    tree = cKDTree(x, leafsize=16)
    build = time.perf_counter() - start
    start = time.perf_counter()
    ids = np.stack([tree.query(r, k=k)[1] for r in queries[:n_queries]])
    single = (time.perf_counter() - start) / n_queries * 1000
    return {"recall": round(recall_at_k(ids, exact[:n_queries]), 4), "ms_per_query_single": round(single, 1),
            "queries_timed": n_queries, "build_seconds": round(build, 2)}

def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--what", default="p1", choices=("p1", "p4", "degraded", "shards", "sharded", "serving"))
    p.add_argument("--index", default=None, help="serving: parts-layout index (default <output>/sharded_index)")
    p.add_argument("--serving", default="servers,load,mmap", help="serving: options to measure, in order")
    p.add_argument("--actors", type=int, default=4, help="serving: restore-actor stand-ins (servers, mmap)")
    p.add_argument("--shards-dir", default="runs/bench_index/shards", help="shards/sharded: the shard folder")
    p.add_argument("--shard-rows", type=int, default=100_000, help="shards: rows per shard")
    p.add_argument("--workers", type=int, default=2, help="sharded: index-building actors")
    p.add_argument("--n", type=int, default=1_700_000, help="P1: vector count")
    p.add_argument("--dim", type=int, default=512, help="P1: dimension")
    p.add_argument("--clusters", type=int, default=2000, help="P1: cluster count of the generator")
    p.add_argument("--queries", type=int, default=1000, help="P1: held-out queries (half tune, half measure)")
    p.add_argument("--kdtree-queries", type=int, default=5, help="P1: single queries timed on cKDTree")
    p.add_argument("--no-kdtree", action="store_true", help="P1: skip the cKDTree baseline")
    p.add_argument("--kind", default="auto", help="P1: index kind compared with flat and cKDTree")
    p.add_argument("-k", type=int, default=20, help="recall@K")
    p.add_argument("--images", type=int, default=192, help="P4: corpus size (crops)")
    p.add_argument("--shard-size", type=int, default=16, help="P4: images per shard")
    p.add_argument("--per-photo", type=int, default=40, help="degraded: corpus crops per photo")
    p.add_argument("--degraded-queries", type=int, default=60, help="degraded: queries per task")
    p.add_argument("--embedder", default=None, help="embedder spec/folder (default models/embedder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="runs/bench_index")


def clustered_vectors(n: int, dim: int, clusters: int = 2000, seed: int = 0, members_seed: int | None = None,
                      chunk: int = 100_000) -> np.ndarray:
    """Synthetic "embeddings": anisotropic, clustered, L2-normalised float32 (n, dim).

    Generator: a global power-law spectrum s_j = (1 + j)^-0.5 over dimensions (real CLIP
    embeddings have a few dominant directions); ``clusters`` centres c ~ N(0, diag(s²));
    cluster sizes Zipf-like (weights 1/(rank+1)^0.5); a member is c + 0.5·(s ⊙ a_c ⊙ ε)
    with a per-cluster random axis scale a_c ~ U(0.3, 1.5)^dim (so each cluster is itself
    anisotropic) and ε ~ N(0, I); every row is normalised to unit length. Deterministic per
    ``seed`` (the clusters) and ``members_seed`` (the draws; default ``seed``): held-out
    queries are the same clusters with another ``members_seed``. Generated in chunks so
    memory is the output only.
    """
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(dim)) ** -0.5
    centres = rng.standard_normal((clusters, dim)) * spectrum
    axes = rng.uniform(0.3, 1.5, size=(clusters, dim)) * spectrum * 0.5
    weights = 1.0 / np.sqrt(1.0 + np.arange(clusters))
    weights /= weights.sum()
    rng = np.random.default_rng(seed if members_seed is None else members_seed + 7919)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        c = rng.choice(clusters, size=m, p=weights)
        x = centres[c] + axes[c] * rng.standard_normal((m, dim))
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _time_single(search, q: np.ndarray, k: int) -> float:
    start = time.perf_counter()
    for row in q:
        search(row[None], k)
    return (time.perf_counter() - start) / len(q) * 1000


def bench_p1(args) -> dict:
    import faiss

    from index_builder.index import build_index, recall_at_k

    faiss.omp_set_num_threads(os.cpu_count() or 1)  # all cores for faiss; torch stays at 1
    k = args.k
    t0 = time.perf_counter()
    x = clustered_vectors(args.n, args.dim, args.clusters, seed=args.seed)
    q = clustered_vectors(args.queries, args.dim, args.clusters, seed=args.seed, members_seed=args.seed + 1)
    log.info("generated %d x %d vectors + %d queries in %.1f s", args.n, args.dim, len(q), time.perf_counter() - t0)
    tune_q, eval_q = q[: len(q) // 2], q[len(q) // 2:]
    result = {"n": args.n, "dim": args.dim, "clusters": args.clusters, "k": k, "queries_eval": len(eval_q),
              "threads": faiss.omp_get_max_threads()}

    start = time.perf_counter()
    _, exact = faiss.knn(eval_q, x, k)
    batched = (time.perf_counter() - start) / len(eval_q) * 1000
    # exact flat search = faiss.knn over x (what IndexFlatL2 runs, without copying 3.5 GB)
    single = _time_single(lambda r, kk: faiss.knn(r, x, kk), eval_q[:20], k)
    result["flat"] = {"recall": 1.0, "ms_per_query_batched": round(batched, 3), "ms_per_query_single": round(single, 3),
                      "build_seconds": 0.0, "memory_bytes": x.nbytes}
    log.info("flat: %.2f ms/query batched, %.2f single", batched, single)

    rss0 = _rss_bytes()
    index = build_index(x, args.kind, queries=tune_q, recall_k=k)
    rss = _rss_bytes() - rss0
    start = time.perf_counter()
    _, ids = index.search(eval_q, k)
    batched = (time.perf_counter() - start) / len(eval_q) * 1000
    single = _time_single(index.search, eval_q[:200], k)
    m = index.manifest
    result["auto"] = {"kind": m["kind"], "params": m["params"], "recall": round(recall_at_k(ids, exact), 4),
                      "recall_tuning_queries": m["recall"]["value"], "ms_per_query_batched": round(batched, 3),
                      "ms_per_query_single": round(single, 3), "build_seconds": m["build_seconds"],
                      "tune_seconds": m["recall"]["seconds"], "memory_bytes": m["memory_bytes"], "rss_growth_bytes": rss}
    log.info("%s: %s", m["kind"], result["auto"])
    del index
    gc.collect()

    if not args.no_kdtree:
        result["kdtree"] = kdtree_baseline(x, eval_q, exact, k, args.kdtree_queries) | {
            "memory_bytes": x.nbytes + 8 * args.n}
        kd_single = result["kdtree"]["ms_per_query_single"]
        result["speedup_auto_vs_kdtree_single"] = round(kd_single / result["auto"]["ms_per_query_single"], 1)
        log.info("kdtree: %s", result["kdtree"])
    return result


def _write_shards(args) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for folder in ("img_emb", "metadata"):
        os.makedirs(os.path.join(args.shards_dir, folder), exist_ok=True)
    for s, start in enumerate(range(0, args.n, args.shard_rows)):
        rows = min(args.shard_rows, args.n - start)
        x = clustered_vectors(rows, args.dim, args.clusters, seed=args.seed, members_seed=args.seed + 1000 + s)
        np.save(os.path.join(args.shards_dir, "img_emb", f"img_emb_{s}.npy"), x)
        pq.write_table(pa.table({"image_path": [f"/synthetic/{start + i:07d}.jpg" for i in range(rows)]}),
                       os.path.join(args.shards_dir, "metadata", f"metadata_{s}.parquet"))


def bench_shards(args) -> dict:
    """Write the shards in a child process (so no parent RSS is spent on them)."""
    import multiprocessing

    start = time.perf_counter()
    child = multiprocessing.get_context("spawn").Process(target=_write_shards, args=(args,))
    child.start()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"shard writer failed (exit {child.exitcode})")
    return {"n": args.n, "dim": args.dim, "shard_rows": args.shard_rows, "dir": args.shards_dir,
            "seconds": round(time.perf_counter() - start, 1)}


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_sharded(args) -> dict:
    import faiss
    import ray

    from index_builder.embedding_source import open_source
    from index_builder.serving import ShardIndex, start_shard_servers
    from index_builder.sharded_index import build_from_shards
    from index_builder.tuning import merge_topk, recall_at_k

    shards = open_source(args.shards_dir)
    k, out = args.k, os.path.join(args.output, "sharded_index")
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rss_before = _peak_rss()
    start = time.perf_counter()
    m = build_from_shards(shards, out, args.kind, workers=args.workers, recall_k=k,
                          cpus_per_worker=max(0.1, (os.cpu_count() or 1) / (args.workers + 1)))
    result = {"n": m["count"], "dim": m["dim"], "kind": m["kind"], "params": m["params"], "workers": args.workers,
              "build_seconds": round(time.perf_counter() - start, 1), "driver_peak_rss_bytes": _peak_rss(),
              "driver_peak_rss_before_build_bytes": rss_before, "build_recall": m["recall"],
              "parts": len(m["parts"]), "memory_bytes_estimate": m["memory_bytes"]}
    log.info("sharded build: %s", result)
    q = clustered_vectors(args.queries, args.dim, args.clusters, seed=args.seed, members_seed=args.seed + 1)
    fan = start_shard_servers(out, args.workers, cpus=max(0.1, (os.cpu_count() or 1) / (args.workers + 1)))
    start = time.perf_counter()
    fan_ids = fan.search(q, k)[1]
    fan_batched = (time.perf_counter() - start) / len(q) * 1000
    result["fan_out"] = {"servers": len(fan.shards), "server_rss_bytes": [s["rss_bytes"] for s in fan.server_stats],
                         "ms_per_query_batched": round(fan_batched, 3),
                         "ms_per_query_single": round(_time_single(fan.search, q[:100], k), 3)}
    log.info("fan-out: %s", result["fan_out"])
    ray.shutdown()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    exact = []
    for s, shard in zip(shards, np.cumsum([0] + [x.rows for x in shards[:-1]])):
        d2, i = faiss.knn(q, s.read().vectors, k)
        exact.append((np.sqrt(np.maximum(d2, 0)), i + shard))
    exact_ids = merge_topk(exact, k)[1]
    index = ShardIndex.from_parts(out)
    start = time.perf_counter()
    ids = index.search(q, k)[1]
    batched = (time.perf_counter() - start) / len(q) * 1000
    single = _time_single(index.search, q[:200], k)
    result["fan_out"]["equals_merged"] = bool(np.array_equal(fan_ids, ids))
    result["heldout"] = {"queries": len(q), "recall": round(recall_at_k(ids, exact_ids), 4),
                         "ms_per_query_batched": round(batched, 3), "ms_per_query_single": round(single, 3),
                         "threads": faiss.omp_get_max_threads()}
    log.info("held-out: %s", result["heldout"])
    del index
    gc.collect()
    if not args.no_kdtree:
        x = np.concatenate([s.read().vectors for s in shards])
        result["kdtree"] = kdtree_baseline(x, q, exact_ids, k, args.kdtree_queries)
        kd_single = result["kdtree"]["ms_per_query_single"]
        result["speedup_vs_kdtree_single"] = round(kd_single / single, 1)
        result["speedup_vs_kdtree_batched"] = round(kd_single / batched, 1)
    return result


class ServingProbe:
    """Ray actor body of ``--what serving``: a restore actor's view of the index, opened one
    way; memory is measured against the process before the open (libraries imported)."""

    def __init__(self):
        import faiss

        from index_builder import node_copy, serving  # noqa: F401  (imported before the baseline)

        faiss.omp_set_num_threads(1)
        self.base = serving.process_memory()

    def open(self, index_uri: str, option: str, cache: str, name: str | None = None, servers: int = 0) -> float:
        from index_builder import node_copy, serving

        start = time.perf_counter()
        if option == "load":
            self.index = serving.ShardIndex.from_parts(index_uri, threads=1)
        elif option == "mmap":
            self.index = node_copy.open_mapped(index_uri, cache)
        else:
            self.index = serving.connect(index_uri, name, servers)
        return time.perf_counter() - start

    def query(self, q: np.ndarray, k: int) -> dict:
        start = time.perf_counter()
        ids = self.index.search(q, k)[1]
        batched = (time.perf_counter() - start) / len(q) * 1000
        single = _time_single(self.index.search, q[:100], k)
        start = time.perf_counter()
        for row in q[:100]:
            self.index.rows(self.index.search(row[None], k)[1][0])
        lookup = (time.perf_counter() - start) / min(100, len(q)) * 1000
        return {"ids": ids, "ms_per_query_batched": round(batched, 3), "ms_per_query_single": round(single, 3),
                "ms_per_row_lookup": round(lookup, 3)}

    def scan_all(self, q: np.ndarray, k: int, nlist: int) -> None:
        self.index.search(q[:1], k, {"nprobe": nlist})

    def memory(self) -> dict:
        from index_builder.serving import process_memory

        now = process_memory()
        return now | {f"index_{key}": now[key] - self.base[key] for key in now}


def bench_serving(args) -> dict:
    import ray

    from index_builder.serving import read_manifest, start_shard_servers

    index_uri = args.index or os.path.join(args.output, "sharded_index")
    m = read_manifest(index_uri)
    k, cache = args.k, os.path.join(args.output, "cache")
    q = clustered_vectors(args.queries, m["dim"], args.clusters, seed=args.seed, members_seed=args.seed + 1)
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    probe = ray.remote(num_cpus=0)(ServingProbe)
    gib = 2 ** 30
    result: dict = {"n": m["count"], "dim": m["dim"], "kind": m["kind"], "params": m["params"], "k": k,
                    "queries": len(q), "actors": args.actors}
    previous = Path(args.output) / "serving.json"
    if previous.exists() and json.loads(previous.read_text()).get("index") == index_uri:
        result = json.loads(previous.read_text()) | result
    result["index"] = index_uri
    ids_dir = Path(args.output) / "serving-ids"
    ids_dir.mkdir(parents=True, exist_ok=True)
    for option in args.serving.split(","):
        servers, extra = [], {}
        if option == "servers":
            start = time.perf_counter()
            fan = start_shard_servers(index_uri, args.workers, name="bench-serving", cpus=0, threads=1)
            servers = fan.shards
            extra = {"servers": [{"rows": s["rows"], "code_gib": round(s["code_bytes"] / gib, 3),
                                  "rss_gib": round(s["rss_bytes"] / gib, 3),
                                  "rss_over_codes": round(s["rss_bytes"] / s["code_bytes"], 3)}
                                 for s in fan.server_stats], "start_seconds": round(time.perf_counter() - start, 1)}
        n_actors = 1 if option == "load" else args.actors
        actors = [probe.remote() for _ in range(n_actors)]
        opened = [ray.get(actors[0].open.remote(index_uri, option, cache, "bench-serving", len(servers)))]
        opened += ray.get([a.open.remote(index_uri, option, cache, "bench-serving", len(servers))
                           for a in actors[1:]])
        answers = [ray.get(a.query.remote(q, k)) for a in actors]  # one at a time: latency uncontended
        memory = ray.get([a.memory.remote() for a in actors])
        if m["kind"] in ("ivf", "ivfpq"):
            ray.get([a.scan_all.remote(q, k, m["params"]["nlist"]) for a in actors])
        scanned = ray.get([a.memory.remote() for a in actors])
        ids = answers[0].pop("ids")
        np.save(ids_dir / f"{option}.npy", ids)
        same = {p.stem: bool(np.array_equal(np.load(p), ids)) for p in sorted(ids_dir.glob("*.npy"))
                if p.stem != option}
        result[option] = extra | {
            "open_seconds": [round(x, 2) for x in opened],
            "actors_agree": all(np.array_equal(a.pop("ids"), ids) for a in answers[1:]),
            "same_neighbours_as": same,
            **answers[0],
            "actor_gib_after_queries": _memory_gib(memory),
            "actor_gib_after_full_scan": _memory_gib(scanned)}
        log.info("%s: %s", option, result[option])
        for a in actors + servers:
            ray.kill(a)
    ray.shutdown()
    return result


def _memory_gib(stats: list[dict]) -> dict:
    """Per-actor memory lists in GiB, for the keys of ``ServingProbe.memory``."""
    return {key: [round(s[key] / 2 ** 30, 3) for s in stats] for key in stats[0]}


def bench_p4(args) -> dict:
    import ray

    from index_builder.corpus import folder_manifest
    from index_builder.embedder import normalize_spec
    from index_builder.shard_build import build_embeddings
    from restore_core.bundled_photos import export_crops

    spec = normalize_spec(args.embedder)
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    out: dict = {"images": args.images, "shard_size": args.shard_size, "embedder": spec["model"]}
    with tempfile.TemporaryDirectory() as tmp:
        export_crops(os.path.join(tmp, "photos"), "train", args.images, 128, seed=args.seed)
        manifest = folder_manifest(os.path.join(tmp, "photos"))
        for workers in (1, 2):
            s = build_embeddings(manifest, os.path.join(tmp, f"w{workers}"), spec, workers=workers,
                                 shard_size=args.shard_size)
            out[f"workers_{workers}"] = {k: round(s[k], 3) for k in ("images_per_s", "images_per_s_per_worker",
                                                                      "seconds", "startup_seconds")}
    out["speedup"] = round(out["workers_2"]["images_per_s"] / out["workers_1"]["images_per_s"], 3)
    return out


def bench_degraded(args) -> dict:
    import torch

    from index_builder.embedder import load_embedder
    from index_builder.index import build_index
    from restore_core.bundled_photos import ALL_PHOTOS, HELDOUT_PHOTOS, random_crops
    from restore_core.operators import build_operator

    size = 64
    emb = load_embedder(args.embedder, device="cpu")
    corpus, sources = [], []
    for i, name in enumerate(ALL_PHOTOS):
        crops, _ = random_crops((name,), args.per_photo, size, seed=args.seed * 1000 + i, scales=(0.25, 1.0))
        corpus.append(crops)
        sources += [name] * args.per_photo
    index = build_index(emb.embed(torch.cat(corpus)), "auto", recall_k=args.k)
    src = np.array(sources)
    queries, q_src = random_crops(HELDOUT_PHOTOS, args.degraded_queries, size, seed=args.seed + 99, scales=(0.25, 1.0))
    out = {"embedder": emb.spec, "corpus": len(src), "k": args.k, "queries": len(q_src), "recall": {}}
    chance = float(np.mean([(src == s).mean() for s in q_src]))
    out["chance"] = round(chance, 4)
    for task in ("clean",) + DEGRADED_TASKS:
        if task == "clean":
            y = queries
        else:
            op = build_operator(task, (3, size, size))
            with torch.no_grad():
                y = op.degrade(queries, 0.0, torch.Generator().manual_seed(args.seed))
        _, ids = index.search(emb.embed(y), args.k)
        out["recall"][task] = round(float(np.mean([(src[row] == s).mean() for row, s in zip(ids, q_src)])), 4)
    return out


def main(args: argparse.Namespace) -> int:
    if args.what not in ("shards", "sharded", "serving"):  # those never load torch (driver RSS is measured)
        import torch

        torch.set_num_threads(1)
    runner = {"p1": bench_p1, "p4": bench_p4, "degraded": bench_degraded, "shards": bench_shards,
              "sharded": bench_sharded, "serving": bench_serving}[args.what]
    result = runner(args)
    result["command"] = "adir " + " ".join(sys.argv[1:])
    Path(args.output).mkdir(parents=True, exist_ok=True)
    path = Path(args.output) / f"{args.what}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))
    return 0
