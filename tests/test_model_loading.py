"""Loading diffusion priors through the same code path users use (issue 2, test 6)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from helpers import make_tiny_prior
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.errors import ModelLoadError


@pytest.fixture(scope="module", params=[3, 6], ids=["eps", "learned_var"])
def prior_dir(request, tmp_path_factory):
    return make_tiny_prior(str(tmp_path_factory.mktemp(f"prior{request.param}")), sample_size=16,
                           out_channels=request.param)


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file_uri"])
def test_round_trip(prior_dir, as_uri):
    spec = "file://" + prior_dir if as_uri else prior_dir
    model = load_diffusion_model(spec)
    saved = load_file(os.path.join(prior_dir, "unet", "diffusion_pytorch_model.safetensors"))
    loaded = model.unet.state_dict()
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    cout = json.load(open(os.path.join(prior_dir, "unet", "config.json")))["out_channels"]
    assert model.learned_variance == (cout == 6)
    assert (model.in_channels, model.sample_size, model.spec) == (3, 16, spec)
    ref = DDPMScheduler.from_pretrained(prior_dir, subfolder="scheduler")
    assert torch.allclose(model.schedule.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-6)
    assert torch.allclose(model.schedule.betas, ref.betas.double(), rtol=1e-9, atol=1e-12)

    schedule = model.schedule.respace(10)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        eps, log_var = model.eps_and_logvar(x, 5, schedule)
        assert torch.equal(eps, model.eps(x, int(schedule.timesteps[5])))
    assert eps.shape == log_var.shape == x.shape
    lo, hi = float(schedule.posterior_log_variance_clipped[5]), float(torch.log(schedule.betas[5]))
    if model.learned_variance:  # Σ = exp(v log β + (1 − v) log β̃) lies between β̃ and β only for v in [0, 1]
        out = model.unet(x, schedule.timesteps[5]).sample[:, 3:]
        v = (out + 1) / 2
        assert torch.allclose(log_var, v * hi + (1 - v) * lo, atol=1e-5)
    else:
        assert torch.allclose(log_var, torch.full_like(log_var, lo))


def test_flat_unet_folder(tmp_path):
    """A UNet folder with scheduler_config.json beside config.json also loads."""
    nested = make_tiny_prior(str(tmp_path / "nested"), sample_size=16)
    flat = tmp_path / "flat"
    shutil.copytree(os.path.join(nested, "unet"), flat)
    shutil.copy(os.path.join(nested, "scheduler", "scheduler_config.json"), flat)
    assert load_diffusion_model(str(flat)).in_channels == 3


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not found.*nope"):
        load_diffusion_model(str(tmp_path / "nope"))
    start = time.perf_counter()  # conftest sets HF_HUB_OFFLINE=1: an uncached id fails fast
    with pytest.raises(ModelLoadError, match="not in the local cache and HF_HUB_OFFLINE=1"):
        load_diffusion_model("adir-test/not-a-cached-model")
    assert time.perf_counter() - start < 10
    folder = make_tiny_prior(str(tmp_path / "pickle"), sample_size=16)
    os.remove(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ModelLoadError, match="cannot load diffusion model"):
        load_diffusion_model(folder)  # no safetensors weights: refused, never a pickle fallback
    folder = make_tiny_prior(str(tmp_path / "vpred"), sample_size=16)
    cfg_path = os.path.join(folder, "scheduler", "scheduler_config.json")
    cfg = json.load(open(cfg_path))
    json.dump({**cfg, "prediction_type": "v_prediction"}, open(cfg_path, "w"))
    with pytest.raises(ModelLoadError, match="only ε-prediction"):
        load_diffusion_model(folder)
