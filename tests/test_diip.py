"""DIIP (paper 004): the self-supervised stopping rules fire before the iteration cap.

Tiny untrained prior at 16²: its DDIM output starts far from any image, so the loss falls
fast at first and flattens later; ``slope_eps`` is raised to 0.1 so the flattening is
reached within a 40-iteration cap (the default 0.01 needs a trained prior)."""

import pytest
import torch

from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.methods.diip import laplacian_variance
from restore_core.operators import build_operator
from restore_core.restore import restore_one
from tests.helpers import make_tiny_prior

SIZE = 16
CAP = 40
CHEAP = ["diip.skip=250", "diip.lr=0.05", f"diip.iters={CAP}", "diip.slope_eps=0.1", "diip.k_min=5",
         "diip.patience=3"]


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), SIZE))


@pytest.mark.parametrize("task,sigma,rule", [("denoise", 25, "slope"), ("deblur_gauss", 0, "laplacian")])
def test_diip_auto_rule_fires_before_cap(prior, task, sigma, rule):
    x, _ = random_crops(HELDOUT_PHOTOS, 1, SIZE, seed=0)
    op = build_operator(task, (3, SIZE, SIZE))
    y = op.degrade(x, sigma, torch.Generator().manual_seed(0))
    x_hat, info = restore_one(y, op, prior, RestoreConfig().with_overrides(CHEAP), method="diip", seed=1)
    assert info["rules"] == [rule]
    assert info["stop_reason"] == rule and info["iterations"] < CAP
    assert 1 <= info["stop_iteration"] <= info["iterations"]
    assert x_hat.shape == x.shape and float(x_hat.abs().max()) <= 1


def test_diip_blind_runs_both_rules_and_upsamples_sr(prior):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(random_crops(HELDOUT_PHOTOS, 1, SIZE, seed=1)[0])
    x_hat, info = restore_one(y, op, prior, RestoreConfig().with_overrides(CHEAP + ["diip.rule=both"]),
                              method="diip", seed=0)
    assert x_hat.shape == (1, 3, SIZE, SIZE) and info["rules"] == ["slope", "laplacian"]
    assert info["stop_reason"] in ("slope", "laplacian") and info["iterations"] < CAP


def test_laplacian_variance_orders_sharp_above_blurred():
    x, _ = random_crops(HELDOUT_PHOTOS, 1, 32, seed=0)
    blurred = build_operator("deblur_gauss", (3, 32, 32)).A(x)
    assert float(laplacian_variance(x)) > 2 * float(laplacian_variance(blurred))
