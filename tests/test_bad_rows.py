"""Failures are data: a manifest mixing good rows with every kind of bad input finishes
with exit code 3; each bad row fails with its own one-line error, usable oddities
(greyscale, RGBA, 16-bit) are converted and restored, and the good rows succeed."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
from PIL import Image

from jobs.restore.results import read_results
from jobs.restore.row import image_path
from tests.jobs_fixtures import (
    manifest_rows,
    photo_dir,
    ray_cluster,
    run_restore,
    tiny_prior,
    write_manifest_file,
)

RNG = np.random.default_rng(0)


def _encoded(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def _rgb(side: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (side, side, 3), dtype=np.uint8)


# image_id -> (file bytes | URI, expected: "ok" or a fragment of the error)
CASES = {
    "corrupt-jpeg": (b"\xff\xd8\xff\xe0" + bytes(RNG.integers(0, 256, 600, dtype=np.uint8)), "cannot read"),
    "truncated-png": (_encoded(_rgb(), "PNG")[:400], "truncated or corrupt PNG"),
    "empty": (b"", "file is empty (0 bytes)"),
    "not-an-image": (b"name,value\nfoo,1\n", "not an image file"),
    "one-pixel": (_encoded(_rgb(1), "PNG"), "image is 1x1; each side must be at least"),
    "bomb": (_encoded(_rgb(64), "PNG"), "exceeds the cap of 2000"),
    "missing": ("{dir}/does-not-exist.png", "not found"),
    "unknown-scheme": ("nosuch://bucket/a.png", "unknown URI scheme 'nosuch'"),
    "greyscale": (_encoded(_rgb()[..., 0], "PNG"), "ok"),
    "rgba": (_encoded(np.dstack([_rgb(), RNG.integers(0, 256, (32, 32), dtype=np.uint8)]), "PNG"), "ok"),
    "sixteen-bit": (_encoded(RNG.integers(0, 65536, (32, 32), dtype=np.uint16), "PNG", None), "ok"),
}


def test_bad_rows_fail_alone(ray_cluster, tiny_prior, photo_dir, tmp_path, capsys):
    files = tmp_path / "inputs"
    files.mkdir()
    rows = manifest_rows(photo_dir, "sr4", "gd", n=2)
    for image_id, (content, _) in CASES.items():
        if isinstance(content, bytes):
            uri = str(files / f"{image_id}.png")
            (files / f"{image_id}.png").write_bytes(content)
        else:
            uri = content.format(dir=files)
        rows.append({**rows[0], "image_id": image_id, "input_uri": uri})
    assert Image.open(files / "sixteen-bit.png").mode.startswith("I")  # really 16-bit on disk
    manifest = write_manifest_file(rows, tmp_path / "m.parquet")
    out = tmp_path / "out"

    code, stdout, stderr = run_restore(capsys, manifest, str(out), prior=tiny_prior,
                                       sets=["steps=2", "metrics=psnr", "max_pixels=2000", "cpus_per_worker=0.5"])
    n_bad = sum(expected != "ok" for _, expected in CASES.values())
    assert code == 3, stdout + stderr
    assert f"{n_bad} of {len(rows)} rows failed" in stdout
    df = read_results(str(out)).set_index("image_id")
    assert len(df) == len(rows)
    for image_id, (_, expected) in CASES.items():
        row = df.loc[image_id]
        if expected == "ok":
            assert row["status"] == "ok", (image_id, row["error"])
            assert (out / row["output_path"]).exists()
        else:
            assert row["status"] == "failed" and expected in row["error"], (image_id, row["error"])
            assert "\n" not in row["error"] and pd.isna(row["output_path"])
            assert not (out / image_path("restored", image_id)).exists()
    good = [r["image_id"] for r in rows[:2]]
    assert (df.loc[good, "status"] == "ok").all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == n_bad and {f["image_id"] for f in summary["failures"]} == {
        i for i, (_, e) in CASES.items() if e != "ok"}
