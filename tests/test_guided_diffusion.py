"""OpenAI guided-diffusion conversion against deepinv's independent implementation.

deepinv's ``DiffUNet`` loads OpenAI's files with ``strict=True`` (large_model=True: the
ImageNet 256² uncond network, False: the FFHQ one), so its state dict has OpenAI's key
names. Every parameter is re-randomised: OpenAI zero-initialises the last conv of each
residual block, the attention output and the model output, so a fresh init would make
the comparison trivially 0 = 0.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from jobs.cli import main as cli_main
from restore_core.adaptation import attach_lora, remove_lora, state_dict_hash
from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import ModelLoadError
from restore_core.models.guided_diffusion import (
    build_unet,
    convert_state_dict,
    infer_variant,
)
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one

torch.set_num_threads(1)


def randomised_reference(large: bool, seed: int = 0) -> torch.nn.Module:
    """deepinv's DiffUNet with every parameter drawn at random (built on the meta device,
    so the 552M-parameter default init is skipped): weights N(0, 1/fan_in), biases
    N(0, 0.1²), GroupNorm scales 1 + N(0, 0.1²)."""
    from deepinv.models import DiffUNet

    with torch.device("meta"):
        ref = DiffUNet(large_model=large, pretrained=None)
    ref = ref.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(seed)
    norms = {f"{n}.weight" for n, m in ref.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    with torch.no_grad():
        for name, p in ref.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name in norms:
                p.copy_(1 + 0.1 * r)
            elif p.dim() > 1:
                p.copy_(r / p[0].numel() ** 0.5)
            else:
                p.copy_(0.1 * r)
    return ref


@pytest.fixture(scope="module")
def ffhq_reference():
    return randomised_reference(large=False)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def _check_equal(ref, unet, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    for t in (0, 500, 999):
        tt = torch.tensor([t, t])
        with torch.no_grad():
            want = ref.forward_diffusion(x, tt)
            got = unet(x, tt).sample
        assert want.shape == got.shape == (2, 6, size, size)
        assert want.std() > 0.1  # not a degenerate all-zero comparison
        assert _rel_l2(want, got) <= 1e-4, t


def test_ffhq256_matches_deepinv(ffhq_reference):
    variant, unet = build_unet(ffhq_reference.state_dict())
    assert variant == "ffhq256"
    _check_equal(ffhq_reference, unet, 64)


@pytest.mark.slow
def test_imagenet256_uncond_matches_deepinv():
    ref = randomised_reference(large=True)
    assert sum(p.numel() for p in ref.parameters()) == 552_814_086
    variant, unet = build_unet(ref.state_dict())
    assert variant == "imagenet256-uncond"
    _check_equal(ref, unet, 32)


def test_split_in_legacy_head_order_matters(ffhq_reference):
    """Splitting the fused qkv in three contiguous chunks (the non-legacy order) must
    change the output: the test above would otherwise not pin the head order."""
    sd = dict(ffhq_reference.state_dict())
    key = "middle_block.1.qkv.weight"
    c = sd[key].shape[1]
    heads = c // 64
    legacy_as_chunks = sd[key].reshape(3, heads, 64, c, 1).transpose(0, 1).reshape(3 * c, c, 1)
    sd[key] = legacy_as_chunks
    _, unet = build_unet(sd)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = _rel_l2(ffhq_reference.forward_diffusion(x, torch.tensor([500])), unet(x, torch.tensor([500])).sample)
    assert diff > 1e-3


def test_lora_on_every_conv_and_optionally_the_attention(ffhq_reference):
    """ADIR adapts all convolutions; ``attention=True`` adds the 4 projections of each of
    the FFHQ network's 4 attention blocks (16×16 down, middle, two 16×16 up)."""
    _, unet = build_unet(ffhq_reference.state_dict())
    before = state_dict_hash(unet)
    convs = {n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d)}

    def wrapped() -> set[str]:
        return {n.rsplit(".lora_", 1)[0] for n, _ in unet.named_parameters() if "lora_" in n}

    attach_lora(unet)
    assert wrapped() == convs
    remove_lora(unet)
    attach_lora(unet, attention=True)
    extra = wrapped() - convs
    assert len(extra) == 16 and {n.rsplit(".", 1)[-1] for n in extra} == {"to_q", "to_k", "to_v", "0"}
    remove_lora(unet)
    assert state_dict_hash(unet) == before


