"""Operator contracts: exact adjoints, bicubic agreement, errors for bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restore_core.errors import InputError, MethodError
from restore_core.operators import TASKS, build_operator, parse_task, sigma_to_model_range

# Odd sizes where the task allows it, so off-by-one padding errors show (deepinv's habit).
SHAPES = {"sr2": (3, 38, 30), "sr4": (3, 36, 28), "sr8": (3, 40, 48)}
LINEAR = [t for t in TASKS if build_operator(t, SHAPES.get(t, (3, 37, 31))).is_linear]


@pytest.mark.parametrize("task", LINEAR)
def test_adjoint(task):
    shape = SHAPES.get(task, (3, 37, 31))
    op = build_operator(task, shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2,) + shape, generator=g, dtype=torch.float64)
    y = torch.randn((2,) + op.output_shape, generator=g, dtype=torch.float64)
    lhs = (op.A(x) * y).sum()
    rhs = (x * op.A_adjoint(y)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-6


def test_linear_set_is_everything_but_jpeg():
    assert set(TASKS) - set(LINEAR) == {"jpeg"}


def test_sr4_matches_standard_bicubic_downscale_on_smooth_image():
    """Interior pixels agree with torch's antialiased bicubic to within 1/255 (0-1 scale)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx + yy), torch.cos(2 * yy), xx * yy])[None].double() * 0.8
    ours = build_operator("sr4", (3, 64, 64)).A(smooth)
    ref = F.interpolate(smooth, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    err = (ours - ref)[..., 2:-2, 2:-2].abs().max().item() / 2  # [-1,1] -> [0,1] scale
    assert err < 1 / 255


def test_lambda_max_matches_dense_eigenvalue():
    op = build_operator("sr2", (1, 8, 8))
    eye = torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)
    mat = op.A(eye).reshape(64, -1).T  # columns are A e_i
    top = torch.linalg.eigvalsh(mat.T @ mat).max().item()
    assert op.lambda_max() == pytest.approx(top, rel=2e-3)  # power method, 100 iterations


def test_noise_mapping_and_seeded_degrade():
    assert sigma_to_model_range(10) == pytest.approx(20 / 255)
    op = build_operator("deblur_box5", (3, 16, 16))
    x = torch.zeros(1, 3, 16, 16)
    y1 = op.degrade(x, 10, torch.Generator().manual_seed(3))
    y2 = op.degrade(x, 10, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2) and y1.std().item() == pytest.approx(20 / 255, rel=0.15)


def test_jpeg_is_nonlinear_without_adjoint():
    op = build_operator("jpeg:q=15", (3, 32, 32))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert not op.is_linear
    assert not torch.allclose(op.A(x + x * 0.5), op.A(x) + op.A(x * 0.5), atol=1e-3)
    with pytest.raises(MethodError, match="non-linear"):
        op.A_adjoint(x)


def test_buffers_follow_dtype():
    op = build_operator("deblur_gauss:sigma=1.5", (3, 16, 16)).to(torch.float64)
    assert op.kernel.dtype == torch.float64 and op.kernel.shape[-1] == 2 * 5 + 1


def test_inpaint_modes_and_mask_rates():
    box = build_operator("inpaint:mode=box,size=0.5", (3, 20, 20))
    assert box.mask.sum().item() == 400 - 100
    rnd = build_operator("cs:rate=0.25", (3, 64, 64))
    assert rnd.mask.mean().item() == pytest.approx(0.25, abs=0.03)
    mask = torch.zeros(20, 20)
    mask[:10] = 1
    assert build_operator("inpaint", (3, 20, 20), mode="mask", mask=mask).mask.sum().item() == 200


@pytest.mark.parametrize("task, shape, message", [
    ("sr5", (3, 32, 32), "unknown task 'sr5'; accepted: sr2"),
    ("sr4", (3, 30, 32), "not divisible by 4"),
    ("sr8", (3, 4, 4), "smaller than the factor 8"),
    ("deblur_gauss:sigma=-1", (3, 16, 16), "sigma must be > 0"),
    ("inpaint:mode=star", (3, 16, 16), "accepted: box, random, mask"),
    ("jpeg:q=0", (3, 16, 16), "1..100"),
    ("deblur_box5:foo=1", (3, 16, 16), "unknown parameter"),
    ("colorize", (1, 16, 16), "3-channel"),
])
def test_bad_operator_requests(task, shape, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        build_operator(task, shape)


def test_nan_input_and_wrong_shape_are_refused():
    op = build_operator("sr4", (3, 16, 16))
    with pytest.raises(InputError, match="NaN"):
        op.A(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(InputError, match="does not match"):
        op.A(torch.zeros(1, 3, 32, 32))


def test_parse_task():
    assert parse_task("inpaint:mode=random,keep=0.3") == ("inpaint", {"mode": "random", "keep": 0.3})
    assert np.isclose(parse_task("deblur_gauss:sigma=3")[1]["sigma"], 3)
