"""Nearest-neighbour indexes over L2-normalised embeddings (paper 000, §3.3 eq. 19, §4).

ADIR retrieves the K corpus images nearest to ξ(y) in spherical distance
φ(a, b) = 2·arcsin(½‖a − b‖₂) (eq. 19 as printed squares the norm; for unit vectors the
great-circle angle is 2·arcsin(½‖a − b‖), which we use — both are monotone in ‖a − b‖, so
the neighbours are the same). Ranking by Euclidean distance on unit vectors is therefore
exact for eq. 19, and every index here uses the L2 metric; ``search`` returns ‖a − b‖.

Kinds (``build_index(vectors, kind=...)``):

* ``flat``   — faiss ``IndexFlatL2``: exact brute force (BLAS), the reference.
* ``hnsw``   — faiss ``IndexHNSWFlat`` (M=32): graph search; ``efSearch`` tuned at build.
* ``ivf``    — faiss ``IndexIVFFlat``: k-means coarse quantizer (nlist ≈ √n·2, clipped to
  [16, 4096]), exact distances inside the probed lists; ``nprobe`` tuned at build.
* ``ivfpq``  — faiss ``IndexIVFPQ``: same quantizer, product-quantized codes (m sub-vectors
  of 8 bits) — the memory-bound choice (1.7M × 512 at m=64: ~120 MB instead of 3.5 GB).
* ``kdtree`` — ``scipy.spatial.cKDTree``: the paper's structure, kept as the baseline. In
  hundreds of dimensions a k-d tree degenerates towards a scan, which the benchmark shows.
* ``auto``   — the rule: n ≤ 100 000 → ``flat`` (exact and fast enough); otherwise, if the
  raw vectors fit ``memory_budget`` (default 8 GiB) → ``ivf``; otherwise ``ivfpq`` with
  the largest code size that fits. IVF rather than HNSW above 100k because on few cores its
  build is BLAS-bound (k-means on a sample + one assignment pass: minutes for 1.7M × 512)
  while HNSW insertion is serial graph search, and because IVF supports the big-build plan
  below; ``hnsw`` stays available by name.

Recall: at build, ``recall_queries`` vectors are sampled from the input (or given as
``queries``); their exact top-K (``faiss.knn``) is compared with the index's top-K, each
query's own row excluded from both, so the figure is that of an unseen query. For
``hnsw``/``ivf``/``ivfpq`` the search parameter (efSearch / nprobe) is raised until recall
reaches ``target_recall``. The measured recall@K is stored in the JSON manifest with the
model, dim, metric, count, kind, parameters and build seconds.

Big builds (train once, add shards, merge): IVF kinds train the coarse quantizer (and PQ)
once on a sample (``train_size``), then add vectors in chunks, so only the index itself and
one chunk are in memory; :func:`merge_ivf` merges IVF indexes that separate workers filled
from the same trained empty index (``faiss`` ``merge_from``), which is how embedding actors
can each index their own shards. We use this rather than ``IndexShards`` because the result
is one ordinary index file that any process loads, with no shard layout to carry around.

Save/load: ``<uri>/index.json`` (manifest) + ``<uri>/index.faiss`` (``faiss.serialize_index``
bytes) or ``<uri>/vectors.npy`` (k-d tree: rebuilt on load, O(n log n)), through fsspec.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from restore_core import storage
from restore_core.errors import ConfigError, InputError

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq", "kdtree")
FLAT_MAX_COUNT = 100_000
DEFAULT_MEMORY_BUDGET = 8 << 30
METRIC = "l2 on unit vectors; phi = 2*arcsin(0.5*||a-b||)"


def spherical_distance(euclidean: np.ndarray) -> np.ndarray:
    """φ = 2·arcsin(½‖a − b‖) of unit vectors from their Euclidean distance (eq. 19)."""
    return 2.0 * np.arcsin(np.clip(0.5 * np.asarray(euclidean, dtype=np.float64), 0.0, 1.0))


def _as_matrix(vectors, name: str = "vectors", dim: int | None = None) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise InputError(f"{name} must be a 2-D (count, dim) array; got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise InputError(f"{name} have dimension {x.shape[1]} but the index has dimension {dim}")
    if not np.isfinite(x).all():
        raise InputError(f"{name} contain NaN or inf values")
    return np.ascontiguousarray(x)


def default_nlist(n: int) -> int:
    """IVF list count: the power of two nearest 2·√n, clipped to [16, 4096] (n/16 when tiny)."""
    if n < 256:
        return max(1, n // 16)
    return int(min(4096, max(16, 2 ** round(math.log2(2 * math.sqrt(n))))))


def default_pq_m(dim: int, n: int, budget: int) -> int:
    """Largest sub-vector count m (dividing dim, ≤ dim/2) whose codes fit ``budget``."""
    for m in sorted((m for m in range(1, dim // 2 + 1) if dim % m == 0), reverse=True):
        if n * (m + 8) <= budget:
            return m
    return 1


def choose_kind(n: int, dim: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> str:
    """The ``auto`` rule (module doc): flat ≤ 100k; ivf if raw vectors fit; else ivfpq."""
    if n <= FLAT_MAX_COUNT:
        return "flat"
    if n * (dim * 4 + 8) * 1.1 <= memory_budget:
        return "ivf"
    return "ivfpq"


def memory_estimate(kind: str, n: int, dim: int, params: dict) -> int:
    """Approximate resident bytes of an index (vectors/codes + ids + structure)."""
    if kind == "flat":
        return n * dim * 4
    if kind == "hnsw":
        return n * (dim * 4 + params.get("M", 32) * 2 * 4 + 16)
    if kind == "ivf":
        return n * (dim * 4 + 8) + params["nlist"] * dim * 4
    if kind == "ivfpq":
        return n * (params["m"] + 8) + params["nlist"] * dim * 4 + 256 * dim * 4
    return n * (dim * 4 + 8) + (n // params.get("leafsize", 16) + 1) * 2 * 64


def _exclude_self(ids: np.ndarray, self_ids: np.ndarray | None, k: int) -> np.ndarray:
    if self_ids is None:
        return ids[:, :k]
    out = np.empty((ids.shape[0], k), dtype=np.int64)
    for r, (row, s) in enumerate(zip(ids, self_ids)):
        kept = row[row != s]
        out[r] = kept[:k] if kept.size >= k else np.pad(kept, (0, k - kept.size), constant_values=-1)
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-K present in the found top-K."""
    k = exact.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(e[e >= 0])) / k for f, e in zip(found, exact)]))


