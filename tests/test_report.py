"""Reducer + report on a synthetic job output built from real photo crops: summary numbers,
summary.parquet, failures listed (escaped), and every link / <img src> of report.html
resolves to a file under the output folder."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from jobs.restore.reducer import reduce
from jobs.restore.results import write_result
from restore_core.bundled_photos import random_crops
from restore_core.images import resize, write_png


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.refs.append(a["href"])
        if tag == "img":
            self.refs.append(a["src"])

    def handle_data(self, data):
        self.text.append(data)


def report_refs(page: str) -> tuple[list[str], str]:
    """(every href and <img src> of a report page, its visible text)."""
    parser = _Links()
    parser.feed(page)
    return parser.refs, "".join(parser.text)


def _record(image_id, task, method, status="ok", error=None, psnr=None, nb=(), seconds=1.0):
    ok = status == "ok"
    return {
        "image_id": image_id, "status": status, "error": error, "method": method, "task": task,
        "noise_sigma": 0.0, "seed": 0, "degrade": True, "input_uri": f"/data/{image_id}.png",
        "gt_uri": f"/data/{image_id}.png",
        "output_path": f"restored/{image_id}.png" if ok else None,
        "observed_path": f"observed/{image_id}.png" if ok else None,
        "gt_path": f"gt/{image_id}.png" if ok else None,
        "neighbour_ids": [i for i, _ in nb], "neighbour_uris": [u for _, u in nb],
        "psnr": psnr, "ssim": 0.5 if ok else None, "consistency": 1.0 if ok else None,
        "seconds_load": 0.1, "seconds_retrieve": 0.2, "seconds_adapt": seconds, "seconds_sample": 2 * seconds,
        "seconds_score": 0.05, "seconds_write": 0.05, "seconds_total": 3 * seconds + 0.4,
        "steps": 10 if ok else 0, "iterations": 5 if ok else 0, "stop_reason": "done" if ok else "error",
        "worker_pid": os.getpid(), "finished_at": "2026-01-01T00:00:00+00:00",
    }


@pytest.fixture(scope="module")
def job_output(tmp_path_factory):
    """A finished job folder: 2 tasks x 2 methods x 2 images ok, 2 failed rows, neighbours in
    a corpus folder outside the output (one of them missing)."""
    root = tmp_path_factory.mktemp("job")
    out, corpus = root / "out", root / "corpus"
    crops, _ = random_crops(("chelsea", "coffee"), 4, 32, seed=1)
    nbs, _ = random_crops(("astronaut", "rocket"), 2, 32, seed=2)
    for j, x in enumerate(nbs):
        write_png(x[None], str(corpus / f"nb{j}.png"))
    neighbours = [("nb0", str(corpus / "nb0.png")), ("nb1", str(corpus / "nb1.png")),
                  ("gone", str(corpus / "missing.png"))]
    records = []
    for task, scale in (("sr4", 4), ("colorize", 1)):
        for method, psnr0 in (("adir", 25.0), ("gd", 20.0)):
            for i in range(2):
                image_id = f"{task}-{method}-{i}"
                x = crops[i + 2 * (task == "sr4")][None]
                write_png(x, str(out / "gt" / f"{image_id}.png"))
                write_png(resize(x, (32 // scale, 32 // scale)), str(out / "observed" / f"{image_id}.png"))
                write_png((x + 0.05).clamp(-1, 1), str(out / "restored" / f"{image_id}.png"))
                records.append(_record(image_id, task, method, psnr=psnr0 + i,
                                       nb=neighbours if method == "adir" else (), seconds=1.0 + i))
    records.append(_record("bad-0", "sr4", "adir", "failed", error="not an image: /data/bad-0.png <script>"))
    records.append(_record("bad-1", "sr4", "gd", "failed", error="NaN at step 7"))
    for r in records:
        write_result(str(out), r)
    summary = reduce(str(out), per_group=2)
    return out, records, summary


def test_summary_numbers(job_output):
    out, records, summary = job_output
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["rows"] == summary["rows"] == len(records) == 10
    assert (on_disk["ok"], on_disk["failed"]) == (8, 2)
    groups = {(g["task"], g["method"]): g for g in on_disk["groups"]}
    assert set(groups) == {("sr4", "adir"), ("sr4", "gd"), ("colorize", "adir"), ("colorize", "gd")}
    g = groups[("sr4", "adir")]
    assert (g["rows"], g["ok"], g["failed"]) == (3, 2, 1)
    assert g["metrics"]["psnr"] == pytest.approx(25.5)  # mean over ok rows only
    assert groups[("colorize", "gd")]["metrics"]["psnr"] == pytest.approx(20.5)
    assert g["seconds"]["seconds_adapt"] == pytest.approx(1.5)
    assert g["seconds"]["seconds_total"] == pytest.approx(np.mean([3.4, 6.4]))
    assert "consistency" in on_disk["lower_better"] and "psnr" not in on_disk["lower_better"]
    assert "noise_sigma" not in on_disk["metrics"] and "seconds_total" not in on_disk["metrics"]
    assert {f["image_id"] for f in on_disk["failures"]} == {"bad-0", "bad-1"}
    table = pd.read_parquet(out / "summary.parquet")
    assert sorted(table["image_id"]) == sorted(r["image_id"] for r in records)
    assert list(table.loc[table.image_id == "sr4-adir-0", "neighbour_ids"].iloc[0]) == ["nb0", "nb1", "gone"]


def test_report_links_resolve_and_failures_listed(job_output):
    out, _, summary = job_output
    page = (out / "report.html").read_text()
    assert summary["report_uri"] == os.path.join(str(out), "report.html")
    refs, text = report_refs(page)
    assert refs and not any(r.startswith(("/", "file:", "http")) for r in refs)
    missing = [r for r in refs if not (out / r).is_file()]
    assert not missing, missing
    for kind in ("restored/", "observed/", "gt/", "report/neighbours/", "report/metric_by_method.png",
                 "report/seconds_by_stage.png"):
        assert any(r.startswith(kind) for r in refs), kind
    # 2 rows per (task, method) in the grid; adir rows show the two fetchable neighbours
    assert sum(r.startswith("restored/") for r in refs) == 2 * 8  # link + img per row
    assert len(list((out / "report" / "neighbours").iterdir())) == 2
    assert "not an image: /data/bad-0.png <script>" in text and "NaN at step 7" in text
    assert "<script>" not in page  # escaped, not injected


def test_a_summary_is_reused_only_for_the_same_manifest_and_parts(tmp_path):
    """A rerun with nothing new keeps summary.json as it is; a new part, another manifest
    or a missing report makes a new one."""
    from jobs.restore.manifest import Manifest

    out = str(tmp_path / "out")
    for i in range(3):
        write_result(out, _record(f"r{i}", "sr4", "gd", psnr=20.0 + i))
    summary_json = tmp_path / "out" / "summary.json"

    def reduced(**kw) -> tuple[dict, int]:
        return reduce(out, per_group=1, **kw), summary_json.stat().st_mtime_ns

    first, made = reduced()
    again, kept = reduced()
    assert kept == made and again == json.loads(summary_json.read_text()) and again["rows"] == first["rows"] == 3
    write_result(out, _record("r3", "sr4", "gd", psnr=30.0))
    assert reduced()[0]["rows"] == 4
    two = Manifest.from_frame(pd.DataFrame([{"image_id": f"r{i}", "input_uri": "/x.png", "task": "sr4"} for i in (0, 1)]))
    (summary, made), (_, kept) = reduced(manifest=two), reduced(manifest=two)
    assert (summary["rows"], summary["records_outside_manifest"], kept) == (2, 2, made)
    (tmp_path / "out" / "report.html").unlink()
    assert reduced(manifest=two)[1] != made and (tmp_path / "out" / "report.html").is_file()
