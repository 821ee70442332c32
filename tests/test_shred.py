"""SHRED (zero-shot image restoration via DDIM inversion): the DDIM inversion it starts
from, the discrepancy stop, the restored image against bicubic, blind deconvolution's
kernel, and the tasks it refuses.

Restoration quality is measured on a held-out photo with the shipped prior (the tiny
untrained prior's DDIM output is no image); the mechanics use the tiny prior at 16²."""

import math

import pytest
import torch
from helpers import make_tiny_prior

from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import MethodError
from restore_core.methods.shred import Discrepancy, blur, random_anisotropic_kernel
from restore_core.metrics import consistency
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one
from restore_core.sampling.ddim import ddim_sample
from restore_core.sampling.inversion import ddim_invert

SIZE = 16
CHEAP = ["shred.skip=250", "shred.lr=0.05"]  # 4 DDIM steps; a tiny untrained prior needs a larger lr


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), SIZE))


@pytest.fixture(scope="module")
def shipped():
    return load_diffusion_model()


def _image(seed=0):
    return torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _psnr(a, b):
    return float(10 * torch.log10(4 / (a.clamp(-1, 1) - b).pow(2).mean()))


def test_inversion_regenerates_a_heldout_photo(shipped):
    """f(inv(x)) ≈ x: the prior's 10-step DDIM range holds a photo it never saw; the
    fixed-point iterations are what make the inversion exact."""
    x, _ = random_crops(HELDOUT_PHOTOS, 1, 32, seed=5)
    approx = ddim_sample(shipped, ddim_invert(shipped, x, 100, fixed_point=0), skip=100, grad="none")
    exact = ddim_sample(shipped, ddim_invert(shipped, x, 100, fixed_point=6), skip=100, grad="none")
    assert _psnr(exact, x) >= 35 and _psnr(exact, x) >= _psnr(approx, x) + 10


def test_shred_sr4_matches_bicubic_and_is_consistent(shipped):
    """Default SHRED (inverted A⁺y, discrepancy stop) on a held-out crop, sr4 σ = 10."""
    x, _ = random_crops(HELDOUT_PHOTOS, 1, 32, seed=6)
    op = build_operator("sr4", (3, 32, 32))
    y = op.degrade(x, 10, torch.Generator().manual_seed(0))
    cfg = RestoreConfig().with_overrides(["shred.iters=8", "noise_sigma=10"])
    x_hat, info = restore_one(y, op, shipped, cfg, method="shred", seed=0)
    assert _psnr(x_hat, x) >= _psnr(op.A_pinv(y), x) - 0.5
    assert consistency(x_hat, y, op) <= 1.5 * 10
    assert info["init"] == "pinv" and info["noise_sigma"] == 10


def test_discrepancy_keeps_first_iterate_under_eps_per_image():
    m, eps = 4, 1.0
    mon = Discrepancy(m, eps)
    rms_by_k = [[3.0, 3.0], [0.9, 2.0], [0.5, 1.5], [0.1, 0.8]]  # image 0 meets eps at k=2, image 1 at k=4
    stops = [mon(k, torch.full((2, 1, 1, 1), float(k)), torch.tensor(r) * math.sqrt(m))
             for k, r in enumerate(rms_by_k, start=1)]
    assert stops == [None, None, None, "discrepancy"]
    assert mon.stop_k.tolist() == [2, 4] and mon.best_x.flatten().tolist() == [2.0, 4.0]


def test_shred_noise_init_lowers_data_error_by_factor_4(prior):
    """Algorithm 1's own start (``shred.init=noise``): the data term of the best iterate is
    at least 4× below f(x_T⁰)'s (tiny prior: its DDIM output is far outside [-1, 1])."""
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(_image())
    cfg = RestoreConfig().with_overrides(CHEAP + ["shred.iters=20", "shred.init=noise", "shred.tau=0"])
    _, info = restore_one(y, op, prior, cfg, method="shred", seed=1)
    assert info["iterations"] == 20 and info["steps"] == 4 and info["stop_reason"] == "iters"
    assert info["loss_end"] <= info["loss_start"] / 4


def test_shred_stops_at_loss_eps(prior):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.A(_image())
    cfg = RestoreConfig().with_overrides(CHEAP + ["shred.iters=30", "shred.init=noise", "shred.loss_eps=20"])
    _, info = restore_one(y, op, prior, cfg, method="shred", seed=1)
    assert info["stop_reason"] == "discrepancy" and info["iterations"] < 30


def test_shred_blind_kernel_normalised_non_negative(prior):
    kernel = random_anisotropic_kernel(9, torch.Generator().manual_seed(3))
    y = blur(_image(), kernel[None, None])
    cfg = RestoreConfig().with_overrides(CHEAP + ["shred.iters=3", "shred.kernel_size=7", "shred.init=noise"])
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
