"""ADIR on Stable Diffusion: loaders, ``sd`` / ``adir_sd`` (sr4) and ``sd_edit`` / ``adir_edit`` (edit).

The pipelines are tiny and random (``helpers_sd``), written with ``save_pretrained`` and
loaded back through ``load_sd_model`` as users load real weights. A random pipeline cannot
restore, so restoration *quality* is measured only with the real weights
(``stabilityai/stable-diffusion-x4-upscaler``, an SD inpainting model); these tests check
what holds for any weights: the loaders and their errors, the 4x output, that our ``sd``
path is exactly diffusers' pipeline on y, the adapter contract (trained > 0 iterations,
base UNet bit-identical after the row), that ``adir_edit`` keeps every unmasked pixel,
trains on masked inputs and drops the prompt at the configured rate. Inputs are crops of
the held-out bundled photos, neighbours crops of the training photos.
"""

from __future__ import annotations

import time

import pytest
import torch
from helpers_sd import save_tiny_inpainter, save_tiny_upscaler

from restore_core.adaptation import state_dict_hash
from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import InputError, MethodError, ModelLoadError
from restore_core.models.stable_diffusion import load_sd_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one

FAST = ["adapt_iters=3", "adapt_batch=2", "sd.steps=3"]
SIZE = 64  # restored image side (sr4: y is 16x16)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    return {"upscale": save_tiny_upscaler(str(root / "upscaler")), "inpaint": save_tiny_inpainter(str(root / "inpaint"))}


@pytest.fixture(scope="module")
def upscaler(folders):
    return load_sd_model(folders["upscale"], "upscale")


@pytest.fixture(scope="module")
def inpainter(folders):
    return load_sd_model("file://" + folders["inpaint"], "inpaint")


@pytest.fixture(scope="module")
def photo():
    return random_crops(HELDOUT_PHOTOS[:1], 1, SIZE, seed=3)[0]


@pytest.fixture(scope="module")
def neighbours():
    return random_crops(TRAIN_PHOTOS, 4, SIZE, seed=5)[0]


# ---- loaders ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["upscale", "inpaint"])
def test_loader_takes_a_folder_and_a_file_uri(folders, kind):
    for spec in (folders[kind], "file://" + folders[kind]):
        model = load_sd_model(spec, kind)
        assert model.kind == kind and model.spec == spec
        assert model.unet.config.in_channels == {"upscale": 7, "inpaint": 9}[kind]
        assert model.prediction_type == {"upscale": "v_prediction", "inpaint": "epsilon"}[kind]
        assert model.vae_factor == {"upscale": 4, "inpaint": 8}[kind]


