"""index_builder.retrieval: clip / random / mse neighbours, φ distances, fetch; built without Ray
from the same per-shard function the actors run."""

import numpy as np
import pytest
import torch

from helpers import save_tiny_embedder
from index_builder.embedder import load_embedder
from index_builder.index import spherical_distance
from index_builder.retrieval import Retriever
from index_builder.shard_build import embed_rows
from jobs.build_index import write_index_folder
from restore_core.bundled_photos import export_crops
from restore_core.errors import InputError
from restore_core.images import read_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder, crop rows, embedder spec, embeddings table with thumbnails)."""
    root = tmp_path_factory.mktemp("retrieval")
    rows = export_crops(str(root / "photos"), "train", 24, 32, seed=3)
    spec = save_tiny_embedder(str(root / "embedder"), seed=1)
    emb, skipped = embed_rows(load_embedder(spec), [r[0] for r in rows], [r[1] for r in rows], thumb_size=8)
    assert skipped.num_rows == 0
    return root, rows, spec, emb


@pytest.fixture(scope="module")
def index_dir(corpus):
    root, rows, spec, emb = corpus
    write_index_folder(f"file://{root}/index", emb, spec, kind="kdtree")
    return f"file://{root}/index", rows


@pytest.mark.parametrize("mode", ["clip", "random", "mse"])
def test_neighbours_modes(index_dir, mode):
    uri, rows = index_dir
    r = Retriever.load(uri)
    y = read_image(rows[5][1])
    found = r.neighbours(y, 4, mode=mode, seed=1)
    assert len(found) == 4 and all(set(n) == {"image_id", "uri", "distance"} for n in found)
    if mode == "random":
        ids = [[n["image_id"] for n in r.neighbours(y, 4, mode="random", seed=s)] for s in (1, 2)]
        assert [n["image_id"] for n in found] == ids[0] != ids[1]
        assert all(np.isnan(n["distance"]) for n in found)
        return
    assert found[0]["image_id"] == rows[5][0] and found[0]["distance"] < 1e-2
    assert [n["distance"] for n in found] == sorted(n["distance"] for n in found)
    if mode == "clip":
        z = r.embedder.embed(torch.cat([y, r.fetch(found[1:2], size=32)]))
        assert np.isclose(found[1]["distance"], spherical_distance(np.linalg.norm(z[0] - z[1])), atol=1e-3)
        low = r.neighbours(y[..., ::4, ::4], 4)  # an SR observation (8x8) is resized by the embedder
        grey = r.neighbours(y.mean(1, keepdim=True), 4)  # a colorization observation (1 channel)
        assert len(low) == len(grey) == 4
    assert r.fetch(found).shape == (4, 3, 32, 32)


def test_retrieval_bad_inputs(index_dir, tmp_path):
    uri, _ = index_dir
    with pytest.raises(InputError, match="no index at"):
        Retriever.load(f"file://{tmp_path}/nothing")
    r = Retriever.load(uri)
    with pytest.raises(InputError, match="unknown retrieval mode"):
        r.neighbours(torch.zeros(1, 3, 8, 8), 2, mode="lpips")


def test_memory_mapped_copy_gives_the_loaded_neighbours(corpus, index_dir, tmp_path, monkeypatch):
    """``mmap=True`` on a single-file index (hnsw here; parts layouts: tests/test_sharded_index)
    gives the neighbours of the loaded index in every mode, thumbnails mapped, not read; a
    k-d tree (rebuilt in memory on load) is refused."""
    from index_builder import node_copy
    from restore_core.errors import ConfigError

    _, rows, spec, emb = corpus
    hnsw = str(tmp_path / "hnsw")
    write_index_folder(hnsw, emb, spec, kind="hnsw")
    monkeypatch.setattr(node_copy.storage, "DEFAULT_CACHE", str(tmp_path / "cache"))
    loaded, mapped = Retriever.load(hnsw), Retriever.load(hnsw, mmap=True)
    assert isinstance(mapped.index.thumbs[0], np.memmap)
    for i in (0, 5, 17):
        y = read_image(rows[i][1])
        for mode in ("clip", "mse"):
            assert mapped.neighbours(y, 5, mode=mode) == loaded.neighbours(y, 5, mode=mode)
    with pytest.raises(ConfigError, match="k-d tree .* cannot be memory-mapped"):
        Retriever.load(index_dir[0], mmap=True)


@pytest.mark.parametrize("mmap", [True, False])
def test_memory_mapping_a_kdtree_index_is_refused_before_any_work(index_dir, mmap):
    from jobs.restore import preflight
    from jobs.restore.job_config import build_job_config
    from restore_core.errors import ConfigError

    uri, _ = index_dir
    job = build_job_config(None, [f"index={uri}", f"index_mmap={str(mmap).lower()}"], workers=1)
    if mmap:
        with pytest.raises(ConfigError, match="k-d tree .* cannot be memory-mapped"):
            preflight.check_paths(job)
    else:
        preflight.check_paths(job)
