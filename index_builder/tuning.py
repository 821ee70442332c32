"""Recall@K against exact search, exact top-K merging, and the search-parameter bisection.

Shared by the single-process build (``index_builder.index.build_index``) and the sharded
one (``index_builder.sharded_index``), and by fan-out serving (``index_builder.serving``):

* :func:`merge_topk` — the exact merge of per-shard top-K lists: every shard returns its own
  K nearest with global row ids; the union's K smallest distances are the global top-K
  (each true neighbour is in its own shard's top-K). Ties break by row id, so a sharded
  and a single index agree row for row.
* :func:`exclude_self` / :func:`recall_at_k` — recall of sampled corpus queries with their
  own row removed from both lists (the figure of an unseen query).
* :func:`smallest_meeting` — the smallest integer search parameter (IVF ``nprobe``, HNSW
  ``efSearch``) whose recall reaches the target: gallop up by doubling until the target is
  met, then bisect between the last miss and the first hit. Recall is non-decreasing in
  ``nprobe`` for IVF (a larger probe set is a superset of candidates), which is what makes
  bisection valid; doubling alone overshoots by up to 2×, and search time is linear in it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Global top-``k`` (distances ascending, ids) from per-shard (distances, ids) of equal
    query count; −1 ids (padding) sort last. Ties break by the smaller id."""
    d = np.concatenate([p[0] for p in parts], axis=1).astype(np.float64)
    i = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64)
    d = np.where(i < 0, np.inf, d)
    order = np.lexsort((np.where(i < 0, np.iinfo(np.int64).max, i), d), axis=1)[:, :k]
    d_out = np.take_along_axis(d, order, 1).astype(np.float32)
    i_out = np.take_along_axis(i, order, 1)
    if d_out.shape[1] < k:
        pad = k - d_out.shape[1]
        d_out = np.pad(d_out, ((0, 0), (0, pad)), constant_values=np.inf)
        i_out = np.pad(i_out, ((0, 0), (0, pad)), constant_values=-1)
    return d_out, i_out


def exclude_self(ids: np.ndarray, self_ids: np.ndarray | None, k: int) -> np.ndarray:
    """Each row's ids without the query's own row, cut (or −1 padded) to ``k``."""
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


def smallest_meeting(measure: Callable[[int], float], start: int, lo: int, hi: int,
                     target: float) -> tuple[int, float, dict[int, float]]:
    """Smallest ``p`` in [lo, hi] with ``measure(p) >= target`` (module doc), its value, and
    every measurement made. When even ``hi`` misses, returns ``hi``."""
    seen: dict[int, float] = {}

    def at(p: int) -> float:
        if p not in seen:
            seen[p] = measure(p)
        return seen[p]

    p = min(max(start, lo), hi)
    if at(p) >= target:
        ok, bad = p, lo - 1
    else:
        bad = p
        while p < hi:
            p = min(hi, p * 2)
            if at(p) >= target:
                break
            bad = p
        if at(p) < target:
            return p, seen[p], seen
        ok = p
    while ok - bad > 1:
        mid = (ok + bad) // 2
        if at(mid) >= target:
            ok = mid
        else:
            bad = mid
    return ok, seen[ok], seen
