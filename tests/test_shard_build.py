"""Sharded embedding on Ray, end to end into a loadable index: folder and Open Images CSV
corpora, resume after an interruption, corrupt images skipped and listed."""

import os

import pytest
from helpers import save_tiny_embedder
from test_corpus import write_openimages_csv

from index_builder.retrieval import Retriever
from index_builder.shard_build import part_name, read_skipped
from jobs.build_index import run_build
from restore_core.bundled_photos import export_crops
from tests.jobs_fixtures import ray_cluster  # noqa: F401  (the one shared Ray)



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rows = export_crops(str(root / "photos"), "train", 14, 32, seed=0)
    (root / "photos" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    spec = save_tiny_embedder(str(root / "embedder"), seed=0)
    return root, rows, spec


def test_folder_build_resumes_only_missing_shards(ray_cluster, corpus, tmp_path):
    root, rows, spec = corpus
    out = f"file://{tmp_path}/index"
    first = run_build(str(root / "photos"), out, spec, kind="flat", workers=2, shard_size=4)
    assert first["embedding"]["shards"] == 4 and first["embedding"]["shards_done"] == 4
    assert len(first["embedding"]["worker_pids"]) == 2
    skipped = read_skipped(out).to_pylist()
    assert [s["image_id"] for s in skipped] == ["corrupt.png"] and "cannot read" in skipped[0]["reason"]
    retriever = Retriever.load(out)
    assert retriever.index.count == 14 and retriever.index.manifest["recall"]["value"] == 1.0
    found = retriever.neighbours(retriever.fetch([{"uri": rows[3][1]}]), 3)
    assert found[0]["image_id"] == os.path.basename(rows[3][1]) and found[0]["distance"] < 1e-3

    # interrupt: two shards lost (plus a leftover temp file), then rerun
    parts = tmp_path / "index" / "embeddings"
    kept = {p: os.path.getmtime(parts / part_name(p)) for p in (0, 2)}
    for p in (1, 3):
        os.unlink(parts / part_name(p))
    (parts / ".tmp-leftover").write_bytes(b"partial")
    second = run_build(str(root / "photos"), out, spec, kind="flat", workers=1, shard_size=4)
    assert second["embedding"]["shards_done"] == 2 and second["embedding"]["shards_already_complete"] == 2
    assert all(os.path.getmtime(parts / part_name(p)) == t for p, t in kept.items())
    assert Retriever.load(out).image_ids == retriever.image_ids
    # index parts are keyed by content: re-embedded shards give the same vectors, so all are reused
    assert second["index"]["build"]["parts_reused"] == 4

    # issue 12: the same number of images, two swapped for others -> the index holds the new ones
    swapped = root / "swapped"
    import shutil

    shutil.copytree(root / "photos", swapped)
    for _, path, _ in rows[5:7]:
        os.unlink(swapped / os.path.basename(path))
    new = export_crops(str(tmp_path / "new"), "heldout", 2, 32, seed=7)
    for image_id, path, _ in new:
        shutil.move(path, swapped / f"zz-{image_id}.png")
    third = run_build(str(swapped), out, spec, kind="flat", workers=2, shard_size=4)
    assert third["images"] == first["images"] and third["embedding"]["shards_done"] >= 1
    ids = Retriever.load(out).image_ids
    assert {f"zz-{i}.png" for i, _, _ in new} <= set(ids)
    assert not {os.path.basename(p) for _, p, _ in rows[5:7]} & set(ids) and len(ids) == 14


def test_openimages_csv_builds_through_ray(ray_cluster, corpus, tmp_path):
    root, rows, spec = corpus
    csv_rows = [(os.path.basename(p)[:-4], f"file://{p}") for _, p, _ in rows[:6]]
    csv_rows.append(("missing0001", f"file://{root}/photos/missing.jpg"))
    write_openimages_csv(tmp_path / "images.csv", csv_rows)
    out = str(tmp_path / "oi-index")
    summary = run_build(str(tmp_path / "images.csv"), out, spec, kind="hnsw", workers=1, shard_size=3,
                        url_column="OriginalURL")
    assert summary["images"] == 7 and summary["skipped_total"] == 1
    retriever = Retriever.load(out)
    assert retriever.index.kind == "hnsw" and retriever.image_ids == [r[0] for r in csv_rows[:6]]
    assert "not found" in read_skipped(out).column("reason")[0].as_py()