def test_tampered_checkpoint_names_the_key(ffhq_reference):
    sd = ffhq_reference.state_dict()
    removed = {k: v for k, v in sd.items() if k != "input_blocks.4.0.in_layers.2.weight"}
    with pytest.raises(ModelLoadError, match=r"missing keys input_blocks\.4\.0\.in_layers\.2\.weight"):
        convert_state_dict(removed, "ffhq256")
    extra = dict(sd, **{"input_blocks.99.0.bias": torch.zeros(3)})
    with pytest.raises(ModelLoadError, match=r"unknown keys input_blocks\.99\.0\.bias"):
        convert_state_dict(extra, "ffhq256")
    reshaped = dict(sd, **{"output_blocks.3.0.emb_layers.1.weight": torch.zeros(5, 512)})
    with pytest.raises(ModelLoadError, match=r"output_blocks\.3\.0\.emb_layers\.1\.weight.*\(5, 512\)"):
        convert_state_dict(reshaped, "ffhq256")
    qkv = dict(sd, **{"middle_block.1.qkv.bias": torch.zeros(7)})
    with pytest.raises(ModelLoadError, match=r"middle_block\.1\.qkv\.bias"):
        convert_state_dict(qkv, "ffhq256")
    with pytest.raises(ModelLoadError, match="does not match guided-diffusion variant 'ffhq256'"):
        infer_variant(removed)


def test_wrong_variant_is_refused(ffhq_reference):
    with pytest.raises(ModelLoadError, match="'imagenet256-uncond'.*missing keys"):
        convert_state_dict(ffhq_reference.state_dict(), "imagenet256-uncond")


@pytest.mark.slow
def test_cli_converts_and_the_folder_restores(ffhq_reference, tmp_path, capsys):
    ckpt = tmp_path / "ffhq_10m.pt"
    torch.save({k: v for k, v in ffhq_reference.state_dict().items() if "alphas" not in k}, ckpt)
    out = tmp_path / "converted"
    assert cli_main(["convert-guided-diffusion", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    assert json.loads((out / "conversion.json").read_text())["variant"] == "ffhq256"
    assert sorted(os.listdir(out / "unet")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    model = load_diffusion_model(str(out))
    assert model.learned_variance and model.sample_size == 256 and model.downsample_factor == 32
    assert model.schedule.num_train_timesteps == 1000
    assert abs(float(model.schedule.betas[0]) - 1e-4) < 1e-9 and abs(float(model.schedule.betas[-1]) - 0.02) < 1e-7
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ffhq_reference.forward_diffusion(x, torch.tensor([250]))[:, :3]
        got = model.eps(x, 250)
    assert _rel_l2(want, got) <= 1e-4

    # One row through the restore path: sr4 on a held-out photo crop (32² -> y 8²), ia_y
    # (a LoRA on every conv of this network, one Adam step) against gd with the same seed.
    # Random weights carry no image prior, so no quality is asserted; the row must run,
    # the adapter must change the sample, and the base weights must come back unchanged.
    gt, _ = random_crops(HELDOUT_PHOTOS, 1, 32, seed=3)
    op = build_operator("sr4", (3, 32, 32))
    cfg = RestoreConfig.from_dict({"steps": 3, "adapt_iters": 1, "adapt_batch": 1, "adapt_lr": 1e-2, "adapt_crop": 32})
    before = state_dict_hash(model.unet)
    adapted, info = restore_one(op.A(gt), op, model, cfg, method="ia_y")
    plain, _ = restore_one(op.A(gt), op, model, cfg, method="gd")
    assert info["iterations"] == 1 and adapted.shape == gt.shape and torch.isfinite(adapted).all()
    assert (adapted - plain).abs().max() > 1e-3
    assert state_dict_hash(model.unet) == before


def test_bench_gpu_small_runs_on_cpu(tmp_path):
    """``adir bench gpu --small``: the GPU check's code path on a 2-level network at 32²."""
    out = tmp_path / "gpu.json"
    assert cli_main(["bench", "gpu", "--small", "--device", "cpu", "--reps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["forward"]["ms_forward_fp32"] > 0 and result["forward"]["bf16_rel_l2"] < 0.1
    rows = {(r["preset"], r["task"]): r for r in result["rows"]}
    assert set(rows) == {("fast", "sr4"), ("paper", "sr4"), ("fast", "sr8")}
    assert rows[("fast", "sr8")]["output"] == "64x64"  # twice the tile: the tiled path
    assert all(r["seconds_per_image"] > 0 and r["seconds_adapt"] > 0 for r in rows.values())
    assert result["faiss"]["faiss_queries_per_s"] > 0 and result["embedding"]["embed_images_per_s"] > 0
