"""Contracts of restore_core.operators: task parsing, exact adjoints, the baseline inverse A⁺,
bicubic SR, λ_max, bad input, JPEG, doctests of every submodule."""

from __future__ import annotations

import doctest
import importlib
import math
import pkgutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data

from restore_core import operators
from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.errors import InputError, MethodError
from restore_core.operators import (
    LINEAR_TASKS,
    TASKS,
    TaskSpec,
    build_operator,
    parse_task,
    sigma_to_model_range,
)

# Odd sizes where the task allows (off-by-one padding errors show); SR needs divisibility.
SHAPES = {"sr2": (3, 38, 30), "sr4": (3, 36, 28), "sr8": (3, 40, 48)}
# Parameter variants that build different operators from the same task name.
VARIANTS = {"inpaint": ["inpaint", "inpaint:mode=random,keep=0.3", "inpaint:mode=box,size=9"],
            "deblur_gauss": ["deblur_gauss", "deblur_gauss:sigma=0.7"], "cs": ["cs:rate=0.25,seed=3"]}
LINEAR_SPECS = [spec for t in LINEAR_TASKS for spec in VARIANTS.get(t, [t])]


def test_registry_lists_every_task_once():
    assert set(operators.TASK_PARAMS) == set(TASKS) == set(operators.BUILDERS)
    built = {t: build_operator(t, SHAPES.get(t, (3, 16, 16))) for t in TASKS}
    assert list(LINEAR_TASKS) == [t for t in TASKS if built[t].is_linear]
    for op in built.values():
        assert isinstance(op, operators.LinearOperator) == op.is_linear
        assert hasattr(op, "A_adjoint") == hasattr(op, "A_pinv") == op.is_linear


@pytest.mark.parametrize("spec", LINEAR_SPECS)
def test_adjoint(spec):
    """<A x, y> = <x, Aᵀ y> to relative 1e-6, float64, odd sizes where allowed, batch 2."""
    shape = SHAPES.get(parse_task(spec).name, (3, 37, 31))
    op = build_operator(spec, shape).to(torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2,) + shape, generator=g, dtype=torch.float64)
    y = torch.randn((2,) + op.output_shape, generator=g, dtype=torch.float64)
    ax, aty = op.A(x), op.A_adjoint(y)
    assert ax.shape == y.shape and aty.shape == x.shape
    lhs, rhs = (ax * y).sum().item(), (x * aty).sum().item()
    assert abs(lhs - rhs) <= 1e-6 * abs(lhs)
    # batch items are independent: A acts on each image separately
    assert torch.allclose(op.A(x[1:]), ax[1:])


def _astronaut_crop(size: int = 128) -> torch.Tensor:
    img = data.astronaut()[100:100 + size, 150:150 + size].astype(np.float64) / 127.5 - 1.0
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def _smooth_image(h: int = 64, w: int = 64) -> torch.Tensor:
    u, v = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64),
                          torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    return torch.stack([torch.sin(3 * u + 1) * torch.cos(2 * v), u * v - 0.5, torch.cos(4 * u * v)])[None]


