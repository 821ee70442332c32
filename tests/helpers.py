"""Shared test fixtures: tiny diffusers priors saved through ``save_pretrained``."""

from __future__ import annotations


def make_tiny_prior(path: str, sample_size: int = 32, out_channels: int = 3, seed: int = 0) -> str:
    """A tiny untrained UNet2DModel (16/32 channels, no attention, 1 layer per block) and a
    DDPMScheduler(T=1000, linear β) in the diffusers pipeline layout under ``path``.
    ``out_channels=6`` gives a learned-variance model. Returns ``path``."""
    from restore_core.models.pixel_unet import save_tiny_prior

    return save_tiny_prior(str(path), sample_size=sample_size, out_channels=out_channels, seed=seed)
