"""``restore_one``: one row without Ray — bad input, dispatch, adapter hygiene, ``method=pinv``."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_tiny_prior

from restore_core import images, metrics
from restore_core.adaptation import state_dict_hash
from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError, InputError, MethodError
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one

SIZE = 32
CFG = RestoreConfig().with_overrides(["steps=6", "adapt_iters=2", "adapt_batch=2"])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), sample_size=SIZE))


def image(size=SIZE, n=1):
    u = torch.linspace(-0.7, 0.7, size)
    return (u[None, :] * u[:, None]).expand(n, 3, size, size).clone()


def test_adir_row_leaves_base_weights_untouched(model):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(image())
    before = state_dict_hash(model.unet)
    x, info = restore_one(y, op, model, CFG, method="adir", neighbours=image(n=3), seed=1)
    assert state_dict_hash(model.unet) == before
    assert x.shape == (1, 3, SIZE, SIZE)
    assert info["iterations"] == 2 and info["steps"] == 6 and info["stop_reason"] == "steps"
    assert info["seconds_adapt"] > 0 and info["seconds_sample"] > 0
    assert info["seconds_total"] >= info["seconds_adapt"] + info["seconds_sample"]
    assert info["warnings"] == []
    x2, _ = restore_one(y, op, model, CFG, method="adir", neighbours=image(n=3), seed=1)
    assert torch.equal(x, x2)


def test_ia_y_on_colorization_and_size_warning(model):
    op = build_operator("colorize", (3, 16, 16))
    y = op.A(image(16))
    x, info = restore_one(y, op, model, CFG, method="ia_y")
    assert x.shape == (1, 3, 16, 16) and info["iterations"] == 2
    assert any("differs from the prior's training size" in w for w in info["warnings"])


@pytest.mark.parametrize("case, error, message", [
    ("nan", InputError, "NaN or inf"),
    ("range", InputError, "expected the model range"),
    ("shape", InputError, r"y has shape \(3, 16, 16\) but task 'sr4'.*produces \(3, 8, 8\)"),
    ("channels", InputError, "the image has 1 channels but the model .* expects 3"),
    ("odd", InputError, "not a multiple of the model's downsampling factor 2"),
    ("nonlinear", MethodError, "cannot restore task 'jpeg'"),
    ("no_neighbours", MethodError, "needs retrieved neighbour images"),
    ("method", ConfigError, "bad value for method: 'magic'; accepted: adir"),
])
def test_bad_input(model, case, error, message):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(image())
    method = "gd"
    if case == "nan":
        y[0, 0, 0, 0] = float("nan")
    elif case == "range":
        y = (y + 1) * 127.5
    elif case == "shape":
        y = torch.zeros(1, 3, 16, 16)
    elif case == "channels":
        op = build_operator("sr4", (1, SIZE, SIZE))
        y = torch.zeros(1, 1, 8, 8)
    elif case == "odd":
        op = build_operator("deblur_box5", (3, 31, 31))
        y = torch.zeros(1, 3, 31, 31)
    elif case == "nonlinear":
        op = build_operator("jpeg", (3, SIZE, SIZE))
        y = torch.zeros(1, 3, SIZE, SIZE)
    elif case == "no_neighbours":
        method = "adir"
    elif case == "method":
        method = "magic"
    with pytest.raises(error, match=message):
        restore_one(y, op, model, CFG, method=method)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / (a - b).square().mean().item())  # peak-to-peak 2 in [-1, 1]


def _held_out_crops(n: int = 3) -> torch.Tensor:
    return torch.cat([random_crops((photo,), 1, SIZE, seed=100 + i)[0] for i, photo in enumerate(HELDOUT_PHOTOS[:n])])


def test_pinv_on_sr4_equals_bicubic_on_held_out_photos(model):
    """method=pinv through restore_one on noisy sr4 of real held-out photos: the bench's
    bicubic baseline (images.resize), PSNR equal within 0.01 dB, deterministic, no model work."""
    op = build_operator("sr4", (3, SIZE, SIZE))
    for i, x in enumerate(_held_out_crops()):
        y = op.degrade(x[None], 10.0, torch.Generator().manual_seed(i))
        x_hat, info = restore_one(y, op, model, CFG, method="pinv", seed=3)
        bicubic = images.resize(y, (SIZE, SIZE))
        assert abs(_psnr(x_hat, x[None]) - _psnr(bicubic, x[None])) < 0.01
        assert _psnr(x_hat, x[None]) > _psnr(torch.zeros_like(x_hat), x[None]) + 5
        assert torch.equal(x_hat, restore_one(y, op, model, CFG, method="pinv", seed=4)[0])
        assert info["estimate"] == "A_pinv" and info["steps"] == 0 and info["stop_reason"] == "closed_form"


@pytest.mark.parametrize("spec", ["inpaint", "inpaint:mode=random,keep=0.3", "cs:rate=0.25", "colorize", "denoise"])
def test_pinv_is_consistent_with_y(model, spec):
    """Where A⁺ is the exact pseudo-inverse, x̂ fits y: exactly without noise, and at least as
    well as the ground truth itself with noise σ = 10."""
    op = build_operator(spec, (3, SIZE, SIZE))
    x = _held_out_crops()
    clean, _ = restore_one(op.A(x), op, model, CFG, method="pinv")
    assert metrics.consistency(clean, op.A(x), op) < 1e-3
    y = op.degrade(x, 10.0, torch.Generator().manual_seed(0))
    x_hat, _ = restore_one(y, op, model, CFG, method="pinv")
    assert metrics.consistency(x_hat, y, op) <= metrics.consistency(x, y, op)


@pytest.mark.parametrize("spec", ["jpeg:q=15", "deblur_box5", None])
def test_pinv_returns_y_for_blur_jpeg_and_blind_use(model, spec):
    x = _held_out_crops(1)
    op = build_operator(spec, (3, SIZE, SIZE)) if spec else None
    y = op.degrade(x, 5.0, torch.Generator().manual_seed(0)) if op else x.clone()
    x_hat, info = restore_one(y, op, model, CFG, method="pinv")
    assert torch.equal(x_hat, y.clamp(-1, 1))
    assert info["estimate"] == ("A_pinv" if spec == "deblur_box5" else "y")
