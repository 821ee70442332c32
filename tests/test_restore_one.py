"""``restore_one``: one row without Ray — bad input, dispatch, adapter hygiene (issue 2)."""

from __future__ import annotations

import pytest
import torch

from helpers import make_tiny_prior
from restore_core.adaptation import state_dict_hash
from restore_core.config import RestoreConfig
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.errors import ConfigError, InputError, MethodError
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
    ("method", ConfigError, "unknown method 'magic'; accepted: adir"),
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