@dataclass
class RetrievalIndex:
    """A built index and its manifest; ``search`` gives Euclidean distances and row ids."""

    kind: str
    dim: int
    count: int
    index: Any  # faiss.Index or scipy cKDTree
    params: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances ‖q − v‖ float32 (nq, k), row ids int64 (nq, k)); −1 / inf pad if k > count."""
        q = _as_matrix(queries, "queries", self.dim)
        if k <= 0:
            raise InputError(f"k must be > 0, got {k}")
        kk = min(k, self.count)
        if self.kind == "kdtree":
            d, i = self.index.query(q, k=kk, workers=self.params.get("workers", 1))
            d, i = np.asarray(d, np.float32).reshape(len(q), kk), np.asarray(i, np.int64).reshape(len(q), kk)
        else:
            self._apply_search_params()
            d2, i = self.index.search(q, kk)
            d = np.sqrt(np.maximum(d2, 0)).astype(np.float32)
            i = i.astype(np.int64)
        if kk < k:
            d = np.pad(d, ((0, 0), (0, k - kk)), constant_values=np.inf)
            i = np.pad(i, ((0, 0), (0, k - kk)), constant_values=-1)
        return d, i

    def _apply_search_params(self) -> None:
        import faiss

        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params["efSearch"])
        elif self.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])

    def save(self, uri: str) -> None:
        """Write ``index.json`` and ``index.faiss`` (or ``vectors.npy``) under ``uri``."""
        import faiss

        storage.makedirs(uri)
        if self.kind == "kdtree":
            buf = io.BytesIO()
            np.save(buf, np.asarray(self.index.data, dtype=np.float32))
            storage.atomic_write_bytes(storage.join(uri, "vectors.npy"), buf.getvalue())
        else:
            storage.atomic_write_bytes(storage.join(uri, "index.faiss"), faiss.serialize_index(self.index).tobytes())
        storage.atomic_write_bytes(storage.join(uri, "index.json"), json.dumps(self.manifest, indent=1).encode())

    @classmethod
    def load(cls, uri: str) -> "RetrievalIndex":
        """Load an index saved by :meth:`save` from any fsspec URI."""
        import faiss

        manifest_uri = storage.join(uri, "index.json")
        if not storage.exists(manifest_uri):
            raise InputError(f"no index at {uri}: {manifest_uri} does not exist")
        manifest = json.loads(storage.read_bytes(manifest_uri))
        kind = manifest["kind"]
        if kind == "kdtree":
            from scipy.spatial import cKDTree

            vectors = np.load(io.BytesIO(storage.read_bytes(storage.join(uri, "vectors.npy"))))
            index = cKDTree(vectors, leafsize=manifest["params"].get("leafsize", 16))
        else:
            data = storage.read_bytes(storage.join(uri, "index.faiss"))
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(kind=kind, dim=int(manifest["dim"]), count=int(manifest["count"]), index=index,
                   params=dict(manifest["params"]), manifest=manifest)


def _train_sample(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= size else x[np.sort(rng.choice(len(x), size, replace=False))]


def _make_faiss(kind: str, x: np.ndarray, params: dict, rng: np.random.Generator, add_chunk: int):
    """Create, train (IVF kinds: once, on a sample) and fill a faiss index in chunks."""
    import faiss

    n, d = x.shape
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params["M"])
        index.hnsw.efConstruction = params["efConstruction"]
    else:
        quantizer = faiss.IndexFlatL2(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_L2)
        else:
            index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], params["nbits"])
        index.cp.niter = params.get("niter", 10)
        index.train(_train_sample(x, params["train_size"], rng))
    for start in range(0, n, add_chunk):
        index.add(x[start:start + add_chunk])
    return index


def merge_ivf(parts: list) -> Any:
    """Merge IVF indexes filled (by different workers) from copies of one trained empty index.

    Row ids continue in the order of ``parts`` (faiss ``merge_from`` shifts the ids)."""
    import faiss

    if not parts:
        raise InputError("merge_ivf needs at least one index")
    merged = faiss.clone_index(parts[0])
    for other in parts[1:]:
        merged.merge_from(other, merged.ntotal)
    return merged


def build_index(vectors, kind: str = "auto", *, model: Any = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                recall_k: int = 20, recall_queries: int = 500, queries=None, target_recall: float = 0.97,
                params: dict | None = None, seed: int = 0, add_chunk: int = 100_000,
                kdtree_recall_queries: int = 20) -> RetrievalIndex:
    """Build an index of ``kind`` over (n, d) unit vectors and measure recall@``recall_k``.

    ``params`` overrides the defaults (hnsw: M, efConstruction, efSearch; ivf: nlist,
    nprobe, train_size, niter; ivfpq: + m, nbits; kdtree: leafsize, workers); a fixed
    efSearch/nprobe disables tuning. ``queries`` replaces the sampled recall queries.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; accepted: {', '.join(KINDS)}")
    x = _as_matrix(vectors)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    requested = kind
    if kind == "auto":
        kind = choose_kind(n, d, memory_budget)
    user = dict(params or {})
    p: dict[str, Any] = {}
    if kind == "hnsw":
        p = {"M": 32, "efConstruction": 80, "efSearch": 64}
    elif kind in ("ivf", "ivfpq"):
        nlist = user.get("nlist", default_nlist(n))
        p = {"nlist": nlist, "nprobe": 8, "train_size": min(n, max(64 * nlist, 50_000)) if n > 1000 else n,
             "niter": 10}
        if kind == "ivfpq":
            p.update(m=default_pq_m(d, n, memory_budget), nbits=8)
    elif kind == "kdtree":
        p = {"leafsize": 16, "workers": 1}
    unknown = set(user) - set(p)
    if unknown:
        raise ConfigError(f"unknown {kind} parameter(s) {sorted(unknown)}; accepted: {', '.join(sorted(p)) or 'none'}")
    p.update(user)
    if kind == "ivfpq" and d % p["m"]:
        raise ConfigError(f"ivfpq m={p['m']} must divide the dimension {d}")
    if kind in ("ivf", "ivfpq") and n < p["nlist"]:
        raise InputError(f"{kind} with nlist={p['nlist']} needs at least that many vectors; got {n}")

    start = time.perf_counter()
    if kind == "kdtree":
        from scipy.spatial import cKDTree

        index = cKDTree(x, leafsize=p["leafsize"])
    else:
        index = _make_faiss(kind, x, p, rng, add_chunk)
    built = RetrievalIndex(kind=kind, dim=d, count=n, index=index, params=p)
    build_seconds = time.perf_counter() - start

    # recall@K against exact search on held-out queries (own row excluded when sampled)
    k = min(recall_k, n - 1) if queries is None else min(recall_k, n)
    recall: dict[str, Any] = {"k": k, "queries": 0, "value": None}
    if k >= 1:
        if queries is None:
            n_q = min(recall_queries if kind != "kdtree" else min(recall_queries, kdtree_recall_queries), n)
            self_ids = np.sort(rng.choice(n, n_q, replace=False)).astype(np.int64)
            q = x[self_ids]
        else:
            q = _as_matrix(queries, "queries", d)
            self_ids = None
        extra = 0 if self_ids is None else 1
        import faiss

        _, exact = faiss.knn(q, x, k + extra)
        exact = _exclude_self(exact.astype(np.int64), self_ids, k)

        def measure() -> float:
            return recall_at_k(_exclude_self(built.search(q, k + extra)[1], self_ids, k), exact)

        tune = {"hnsw": "efSearch", "ivf": "nprobe", "ivfpq": "nprobe"}.get(kind)
        tune_start = time.perf_counter()
        value = measure()
        if tune and tune not in user:
            limit = p["nlist"] if tune == "nprobe" else 4096
            while value < target_recall and p[tune] < limit:
                p[tune] = min(limit, p[tune] * 2)
                value = measure()
        recall.update(queries=len(q), value=round(value, 4), tuned=tune if tune and tune not in user else None,
                      target=target_recall, seconds=round(time.perf_counter() - tune_start, 3))
    import faiss

    built.manifest = {
        "model": model, "dim": d, "metric": METRIC, "count": n, "kind": kind, "requested_kind": requested,
        "params": p, "build_seconds": round(build_seconds, 3), "recall": recall,
        "memory_bytes": memory_estimate(kind, n, d, p), "memory_budget": memory_budget,
        "faiss_version": faiss.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return built
