"""index_builder.index: every kind finds in-index vectors, recall in the manifest, save/load, errors."""

import json

import numpy as np
import pytest

from index_builder.index import (
    KINDS,
    RetrievalIndex,
    build_index,
    choose_kind,
    merge_ivf,
    spherical_distance,
)
from index_builder.tuning import merge_topk, smallest_meeting
from restore_core.errors import ConfigError, InputError

PARAMS = {"ivfpq": {"m": 8, "nbits": 4}, "ivf": {}, "hnsw": {}, "flat": {}, "kdtree": {}, "auto": {}}


@pytest.fixture(scope="module")
def vectors():
    """Clustered unit vectors (20 clusters in 16-d), like embeddings of a photo corpus."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    x = centres[rng.integers(20, size=800)] + 0.3 * rng.standard_normal((800, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_finds_in_index_vectors_and_round_trips(vectors, kind, tmp_path):
    index = build_index(vectors, kind, params=PARAMS[kind], recall_k=10, model={"model": "m"})
    rows = np.arange(0, 800, 37)
    d, ids = index.search(vectors[rows], 5)
    assert np.array_equal(ids[:, 0], rows)  # exact top-1 for a vector in the index
    assert d.shape == (len(rows), 5) and np.all(np.diff(d, axis=1) >= -1e-6)
    m = index.manifest
    assert m["kind"] == (choose_kind(800, 16) if kind == "auto" else kind) and m["count"] == 800 and m["dim"] == 16
    assert m["recall"]["k"] == 10 and m["recall"]["queries"] > 0 and 0.5 <= m["recall"]["value"] <= 1.0
    assert m["build_seconds"] >= 0 and m["model"] == {"model": "m"}
    uri = f"file://{tmp_path}/index"
    index.save(uri)
    assert json.loads((tmp_path / "index" / "index.json").read_text())["recall"] == m["recall"]
    loaded = RetrievalIndex.load(uri)
    d2, ids2 = loaded.search(vectors[rows], 5)
    assert np.array_equal(ids2, ids) and np.allclose(d2, d, atol=1e-5)


def test_auto_rule_and_recall_tuning(vectors):
    assert choose_kind(50_000, 512) == "flat"
    assert choose_kind(1_700_000, 512) == "ivf"
    assert choose_kind(1_700_000, 512, memory_budget=1 << 30) == "ivfpq"
    ivf = build_index(vectors, "ivf", params={"nlist": 32}, target_recall=0.99)
    nprobe = ivf.params["nprobe"]
    assert ivf.manifest["recall"]["value"] >= 0.99 and ivf.manifest["recall"]["tuned"] == "nprobe"
    # bisection: the smallest nprobe meeting the target, so one fewer misses it
    below = build_index(vectors, "ivf", params={"nlist": 32, "nprobe": nprobe - 1})
    assert nprobe > 1 and below.manifest["recall"]["value"] < 0.99
    fixed = build_index(vectors, "ivf", params={"nlist": 32, "nprobe": 1})
    assert fixed.params["nprobe"] == 1 and fixed.manifest["recall"]["value"] < ivf.manifest["recall"]["value"]


def test_smallest_meeting_bisects_and_merge_topk_is_exact():
    calls = []

    def recall(p):
        calls.append(p)
        return min(1.0, p / 37)

    value, r, _ = smallest_meeting(recall, 8, 1, 256, 0.95)
    assert value == 36 and r >= 0.95 and len(calls) == len(set(calls)) <= 10
    assert smallest_meeting(recall, 8, 1, 16, 0.95)[0] == 16  # target out of reach: the limit
    rng = np.random.default_rng(1)
    d = rng.random((3, 40)).astype(np.float32)
    ids = np.tile(np.arange(40), (3, 1))
    parts = [(np.sort(d[:, s:s + 10]), ids[:, s:s + 10][np.arange(3)[:, None], np.argsort(d[:, s:s + 10])])
             for s in range(0, 40, 10)]
    md, mi = merge_topk(parts, 5)
    assert np.array_equal(mi, np.argsort(d, axis=1)[:, :5]) and np.allclose(md, np.sort(d)[:, :5])


def test_merged_ivf_equals_single_build(vectors):
    import faiss

    base = build_index(vectors, "ivf", params={"nlist": 16, "nprobe": 16})
    empty = faiss.clone_index(base.index)
    empty.reset()
    parts = []
    for chunk in (vectors[:300], vectors[300:]):
        part = faiss.clone_index(empty)
        part.add(chunk)
        parts.append(part)
    merged = RetrievalIndex("ivf", 16, 800, merge_ivf(parts), dict(base.params))
    assert np.array_equal(merged.search(vectors[:50], 5)[1], base.search(vectors[:50], 5)[1])


def test_index_bad_inputs(vectors, tmp_path):
    index = build_index(vectors, "flat")
    with pytest.raises(InputError, match="dimension 8 but the index has dimension 16"):
        index.search(np.ones((2, 8), np.float32), 3)
    with pytest.raises(InputError, match="no index at"):
        RetrievalIndex.load(f"file://{tmp_path}/missing")
    with pytest.raises(ConfigError, match="unknown index kind"):
        build_index(vectors, "annoy")
    with pytest.raises(ConfigError, match="unknown ivf parameter"):
        build_index(vectors, "ivf", params={"efSearch": 3})
    assert np.isclose(spherical_distance(np.array([np.sqrt(2.0)]))[0], np.pi / 2)
