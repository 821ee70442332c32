"""Nearest-neighbour indexes over L2-normalised embeddings (ADIR, §3.3 eq. 19, §4).

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
``hnsw``/``ivf``/``ivfpq`` the search parameter (efSearch / nprobe) is set to the smallest
value whose recall reaches ``target_recall`` (default 0.95), found by bisection
(``index_builder.tuning.smallest_meeting``). The measured recall@K is stored in the JSON
manifest with the model, dim, metric, count, kind, parameters and build seconds.

Big builds: :func:`resolve_params` and :func:`train_empty` are the pieces that
``index_builder.sharded_index`` uses to train the coarse quantizer (and PQ) once on a
sample and let Ray actors encode their own shards against copies of it; :func:`merge_ivf`
merges IVF indexes filled from the same trained empty index (``faiss`` ``merge_from``).

Save/load: ``<uri>/index.json`` (manifest) + ``<uri>/index.faiss`` (``faiss.serialize_index``
bytes) or ``<uri>/vectors.npy`` (k-d tree: rebuilt on load, O(n log n)), through fsspec.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index_builder.tuning import exclude_self, recall_at_k, smallest_meeting
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


def gpu_if_available(index):
    """``faiss.index_cpu_to_gpu`` onto GPU 0 when this faiss build sees a GPU, else ``index``."""
    import faiss

    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


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
            try:
                faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
            except RuntimeError:  # a GPU IVF index (gpu_if_available) holds nprobe itself
                self.index.nprobe = int(self.params["nprobe"])

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
    def load(cls, uri: str) -> RetrievalIndex:
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


def train_empty(kind: str, sample: np.ndarray, params: dict):
    """An empty faiss index of ``kind`` (flat, hnsw, ivf, ivfpq), trained on ``sample`` for the
    IVF kinds (k-means quantizer and PQ codebooks; faiss seeds its k-means itself)."""
    import faiss

    d = sample.shape[1]
    if kind == "flat":
        return faiss.IndexFlatL2(d)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, params["M"])
        index.hnsw.efConstruction = params["efConstruction"]
        return index
    quantizer = faiss.IndexFlatL2(d)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_L2)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], params["nbits"])
    index.cp.niter = params.get("niter", 10)
    index.train(sample)
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


def resolve_params(kind: str, n: int, d: int, params: dict | None = None,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> tuple[str, dict, set]:
    """(kind, parameters, names the user fixed) for ``n`` × ``d`` vectors: ``auto`` resolved by
    :func:`choose_kind`, defaults filled, unknown names and impossible values refused."""
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; accepted: {', '.join(KINDS)}")
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
    return kind, p, set(user)


TUNED = {"hnsw": "efSearch", "ivf": "nprobe", "ivfpq": "nprobe"}


def tune_search(kind: str, params: dict, fixed: set, k: int, target: float,
                measure: Callable[[dict], float]) -> dict[str, Any]:
    """Set ``params``' search parameter to the smallest value meeting ``target`` recall
    (bisection, :func:`index_builder.tuning.smallest_meeting`) unless the user fixed it;
    ``measure(params)`` gives recall@K. Returns the manifest's ``recall`` entry."""
    tune = TUNED.get(kind)
    start = time.perf_counter()
    if tune is None or tune in fixed:
        value, trace = measure(params), {}
    else:
        hi = params["nlist"] if tune == "nprobe" else 4096
        lo = 1 if tune == "nprobe" else k

        def at(v: int) -> float:
            return measure({**params, tune: v})

        params[tune], value, trace = smallest_meeting(at, params[tune], lo, hi, target)
    return {"k": k, "value": round(value, 4), "tuned": tune if tune and tune not in fixed else None,
            "target": target, "trace": {str(v): round(r, 4) for v, r in sorted(trace.items())},
            "seconds": round(time.perf_counter() - start, 3)}


def index_manifest(kind: str, requested: str, d: int, n: int, params: dict, model: Any, build_seconds: float,
                   recall: dict, memory_budget: int) -> dict[str, Any]:
    """The JSON manifest stored next to an index (module doc)."""
    import faiss

    return {"model": model, "dim": d, "metric": METRIC, "count": n, "kind": kind, "requested_kind": requested,
            "params": params, "build_seconds": round(build_seconds, 3), "recall": recall,
            "memory_bytes": memory_estimate(kind, n, d, params), "memory_budget": memory_budget,
            "faiss_version": faiss.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def build_index(vectors, kind: str = "auto", *, model: Any = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                recall_k: int = 20, recall_queries: int = 500, queries=None, target_recall: float = 0.95,
                params: dict | None = None, seed: int = 0, add_chunk: int = 100_000,
                kdtree_recall_queries: int = 20) -> RetrievalIndex:
    """Build an index of ``kind`` over (n, d) unit vectors in this process and measure
    recall@``recall_k``.

    ``params`` overrides the defaults (hnsw: M, efConstruction, efSearch; ivf: nlist,
    nprobe, train_size, niter; ivfpq: + m, nbits; kdtree: leafsize, workers); a fixed
    efSearch/nprobe disables tuning. ``queries`` replaces the sampled recall queries.
    """
    x = _as_matrix(vectors)
    n, d = x.shape
    rng = np.random.default_rng(seed)
    requested = kind
    kind, p, fixed = resolve_params(kind, n, d, params, memory_budget)
    start = time.perf_counter()
    if kind == "kdtree":
        from scipy.spatial import cKDTree

        index = cKDTree(x, leafsize=p["leafsize"])
    else:
        index = train_empty(kind, _train_sample(x, p.get("train_size", n), rng), p)
        for s in range(0, n, add_chunk):
            index.add(x[s:s + add_chunk])
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
        exact = exclude_self(exact.astype(np.int64), self_ids, k)

        def measure(trial: dict) -> float:
            built.params = trial
            return recall_at_k(exclude_self(built.search(q, k + extra)[1], self_ids, k), exact)

        recall = tune_search(kind, p, fixed, k, target_recall, measure) | {"queries": len(q)}
        built.params = p
    built.manifest = index_manifest(kind, requested, d, n, p, model, build_seconds, recall, memory_budget)
    return built
