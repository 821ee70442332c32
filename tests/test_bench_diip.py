"""``adir bench diip`` end to end on a tiny prior: one row per (task, start, learning
rate) with a curve of ``--iters`` iterates, summaries that agree with the curve, and the
rules' output never worse than both its own curve and y; bad options exit 2."""

import json
import math

import pytest
from helpers import make_tiny_prior

from jobs.cli import main

ITERS = 3


def test_bench_diip_rows(tmp_path):
    prior = make_tiny_prior(str(tmp_path / "prior"), 16)
    out = tmp_path / "diip.json"
    rc = main(["bench", "diip", "--model", prior, "--tasks", "denoise:25,jpeg:0", "--starts", "denoised,noise",
               "--lrs", "0.01,0.1", "--iters", str(ITERS), "--n-images", "2", "--size", "16",
               "--set", "diip.skip=250", "--output", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["task"], r["start"], r["lr"]) for r in rows] == [
        (t, s, lr) for t in ("denoise σ25", "jpeg σ0") for s in ("denoised", "noise") for lr in (0.01, 0.1)]
    for r in rows:
        assert len(r["curve"]) == ITERS
        assert math.isnan(r["ref"]) == (r["start"] == "noise")  # N(0, I) inverts no image
        assert r["first"] == pytest.approx(r["curve"][0], abs=1e-3)
        assert r["last"] == pytest.approx(r["curve"][-1], abs=1e-3)
        assert r["peak"] >= max(r["curve"]) - 1e-3 and r["peak_min"] <= r["peak"]
        assert 1 <= r["peak_iter"] <= ITERS and 1 <= r["stop_iter"] <= ITERS
        assert r["stop_min"] <= r["stop"] <= max(r["peak"], 0.0) + 1e-3  # an iterate, or y (gain 0)


@pytest.mark.parametrize("bad", [["--starts", "zeros"], ["--tasks", "denoise"], ["--lrs", "x"], ["--lrs", "0"]])
def test_bench_diip_bad_options_exit_2(bad):
    assert main(["bench", "diip", *bad]) == 2
