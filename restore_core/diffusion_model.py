"""Loading an ε-prediction diffusion prior through diffusers' own loaders.

``load_diffusion_model(spec)`` accepts a hub id, a local folder or any fsspec URI (remote
folders are fetched to a local cache first). The folder uses the diffusers pipeline
layout — ``unet/`` (``UNet2DModel``, safetensors) and ``scheduler/`` (a DDPM scheduler
config) — or is a flat UNet folder with ``scheduler_config.json`` beside ``config.json``.

Two output layouts are supported:

* 3 output channels: ε only, fixed variance Σ = β̃_t (the posterior variance);
* 6 output channels: guided-diffusion's learned range,
  Σ = exp(v·log β_t + (1 − v)·log β̃_t) with v = (out[3:] + 1)/2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from restore_core import storage
from restore_core.errors import InputError, ModelLoadError
from restore_core.schedule import NoiseSchedule

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRIOR_DIR = str(REPO_ROOT / "models" / "prior")


@dataclass
class DiffusionModel:
    unet: torch.nn.Module
    schedule: NoiseSchedule
    learned_variance: bool
    sample_size: int
    in_channels: int
    spec: str
    device: torch.device
    dtype: torch.dtype

    @property
    def downsample_factor(self) -> int:
        """Image sides must be multiples of this (2 per down block but the last)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def predict(self, x: torch.Tensor, t_index: int, schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
        """ε̂ and log Σ̂ at step ``t_index`` of ``schedule`` (paper 000, Algorithm 1 line 3)."""
        t = schedule.timesteps[t_index]
        out = self.unet(x.to(self.dtype), t.to(self.device).expand(x.shape[0])).sample.to(x.dtype)
        eps = out[:, : self.in_channels]
        min_log = schedule.posterior_log_variance_clipped[t_index].item()
        if self.learned_variance:
            max_log = torch.log(schedule.betas[t_index]).item()
            v = (out[:, self.in_channels:] + 1) / 2
            log_var = v * max_log + (1 - v) * min_log
        else:
            log_var = torch.full_like(eps, min_log)
        return eps, log_var

    def check_image(self, x: torch.Tensor) -> None:
        """Clear errors for images this model cannot process."""
        if x.dim() != 4:
            raise InputError(f"expected a (B, C, H, W) image, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(f"image has {x.shape[1]} channels but the model {self.spec!r} expects "
                             f"{self.in_channels}")
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise InputError(f"image {x.shape[-2]}x{x.shape[-1]} is not a multiple of the model's "
                             f"downsampling factor {f}; crop it (images.center_crop_to_multiple)")


def _resolve(spec: str, cache_dir: str | None) -> str:
    if "://" in spec and not spec.startswith("file://"):
        return storage.fetch_to_local(spec, cache_dir)
    path = storage.local_path(spec)
    if os.path.isdir(path):
        return path
    if os.path.sep in spec or spec.startswith("."):
        raise ModelLoadError(f"model folder not found: {spec}")
    return spec  # a hub id


def load_diffusion_model(spec: str | None = None, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32, cache_dir: str | None = None) -> DiffusionModel:
    """Load a UNet2DModel prior and its DDPM schedule from ``spec`` (default: the shipped prior)."""
    from diffusers import DDPMScheduler, UNet2DModel

    spec = spec or DEFAULT_PRIOR_DIR
    where = _resolve(spec, cache_dir)
    is_dir = os.path.isdir(where)
    nested = is_dir and os.path.isdir(os.path.join(where, "unet"))
    try:
        if nested or not is_dir:  # pipeline layout (local or hub)
            unet = UNet2DModel.from_pretrained(where, subfolder="unet", use_safetensors=True)
            scheduler = DDPMScheduler.from_pretrained(where, subfolder="scheduler")
        else:
            unet = UNet2DModel.from_pretrained(where, use_safetensors=True)
            scheduler = DDPMScheduler.from_pretrained(where)
    except Exception as exc:  # noqa: BLE001 - diffusers/hub raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load diffusion model {spec!r}: {first}") from None
    if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
        raise ModelLoadError(f"{spec!r}: only ε-prediction models are supported, got "
                             f"{scheduler.config.prediction_type!r}")
    cin, cout = unet.config.in_channels, unet.config.out_channels
    if cout not in (cin, 2 * cin):
        raise ModelLoadError(f"{spec!r}: out_channels {cout} must be in_channels ({cin}) or twice it")
    unet = unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    sample = unet.config.sample_size
    return DiffusionModel(
        unet=unet, schedule=NoiseSchedule.from_scheduler(scheduler), learned_variance=cout == 2 * cin,
        sample_size=int(sample if isinstance(sample, int) else sample[0]), in_channels=cin, spec=spec,
        device=torch.device(device), dtype=dtype,
    )
