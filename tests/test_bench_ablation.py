"""`adir bench ablation` / `bench cost` end to end on a tiny prior and a tiny embedder
(issue 4: "a 2-image bench ablation with 2 adaptation iterations and 5 steps")."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import main as adir
from tests.helpers import make_tiny_prior, save_tiny_embedder


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    save_tiny_embedder(str(root / "embedder"))
    return make_tiny_prior(str(root / "prior"), sample_size=16), str(root / "embedder")


def test_two_image_ablation_writes_its_tables(assets, tmp_path):
    prior, embedder = assets
    out = tmp_path / "bench"
    code = adir(["bench", "ablation", "--task", "sr4", "--images", "2", "--iters", "2", "--steps", "5",
                 "--k", "4", "--corpus", "12", "--model", prior, "--embedder", embedder, "--output", str(out)])
    assert code == 0
    table = json.loads((out / "ablation.json").read_text())
    assert [t["arm"] for t in table] == ["gd", "ia_y", "ia_random", "ia_mse", "adir", "ia_oracle", "bicubic"]
    for t in table:
        assert t["n_images"] == 2 and t["n_failed"] == 0
        for key in ("psnr", "ssim", "gmsd", "nlpd", "consistency", "seconds_per_image"):
            assert math.isfinite(t[key]), (t["arm"], key)
        if t["arm"] != "bicubic":
            assert math.isfinite(t["heldout_loss"]) and t["steps"] == 5
    assert all(t["iterations"] == 2 for t in table if t["arm"] not in ("gd", "bicubic"))
    rows = pq.read_table(out / "ablation_rows.parquet").to_pylist()
    assert len(rows) == 14
    # the retrieval arms adapt on different neighbour sets drawn from the training corpus
    neighbours = {r["arm"]: tuple(r["neighbour_ids"]) for r in rows if r["image_id"] == rows[0]["image_id"]}
    assert len(neighbours["adir"]) == 4 and neighbours["adir"] != neighbours["ia_random"]
    assert all(n.split("-")[0] not in ("chelsea", "coffee", "grace_hopper") for n in neighbours["adir"])
    # the oracle adapts on the target's own photo
    assert all(n.startswith(rows[0]["image_id"].split("-")[0] + "-oracle") for n in neighbours["ia_oracle"])
    assert pq.read_table(out / "ablation.parquet").num_rows == 7
    run = json.loads((out / "ablation_run.json").read_text())
    assert run["config"]["steps"] == 5 and run["index"]["count"] == 12
    adir_entry = next(t for t in table if t["arm"] == "adir")
    assert set(adir_entry["paired"]) == {f"{o}:{m}" for o in ("ia_y", "ia_random", "ia_mse", "ia_oracle", "bicubic")
                                         for m in ("psnr", "gmsd")}
    assert adir_entry["n_paired"] == 2 and adir_entry["psnr_gain_se_vs_gd"] is not None
    assert adir_entry["gmsd_gain_se_vs_gd"] is not None


def test_paired_gain_is_mean_difference_with_standard_error():
    from jobs.bench.common import paired_gain

    def rec(arm, image, psnr, status="ok"):
        return {"arm": arm, "image_id": image, "psnr": psnr, "status": status}

    records = [rec("gd", "a", 20.0), rec("gd", "b", 22.0), rec("gd", "c", 24.0), rec("gd", "d", 30.0, "failed"),
               rec("adir", "a", 21.0), rec("adir", "b", 21.0), rec("adir", "c", 27.0), rec("adir", "d", 31.0)]
    g = paired_gain(records, "adir", "gd")
    # only a, b, c are paired (gd failed on d): differences +1, -1, +3
    assert g["n"] == 3 and g["wins"] == 2
    assert g["gain"] == pytest.approx(1.0)
    assert g["se"] == pytest.approx(2.0 / math.sqrt(3))
    assert paired_gain(records, "adir", "ia_y") is None


def test_arms_share_the_sampling_seed(assets):
    """With a negligible learning rate every adapted arm must sample exactly what gd samples:
    the paper compares arms at the same seed."""
    from restore_core.config import RestoreConfig
    from restore_core.models.pixel_unet import load_diffusion_model
    from restore_core.operators import build_operator
    from restore_core.restore import restore_one

    model = load_diffusion_model(assets[0])
    op = build_operator("sr4", (3, 16, 16))
    y = op.A(torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    cfg = RestoreConfig.from_dict({"steps": 5, "adapt_iters": 1, "adapt_lr": 1e-30})
    x_gd, _ = restore_one(y, op, model, cfg, method="gd", seed=3)
    x_ia, _ = restore_one(y, op, model, cfg, method="ia_y", seed=3)
    assert torch.allclose(x_gd, x_ia, atol=1e-5)


def test_cost_compares_configurations_on_the_same_images(assets, tmp_path):
    prior, embedder = assets
    out = tmp_path / "cost"
    code = adir(["bench", "cost", "--images", "1", "--k", "3", "--corpus", "8", "--model", prior,
                 "--embedder", embedder, "--output", str(out),
                 "--configs", "slow=fast:steps=8;adapt_iters=2,quick=fast:steps=4;adapt_iters=1"])
    assert code == 0
    table = json.loads((out / "cost.json").read_text())
    assert [(t["config"], t["steps"], t["adapt_iters"]) for t in table] == [("slow", 8, 2), ("quick", 4, 1)]
    assert table[0]["speedup_vs_slow"] == 1.0 and table[1]["speedup_vs_slow"] > 0
    assert math.isfinite(table[1]["psnr_delta_vs_slow"]) and "meets_goal" in table[1]
    assert len(pq.read_table(out / "cost_rows.parquet")) == 2


def test_rerun_resumes_the_rows_an_interrupted_run_left(assets, tmp_path):
    prior, embedder = assets
    out = tmp_path / "bench"
    argv = ["bench", "ablation", "--task", "deblur_box5", "--images", "2", "--iters", "1", "--steps", "3",
            "--k", "3", "--corpus", "8", "--arms", "gd,adir", "--model", prior, "--embedder", embedder,
            "--output", str(out)]
    assert adir(argv) == 0
    full = pq.read_table(out / "ablation_rows.parquet").to_pylist()
    table = json.loads((out / "ablation.json").read_text())
    # an interruption after the first image: only its rows are on disk
    first = [r for r in full if r["image_id"] == full[0]["image_id"]]
    pq.write_table(pq.read_table(out / "ablation_rows.parquet").slice(0, len(first)), out / "ablation_rows.parquet")
    index_built = (out / "index" / "index.json").stat().st_mtime_ns
    assert adir(argv) == 0
    assert (out / "index" / "index.json").stat().st_mtime_ns == index_built  # its own index reused, not rebuilt
    again = pq.read_table(out / "ablation_rows.parquet").to_pylist()
    assert [(r["image_id"], r["arm"]) for r in again] == [(r["image_id"], r["arm"]) for r in full]
    # the first image's rows were reused as written (timings included), the second recomputed to the same PSNR
    assert again[:len(first)] == first
    assert [r["psnr"] for r in again] == pytest.approx([r["psnr"] for r in full], abs=1e-4)
    assert json.loads((out / "ablation.json").read_text())[0]["psnr"] == pytest.approx(table[0]["psnr"], abs=1e-4)
    # more images extend the run: the first two crops' rows are reused as written, a third is added
    longer = argv[:argv.index("--images") + 1] + ["3"] + argv[argv.index("--images") + 2:]
    assert adir(longer) == 0
    extended = pq.read_table(out / "ablation_rows.parquet").to_pylist()
    assert extended[:len(full)] == again and len({r["image_id"] for r in extended}) == 3
    assert adir(argv) == 2  # fewer images would drop rows: refused
    # other inputs into the same folder: a clear error, and --overwrite starts over
    changed = longer[:longer.index("--steps") + 1] + ["4"] + longer[longer.index("--steps") + 2:]
    assert adir(changed) == 2
    assert adir(changed + ["--overwrite"]) == 0
    assert json.loads((out / "ablation_run.json").read_text())["config"]["steps"] == 4


def test_peers_bench_runs_every_arm_on_the_same_crops_and_resumes(assets, tmp_path):
    prior, embedder = assets
    out = tmp_path / "peers"
    argv = ["bench", "peers", "--task", "sr4", "--images", "1", "--steps", "3", "--iters", "1", "--k", "2",
            "--corpus", "6", "--samplers", "alg1,ddrm", "--fidelity-samples", "2", "--model", prior,
            "--embedder", embedder, "--output", str(out)]
    assert adir(argv) == 0
    table = json.loads((out / "peers.json").read_text())
    names = [t["arm"] for t in table]
    assert names == ["pinv", "alg1", "alg1_fid", "alg1_adir", "ddrm", "ddrm_fid", "ddrm_adir", "ia_y", "ia_random",
                     "ia_oracle", "ia_open", "fidelity"]
    for t in table:
        assert t["n_failed"] == 0 and all(math.isfinite(t[k]) for k in ("psnr", "ssim", "gmsd", "nlpd"))
    rows = pq.read_table(out / "peers_rows.parquet").to_pylist()
    assert len({r["image_id"] for r in rows}) == 1 and len(rows) == len(names)
    # ia_open ranks the corpus and the target's own photo together: K ids, the share from its photo recorded
    (open_row,) = [r for r in rows if r["arm"] == "ia_open"]
    own = [n for n in open_row["neighbour_ids"] if "-own-" in n]
    assert len(open_row["neighbour_ids"]) == 2 and open_row["own_photo_share"] == len(own) / 2
    assert all(n.startswith(open_row["image_id"].rsplit("-", 1)[0] + "-own-") for n in own)
    pairs = json.loads((out / "peers_comparisons.json").read_text())
    assert {("ddrm_adir", "ddrm", "psnr"), ("ddrm_adir", "ia_random", "gmsd"), ("ddrm_fid", "ddrm", "psnr"),
            ("ia_oracle", "ddrm", "psnr"), ("ia_open", "ddrm_adir", "psnr")} <= {(p["arm"], p["vs"], p["metric"]) for p in pairs}
    assert adir(argv) == 0  # a rerun reuses every row as written
    assert pq.read_table(out / "peers_rows.parquet").to_pylist() == rows


def test_pair_compares_two_runs_on_the_same_crops(assets, tmp_path):
    """``bench pair`` matches two runs image by image: the deterministic pinv arm differs by
    exactly 0, a changed sampler config by the per-image differences of the two tables;
    runs of other crops are refused with what differs."""
    import shutil

    prior, embedder = assets
    base = ["bench", "peers", "--task", "sr4", "--images", "2", "--k", "2", "--corpus", "6", "--samplers", "ddrm",
            "--arms", "pinv,ddrm", "--model", prior, "--embedder", embedder, "--save-images", "0"]
    assert adir(base + ["--steps", "3", "--output", str(tmp_path / "a")]) == 0
    assert adir(base + ["--steps", "5", "--output", str(tmp_path / "b"), "--index", str(tmp_path / "a" / "index")]) == 0
    assert adir(["bench", "pair", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "pair.json")]) == 0
    gains = {(g["arm"], g["metric"]): g for g in json.loads((tmp_path / "pair.json").read_text())["gains"]}
    assert gains[("pinv", "psnr")]["gain"] == 0 and gains[("pinv", "psnr")]["n"] == 2
    rows = {run: {r["image_id"]: r["psnr"] for r in pq.read_table(tmp_path / run / "peers_rows.parquet").to_pylist()
                  if r["arm"] == "ddrm"} for run in ("a", "b")}
    expected = sum(rows["b"][i] - rows["a"][i] for i in rows["a"]) / 2
    assert gains[("ddrm", "psnr")]["gain"] == pytest.approx(expected) and expected != 0
    assert {m for a, m in gains} == {"psnr", "ssim", "gmsd", "nlpd"}
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    run = json.loads((tmp_path / "c" / "peers_run.json").read_text())
    (tmp_path / "c" / "peers_run.json").write_text(json.dumps({**run, "seed": 1}))
    assert adir(["bench", "pair", str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    assert adir(["bench", "pair", str(tmp_path / "a"), str(tmp_path / "b"), "--arms", "alg1"]) == 2