def _pil_bicubic(x: torch.Tensor, factor: int) -> np.ndarray:
    """PIL's own anti-aliased bicubic downscale, per channel in float ('F') mode."""
    h, w = x.shape[-2:]
    return np.stack([np.asarray(Image.fromarray(c.numpy().astype(np.float32), mode="F")
                                .resize((w // factor, h // factor), Image.BICUBIC)) for c in x[0]])


@pytest.mark.parametrize("image", [_smooth_image, _astronaut_crop])
def test_sr4_matches_standard_bicubic_downscale(image):
    """sr4 = PIL Image.resize(BICUBIC) and torch interpolate(bicubic, antialias) within 1e-5
    (same Keys a=-0.5 taps, same truncated-renormalised borders; the rest is float32)."""
    x = image()
    y = build_operator("sr4", tuple(x.shape[1:])).A(x)
    assert np.abs(y[0].numpy() - _pil_bicubic(x, 4)).max() < 1e-5
    ref = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    assert (y - ref).abs().max().item() < 1e-5


def test_filters_keep_constants_and_sum_to_one():
    x = torch.full((1, 3, 24, 24), 0.3, dtype=torch.float64)
    for task in ("sr2", "sr8", "deblur_box5", "deblur_gauss", "deblur_gauss:sigma=3"):
        assert torch.allclose(build_operator(task, (3, 24, 24)).A(x), torch.tensor(0.3, dtype=torch.float64))
    assert operators.gaussian_taps(2.0).numel() == 13  # 2*ceil(3 sigma) + 1, documented


@pytest.mark.parametrize("spec,shape", [("sr2", (1, 8, 10)), ("sr4", (1, 12, 8)),
                                        ("deblur_box5", (1, 9, 11)), ("deblur_gauss", (1, 13, 11)),
                                        ("colorize", (3, 5, 6)), ("inpaint:mode=random", (3, 6, 5)),
                                        ("denoise", (1, 4, 5))])
def test_lambda_max_matches_dense_eigenvalue(spec, shape):
    op = build_operator(spec, shape)
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).reshape((n,) + shape)
    columns = op.A_adjoint(op.A(basis)).reshape(n, n)  # AᵀA e_i, one image per basis vector
    dense = torch.linalg.eigvalsh((columns + columns.T) / 2).max().item()
    assert op.lambda_max() == pytest.approx(dense, rel=1e-3)
    assert op.lambda_max() is op.lambda_max()  # cached


@pytest.mark.parametrize("spec,shape,message", [
    ("sr5", (3, 20, 20), "unknown task 'sr5'; accepted: sr2, sr4"),
    ("", (3, 20, 20), "empty task name"),
    ("sr4", (3, 2, 8), "smaller than the factor 4"),
    ("sr4", (3, 30, 32), "not divisible by 4; crop it to 28x32"),
    ("sr8:sigma=2", (3, 32, 32), "unknown parameter(s) sigma for task 'sr8'; accepted: none"),
    ("deblur_gauss:sigma=-1", (3, 32, 32), "sigma must be a number in (0, 20]"),
    ("deblur_gauss:sigma", (3, 32, 32), "expected key=value"),
    ("colorize", (1, 32, 32), "colorize needs 3-channel"),
    ("denoise", (4, 32, 32), "1 or 3 channels, got 4"),
    ("inpaint:mode=circle", (3, 32, 32), "unknown inpaint mode 'circle'; accepted: box, random, mask"),
    ("inpaint:mode=box,keep=0.3", (3, 32, 32), "do not apply to inpaint mode=box"),
    ("inpaint:mode=mask", (3, 32, 32), "needs mask= a 32x32 tensor or image URI"),
    ("cs:rate=0", (3, 32, 32), "cs rate must be in (0, 1]"),
    ("cs:seed=x", (3, 32, 32), "seed must be an integer, got 'x'"),
    ("jpeg:q=0", (3, 32, 32), "jpeg quality q must be an integer in 1..100"),
])
def test_bad_specs_are_input_errors(spec, shape, message):
    with pytest.raises(InputError) as err:
        build_operator(spec, shape)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("task", TASKS)
def test_bad_tensors_are_input_errors(task):
    op = build_operator(task, (3, 16, 16))
    good = torch.zeros(1, 3, 16, 16)
    for bad, message in [(good.clone().index_fill_(3, torch.tensor([2]), float("nan")), "NaN or inf"),
                         (torch.full((1, 3, 16, 16), float("inf")), "NaN or inf"),
                         (torch.zeros(1, 1, 16, 16), "has 1 channels but the operator was built for 3"),
                         (torch.zeros(1, 3, 16, 8), "is 16x8 but the operator was built for 16x16"),
                         (torch.zeros(3, 16, 16), "expected a (B, C, H, W) image tensor")]:
        with pytest.raises(InputError) as err:
            op.A(bad)
        assert message in str(err.value)


def test_masks_cs_and_inpaint():
    cs = build_operator("cs:rate=0.25,seed=3", (3, 20, 20))
    assert int(cs.mask.sum()) == 100 and cs.n_measurements() == 300
    assert torch.equal(cs.mask, build_operator("cs", (3, 20, 20), rate=0.25, seed=3).mask)
    assert not torch.equal(cs.mask, build_operator("cs", (3, 20, 20), rate=0.25, seed=4).mask)
    box = build_operator("inpaint", (3, 20, 20))  # default: centred 10x10 hole
    assert box.mask[0, 0, 5:15, 5:15].sum() == 0 and box.mask.sum() == 300
    hole = torch.ones(20, 20)
    hole[:, :4] = 0
    custom = build_operator("inpaint:mode=mask", (3, 20, 20), mask=hole)
    assert torch.equal(custom.mask[0, 0], hole)


def test_mask_from_image_uri(tmp_path):
    arr = np.zeros((12, 10), np.uint8)
    arr[:, 5:] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    op = build_operator(f"inpaint:mode=mask,mask=file://{tmp_path}/m.png", (3, 12, 10))
    assert torch.equal(op.mask[0, 0], torch.from_numpy(arr > 127).float())


def test_degrade_noise_scale_and_seed():
    op = build_operator("deblur_box5", (3, 64, 64))
    x = _smooth_image().float()
    y1 = op.degrade(x, 10.0, torch.Generator().manual_seed(5))
    y2 = op.degrade(x, 10.0, torch.Generator().manual_seed(5))
    assert torch.equal(y1, y2)
    assert (y1 - op.A(x)).std().item() == pytest.approx(sigma_to_model_range(10.0), rel=0.05)
    assert sigma_to_model_range(255) == 2.0
    assert torch.equal(op.degrade(x, 0.0), op.A(x))
    with pytest.raises(InputError, match="noise sigma must be >= 0"):
        op.degrade(x, -1.0)


def test_jpeg_is_nonlinear_without_adjoint():
    x = _astronaut_crop(64).float()
    op = build_operator("jpeg:q=10", (3, 64, 64))
    assert not op.is_linear and op.blind_ok
    y = op.A(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.abs().max() <= 1
    assert torch.equal(op.A(x), y)  # deterministic
    err = (y - x).abs().mean().item()
    assert 0.01 < err < 0.2  # lossy, but an image of the same content
    assert build_operator("jpeg:q=95", (3, 64, 64)).A(x).sub(x).abs().mean() < err / 2  # q matters
    assert (op.A(2 * x.clamp(-0.5, 0.5)) - 2 * op.A(x.clamp(-0.5, 0.5))).abs().max() > 0.05  # not homogeneous
    assert not hasattr(op, "A_adjoint") and not hasattr(op, "A_pinv")  # no inherited adjoint
    with pytest.raises(MethodError, match="non-linear"):
        op.lambda_max()
    grey = build_operator("jpeg", (1, 64, 64)).A(x.mean(1, keepdim=True))
    assert grey.shape == (1, 1, 64, 64)


def test_to_dtype_moves_buffers_and_output_shapes():
    op = build_operator("sr4", (3, 16, 24))
    assert op.output_shape == (3, 4, 6) and not op.blind_ok
    assert {b.dtype for b in op.buffers()} == {torch.float32}
    op64 = op.to(torch.float64)
    assert {b.dtype for b in op64.buffers()} == {torch.float64}
    assert set(op64.state_dict()) == {"kernel_1d", "boundary_h", "boundary_w"}
    x = torch.randn(1, 3, 16, 24, dtype=torch.float64)
    assert op64.A(x).dtype == torch.float64 and op64.A_adjoint(op64.A(x)).dtype == torch.float64
    assert build_operator("colorize", (3, 8, 8)).output_shape == (1, 8, 8)
    assert build_operator("cs", (3, 8, 8)).to(torch.float16).mask.dtype == torch.float16


def test_operators_are_differentiable():
    """SHRED and DIIP back-propagate through A."""
    op = build_operator("sr2", (3, 8, 8))
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    op.A(x).square().sum().backward()
    assert x.grad is not None and torch.allclose(x.grad, 2 * op.A_adjoint(op.A(x.detach())), atol=1e-6)


def test_parse_task_gives_a_checked_spec():
    spec = parse_task("deblur_gauss:sigma=3")
    assert spec == ("deblur_gauss", {"sigma": 3}) and isinstance(spec, TaskSpec)
    name, params = parse_task(" jpeg:q=30 ")  # a tuple: unpacks as (name, params)
    assert (name, params) == ("jpeg", {"q": 30})
    assert [parse_task(t).sr_factor for t in ("sr2", "sr4", "sr8", "deblur_box5", "colorize")] == [2, 4, 8, 1, 1]
    assert parse_task(spec) is spec
    assert str(parse_task("inpaint:mode=random,keep=0.3")) == "inpaint:mode=random,keep=0.3"
    assert spec.with_params(sigma=1.5).params == {"sigma": 1.5} and spec.params == {"sigma": 3}
    op = build_operator(spec, (3, 20, 20))
    assert op.task == "deblur_gauss:sigma=3" and op.kernel_1d.numel() == 19


@pytest.mark.parametrize("call,message", [
    (lambda: parse_task("sr3"), "unknown task 'sr3'; accepted: sr2, sr4, sr8"),
    (lambda: parse_task("   "), "empty task name; accepted: sr2"),
    (lambda: parse_task(None), "empty task name"),
    (lambda: parse_task("cs:rate"), "bad task parameter 'rate' in 'cs:rate'; expected key=value"),
    (lambda: parse_task("cs:=0.1"), "expected key=value"),
    (lambda: parse_task("sr8:sigma=2"), "unknown parameter(s) sigma for task 'sr8'; accepted: none"),
    (lambda: parse_task("cs:rate=0.1,q=3,zz=1"), "unknown parameter(s) q, zz for task 'cs'; accepted: rate, seed"),
    (lambda: parse_task("jpeg").with_params(sigma=1), "unknown parameter(s) sigma for task 'jpeg'; accepted: q"),
    (lambda: build_operator("denoise", (3, 8, 8), q=5), "unknown parameter(s) q for task 'denoise'"),
])
def test_task_spec_errors_are_one_line_input_errors(call, message):
    with pytest.raises(InputError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / (a - b).square().mean().item())  # peak-to-peak 2 in [-1, 1]


@pytest.mark.parametrize("spec", LINEAR_SPECS)
def test_pinv_shape_linearity_and_consistency(spec):
    """A⁺ maps a measurement to an image, linearly; where it is the exact Moore-Penrose
    inverse (masks, colorize, identity) A A⁺ y = y; for SR and blur it is the baseline."""
    shape = SHAPES.get(parse_task(spec).name, (3, 37, 31))
    op = build_operator(spec, shape).to(torch.float64)
    g = torch.Generator().manual_seed(2)
    y1, y2 = (torch.randn((2,) + op.output_shape, generator=g, dtype=torch.float64) for _ in range(2))
    y1, y2 = op.A(op.A_adjoint(y1)), op.A(op.A_adjoint(y2))  # in the range of A (zero where a mask is)
    p = op.A_pinv(y1)
    assert p.shape == (2,) + shape and p.dtype == torch.float64
    assert torch.allclose(op.A_pinv(2 * y1 - 3 * y2), 2 * p - 3 * op.A_pinv(y2), atol=1e-10)
    name = parse_task(spec).name
    if name in ("inpaint", "cs", "colorize", "denoise"):
        assert torch.allclose(op.A(p), y1, atol=1e-12)
        assert torch.allclose(op.A_pinv(op.A(p)), p, atol=1e-12)  # A⁺ A A⁺ = A⁺
    if name.startswith("deblur"):
        assert torch.equal(p, y1)  # the blurred input is the deblurring baseline
    with pytest.raises(InputError, match="measurement"):
        op.A_pinv(torch.zeros((1,) + shape[:1] + (3, 3), dtype=torch.float64))


def _pil_upscale(y: torch.Tensor, factor: int) -> torch.Tensor:
    h, w = y.shape[-2:]
    return torch.from_numpy(np.stack([np.asarray(Image.fromarray(c.numpy().astype(np.float32), mode="F")
                                                 .resize((w * factor, h * factor), Image.BICUBIC)) for c in y[0]]))[None]


def test_sr4_pinv_is_bicubic_upsampling_on_held_out_photos():
    """On held-out photo crops, noisy sr4: A⁺y is PIL's bicubic upscale (to float rounding),
    so its PSNR equals bicubic's; and it is an image of the content (far above a flat image)."""
    op = build_operator("sr4", (3, 64, 64))
    for i, photo in enumerate(HELDOUT_PHOTOS):
        x, _ = random_crops((photo,), 1, 64, seed=100 + i)
        y = op.degrade(x, 10.0, torch.Generator().manual_seed(i))
        p, ref = op.A_pinv(y).clamp(-1, 1), _pil_upscale(y, 4).clamp(-1, 1)
        assert (p - ref).abs().max().item() < 1e-5
        assert abs(_psnr(p, x) - _psnr(ref, x)) < 0.01
        flat = y.mean(dim=(2, 3), keepdim=True).expand_as(x)
        assert _psnr(p, x) > _psnr(flat, x) + 5


def test_doctests_of_every_submodule():
    names = ["restore_core.operators"] + [f"restore_core.operators.{m.name}"
                                          for m in pkgutil.iter_modules(operators.__path__)]
    assert {"restore_core.operators.base", "restore_core.operators.registry"} <= set(names)
    for name in names:
        result = doctest.testmod(importlib.import_module(name))
        assert result.failed == 0 and result.attempted > 0, name


def test_colorize_observes_the_channel_mean_and_its_data_terms_carry_no_chroma():
    """y is the channel mean (the observation production rows make, ``jobs.restore.row``),
    and Aᵀr and A⁺y are grey: a data step moves x along (1, 1, 1) only, so the colour of a
    colorization is the prior's (``jobs.bench.colorize``), never the guidance's."""
    op = build_operator("colorize", (3, 8, 8)).to(torch.float64)
    g = torch.Generator().manual_seed(3)
    x = torch.rand((2, 3, 8, 8), generator=g, dtype=torch.float64) * 2 - 1
    assert torch.allclose(op.A(x), x.mean(dim=1, keepdim=True), atol=1e-12)
    r = torch.randn((2, 1, 8, 8), generator=g, dtype=torch.float64)
    for image in (op.A_adjoint(r), op.A_pinv(r)):
        assert torch.allclose(image - image.mean(dim=1, keepdim=True), torch.zeros_like(image), atol=1e-12)
