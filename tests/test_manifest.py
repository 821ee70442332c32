"""Manifests and job configs: ``adir make-manifest`` round trip, every refusal of a bad
manifest or config (one parametrised test each), and the precedence of config sources."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from jobs.cli import main as cli
from jobs.restore.job_config import build_job_config
from jobs.restore.manifest import read_manifest
from restore_core.bundled_photos import random_crops
from restore_core.errors import ConfigError, InputError
from restore_core.images import write_png


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    crops, _ = random_crops(("chelsea",), 2, 16, seed=0)
    write_png(crops[0][None], str(root / "my photo (1).png"))
    write_png(crops[1][None], str(root / "b.jpg"))
    (root / "notes.txt").write_text("not listed")
    return root


def test_make_manifest_round_trip(folder, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    code = cli(["make-manifest", "--images", str(folder), "--task", "deblur_gauss:sigma=3", "--noise", "10",
                "--method", "gd", "--degrade", "--seed", "7", "--output", str(out)])
    assert code == 0, capsys.readouterr()
    rows = read_manifest(str(out))
    assert [r["image_id"] for r in rows] == ["b", "my_photo__1_"]
    assert rows[1]["input_uri"] == str(folder / "my photo (1).png")
    assert all(r["task"] == "deblur_gauss:sigma=3" and r["noise_sigma"] == 10.0 and r["method"] == "gd"
               and r["degrade"] is True and r["seed"] == 7 and r["k"] is None for r in rows)


def test_make_manifest_empty_folder_is_exit_2(tmp_path, capsys):
    code = cli(["make-manifest", "--images", str(tmp_path), "--task", "sr4", "--output", str(tmp_path / "m.parquet")])
    assert code == 2
    assert "no image files" in capsys.readouterr().out
    assert not (tmp_path / "m.parquet").exists()


GOOD = {"image_id": "a", "input_uri": "/x/a.png", "task": "sr4", "degrade": True, "noise_sigma": 0.0,
        "method": "adir", "seed": 0}


@pytest.mark.parametrize("change, expected", [
    ({"drop": "input_uri"}, "missing required column(s) input_uri"),
    ({"extra": {"stpes": 3}}, "unknown column(s) stpes"),
    ({"second": {"image_id": "a"}}, "duplicate image_id(s): a"),
    ({"image_id": "../etc/passwd"}, "must be 1-200 characters of [A-Za-z0-9._-]"),
    ({"image_id": "a/b"}, "must be 1-200 characters"),
    ({"image_id": ".."}, "must be 1-200 characters"),
    ({"image_id": ""}, "must be 1-200 characters"),
    ({"input_uri": None}, "input_uri is empty"),
    ({"task": "sr3"}, "unknown task 'sr3'"),
    ({"task": "deblur_gauss:radius=2"}, "unknown parameter(s) radius for task 'deblur_gauss'"),
    ({"noise_sigma": -1.0}, "noise_sigma must be a number >= 0"),
    ({"method": "magic"}, "unknown method 'magic'"),
    ({"seed": -3}, "seed must be an integer >= 0"),
    ({"seed": 2.5}, "seed must be an integer >= 0, got 2.5"),
    ({"task": "edit"}, "task edit needs mask_uri"),
    ({"prompt": 3}, "prompt must be text or null, got 3"),
    ({"extra": {"k": 0}}, "k must be an integer > 0"),
    ({"degrade": "yes"}, "degrade must be true or false"),
    ({"empty": True}, "no rows"),
])
def test_bad_manifest_is_refused(tmp_path, change, expected):
    row = dict(GOOD)
    rows = [row]
    if "drop" in change:
        row.pop(change["drop"])
    elif "extra" in change:
        row.update(change["extra"])
    elif "second" in change:
        rows.append({**GOOD, **change["second"]})
    elif "empty" in change:
        rows = []
    else:
        row.update(change)
    path = str(tmp_path / "m.parquet")
    pd.DataFrame(rows, columns=list(GOOD) if not rows else None).to_parquet(path)
    with pytest.raises(InputError) as err:
        read_manifest(path)
    assert expected in str(err.value)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "m.parquet"
    path.write_text("image_id,input_uri\n")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_manifest(str(path))


def test_defaults_and_per_row_overrides(tmp_path):
    path = str(tmp_path / "m.parquet")
    pd.DataFrame([{"image_id": "x.1", "input_uri": "s3://b/x.png", "task": "colorize", "steps": 5.0},
                  {"image_id": "x-2", "input_uri": "s3://b/y.png", "task": "colorize", "steps": None}]).to_parquet(path)
    first, second = read_manifest(path)
    task = first.pop("task_spec")
    assert (task.name, task.params, task.sr_factor) == ("colorize", {}, 1)
    assert first == {"image_id": "x.1", "input_uri": "s3://b/x.png", "task": "colorize", "gt_uri": None,
                     "degrade": False, "noise_sigma": 0.0, "method": "adir", "seed": 0, "k": None, "steps": 5,
                     "prompt": None, "mask_uri": None}
    assert second["steps"] is None


def test_job_config_precedence(tmp_path):
    cfg_file = tmp_path / "job.yaml"
    cfg_file.write_text("preset: fast\nworkers: 3\nrestore:\n  k: 7\n  steps: 20\n  shred:\n    iters: 9\n")
    from jobs.restore.job_config import load_config_file

    job = build_job_config(load_config_file(str(cfg_file)), ["steps=11", "restore.adapt_lr=0.01", "index=/i"],
                           workers=4, gpus_per_worker=None, preset=None)
    assert (job.workers, job.index, job.preset) == (4, "/i", "fast")
    r = job.restore
    assert (r.k, r.steps, r.adapt_lr, r.adapt_iters, r.shred.iters) == (7, 11, 0.01, 40, 9)
    again = build_job_config(job.to_dict())
    assert again.to_dict() == job.to_dict()


@pytest.mark.parametrize("data, overrides, expected", [
    ({"wokers": 2}, [], "unknown config key(s) wokers"),
    ({}, ["stepz=3"], "unknown config key 'stepz'"),
    ({}, ["workers=0"], "bad value for workers"),
    ({}, ["device=tpu"], "bad value for device"),
    ({"preset": "slow"}, [], "unknown preset 'slow'"),
    ({"restore": {"k": -1}}, [], "bad value for k"),
    ({"restore": 5}, [], "'restore' must be a mapping"),
    ({}, ["gpus_per_worker=-1"], "bad value for gpus_per_worker"),
])
def test_bad_job_config_is_refused(data, overrides, expected):
    with pytest.raises(ConfigError) as err:
        build_job_config(data, overrides)
    assert expected in str(err.value)


def test_manifest_paths_are_fsspec_uris(tmp_path):
    """A manifest read through a file:// URI behaves as a local path."""
    path = tmp_path / "m.parquet"
    pd.DataFrame([GOOD]).to_parquet(str(path))
    assert read_manifest("file://" + str(path))[0]["image_id"] == "a"
    assert os.path.exists(path)
