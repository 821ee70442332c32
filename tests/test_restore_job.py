"""``adir restore`` end to end on Ray with a tiny prior: files, records, summary, report,
resume after a Ctrl-C, a worker killed mid-run, and exit 2 before any work on bad input.

All runs share one local Ray cluster (2 CPUs, ``ray_cluster``) and tiny settings (32²
crops, 4 sampling steps, 2 adaptation iterations, K = 2)."""

from __future__ import annotations

import json
import os
import signal

import pandas as pd
import pytest
from PIL import Image

from jobs.restore.results import RESULTS_DIR, part_uris, read_part, read_results
from jobs.restore.row import image_path
from tests.jobs_fixtures import (
    TINY,
    after_first_row,
    manifest_rows,
    photo_dir,
    ray_cluster,
    run_restore,
    tiny_index,
    tiny_prior,
    write_manifest_file,
)


def _record_ids(out) -> list[str]:
    """Every committed record's id, duplicates included (a row done twice shows twice)."""
    return sorted(i for u in part_uris(str(out)) for i in read_part(u, ["image_id"])["image_id"].to_pylist())


def test_end_to_end_with_resume(ray_cluster, tiny_prior, tiny_index, photo_dir, tmp_path, capsys,
                                monkeypatch):
    rows = (manifest_rows(photo_dir, "sr4", "adir", n=3) + manifest_rows(photo_dir, "colorize", "gd", n=3)
            + manifest_rows(photo_dir, "deblur_box5", "adir", n=2, noise_sigma=5.0))
    manifest = write_manifest_file(rows, tmp_path / "m.parquet")
    out = tmp_path / "out"
    sets = ["steps=4", "adapt_iters=2", "adapt_batch=2", "k=2", "lora_rank=2", "lora_alpha=2",
            "metrics=psnr,ssim", "cpus_per_worker=0.5", f"index={tiny_index}"]

    # 1. interrupted run: a real Ctrl-C (SIGINT to this process) as soon as the driver has
    # counted the first committed row, with Python's own Ctrl-C handler installed (a shell
    # that starts a background job hands Python SIGINT ignored)
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with after_first_row(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGINT)):
            with pytest.raises(KeyboardInterrupt):
                run_restore(capsys, manifest, str(out), "--workers", "1", prior=tiny_prior, sets=sets)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    capsys.readouterr()
    before = read_results(str(out))
    assert 1 <= len(before) < len(rows), "the interrupt must land mid-run"
    first_pass = {r.image_id: r.finished_at for r in before.itertuples()}
    parts = {u: os.path.getmtime(u) for u in part_uris(str(out))}

    # 2. resume: only the missing rows are redone
    code, stdout, stderr = run_restore(capsys, manifest, str(out), prior=tiny_prior, sets=sets)
    assert code == 0, stdout + stderr
    assert f"{len(first_pass)} already have a result record (resume)" in stdout
    assert "rows done (0 failed)" in stdout and "rows/s" in stdout and "ETA" in stdout
    df = read_results(str(out))
    assert sorted(df["image_id"]) == sorted(r["image_id"] for r in rows)
    assert _record_ids(out) == sorted(r["image_id"] for r in rows)  # each row committed once
    for image_id, finished in first_pass.items():
        assert df.set_index("image_id").loc[image_id, "finished_at"] == finished
    assert all(os.path.getmtime(u) == t for u, t in parts.items()), "committed parts are never rewritten"
    redone = df[~df["image_id"].isin(first_pass)]
    assert redone["worker_pid"].nunique() == 2, "both workers of the resumed run must get rows"

    # 3. files and records
    assert (df["status"] == "ok").all(), df[["image_id", "error"]]
    for r in df.itertuples():
        restored = Image.open(out / r.output_path)
        observed = Image.open(out / r.observed_path)
        assert Image.open(out / r.gt_path).size == (32, 32)
        assert restored.size == (32, 32) and restored.mode == "RGB"
        assert observed.size == ((8, 8) if r.task == "sr4" else (32, 32))
        assert 0 < r.psnr < 60 and -1 <= r.ssim <= 1 and r.consistency >= 0
        assert r.seconds_total > 0 and r.steps == 4
        if r.method == "adir":
            assert len(r.neighbour_ids) == 2 and r.iterations == 2 and r.seconds_adapt > 0
            assert all(os.path.exists(u) for u in r.neighbour_uris)
        else:
            assert len(r.neighbour_ids) == 0 and r.iterations == 0
    assert not [f for d in ("restored", "observed", "gt", RESULTS_DIR) for _, _, files in os.walk(out / d)
                for f in files if f.startswith(".tmp-")]

    # 4. summary, job.json and report (the reducer's own checks are in test_report.py)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows"], summary["ok"], summary["failed"]) == (len(rows), len(rows), 0)
    assert {(g["task"], g["method"]) for g in summary["groups"]} == {
        ("sr4", "adir"), ("colorize", "gd"), ("deblur_box5", "adir")}
    assert len(pd.read_parquet(out / "summary.parquet")) == len(rows)
    assert json.loads((out / "job.json").read_text())["settings"]["restore.steps"] == 4
    assert (out / "report.html").stat().st_size > 0

    # 5. nothing left to do: a third run skips every row and still exits 0
    code, stdout, _ = run_restore(capsys, manifest, str(out), prior=tiny_prior, sets=sets)
    assert code == 0 and f"{len(rows)} already have a result record" in stdout


