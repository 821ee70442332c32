"""`adir bench ablation` end to end on a tiny prior and a tiny embedder (issue 4 test)."""

from __future__ import annotations

import json
import math
import time

import pyarrow.parquet as pq

from index_builder.embedder import save_tiny_embedder
from jobs.cli import main as adir
from tests.helpers import make_tiny_prior


def test_two_image_ablation_writes_its_tables(tmp_path):
    prior = make_tiny_prior(str(tmp_path / "prior"), sample_size=32)
    save_tiny_embedder(str(tmp_path / "embedder"))
    out = tmp_path / "bench"
    start = time.perf_counter()
    code = adir(["bench", "ablation", "--task", "sr4", "--images", "2", "--iters", "2", "--steps", "5",
                 "--k", "4", "--corpus", "12", "--model", prior, "--embedder", str(tmp_path / "embedder"),
                 "--output", str(out)])
    assert code == 0
    assert time.perf_counter() - start < 60
    table = json.loads((out / "ablation.json").read_text())
    assert [t["arm"] for t in table] == ["gd", "ia_y", "ia_random", "ia_mse", "adir", "bicubic"]
    for t in table:
        assert t["n_images"] == 2 and t["n_failed"] == 0
        for key in ("psnr", "ssim", "consistency", "seconds_per_image"):
            assert math.isfinite(t[key]), (t["arm"], key)
        if t["arm"] != "bicubic":
            assert math.isfinite(t["heldout_loss"]) and t["steps"] == 5
    assert all(t["iterations"] == 2 for t in table if t["arm"] not in ("gd", "bicubic"))
    rows = pq.read_table(out / "ablation_rows.parquet").to_pylist()
    assert len(rows) == 12
    # the three retrieval arms adapt on different neighbour sets drawn from the training corpus
    neighbours = {r["arm"]: tuple(r["neighbour_ids"]) for r in rows if r["image_id"] == rows[0]["image_id"]}
    assert len(neighbours["adir"]) == 4 and neighbours["adir"] != neighbours["ia_random"]
    assert pq.read_table(out / "ablation.parquet").num_rows == 6
    run = json.loads((out / "ablation_run.json").read_text())
    assert run["config"]["steps"] == 5 and run["index"]["count"] == 12
