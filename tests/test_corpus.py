"""index_builder.corpus: folder and Open Images CSV manifests, bad inputs."""

import csv

import pyarrow.parquet as pq
import pytest

from index_builder.corpus import OPENIMAGES_COLUMNS, build_manifest, folder_manifest, openimages_manifest
from restore_core.bundled_photos import export_crops
from restore_core.errors import InputError


def write_openimages_csv(path, rows, columns=OPENIMAGES_COLUMNS):
    """The official image-list layout; OriginalURL/Thumbnail300KURL point at ``rows``' files."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for image_id, uri in rows:
            full = {"ImageID": image_id, "Subset": "train", "OriginalURL": uri, "OriginalLandingURL": "x",
                    "License": "cc", "AuthorProfileURL": "", "Author": "a, b", "Title": "t \"q\"",
                    "OriginalSize": "10", "OriginalMD5": "m", "Thumbnail300KURL": uri, "Rotation": "0.0"}
            w.writerow([full[c] for c in columns])


def test_folder_manifest_recursive_sanitised_ids(tmp_path):
    export_crops(str(tmp_path / "a dir" / "b"), "train", 3, 16, seed=0)
    (tmp_path / "notes.txt").write_text("not an image")
    t = folder_manifest(f"file://{tmp_path}")
    ids = t.column("image_id").to_pylist()
    assert len(ids) == 3 and all(i.startswith("a_dir_b_") and i.endswith(".png") for i in ids)
    assert all(u.endswith(".png") for u in t.column("uri").to_pylist())


@pytest.mark.parametrize("url_column", ["OriginalURL", None])
def test_openimages_csv_streams_in_blocks(tmp_path, url_column):
    rows = [(f"{i:016x}", f"/data/train/{i:016x}.jpg") for i in range(500)]
    write_openimages_csv(tmp_path / "images.csv", rows)
    out = tmp_path / "manifest.parquet"
    n = openimages_manifest(str(tmp_path / "images.csv"), str(out), url_column=url_column,
                            root="file:///data", block_size=4096)
    pf = pq.ParquetFile(out)
    assert n == 500 and pf.metadata.num_row_groups > 1  # written incrementally, one group per block
    t = pf.read()
    want = "/data/train/" if url_column else "file:///data/train/"
    assert t.column("uri").to_pylist()[7] == f"{want}{7:016x}.jpg"


def test_bad_corpus_inputs(tmp_path):
    write_openimages_csv(tmp_path / "cols.csv", [("a", "/x.jpg")], columns=("ImageID", "License"))
    with pytest.raises(InputError, match="lacks column.*Subset"):
        openimages_manifest(str(tmp_path / "cols.csv"), str(tmp_path / "m.parquet"))
    with pytest.raises(InputError, match="lacks column.*OriginalURL"):
        openimages_manifest(str(tmp_path / "cols.csv"), str(tmp_path / "m.parquet"), url_column="OriginalURL")
    write_openimages_csv(tmp_path / "empty.csv", [])
    with pytest.raises(InputError, match="empty corpus"):
        openimages_manifest(str(tmp_path / "empty.csv"), str(tmp_path / "m.parquet"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="empty corpus"):
        build_manifest(str(tmp_path / "nothing"), str(tmp_path / "m.parquet"))
    with pytest.raises(InputError, match="not found"):
        build_manifest(str(tmp_path / "missing"), str(tmp_path / "m.parquet"))
