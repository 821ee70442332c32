"""index_builder.sharded_index / serving / embedding_source: the sharded build equals the
single-process one, precomputed embeddings in both layouts, resume by content, fan-out."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_builder.embedding_source import open_source
from index_builder.index import build_index
from index_builder.node_copy import open_mapped
from index_builder.retrieval import load_index
from index_builder.serving import (
    ShardIndex,
    fixed_binary_to_uint8,
    load_trained,
    part_uri,
    start_shard_servers,
)
from index_builder.sharded_index import build_from_shards
from jobs import cli
from jobs.build_index import run_from_embeddings
from restore_core.errors import InputError
from tests.jobs_fixtures import ray_cluster  # noqa: F401  (the one shared Ray)


def clustered(n, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    x = centres[rng.integers(12, size=n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_parquet_shards(folder, x, n_shards, prefix="img", drop=None, thumbs=False):
    os.makedirs(folder, exist_ok=True)
    for s, rows in enumerate(np.array_split(np.arange(len(x)), n_shards)):
        cols = {"image_id": [f"{prefix}{r:05d}" for r in rows], "uri": [f"file:///c/{prefix}{r:05d}.png" for r in rows],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].reshape(-1)), x.shape[1])}
        if thumbs:  # 2x2 RGB thumbnails made from the vector, so mse neighbours differ by row
            cols["thumbnail"] = pa.array([bytes((x[r, :12] * 127 + 128).astype(np.uint8)) for r in rows], pa.binary(12))
        if drop:
            cols.pop(drop)
        pq.write_table(pa.table(cols), os.path.join(folder, f"part-{s:05d}.parquet"))


def write_clip_retrieval(folder, x, n_shards):
    os.makedirs(os.path.join(folder, "img_emb"), exist_ok=True)
    os.makedirs(os.path.join(folder, "metadata"), exist_ok=True)
    for s, rows in enumerate(np.array_split(np.arange(len(x)), n_shards)):
        np.save(os.path.join(folder, "img_emb", f"img_emb_{s}.npy"), x[rows].astype(np.float16))
        pq.write_table(pa.table({"image_path": [f"/c/img{r:05d}.jpg" for r in rows], "caption": ["c"] * len(rows)}),
                       os.path.join(folder, "metadata", f"metadata_{s}.parquet"))


@pytest.fixture(scope="module")
def vectors():
    return clustered(3000)



def test_sharded_build_on_two_actors_equals_single_process_and_fan_out(ray_cluster, vectors, tmp_path):
    write_parquet_shards(tmp_path / "emb", vectors, 5)
    shards = open_source(str(tmp_path / "emb"))
    q = clustered(40, seed=9)
    # flat: identical neighbours to the single-process exact index
    flat = build_from_shards(shards, str(tmp_path / "flat"), "flat", workers=2)
    assert flat["build"]["parts"] == 5 and len(flat["build"]["worker_pids"]) == 2
    merged = load_index(str(tmp_path / "flat"))
    single = build_index(vectors, "flat")
    assert np.array_equal(merged.search(q, 20)[1], single.search(q, 20)[1]) and flat["recall"]["value"] == 1.0
    # ivf: identical to one process adding every vector to the same trained quantizer
    ivf = build_from_shards(shards, str(tmp_path / "ivf"), "ivf", workers=2, params={"nlist": 32})
    assert ivf["recall"]["tuned"] == "nprobe" and ivf["recall"]["value"] >= 0.95
    one = load_trained(str(tmp_path / "ivf"))
    one.add(vectors)
    one.nprobe = ivf["params"]["nprobe"]
    got = load_index(str(tmp_path / "ivf"))
    assert np.array_equal(got.search(q, 20)[1], one.search(q, 20)[1])
    # fan-out over two shard-server actors = the merged index, row for row, for clip and mse
    fan = start_shard_servers(str(tmp_path / "ivf"), 2)
    try:
        assert len(fan.shards) == 2
        d_fan, i_fan = fan.search(q, 20)
        d_one, i_one = got.search(q, 20)
        assert np.array_equal(i_fan, i_one) and np.allclose(d_fan, d_one)
        assert fan.rows([0, 2999]) == got.rows([0, 2999]) == [("img00000", "file:///c/img00000.png"),
                                                              ("img02999", "file:///c/img02999.png")]
    finally:
        for a in fan.shards:
            ray_cluster.kill(a)


def test_embeddings_in_both_layouts_build_loadable_indexes(vectors, tmp_path):
    write_clip_retrieval(tmp_path / "cr", vectors[:900], 3)
    summary = run_from_embeddings(str(tmp_path / "cr"), str(tmp_path / "cr-index"), kind="auto", workers=0)
    assert summary["index"]["kind"] == "flat" and summary["index"]["count"] == 900
    index = load_index(str(tmp_path / "cr-index"))
    d, i = index.search(vectors[[5, 450]], 3)
    assert list(i[:, 0]) == [5, 450] and d[0, 0] < 1e-2  # float16 storage, renormalised
    assert index.rows([450]) == [("c_img00450.jpg", "/c/img00450.jpg")]  # id: the sanitised path
    write_parquet_shards(tmp_path / "pq", vectors[:900], 2)
    run_from_embeddings(str(tmp_path / "pq"), str(tmp_path / "pq-index"), kind="ivf", workers=0)
    assert load_index(str(tmp_path / "pq-index")).search(vectors[[7]], 1)[1][0, 0] == 7

    # a shard of another dimension, or without a column, is refused naming it (exit 2)
    pq.write_table(pa.table({"image_id": ["z"], "uri": ["u"],
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8, np.float32)), 8)}),
                   tmp_path / "pq" / "part-00002.parquet")
    with pytest.raises(InputError, match="part-00002.parquet has dimension 8, expected 16"):
        open_source(str(tmp_path / "pq"))
    write_parquet_shards(tmp_path / "nocol", vectors[:100], 1, drop="uri")
    with pytest.raises(InputError, match="part-00000.parquet lacks column.*uri"):
        open_source(str(tmp_path / "nocol"))
    code = cli.main(["build-index", "--embeddings", str(tmp_path / "pq"), "--output", str(tmp_path / "x")])
    assert code == 2 and not (tmp_path / "x" / "index.json").exists()


def test_interrupted_build_redoes_only_missing_parts_and_content_changes(vectors, tmp_path):
    write_parquet_shards(tmp_path / "emb", vectors, 4)
    out = str(tmp_path / "index")

    def interrupt_after_two(message):
        if message.startswith("parts 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_from_shards(open_source(str(tmp_path / "emb")), out, "ivf", workers=0, params={"nlist": 32},
                          progress=interrupt_after_two)
    assert [os.path.exists(part_uri(out, i)) for i in range(4)] == [True, True, False, False]
    kept = {i: os.path.getmtime(part_uri(out, i)) for i in (0, 1)}
    m = build_from_shards(open_source(str(tmp_path / "emb")), out, "ivf", workers=0, params={"nlist": 32})
    assert m["build"]["parts_reused"] == 2 and m["build"]["trained_reused"]
    assert all(os.path.getmtime(part_uri(out, i)) == t for i, t in kept.items())
    again = build_from_shards(open_source(str(tmp_path / "emb")), out, "ivf", workers=0, params={"nlist": 32})
    assert again["build"]["parts_reused"] == 4
    # the same row count with other content: the changed shard's part is rebuilt (new images in the index)
    swapped = vectors.copy()
    swapped[750:1500] = clustered(750, seed=5)
    write_parquet_shards(tmp_path / "emb", swapped, 4, prefix="new")
    m = build_from_shards(open_source(str(tmp_path / "emb")), out, "ivf", workers=0, params={"nlist": 32})
    assert m["build"]["parts_reused"] == 0 or not m["build"]["trained_reused"]
    index = ShardIndex.from_parts(out)
    assert index.image_ids[:3] == ["new00000", "new00001", "new00002"]
    assert index.search(swapped[[800]], 1, {"nprobe": 32})[1][0, 0] == 800


@pytest.mark.parametrize("kind,params", [("flat", None), ("ivf", {"nlist": 32}), ("ivfpq", {"nlist": 32, "m": 4})])
def test_presized_load_and_node_copy_equal_the_appended_index(vectors, tmp_path, kind, params):
    """``ShardIndex.from_parts`` (storage sized once, codes copied in place) and the node's
    memory-mapped copy (``node_copy.open_mapped``) answer exactly what appending the parts
    one by one (faiss ``add_sa_codes``) answers: neighbours, distances, list contents, rows,
    thumbnails; the mapped copy's codes are the file's pages, not the process's."""
    import faiss

    write_parquet_shards(tmp_path / "emb", vectors, 3, thumbs=True)
    out = str(tmp_path / "index")
    m = build_from_shards(open_source(str(tmp_path / "emb")), out, kind, workers=0, params=params)
    appended = ShardIndex(m["kind"], m["params"], faiss.clone_index(load_trained(out)))
    for i, p in enumerate(m["parts"]):
        table = pq.read_table(part_uri(out, i))
        appended.add_part(fixed_binary_to_uint8(table.column("code")), p["offset"], table.select(["image_id", "uri"]),
                          fixed_binary_to_uint8(table.column("thumbnail")))
    presized = ShardIndex.from_parts(out)
    mapped = open_mapped(out, str(tmp_path / "cache"))
    assert open_mapped(out, str(tmp_path / "cache")).count == len(vectors)  # the copy is reused
    assert len(list((tmp_path / "cache").glob("index-mmap/*/rows.arrow"))) == 1
    q = clustered(40, seed=9)
    d0, i0 = appended.search(q, 20, {"nprobe": 4})
    for other in (presized, mapped):
        d, i = other.search(q, 20, {"nprobe": 4})
        assert np.array_equal(i, i0) and np.array_equal(d, d0)
        assert other.rows([0, 1999, 2999]) == appended.rows([0, 1999, 2999]) == [
            ("img00000", "file:///c/img00000.png"), ("img01999", "file:///c/img01999.png"),
            ("img02999", "file:///c/img02999.png")]
        t = np.full(12, 0.5, np.float32)
        assert [np.array_equal(a, b) for a, b in zip(other.mse(t, 5), appended.mse(t, 5))] == [True, True]
    ivf = faiss.try_extract_index_ivf(mapped.index)
    if ivf is None:
        assert not mapped.index.codes.is_owned
        assert np.array_equal(faiss.vector_to_array(presized.index.codes), faiss.vector_to_array(appended.index.codes))
    else:
        assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
        lists = [faiss.try_extract_index_ivf(x.index).invlists for x in (appended, presized, mapped)]
        for j in range(ivf.nlist):
            n = lists[0].list_size(j)
            assert [il.list_size(j) for il in lists] == [n] * 3
            got = [faiss.rev_swig_ptr(il.get_codes(j), n * ivf.code_size).copy() for il in lists]
            assert all(np.array_equal(g, got[0]) for g in got[1:])