def test_outputs_do_not_depend_on_worker_count(ray_cluster, tiny_prior, tiny_index, photo_dir, tmp_path, capsys):
    """Determinism contract: the same row and seed give byte-identical images whether the
    rows run on one worker or are spread over two (fresh actors, other row order)."""
    rows = manifest_rows(photo_dir, "sr4", "adir", n=2) + manifest_rows(photo_dir, "colorize", "gd", n=2)
    manifest = write_manifest_file(rows, tmp_path / "m.parquet")
    sets = ["steps=3", "adapt_iters=2", "adapt_batch=2", "k=2", "lora_rank=2", "lora_alpha=2",
            "metrics=psnr", "cpus_per_worker=0.5", f"index={tiny_index}"]
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        code, stdout, stderr = run_restore(capsys, manifest, str(out), "--workers", workers,
                                           prior=tiny_prior, sets=sets)
        assert code == 0, stdout + stderr
        outs.append(out)
    for r in rows:
        one, two = (open(o / image_path("restored", r["image_id"]), "rb").read() for o in outs)
        assert one == two, r["image_id"]


def test_killed_worker_every_row_exactly_once(ray_cluster, tiny_prior, photo_dir, tmp_path, capsys,
                                             monkeypatch):
    rows = manifest_rows(photo_dir, "sr4", "gd", n=4) + manifest_rows(photo_dir, "colorize", "gd", n=4)
    manifest = write_manifest_file(rows, tmp_path / "m.parquet")
    out = tmp_path / "out"
    killed = []

    def kill_first_worker():
        pid = int(read_results(str(out))["worker_pid"].iloc[0])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    with after_first_row(monkeypatch, kill_first_worker):
        code, stdout, stderr = run_restore(capsys, manifest, str(out), prior=tiny_prior,
                                           sets=["steps=8", "metrics=psnr", "cpus_per_worker=0.5"])
    assert killed, ("no row ever completed", code, stdout, stderr)
    assert code == 0, stdout + stderr
    df = read_results(str(out))
    assert sorted(df["image_id"]) == sorted(r["image_id"] for r in rows)  # none lost, none twice
    assert _record_ids(out) == sorted(r["image_id"] for r in rows)
    assert (df["status"] == "ok").all()
    assert set(df["worker_pid"]) - set(killed), "rows after the kill ran on other/restarted workers"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(rows) and summary["ok"] == len(rows)


