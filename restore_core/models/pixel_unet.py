"""Loading an ε-prediction diffusion prior through diffusers' own loaders.

Owns ``DiffusionModel`` and ``load_diffusion_model``; imports diffusers, huggingface_hub,
``restore_core.storage`` and ``restore_core.sampling.schedule`` (never the samplers).

``load_diffusion_model(spec)`` accepts

* a local folder or ``file://`` URI,
* any other fsspec URI (``s3://…``, ``gs://…``): the folder is fetched once to a local
  cache with ``storage.fetch_to_local``,
* a Hugging Face hub id (``owner/name``): resolved with ``huggingface_hub.snapshot_download``
  (json + safetensors files only). With ``HF_HUB_OFFLINE=1`` an id that is not in the
  local cache fails at once with a ``ModelLoadError`` instead of trying the network.

The folder uses the diffusers pipeline layout — ``unet/`` (``UNet2DModel``) and
``scheduler/`` (a DDPM scheduler config) — or is a flat UNet folder with
``scheduler_config.json`` beside ``config.json``. Weights must be safetensors
(``use_safetensors=True``; no pickle is ever loaded).

Two output layouts (ADIR §3.1, Σ_θ of eq. 4):

* ``out_channels == in_channels``: ε only, fixed variance Σ = β̃_t (posterior variance);
* ``out_channels == 2·in_channels``: guided-diffusion's learned range,
  Σ = exp(v·log β_t + (1 − v)·log β̃_t) with v = (out[C:] + 1)/2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from restore_core import storage
from restore_core.errors import InputError, ModelLoadError
from restore_core.sampling.schedule import NoiseSchedule

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PRIOR_DIR = str(REPO_ROOT / "models" / "prior")



@dataclass
class DiffusionModel:
    unet: torch.nn.Module
    schedule: NoiseSchedule  # the full training schedule (T steps)
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

    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """ε_θ(x, t) at original training timestep(s) ``t`` (int or one per image).

        Differentiable in ``x`` and in the weights; wrap in ``torch.no_grad()`` if unneeded.
        """
        t = torch.as_tensor(t, device=self.device).reshape(-1).expand(x.shape[0])
        out = self.unet(x.to(self.dtype), t).sample
        return out[:, : self.in_channels].to(x.dtype)

    def eps_and_logvar(self, x: torch.Tensor, t_index: int, schedule: NoiseSchedule) -> tuple[torch.Tensor, torch.Tensor]:
        """ε̂ and log Σ̂ at step ``t_index`` of ``schedule`` (ADIR, Algorithm 1 line 3).

        Fixed variance: log Σ̂ = log β̃ (clipped at the last step, as guided-diffusion).
        Learned range: log Σ̂ = v·log β + (1 − v)·log β̃, v = (out[C:] + 1)/2, with β and β̃
        of the (possibly respaced) ``schedule``.
        """
        t = schedule.timesteps[t_index].to(self.device).expand(x.shape[0])
        out = self.unet(x.to(self.dtype), t).sample.to(x.dtype)
        eps = out[:, : self.in_channels]
        min_log = float(schedule.posterior_log_variance_clipped[t_index])
        if not self.learned_variance:
            return eps, torch.full_like(eps, min_log)
        max_log = float(torch.log(schedule.betas[t_index]))
        v = (out[:, self.in_channels:] + 1) / 2
        return eps, v * max_log + (1 - v) * min_log

    def check_image_shape(self, shape: tuple[int, ...]) -> None:
        """InputError for an image shape (C, H, W) this model cannot process."""
        c, h, w = (int(v) for v in shape[-3:])
        if c != self.in_channels:
            raise InputError(f"the image has {c} channels but the model {self.spec!r} expects "
                             f"{self.in_channels}")
        f = self.downsample_factor
        if h % f or w % f:
            raise InputError(f"image {h}x{w} is not a multiple of the model's downsampling factor {f}; "
                             f"crop it to {h - h % f}x{w - w % f} (images.center_crop_to_multiple)")


HUB_PATTERNS = ("*.json", "*.safetensors")  # what a hub snapshot fetches: configs and weights, no pickles


def _hub_folder(repo_id: str, cache_dir: str | None, allow_patterns=HUB_PATTERNS) -> str:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        return snapshot_download(repo_id, allow_patterns=list(allow_patterns), cache_dir=cache_dir,
                                 local_files_only=offline)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types
        if offline:
            raise ModelLoadError(f"hub model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE=1; "
                                 "download it once online or pass a local folder / URI") from None
        raise ModelLoadError(f"cannot fetch hub model {repo_id!r}: {type(exc).__name__}: "
                             f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_model_folder(spec: str, cache_dir: str | None = None, allow_patterns=HUB_PATTERNS) -> str:
    """A local folder for ``spec`` (local path, file:// URI, fsspec URI or hub id); a hub
    snapshot fetches only the files matching ``allow_patterns``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(f"empty model spec {spec!r}; expected a folder, a URI or a hub id")
    if "://" in spec and not spec.startswith("file://"):
        try:
            return storage.fetch_to_local(spec, cache_dir)
        except InputError as exc:
            raise ModelLoadError(f"cannot fetch diffusion model {spec!r}: {exc}") from None
    path = storage.local_path(spec)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ModelLoadError(f"model spec {spec!r} is a file; expected a folder (unet/ + scheduler/)")
    parts = spec.split("/")
    if spec.startswith((".", "/", "~", "file://")) or len(parts) != 2 or not all(parts):
        raise ModelLoadError(f"model folder not found: {spec!r} (expected a folder, a URI or a hub id owner/name)")
    return _hub_folder(spec, cache_dir, allow_patterns)


def load_diffusion_model(spec: str | None = None, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32, cache_dir: str | None = None) -> DiffusionModel:
    """Load a UNet2DModel ε-prior and its DDPM schedule from ``spec`` (default: the shipped prior)."""
    from diffusers import DDPMScheduler, UNet2DModel

    spec = spec or DEFAULT_PRIOR_DIR
    folder = resolve_model_folder(spec, cache_dir)
    nested = os.path.isdir(os.path.join(folder, "unet"))
    sub = {"unet": "unet", "scheduler": "scheduler"} if nested else {"unet": None, "scheduler": None}
    try:
        unet = UNet2DModel.from_pretrained(folder, subfolder=sub["unet"], use_safetensors=True, torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(folder, subfolder=sub["scheduler"])
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types
        raise ModelLoadError(f"cannot load diffusion model {spec!r}: {_first_line(exc)}") from None
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ModelLoadError(f"{spec!r}: only ε-prediction models are supported (prediction_type=epsilon), "
                             f"got {prediction!r}")
    cin, cout = unet.config.in_channels, unet.config.out_channels
    if cout not in (cin, 2 * cin):
        raise ModelLoadError(f"{spec!r}: out_channels {cout} must be in_channels ({cin}) for ε, "
                             f"or {2 * cin} for ε + learned variance")
    unet = unet.to(device=device).eval().requires_grad_(False)
    sample = unet.config.sample_size
    return DiffusionModel(
        unet=unet, schedule=NoiseSchedule.from_scheduler(scheduler), learned_variance=cout == 2 * cin,
        sample_size=int(sample if isinstance(sample, int) else sample[0]), in_channels=cin, spec=spec,
        device=torch.device(device), dtype=dtype,
    )


def conv_unet(channels: tuple[int, ...], layers_per_block: int = 1, sample_size: int = 64,
              out_channels: int = 3):
    """A fully convolutional UNet2DModel (no attention blocks, GroupNorm(8)), RGB in: the
    shape of the project's own prior and InDI restorers. Without attention it trains on
    small patches and runs on any multiple of its downsampling factor."""
    from diffusers import UNet2DModel

    n = len(channels)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=out_channels,
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n, norm_num_groups=8,
    )
