"""``adir bench inversion`` end to end on a tiny prior: every row is written, the exact
inversion regenerates better than the approximate one, bad options exit 2."""

import json

import pytest
from helpers import make_tiny_prior

from jobs.cli import main


def test_bench_inversion_rows(tmp_path):
    prior = make_tiny_prior(str(tmp_path / "prior"), 16)
    out = tmp_path / "inv.json"
    rc = main(["bench", "inversion", "--model", prior, "--n-images", "1", "--size", "16", "--iters", "2",
               "--fixed-point", "0,4", "--splits", "heldout", "--restore", "pinv=sr4:10,shred=sr4:10",
               "--set", "shred.skip=250", "--set", "shred.iters=2", "--output", str(out)])
    assert rc == 0
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["regenerate, fixed-point 4"]["psnr_mean"] > rows["regenerate, fixed-point 0"]["psnr_mean"]
    for start in ("inverted ground truth", "N(0, I)", "inverted A⁺y"):
        assert f"SHRED from {start}" in rows
    assert rows["pinv on sr4 σ10"]["gain"] == pytest.approx(0.0)
    assert "shred on sr4 σ10" in rows


@pytest.mark.parametrize("bad", [["--splits", "test"], ["--restore", "shred=sr4"], ["--fixed-point", "x"]])
def test_bench_inversion_bad_options_exit_2(bad):
    assert main(["bench", "inversion", "--iters", "0", *bad]) == 2