BAD_CASES = {
    "unknown restore key": (["--set", "stepz=3"], "unknown config key 'stepz'"),
    "unknown job key in file": (["--config", "{cfg}"], "unknown config key(s) wokers"),
    "bad preset": (["--set", "preset=slow"], "unknown preset 'slow'"),
    "bad workers": (["--workers", "0"], "bad value for workers"),
    "missing manifest": (["--manifest", "{tmp}/nope.parquet"], "not found"),
    "missing column": (["--manifest", "{nocol}"], "missing required column(s) task"),
    "duplicate ids": (["--manifest", "{dup}"], "duplicate image_id(s): same"),
    "unsafe id": (["--manifest", "{unsafe}"], "'../up' must be 1-200 characters"),
    "model not found": (["--set", "model={tmp}/no-model"], "model not found"),
    "adir without index": (["--manifest", "{adir}"], "no index is set"),
    "unknown output scheme": (["--output", "nosuch://bucket/out"], "unknown URI scheme 'nosuch'"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_usage_errors_exit_2_before_work(case, tiny_prior, photo_dir, tmp_path, capsys):
    args, expected = BAD_CASES[case]
    good = manifest_rows(photo_dir, "sr4", "gd", n=1)
    paths = {"tmp": str(tmp_path), "cfg": str(tmp_path / "job.yaml"),
             "nocol": write_manifest_file([{k: v for k, v in good[0].items() if k != "task"}], tmp_path / "n.parquet"),
             "dup": write_manifest_file([{**good[0], "image_id": "same"}] * 2, tmp_path / "d.parquet"),
             "unsafe": write_manifest_file([{**good[0], "image_id": "../up"}], tmp_path / "u.parquet"),
             "adir": write_manifest_file(manifest_rows(photo_dir, "sr4", "adir", n=1), tmp_path / "a.parquet")}
    (tmp_path / "job.yaml").write_text("wokers: 2\n")
    manifest = write_manifest_file(good, tmp_path / "m.parquet")
    out = tmp_path / "out"
    from jobs.cli import main

    argv = ["restore", "--manifest", manifest, "--output", str(out), "--set", f"model={tiny_prior}"]
    argv += [a.format(**paths) for a in args]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert expected in captured.err and "adir restore: error:" in captured.err
    assert not out.exists(), "nothing may be written before validation passes"


def test_index_served_by_shard_actors_gives_the_same_rows(ray_cluster, tiny_prior, photo_dir, tmp_path, capsys,
                                                           monkeypatch):
    """Every way of serving the index gives the rows of the loaded index (same neighbours,
    same restored bytes): ``index_servers=1`` (the restore actors query a shard actor) and
    ``index_mmap=true`` (they map the node's copy, written once under $ADIR_CACHE)."""
    import pyarrow.parquet as pq

    from index_builder.embedder import load_embedder
    from index_builder.shard_build import embed_rows
    from jobs.build_index import index_stage
    from restore_core.bundled_photos import export_crops
    from tests.helpers import save_tiny_embedder

    crops = export_crops(str(tmp_path / "photos"), "train", 8, 32, seed=4)
    spec = save_tiny_embedder(str(tmp_path / "embedder"), seed=1)
    emb, _ = embed_rows(load_embedder(spec), [c[0] for c in crops], [c[1] for c in crops], thumb_size=8)
    pq.write_table(emb, str(tmp_path / "emb.parquet"))
    index = str(tmp_path / "index")
    index_stage([str(tmp_path / "emb.parquet")], index, spec, kind="flat", workers=0)

    manifest = write_manifest_file(manifest_rows(photo_dir, "sr4", "adir", n=2), tmp_path / "m.parquet")
    sets = [*TINY, f"index={index}"]
    monkeypatch.setenv("ADIR_CACHE", str(tmp_path / "cache"))  # forwarded to the restore actors
    results = {}
    for serving in ("index_servers=0", "index_servers=1", "index_mmap=true"):
        out = tmp_path / serving
        code, stdout, stderr = run_restore(capsys, manifest, str(out), "--workers", "1", prior=tiny_prior,
                                           sets=[*sets, serving])
        assert code == 0, stdout + stderr
        assert ("index served by 1 shard actors" in stdout) == (serving == "index_servers=1")
        results[serving] = read_results(str(out)).sort_values("image_id")
    assert len(list((tmp_path / "cache" / "index-mmap").glob("*/index.faiss"))) == 1
    loaded = results.pop("index_servers=0")
    assert all(len(n) == 2 for n in loaded.neighbour_ids)
    for serving, got in results.items():
        assert got.neighbour_ids.map(list).tolist() == loaded.neighbour_ids.map(list).tolist(), serving
        for rel in loaded.output_path:
            assert (tmp_path / "index_servers=0" / rel).read_bytes() == (tmp_path / serving / rel).read_bytes()
    code, _, stderr = run_restore(capsys, manifest, str(tmp_path / "both"), prior=tiny_prior,
                                  sets=[*sets, "index_servers=1", "index_mmap=true"])
    assert code == 2 and "index_mmap and index_servers are two ways" in stderr
