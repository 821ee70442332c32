"""The peer samplers on our prior (issue 11): the deepinv denoiser wrapper, the exact SVDs
of our operators, adaptation over every sampler, refusal before work, and DDRM's quality
on a real held-out photo with the shipped prior."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_tiny_prior

from restore_core.adaptation import state_dict_hash
from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError
from restore_core.methods import get_method
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.operators.base import LinearOperator
from restore_core.restore import restore_one
from restore_core.sampling.peers import (
    SAMPLERS,
    PriorDenoiser,
    check_sampler,
    peer_sample,
    sigma_ratio,
)
from restore_core.sampling.svd_physics import decompose, to_physics

SIZE = 16
LINEAR = ("sr4", "sr2", "deblur_box5", "deblur_gauss", "colorize", "inpaint", "cs", "denoise")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_diffusion_model(make_tiny_prior(str(tmp_path_factory.mktemp("prior")), sample_size=SIZE))


def _images(n: int = 1) -> torch.Tensor:
    return random_crops(HELDOUT_PHOTOS, n, SIZE, seed=3)[0]


class DiagonalMotionBlur(LinearOperator):
    """A real linear operator with no Kronecker or diagonal structure: correlation with a
    3×3 diagonal line kernel (zero boundary), as camera motion along the diagonal."""

    name = "motion_diag"

    def _kernel(self, x):
        k = torch.eye(3, dtype=x.dtype, device=x.device) / 3
        return k.expand(x.shape[1], 1, 3, 3)

    def forward_op(self, x):
        return F.conv2d(x, self._kernel(x), padding=1, groups=x.shape[1])

    def adjoint_op(self, y):
        return F.conv_transpose2d(y, self._kernel(y), padding=1, groups=y.shape[1])

    def pinv_op(self, y):
        return y


class _Counter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


def test_denoiser_is_tweedie_at_the_matching_timestep(model):
    """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) n given to the wrapper as x = (x_t/√ᾱ_t + 1)/2 at
    σ = √((1−ᾱ_t)/ᾱ_t)/2 returns (clamp(x̂₀) + 1)/2, x̂₀ = (x_t − √(1−ᾱ_t) ε_θ(x_t, t))/√ᾱ_t."""
    x0 = _images(2)
    acp = model.schedule.alphas_cumprod
    denoiser = PriorDenoiser(model)
    for t in (5, 300, 900):
        a = float(acp[t])
        xt = a**0.5 * x0 + (1 - a) ** 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            expected = ((xt - (1 - a) ** 0.5 * model.eps(xt, t)) / a**0.5).clamp(-1, 1)
            sigma = float(sigma_ratio(acp[t:t + 1])) / 2
            assert int(denoiser.timestep(torch.tensor([sigma]))) == t
            got = denoiser((xt / a**0.5 + 1) / 2, sigma)
        assert torch.allclose(got, (expected + 1) / 2, atol=1e-5), t
    x = torch.rand(1, 3, SIZE, SIZE)
    assert torch.equal(denoiser(x, 0.0), x)  # σ = 0: nothing to remove


@pytest.mark.parametrize("task", LINEAR)
def test_svd_physics_is_our_operator(task):
    op = build_operator(task, (3, SIZE, SIZE))
    physics = to_physics(decompose(op), op.image_shape, 0.01)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    assert torch.allclose(physics.A(x), y, atol=1e-5)
    assert torch.allclose(physics.A_adjoint(y), op.A_adjoint(y), atol=1e-5)
    assert torch.allclose(physics.V(physics.V_adjoint(x)), x, atol=1e-5)  # V orthonormal
    assert torch.allclose(physics.U(physics.U_adjoint(y)), y, atol=1e-5)  # U orthonormal on y's space


def test_peers_refuse_an_operator_without_svd_before_any_work(model):
    motion = DiagonalMotionBlur((3, SIZE, SIZE))
    jpeg = build_operator("jpeg", (3, SIZE, SIZE))
    with pytest.raises(ConfigError, match="motion_diag.*no SVD"):
        check_sampler("ddrm", motion)
    with pytest.raises(ConfigError, match="jpeg.*non-linear"):
        check_sampler("ddrm", jpeg)
    check_sampler("alg1", motion)  # Algorithm 1 needs only A and Aᵀ
    counter, base = _Counter(model.unet), state_dict_hash(model.unet)
    y = motion.A(_images())
    cfg = RestoreConfig().with_overrides(["sampler=ddrm", "steps=3", "adapt_iters=2", "adapt_batch=2"])
    try:
        with pytest.raises(ConfigError, match="motion_diag"):
            get_method("adir").restore(y, motion, model, cfg, neighbours=_images(2),
                                       generator=torch.Generator().manual_seed(0))
        with pytest.raises(ConfigError, match="motion_diag"):
            peer_sample(model, y, motion, "diffpir", steps=3, noise_sigma=5)
    finally:
        counter.handle.remove()
    assert counter.calls == 0 and state_dict_hash(model.unet) == base  # no adaptation, no sampling


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_adapted_sampling_uses_the_adapter_and_leaves_base_weights_bit_identical(model, sampler):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.degrade(_images(), 10.0, torch.Generator().manual_seed(0))
    cfg = RestoreConfig().with_overrides([f"sampler={sampler}", "steps=4", "adapt_iters=3", "adapt_batch=2",
                                          "adapt_lr=0.05", "noise_sigma=10"])
    base = state_dict_hash(model.unet)
    x_gd, _ = restore_one(y, op, model, cfg, method="gd", seed=5)
    x_ia, info = restore_one(y, op, model, cfg, method="ia_y", seed=5)
    assert state_dict_hash(model.unet) == base
    assert not any("lora_" in n for n in model.unet.state_dict())
    assert info["iterations"] == 3 and info["sampler"] == sampler and info["steps"] == 4
    assert torch.isfinite(x_ia).all() and x_ia.abs().max() <= 1
    assert not torch.allclose(x_gd, x_ia, atol=1e-4)  # the sampler sampled through the adapted prior
    again, _ = restore_one(y, op, model, cfg, method="gd", seed=5)
    assert torch.equal(again, x_gd)  # one seed fixes the output, and nothing leaked from the adapter


def test_fidelity_output_averages_posterior_samples(model):
    op = build_operator("deblur_box5", (3, SIZE, SIZE))
    y = op.degrade(_images(), 10.0, torch.Generator().manual_seed(1))
    one = RestoreConfig().with_overrides(["sampler=ddrm", "steps=4", "noise_sigma=10"])
    first, _ = restore_one(y, op, model, one, method="gd", seed=2)
    mean, info = restore_one(y, op, model, one.with_overrides(["samples=3"]), method="gd", seed=2)
    assert info["samples"] == 3 and not torch.equal(first, mean)
    assert float((mean - mean.mean()).std()) < float((first - first.mean()).std()) + 1e-6  # averaging smooths


def test_dps_weight_reaches_the_sampler(model):
    op = build_operator("sr4", (3, SIZE, SIZE))
    y = op.degrade(_images(), 10.0, torch.Generator().manual_seed(1))
    cfg = RestoreConfig().with_overrides(["sampler=dps", "steps=4", "noise_sigma=10"])
    default, _ = restore_one(y, op, model, cfg, method="gd", seed=2)
    runs = {w: restore_one(y, op, model, cfg.with_overrides([f"dps_weight={w}"]), method="gd", seed=2)[0]
            for w in (300, 1)}
    assert torch.equal(default, runs[300]) and not torch.equal(runs[300], runs[1])
    with pytest.raises(ConfigError):
        cfg.with_overrides(["dps_weight=0"])


def test_ddrm_beats_bicubic_on_sr4_with_the_shipped_prior():
    """A real held-out photo, the shipped prior, σ = 10: DDRM (the fidelity preset's
    sampler, 25 steps to keep the test short) must beat the bicubic baseline on PSNR."""
    from restore_core.metrics import compute_metrics

    prior = load_diffusion_model()
    crops = random_crops(HELDOUT_PHOTOS, 2, prior.sample_size, seed=100)[0]
    op = build_operator("sr4", (3, prior.sample_size, prior.sample_size))
    cfg = RestoreConfig.preset("fidelity").with_overrides(["steps=25", "samples=1", "noise_sigma=10"])
    psnr = {"ddrm": 0.0, "bicubic": 0.0}
    for i in range(len(crops)):
        gt = crops[i:i + 1]
        y = op.degrade(gt, 10.0, torch.Generator().manual_seed(i))
        x, _ = restore_one(y, op, prior, cfg, method="gd", seed=i)
        x_pinv, _ = restore_one(y, op, prior, cfg, method="pinv")
        psnr["ddrm"] += compute_metrics(x, gt, names=("psnr",))["psnr"] / len(crops)
        psnr["bicubic"] += compute_metrics(x_pinv, gt, names=("psnr",))["psnr"] / len(crops)
    assert psnr["ddrm"] > psnr["bicubic"] + 0.3, psnr


def test_noise_estimate_when_the_noise_level_is_not_given():
    from restore_core.sampling.peers import estimate_noise_sigma

    gt = random_crops(HELDOUT_PHOTOS, 1, 64, seed=4)[0]
    op = build_operator("deblur_box5", (3, 64, 64))
    for sigma in (10.0, 25.0):
        y = op.degrade(gt, sigma, torch.Generator().manual_seed(0))
        assert abs(estimate_noise_sigma(y) - sigma) < 0.2 * sigma
