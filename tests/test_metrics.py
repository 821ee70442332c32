"""The pyiqa wrapper on real photographs: default metrics, missing weights, consistency."""

from __future__ import annotations

import pytest
import torch
from skimage import data

from restore_core import metrics
from restore_core.errors import ConfigError, ModelLoadError
from restore_core.images import from_uint8
from restore_core.operators import build_operator


@pytest.fixture(scope="module")
def crops():
    """A 64² astronaut crop, the same with Gaussian noise (σ ≈ 25/255) and 5x5 box-blurred."""
    gt = from_uint8(data.astronaut()[:64, 160:224].copy())
    noisy = (gt + 0.2 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(gt, 5, 1, 2, count_include_pad=False)
    return gt, noisy, blurred


# value for an image compared with itself: exact for these metrics (psnr: pyiqa caps at 80 dB)
IDENTICAL = {"psnr": 80.0, "ssim": 1.0, "fsim": 1.0, "gmsd": 0.0, "vif": 1.0, "nlpd": 0.0}
LOWER_BETTER = {"gmsd", "nlpd", "piqe"}


@pytest.mark.parametrize("name", metrics.DEFAULT_FR + metrics.DEFAULT_NR)
def test_default_metric_ranks_clean_above_degraded(name, crops):
    gt, noisy, blurred = crops
    values = [metrics.compute_metrics(x, gt, names=(name,))[name] for x in crops]
    sign = -1 if name in LOWER_BETTER else 1
    assert all(sign * values[0] > sign * v for v in values[1:]), values
    if name in IDENTICAL:
        assert values[0] == pytest.approx(IDENTICAL[name], abs=1e-3)
    if name == "psnr":
        assert 15 < values[1] < 25  # σ = 0.2 on [-1, 1] is 25.5/255: PSNR ≈ 20 dB
    if name == "piqe":
        assert 0 <= min(values) and max(values) <= 100


def test_full_reference_metrics_skipped_without_ground_truth(crops):
    out = metrics.compute_metrics(crops[0])
    assert set(out) == set(metrics.DEFAULT_NR)


@pytest.mark.parametrize("name", sorted(metrics.WEIGHT_FILES) + ["fid"])
def test_missing_weights_name_file_and_dir(name, tmp_path):
    fname = metrics.FID_WEIGHTS if name == "fid" else metrics.WEIGHT_FILES[name][0]
    with pytest.raises(ModelLoadError) as err:
        if name == "fid":
            metrics.fid(str(tmp_path), str(tmp_path), weights_dir=str(tmp_path))
        else:
            x = torch.zeros(1, 3, 32, 32)
            metrics.compute_metrics(x, x, names=(name,), weights_dir=str(tmp_path))
    assert fname in str(err.value) and str(tmp_path) in str(err.value)


def test_unknown_metric_is_config_error(crops):
    with pytest.raises(ConfigError, match="accepted"):
        metrics.compute_metrics(crops[0], crops[0], names=("musiq-koniq",))


@pytest.mark.parametrize("task", ["sr4", "deblur_box5", "colorize"])
def test_consistency_is_the_noise_level_on_the_0_255_scale(task, crops):
    gt = crops[0]
    op = build_operator(task, tuple(gt.shape[1:]))
    with torch.no_grad():
        clean = op.A(gt)
        y = op.degrade(gt, 10.0, torch.Generator().manual_seed(1))
    assert metrics.consistency(gt, clean, op) < 1e-3
    assert metrics.consistency(gt, y, op) == pytest.approx(10.0, rel=0.25)


def test_metrics_too_small_for_the_image_are_left_out():
    x = torch.zeros(1, 3, 16, 16)
    out = metrics.compute_metrics(x, x)
    assert "vif" not in out and set(out) == set(metrics.DEFAULT_FR + metrics.DEFAULT_NR) - {"vif"}
