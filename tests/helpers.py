"""Shared test fixtures: tiny untrained models saved through the libraries' own savers and
loaded back by the tests through the real loaders (``save_pretrained`` for diffusers,
safetensors + an open_clip config for the embedder)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def make_tiny_prior(path: str, sample_size: int = 32, out_channels: int = 3, seed: int = 0) -> str:
    """A tiny untrained UNet2DModel (16/32 channels, no attention, 1 layer per block) and a
    DDPMScheduler(T=1000, linear β) in the diffusers pipeline layout under ``path``.
    ``out_channels=6`` gives a learned-variance model. Returns ``path``."""
    from diffusers import DDPMScheduler

    from restore_core.models.pixel_unet import conv_unet

    path = str(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = conv_unet((16, 32), layers_per_block=1, sample_size=sample_size, out_channels=out_channels)
    unet.save_pretrained(os.path.join(path, "unet"), safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(os.path.join(path, "scheduler"))
    return path


def save_tiny_embedder(out_dir: str, seed: int = 0, name: str = "tiny-test-vit", embed_dim: int = 32,
                       image_size: int = 32) -> dict[str, Any]:
    """A tiny random open_clip model (ViT image tower of width 64, one layer; minimal text
    tower) saved as ``<out_dir>/<name>.json`` + ``open_clip_model.safetensors`` — loaded back
    through the same ``pretrained=path`` code path as real weights. Returns its spec."""
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"image_size": image_size, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1, "layers": 1}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / f"{name}.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    weights = out / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return {"model": name, "pretrained": str(weights), "config": str(cfg_path)}
