"""SHRED (paper 002): the data term falls, blind deconvolution returns a valid kernel,
and tasks without a usable operator are refused. Tiny untrained prior, 16² images."""

import pytest
import torch

from restore_core.config import RestoreConfig
from restore_core.sampling.ddim import ddim_sample
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.errors import MethodError
from restore_core.methods.shred import blur, initial_noise, random_anisotropic_kernel
from restore_core.operators import build_operator
from restore_core.restore import restore_one
from tests.helpers import make_tiny_prior

SIZE = 16
CHEAP = ["shred.skip=250", "shred.lr=0.05"]  # 4 DDIM steps; a tiny untrained prior needs a larger lr


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), SIZE))


def _image(seed=0):
    return torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shred_sr4_lowers_data_error_by_factor_4(prior):
    """RMS ‖A f(x_T) − y‖ of the best iterate vs. the start f(x_T⁰): at least 4× lower.

    (Before clamping: the untrained prior's DDIM output is far outside [-1, 1].)"""
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(_image())
    cfg = RestoreConfig().with_overrides(CHEAP + ["shred.iters=20"])
    _, info = restore_one(y, op, prior, cfg, method="shred", seed=1)
    assert info["iterations"] == 20 and info["steps"] == 4 and info["stop_reason"] == "iters"
    assert info["loss_end"] <= info["loss_start"] / 4
    # the reported start is f(x_T⁰) for x_T⁰ drawn from the seeded generator (sphere off by default)
    x_T = initial_noise((1, 3, SIZE, SIZE), torch.Generator().manual_seed(1), "cpu", sphere=False)
    with torch.no_grad():
        start = ddim_sample(prior, x_T, skip=250, grad="none")
    assert float((op.A(start) - y).norm()) / y.numel() ** 0.5 == pytest.approx(info["loss_start"], rel=1e-4)


def test_shred_early_stop_at_loss_eps(prior):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(_image())
    cfg = RestoreConfig().with_overrides(CHEAP + ["shred.iters=30", "shred.loss_eps=20"])
    _, info = restore_one(y, op, prior, cfg, method="shred", seed=1)
    assert info["stop_reason"] == "loss<eps" and info["iterations"] < 30


def test_shred_blind_kernel_normalised_non_negative(prior):
    kernel = random_anisotropic_kernel(9, torch.Generator().manual_seed(3))
    y = blur(_image(), kernel[None, None])
    cfg = RestoreConfig().with_overrides(CHEAP + ["shred.iters=3", "shred.kernel_size=7"])
    x_hat, info = restore_one(y, None, prior, cfg, method="shred_blind", seed=0)
    k = info["kernel"]
    assert x_hat.shape == y.shape and k.shape == (7, 7)
    assert float(k.min()) >= 0 and abs(float(k.sum()) - 1) < 1e-5
    assert info["loss_end"] < info["loss_start"]


@pytest.mark.parametrize("method,task", [("shred", None), ("shred", "jpeg"), ("shred_blind", "sr4")])
def test_shred_refuses_tasks_without_usable_operator(prior, method, task):
    op = build_operator(task, (3, SIZE, SIZE)) if task else None
    y = op.A(_image()) if op else _image()
    with pytest.raises(MethodError):
        restore_one(y, op, prior, RestoreConfig().with_overrides(CHEAP + ["shred.iters=2"]), method=method)
