"""Contracts of the image-adaptive LoRA (ADIR §3.3, issue 2 test 5).

Real components only: a tiny diffusers UNet2DModel saved and loaded through
``load_diffusion_model``, real photo crops, peft LoRA. 16² models keep each test ~1 s.
"""

from __future__ import annotations

import pytest
import torch

from restore_core.adaptation import (
    adapt_lora, attach_lora, l_simple, load_adapter, lora_adapter, random_crop_batch, remove_lora,
    save_adapter, state_dict_hash,
)
from restore_core.bundled_photos import TRAIN_PHOTOS, random_crops
from restore_core.models.pixel_unet import load_diffusion_model
from tests.helpers import make_tiny_prior

SIZE = 16


@pytest.fixture(scope="module", params=[3, 6], ids=["eps", "learned-variance"])
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"prior{request.param}")
    return load_diffusion_model(make_tiny_prior(str(folder), sample_size=SIZE, out_channels=request.param))


def _images(seed: int, n: int = 4) -> torch.Tensor:
    return random_crops(TRAIN_PHOTOS, n, SIZE, seed=seed)[0]


def _output(model, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.unet(x, torch.tensor([10, 700])).sample


def test_adaptation_lowers_loss_and_removal_restores_base_bit_identically(model):
    images = _images(seed=1)
    g = torch.Generator().manual_seed(123)
    ts = [50, 300, 600, 900]
    noises = [torch.randn(images.shape, generator=g) for _ in ts]
    base_hash = state_dict_hash(model.unet)
    base_modules = dict(model.unet.named_modules())
    base_grad = {n: p.requires_grad for n, p in model.unet.named_parameters()}
    with torch.no_grad():
        before = sum(float(l_simple(model, images, t, n)) for t, n in zip(ts, noises)) / len(ts)
    with lora_adapter(model, seed=0) as params:
        assert params and all("lora_" in n for n, p in model.unet.named_parameters() if p.requires_grad)
        info = adapt_lora(model, images, params, iters=30, lr=1e-3, seed=0)
        with torch.no_grad():
            after = sum(float(l_simple(model, images, t, n)) for t, n in zip(ts, noises)) / len(ts)
    assert info["iterations"] == 30 and info["seconds_adapt"] > 0
    assert after < 0.8 * before, (before, after)
    assert state_dict_hash(model.unet) == base_hash
    assert dict(model.unet.named_modules()).keys() == base_modules.keys()
    assert all(m is base_modules[k] for k, m in model.unet.named_modules())
    assert {n: p.requires_grad for n, p in model.unet.named_parameters()} == base_grad
    assert not hasattr(model.unet, "peft_config")


def test_adapter_removed_even_on_error(model):
    base_hash = state_dict_hash(model.unet)
    with pytest.raises(ZeroDivisionError):
        with lora_adapter(model) as params:
            adapt_lora(model, _images(seed=2), params, iters=2, lr=1e-2, seed=0)
            1 / 0
    assert state_dict_hash(model.unet) == base_hash
    assert not any("lora_" in n for n, _ in model.unet.state_dict().items())


def test_rows_in_a_row_do_not_leak(model, tmp_path):
    """Output with adapter B trained after adapter A was removed equals B trained alone."""
    def train(images, seed):
        with lora_adapter(model, seed=seed) as params:
            adapt_lora(model, images, params, iters=5, lr=1e-2, seed=seed)
            return _output(model)

    alone = train(_images(seed=4), seed=7)
    train(_images(seed=3), seed=5)  # row A
    after_a = train(_images(seed=4), seed=7)  # row B
    assert torch.equal(alone, after_a)
    assert not torch.equal(alone, _output(model))  # B really changed the model


def test_save_load_adapter_round_trip(model, tmp_path):
    path = str(tmp_path / "row.safetensors")
    with lora_adapter(model, seed=0) as params:
        adapt_lora(model, _images(seed=5), params, iters=5, lr=1e-2, seed=0)
        adapted = _output(model)
        save_adapter(model.unet, path)
    base = _output(model)
    with lora_adapter(model, seed=99):  # another init: only the loaded weights can match
        assert torch.equal(_output(model), base)
        load_adapter(model.unet, path)
        assert torch.equal(_output(model), adapted)
    assert torch.equal(_output(model), base)


def test_attach_refuses_second_adapter(model):
    attach_lora(model.unet)
    try:
        with pytest.raises(RuntimeError, match="already carries"):
            attach_lora(model.unet)
    finally:
        remove_lora(model.unet)


@pytest.mark.parametrize("side", [8, 16, 40])
def test_crops_upsample_small_and_crop_large_images(side):
    images = torch.rand(2, 3, side, side + 3) * 2 - 1
    crops = random_crop_batch(images, 6, SIZE, torch.Generator().manual_seed(0))
    assert crops.shape == (6, 3, SIZE, SIZE)
    assert crops.abs().max() <= 1
