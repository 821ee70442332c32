"""Shared test fixtures: tiny diffusers priors saved through ``save_pretrained``."""

from __future__ import annotations

import os


def make_tiny_prior(path: str, sample_size: int = 32, out_channels: int = 3, seed: int = 0) -> str:
    """A tiny untrained UNet2DModel + DDPMScheduler(T=1000) in the pipeline layout."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=out_channels,
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    unet.save_pretrained(os.path.join(path, "unet"), safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(os.path.join(path, "scheduler"))
    return path
