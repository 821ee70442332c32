"""Tiled ε-prediction (restore_core.sampling.tiled) on the shipped 64² prior.

Seams are measured as the horizontal gradient energy on the columns at the tile borders
(the first and last columns of every overlap band) relative to all columns; a control run
with (nearly) hard tiles shows the measure does detect seams.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from restore_core.bundled_photos import load_photo
from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError, InputError
from restore_core.images import resize
from restore_core.metrics import consistency
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one
from restore_core.sampling.alg1 import guided_ddpm_sample
from restore_core.sampling.tiled import TiledUNet, tile_layout, tiled_model

torch.set_num_threads(1)
SEAM_LIMIT = 2.5  # blended runs measure 0.5-1.5, the hard-tile control 4-10


@pytest.fixture(scope="module")
def prior():
    return load_diffusion_model()  # the shipped prior: 64², downsampling factor 4


def seam_ratio(x: torch.Tensor, tile: int, overlap: int, factor: int) -> float:
    """Mean squared column difference at the tile-border columns / over all columns."""
    length, lefts = tile_layout(x.shape[-1], tile, overlap, factor)
    e = (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(0, 1, 2))
    cols = sorted({c for s in lefts[1:] for c in (s - 1, s)} | {s + length - d for s in lefts[:-1] for d in (1, 2)})
    return float(e[cols].mean() / e.mean())


@pytest.mark.parametrize("tile,overlap,factor", [(256, 32, 32), (64, 8, 4), (32, 4, 2), (64, 1, 4)])
def test_layout_covers_every_side_with_the_overlap(tile, overlap, factor):
    for side in range(factor, 1200, 7 * factor):
        length, starts = tile_layout(side, tile, overlap, factor)
        assert len(starts) == math.ceil(side / tile)
        assert starts[0] == 0 and starts[-1] + length == side
        if len(starts) == 1:
            assert length == side
            continue
        assert length % factor == 0 and length <= tile + overlap + factor
        assert all(a + length - b >= overlap for a, b in itertools.pairwise(starts))


def test_fits_in_one_tile_is_the_untiled_model(prior):
    assert tiled_model(prior, (3, 64, 64)) is prior
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    wrapped = TiledUNet(prior.unet, 64, 8, prior.downsample_factor)
    with torch.no_grad():
        assert torch.equal(wrapped(x, torch.tensor([10, 10])).sample, prior.unet(x, torch.tensor([10, 10])).sample)


def test_tiled_prediction_is_the_unet_where_one_tile_covers(prior):
    """Pixels covered by one tile only take that tile's prediction unchanged (the blend
    weights are normalised), so tiling changes nothing away from the overlaps."""
    x = torch.randn(1, 3, 64, 160, generator=torch.Generator().manual_seed(1))
    tiled = tiled_model(prior, x.shape).unet
    (lh, _), (lw, lefts) = tiled.layout(64, 160)
    t = torch.tensor([500])
    with torch.no_grad():
        out = tiled(x, t).sample
        first = prior.unet(x[..., :lh, :lw], t).sample
    only_first = lefts[1]  # columns before the second tile starts
    torch.testing.assert_close(out[..., :only_first], first[..., :only_first], rtol=1e-5, atol=1e-5)
    assert tiled.tiles_per_call(64, 160) == 3


def test_tiled_and_untiled_agree_where_the_image_fits(prior):
    gt = resize(load_photo("coffee"), (64, 64)).clamp(-1, 1)
    op = build_operator("sr4", (3, 64, 64))
    cfg = RestoreConfig.from_dict({"steps": 8})
    plain, _ = restore_one(op.A(gt), op, prior, cfg, method="gd")
    fits, _ = restore_one(op.A(gt), op, prior, cfg.with_overrides(["tile_size=64"]), method="gd")
    smaller, _ = restore_one(op.A(gt), op, prior, cfg.with_overrides(["tile_size=32"]), method="gd")
    assert torch.equal(plain, fits)
    assert not torch.equal(plain, smaller)  # a tile below the image side does tile


def test_blending_removes_the_seams_hard_tiles_leave(prior):
    """Unconditional sampling (no data term to hide a seam) of a 64×160 image, 64² tiles."""
    shape = (3, 64, 160)
    ratios = {}
    for overlap in (8, 1):  # the default tile // 8, and nearly hard tiles (a 4-pixel ramp)
        model = tiled_model(prior, shape, 64, overlap)
        x, _ = guided_ddpm_sample(model, None, None, steps=20, generator=torch.Generator().manual_seed(0),
                                  image_shape=shape, batch_size=2)
        ratios[overlap] = seam_ratio(x, 64, overlap, prior.downsample_factor)
    assert ratios[8] < SEAM_LIMIT < ratios[1], ratios


def test_non_square_restore_beyond_a_tile_has_no_seam(prior):
    """sr4 of a held-out photo at 64×128 (two 64² tiles' worth): no seam, and the data
    consistency within 10 % of the untiled run on the same image and seed."""
    gt = resize(load_photo("chelsea"), (64, 128)).clamp(-1, 1)
    op = build_operator("sr4", (3, 64, 128))
    y = op.A(gt)
    cfg = RestoreConfig.from_dict({"steps": 12})
    tiled, _ = restore_one(y, op, prior, cfg, method="gd")
    untiled, _ = restore_one(y, op, prior, cfg.with_overrides(["tile_size=128"]), method="gd")
    assert tiled.shape == gt.shape and not torch.equal(tiled, untiled)
    assert seam_ratio(tiled, 64, 8, prior.downsample_factor) < SEAM_LIMIT
    assert consistency(tiled, y, op) <= 1.1 * consistency(untiled, y, op)


def test_max_side_and_bad_tiling_are_refused(prior):
    op = build_operator("sr4", (3, 64, 128))
    y = op.A(torch.zeros(1, 3, 64, 128))
    with pytest.raises(InputError, match=r"exceeds max_side=96: 2 tiles .* 24 UNet evaluations for 12 steps"):
        restore_one(y, op, prior, RestoreConfig.from_dict({"steps": 12, "max_side": 96}), method="gd")
    with pytest.raises(InputError, match="not a multiple of the model's downsampling factor 4"):
        restore_one(y, op, prior, RestoreConfig.from_dict({"steps": 2, "tile_size": 30}), method="gd")
    with pytest.raises(ConfigError, match="tile_overlap"):
        RestoreConfig.from_dict({"tile_overlap": -1})


def test_make_manifest_resize_gives_the_table2_geometry(tmp_path):
    """``make-manifest --degrade --resize N``: centre-square N² copies of each photo (the
    ground truth), rows pointing at them; a 64² here stands for Table 2's 512²."""
    from jobs.cli import main as cli_main
    from jobs.restore.manifest import read_manifest
    from jobs.restore.resize_inputs import centre_square
    from restore_core.images import read_image, write_png

    src = tmp_path / "photos"
    src.mkdir()
    photos = {name: load_photo(name) for name in ("chelsea", "coffee")}  # 300x451, 400x600: not square
    for name, x in photos.items():
        write_png(x, str(src / f"{name}.png"))
    out = tmp_path / "m.parquet"
    assert cli_main(["make-manifest", "--images", str(src), "--task", "sr4", "--degrade", "--resize", "64",
                     "--output", str(out)]) == 0
    rows = read_manifest(str(out))
    assert sorted(r["image_id"] for r in rows) == ["chelsea", "coffee"]
    for r in rows:
        assert r["input_uri"].startswith(str(tmp_path / "m-64px")) and r["degrade"]
        x = read_image(r["input_uri"])
        assert x.shape == (1, 3, 64, 64)
        want = centre_square(read_image(str(src / f"{r['image_id']}.png")), 64)
        assert (x - want).abs().max() <= 1.5 / 127.5  # 8-bit rounding only
    assert cli_main(["make-manifest", "--images", str(src), "--task", "sr4", "--resize", "3",
                     "--output", str(out)]) == 2
