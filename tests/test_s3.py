"""``adir restore`` with every input and output on s3:// against a real S3-API server
(moto's ThreadedMotoServer on loopback, s3fs as the client), and with that server
stopped mid-run: rows fail cleanly, no object is partial, and a rerun completes the job.

Ray workers are separate processes: they get the endpoint through the environment
(``AWS_ENDPOINT_URL`` for botocore, ``FSSPEC_S3_ENDPOINT_URL`` for fsspec), which
``adir restore`` forwards to them. ``memory://`` would not work here: it is per-process."""

from __future__ import annotations

import io
import json
import socket
import threading

import fsspec
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.restore.results import read_results
from tests.jobs_fixtures import (
    after_first_row,
    manifest_rows,
    photo_dir,
    ray_cluster,
    run_restore,
    tiny_prior,
)

SETS = ["steps=2", "metrics=psnr", "cpus_per_worker=0.5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield server, port, endpoint
    server.stop()


@pytest.fixture()
def s3(s3_server, monkeypatch):
    """An s3fs filesystem on the moto server, with the environment the workers inherit."""
    server, port, endpoint = s3_server
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1",
           "AWS_RETRY_MODE": "standard"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
    for bucket in ("inputs", "outputs"):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    return fs


def _upload_job(fs, photo_dir, prefix: str, n: int) -> str:
    rows = manifest_rows(photo_dir, "sr4", "gd", n=4)[:n] + manifest_rows(photo_dir, "colorize", "gd", n=4)[:n]
    for r in rows:
        uri = f"s3://inputs/{prefix}/{r['image_id']}.png"
        fs.put(r["input_uri"], uri)
        r["input_uri"] = uri
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buf)
    fs.pipe(f"inputs/{prefix}/manifest.parquet", buf.getvalue())
    return f"s3://inputs/{prefix}/manifest.parquet"


def test_restore_on_s3(ray_cluster, tiny_prior, photo_dir, s3, capsys):
    manifest = _upload_job(s3, photo_dir, "ok", 2)
    out = "s3://outputs/job"
    code, stdout, stderr = run_restore(capsys, manifest, out, prior=tiny_prior, sets=SETS)
    assert code == 0, stdout + stderr
    df = read_results(out)
    assert len(df) == 4 and (df["status"] == "ok").all()
    for r in df.itertuples():
        for rel in (r.output_path, r.observed_path, r.gt_path):
            Image.open(io.BytesIO(s3.cat(f"outputs/job/{rel}"))).load()
    assert s3.exists("outputs/job/report.html") and s3.exists("outputs/job/summary.parquet")
    assert json.loads(s3.cat("outputs/job/summary.json"))["ok"] == 4


def test_s3_server_stopped_mid_run(ray_cluster, tiny_prior, photo_dir, s3_server, s3, capsys,
                                  monkeypatch):
    server, port, _ = s3_server
    manifest = _upload_job(s3, photo_dir, "fault", 4)
    out = "s3://outputs/fault"
    stopped = threading.Event()

    def stop_server():
        server.stop()
        stopped.set()

    with after_first_row(monkeypatch, stop_server):
        code, stdout, stderr = run_restore(capsys, manifest, out, prior=tiny_prior, sets=SETS)
    assert stopped.is_set(), "the server was never stopped"
    assert code == 3, stdout + stderr
    assert "rows failed" in stdout

    server.start()  # moto keeps its buckets in-process: same data, back online
    s3.invalidate_cache()
    records = s3.glob("outputs/fault/results/*.parquet")
    committed = [rec for key in records for rec in pq.read_table(io.BytesIO(s3.cat(key))).to_pylist()]
    assert 1 <= len(committed) < 8
    for rec in committed:  # every record that exists is whole, and so are the images it names
        if rec["status"] == "ok":
            for rel in (rec["output_path"], rec["observed_path"], rec["gt_path"]):
                Image.open(io.BytesIO(s3.cat(f"outputs/fault/{rel}"))).load()
    for key in s3.glob("outputs/fault/*/*/*.png"):
        Image.open(io.BytesIO(s3.cat(key))).load()  # no partial image either

    code, stdout, stderr = run_restore(capsys, manifest, out, "--retry-failed", prior=tiny_prior, sets=SETS)
    assert code == 0, stdout + stderr
    df = read_results(out)
    assert len(df) == 8 and (df["status"] == "ok").all()


def test_s3_without_credentials_is_one_line_exit_2(tiny_prior, photo_dir, s3, tmp_path, monkeypatch, capsys):
    """The moto server is up but the client has no credentials: exit 2 before any work, one
    line naming the URI and the error (not a botocore traceback)."""
    import s3fs

    from jobs.cli import main

    manifest = _upload_job(s3, photo_dir, "nocreds", 1)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    for key in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(key, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        code = main(["restore", "--manifest", manifest, "--output", "s3://outputs/nocreds",
                     "--set", f"model={tiny_prior}", "--set", "metrics=psnr"])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and manifest in lines[0] and "credentials" in lines[0].lower(), lines
    assert "Traceback" not in captured.err + captured.out
