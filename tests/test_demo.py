"""``adir demo --tiny``: the embedded default end to end (index from bundled training crops,
held-out crops x sr4/deblur_box5/colorize x adir/gd on local Ray, report), offline, with
the shipped prior and embedder; the printed report path exists and its links resolve."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from jobs.cli import main as adir
from jobs.demo import METHODS, SIZES, TASKS
from restore_core.bundled_photos import TRAIN_PHOTOS
from tests.test_report import report_refs


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code = adir(["demo", "--output", str(out), "--tiny"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0, printed[-20:]
    report = out / "report.html"
    assert printed[-1] == str(report) and report.is_file()

    summary = json.loads((out / "summary.json").read_text())
    n = SIZES["tiny"].heldout * len(TASKS) * len(METHODS)
    assert (summary["rows"], summary["ok"], summary["failed"]) == (n, n, 0)
    assert {(g["task"], g["method"]) for g in summary["groups"]} == {(t, m) for t in TASKS for m in METHODS}

    df = pd.read_parquet(out / "summary.parquet")
    corpus = out / "inputs" / "corpus"
    for row in df.itertuples():
        assert (out / row.output_path).is_file() and (out / row.gt_path).is_file()
        assert row.psnr is not None and row.psnr == row.psnr
        if row.method == "adir":  # neighbours come from the training corpus, never held-out photos
            assert len(row.neighbour_ids) == 2
            assert all(Path(u).parent == corpus and Path(u).name.startswith(TRAIN_PHOTOS) for u in row.neighbour_uris)
        else:
            assert len(row.neighbour_ids) == 0

    refs, _ = report_refs(report.read_text())
    assert any(r.startswith("report/neighbours/") for r in refs)
    assert all((out / r).is_file() for r in refs), [r for r in refs if not (out / r).is_file()]