def test_hub_id_offline_fails_fast_naming_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_sd_model("stabilityai/stable-diffusion-x4-upscaler", "upscale", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    assert "'stabilityai/stable-diffusion-x4-upscaler'" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_loader_refuses_a_pipeline_of_the_other_kind_and_missing_folders(folders, tmp_path):
    with pytest.raises(ModelLoadError, match="StableDiffusionUpscalePipeline"):
        load_sd_model(folders["inpaint"], "upscale")
    with pytest.raises(ModelLoadError, match="not found"):
        load_sd_model(str(tmp_path / "absent"), "inpaint")
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_sd_model(str(tmp_path), "inpaint")


# ---- sr4: sd and adir_sd ------------------------------------------------------------------
def _sr4(photo):
    op = build_operator("sr4", (3, SIZE, SIZE))
    return op, op.A(photo)


def test_sd_is_the_upscale_pipeline_on_y(upscaler, photo):
    """Our ``sd`` equals diffusers' pipeline called on y in [0, 1] at the same seed, with
    guidance 9 (the skipped guidance of the empty prompt changes nothing), at 4x y."""
    op, y = _sr4(photo)
    cfg = RestoreConfig().with_overrides(FAST)
    x, info = restore_one(y, op, upscaler, cfg, method="sd", seed=11)
    assert x.shape == (1, 3, SIZE, SIZE) and info["steps"] == 3 and info["iterations"] == 0
    ref = upscaler.pipe(prompt=[""], image=(y + 1) / 2, num_inference_steps=3, guidance_scale=9.0, noise_level=20,
                        generator=torch.Generator().manual_seed(11), output_type="pt").images * 2 - 1
    assert torch.allclose(x, ref, atol=1e-5)
    other, _ = restore_one(y.flip(-1), op, upscaler, cfg, method="sd", seed=11)
    assert not torch.allclose(other, x), "the output must depend on y"


def test_adir_sd_adapts_restores_4x_and_leaves_the_unet_bit_identical(upscaler, photo, neighbours):
    op, y = _sr4(photo)
    cfg = RestoreConfig().with_overrides(FAST)
    before = state_dict_hash(upscaler.unet)
    x, info = restore_one(y, op, upscaler, cfg, method="adir_sd", neighbours=neighbours, seed=11)
    assert x.shape == (1, 3, 4 * y.shape[-2], 4 * y.shape[-1]) and torch.isfinite(x).all()
    assert info["iterations"] == 3 and info["adapt_loss_first"] > 0 and info["seconds_adapt"] > 0
    assert state_dict_hash(upscaler.unet) == before
    assert not getattr(upscaler.unet, "peft_config", None)
    assert not any("lora" in n for n, _ in upscaler.unet.named_modules())
    base, _ = restore_one(y, op, upscaler, cfg, method="sd", seed=11)
    again, _ = restore_one(y, op, upscaler, cfg, method="adir_sd", neighbours=neighbours, seed=11)
    assert torch.equal(x, again), "same seed, same output"
    assert not torch.equal(x, base), "the adapted UNet must change the output"


def test_adir_sd_trains_on_low_res_crops_at_the_noise_level(upscaler, neighbours, photo):
    """The UNet sees latent (4) + A(crop) noised to sd.noise_level (3) channels at the
    crop's low resolution, and the level as the class label."""
    seen = []
    hook = upscaler.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0].shape, kwargs["class_labels"].clone())), with_kwargs=True)
    try:
        op, y = _sr4(photo)
        cfg = RestoreConfig().with_overrides(FAST + ["sd.noise_level=40", "sd.steps=1"])
        restore_one(y, op, upscaler, cfg, method="adir_sd", neighbours=neighbours, seed=0)
    finally:
        hook.remove()
    train = seen[:3]  # 3 adaptation batches, then 1 sampling step
    assert [s for s, _ in train] == [torch.Size([2, 7, SIZE // 4, SIZE // 4])] * 3
    assert all(torch.equal(c, torch.tensor([40, 40])) for _, c in train)


def test_sd_methods_refuse_the_wrong_model_or_task(upscaler, inpainter, photo):
    op, y = _sr4(photo)
    cfg = RestoreConfig().with_overrides(FAST)
    with pytest.raises(MethodError, match="upscale pipeline"):
        restore_one(y, op, inpainter, cfg, method="sd")
    with pytest.raises(MethodError, match="cannot restore task 'sr4'"):
        restore_one(y, op, upscaler, cfg, method="sd_edit")
    with pytest.raises(InputError, match="noise_level"):
        restore_one(y, op, upscaler, cfg.with_overrides(["sd.noise_level=400"]), method="sd")
    with pytest.raises(MethodError, match="neighbour"):
        restore_one(y, op, upscaler, cfg, method="adir_sd")


# ---- edit: sd_edit and adir_edit -------------------------------------------------------
def _edit(photo):
    fill = torch.zeros(SIZE, SIZE)
    fill[16:40, 20:52] = 1
    op = build_operator("edit", (3, SIZE, SIZE), mask=fill)
    return op, op.degrade(photo, 5.0, torch.Generator().manual_seed(0)), fill.bool()


@pytest.mark.parametrize("method", ["sd_edit", "adir_edit"])
def test_edit_keeps_every_unmasked_pixel(inpainter, photo, neighbours, method):
    op, y, fill = _edit(photo)
    cfg = RestoreConfig().with_overrides(FAST + ["sd.prompt=a photo of a cat"])
    before = state_dict_hash(inpainter.unet)
    x, info = restore_one(y, op, inpainter, cfg, method=method, neighbours=neighbours, seed=2)
    assert x.shape == y.shape
    keep = ~fill.expand_as(x[0])
    assert torch.equal(x[0][keep], y[0][keep])
    assert not torch.equal(x[0][~keep], y[0][~keep]), "the fill region is regenerated"
    assert state_dict_hash(inpainter.unet) == before
    assert info["iterations"] == (3 if method == "adir_edit" else 0)


def test_adir_edit_trains_on_masked_inputs_and_drops_the_prompt_at_the_rate(inpainter, photo, neighbours):
    """Every adaptation input carries a binary fill mask in channel 4 (some boxes, some
    whole crops); the text condition is the empty prompt's for exactly the counted
    drop-outs, whose number fits Binomial(n, 0.5)."""
    empty = inpainter.text_embeddings([""])
    masks, dropped = [], 0
    def spy(module, args, kwargs):
        if module.training:
            masks.append(args[0][:, 4].clone())
            cond = kwargs["encoder_hidden_states"]
            nonlocal dropped
            dropped += sum(torch.equal(c, empty[0]) for c in cond)
    hook = inpainter.unet.register_forward_pre_hook(spy, with_kwargs=True)
    iters = 40
    try:
        op, y, _ = _edit(photo)
        cfg = RestoreConfig().with_overrides(FAST + [f"adapt_iters={iters}", "adapt_batch=4", "sd.steps=1",
                                                     "sd.prompt=a red house", "sd.prompt_drop=0.5"])
        _, info = restore_one(y, op, inpainter, cfg, method="adir_edit", neighbours=neighbours, seed=4)
    finally:
        hook.remove()
    n = iters * 4
    assert info["adapt_samples"] == n and len(masks) == iters
    assert info["prompt_dropouts"] == dropped
    assert abs(dropped - n / 2) <= 4 * (n * 0.25) ** 0.5
    m = torch.cat(masks)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    per_sample = m.flatten(1).mean(1)
    assert (per_sample == 1).any() and ((per_sample > 0) & (per_sample < 1)).any()
    assert 0 < info["adapt_fill_fraction"] < 1
    for rate, expected in ((0.0, 0), (1.0, 2 * 3)):
        _, info = restore_one(y, op, inpainter, RestoreConfig().with_overrides(
            FAST + ["sd.prompt=a red house", f"sd.prompt_drop={rate}"]), method="adir_edit", neighbours=neighbours)
        assert info["prompt_dropouts"] == expected


def test_edit_without_prompt_or_with_a_mask_of_another_size_fails_before_model_work(inpainter, photo):
    calls = []
    hook = inpainter.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        op, y, _ = _edit(photo)
        with pytest.raises(InputError, match="needs a prompt"):
            restore_one(y, op, inpainter, RestoreConfig().with_overrides(FAST), method="sd_edit")
        with pytest.raises(InputError, match="edit mask is 32x32 but the image is 64x64"):
            build_operator("edit", (3, SIZE, SIZE), mask=torch.ones(32, 32))
    finally:
        hook.remove()
    assert not calls


# ---- latent adaptation pieces ------------------------------------------------------------
def test_adapter_is_removed_even_when_training_fails(upscaler):
    from restore_core.latent_adaptation import sd_lora_adapter

    before = state_dict_hash(upscaler.unet)
    with pytest.raises(RuntimeError, match="boom"), sd_lora_adapter(upscaler.unet, 16, 8, seed=1) as params:
        assert params and all(p.requires_grad for p in params)
        assert all("lora_" in n for n, p in upscaler.unet.named_parameters() if p.requires_grad)
        raise RuntimeError("boom")
    assert state_dict_hash(upscaler.unet) == before and not getattr(upscaler.unet, "peft_config", None)
    assert not any(p.requires_grad for p in upscaler.unet.parameters())


def test_v_prediction_target_inverts_to_the_clean_latent(upscaler):
    """A perfect v-predictor recovers z₀ = √ᾱ z_t − √(1−ᾱ) v: the target matches the
    scheduler's own noising, so the adaptation loss trains what the sampler assumes."""
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    zt = upscaler.pipe.scheduler.add_noise(z0, noise, t)
    v = upscaler.training_target(z0, noise, t)
    a = upscaler.pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(a.sqrt() * zt - (1 - a).sqrt() * v, z0, atol=1e-5)


def test_random_fill_masks_are_binary_boxes_or_whole_crops():
    from restore_core.latent_adaptation import random_fill_masks

    m = random_fill_masks(200, 32, 24, torch.Generator().manual_seed(0))
    assert m.shape == (200, 1, 32, 24) and set(m.unique().tolist()) == {0.0, 1.0}
    full = (m.flatten(1).mean(1) == 1).float().mean().item()
    assert 0.15 < full < 0.35  # FULL_MASK_RATE = 0.25
    assert torch.equal(m, random_fill_masks(200, 32, 24, torch.Generator().manual_seed(0)))


def test_sd_restores_images_larger_than_the_unet_sample_size_whole(upscaler):
    """The pipeline samples the whole latent (SD's UNet is convolutional with attention; the
    x4 upscaler's card runs 256² → 1024² beyond its 128² training latents): no pixel tiling."""
    big = 2 * upscaler.sample_size
    op = build_operator("sr4", (3, big, big))
    y = op.A(random_crops(HELDOUT_PHOTOS[:1], 1, big, seed=1)[0])
    x, _ = restore_one(y, op, upscaler, RestoreConfig().with_overrides(FAST), method="sd", seed=0)
    assert x.shape == (1, 3, big, big) and torch.isfinite(x).all()


@pytest.mark.parametrize("kind", ["upscale", "inpaint"])
def test_adaptation_lowers_the_loss_on_fixed_batches_of_the_neighbours(upscaler, inpainter, neighbours, kind):
    """The LoRA learns: the loss on 6 fixed batches (own seeds, not the training stream)
    drops after 40 Adam steps at lr 1e-3 — gradients reach the adapter through the real
    conditioning (low-res image / mask + masked latent)."""
    from restore_core.latent_adaptation import (
        inpaint_loss,
        sd_lora_adapter,
        train_adapter,
        upscaler_loss,
    )

    model = upscaler if kind == "upscale" else inpainter
    with sd_lora_adapter(model.unet, 16, 8, seed=0) as params:
        if kind == "upscale":
            loss = upscaler_loss(model, neighbours, build_operator("sr4", (3, SIZE, SIZE)).A, SIZE, 6, 20,
                                 model.text_embeddings([""]))
        else:
            loss = inpaint_loss(model, neighbours, SIZE, 6, model.text_embeddings(["a cat"]),
                                model.text_embeddings([""]), 0.1, {})

        def held_out():
            with torch.no_grad():
                return sum(float(loss(torch.Generator().manual_seed(100 + i))) for i in range(6)) / 6

        before = held_out()
        train_adapter(params, loss, model.unet, iters=40, lr=1e-3, seed=1)
        assert held_out() < 0.9 * before
