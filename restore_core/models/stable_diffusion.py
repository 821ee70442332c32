"""Stable Diffusion pipelines as model families: the x4 upscaler and the inpainting model.

Owns ``StableDiffusionModel`` and ``load_sd_model``; imports diffusers,
``restore_core.models.pixel_unet`` (only its spec resolution: folder, ``file://``, fsspec
URI fetched once to a cache, hub id with ``HF_HUB_OFFLINE`` failing fast) and the errors.
Never imports the methods, samplers or jobs.

ADIR (revised version) §4.1 uses ``StableDiffusionUpscalePipeline`` (``kind="upscale"``): a latent
UNet whose input is the noisy latent concatenated with the low-resolution image y itself
(4 + 3 = 7 channels), y first noised to ``noise_level`` by the pipeline's
``low_res_scheduler`` and the level passed as the UNet's class label; v-prediction; a
VAE with a 4x decoder, so the latent has y's size and the output is 4x y. §4.4 uses
``StableDiffusionInpaintPipeline`` (``kind="inpaint"``): latent (4) + the mask resized to
the latent (1) + the VAE latent of the masked image (4) = 9 channels, 8x VAE.

Weights load with ``from_pretrained(..., use_safetensors=True)``: no pickle is read; a hub
snapshot fetches only configs, tokenizer files and the subfolders' full-precision
safetensors (not the single-file checkpoints or fp16 copies some repos also hold). No
safety checker is loaded (restoration, not generation for the public).

Image-side conventions match ``restore_core``: tensors (B, 3, H, W) in [-1, 1]. Sides must
be multiples of ``downsample_factor`` = VAE factor x UNet factor (the latent must pass the
UNet's down/up path without padding).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from restore_core.errors import InputError, ModelLoadError
from restore_core.models.pixel_unet import resolve_model_folder

KINDS = ("upscale", "inpaint")
DEFAULT_MODELS = {"upscale": "stabilityai/stable-diffusion-x4-upscaler",
                  "inpaint": "stabilityai/stable-diffusion-2-inpainting"}
# the diffusers layout: model_index.json + one folder per component; no root checkpoints, no fp16 copies
SD_HUB_PATTERNS = ("model_index.json", "*/*config.json", "*/vocab.json", "*/merges.txt", "*/tokenizer.json",
                   "*/special_tokens_map.json", "*/diffusion_pytorch_model.safetensors", "*/model.safetensors")
_UNET_CHANNELS = {"upscale": 7, "inpaint": 9}  # 4 latent + 3 low-res image | + 1 mask + 4 masked latent


@dataclass
class StableDiffusionModel:
    """A loaded SD pipeline plus the facts ``restore_one`` and the methods check."""

    pipe: object  # StableDiffusionUpscalePipeline | StableDiffusionInpaintPipeline
    kind: str
    spec: str
    device: torch.device
    dtype: torch.dtype
    in_channels: int = 3  # image channels (restore_one compares the task's images with this)

    @property
    def unet(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def vae(self) -> torch.nn.Module:
        return self.pipe.vae

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def downsample_factor(self) -> int:
        """Image sides (the restored x) must be multiples of this."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def sample_size(self) -> int:
        """The image side the UNet was configured for (latent sample size x VAE factor)."""
        size = self.unet.config.sample_size
        return int(size if isinstance(size, int) else size[0]) * self.vae_factor

    def check_image_shape(self, shape: tuple[int, ...]) -> None:
        """InputError for an image (C, H, W) this pipeline cannot produce."""
        c, h, w = (int(v) for v in shape[-3:])
        if c != 3:
            raise InputError(f"Stable Diffusion restores RGB images; got {c} channel(s)")
        f = self.downsample_factor
        if h % f or w % f:
            raise InputError(f"image {h}x{w} is not a multiple of {f} ({self.spec!r}: VAE x{self.vae_factor} "
                             f"times the UNet's downsampling); crop it to {h - h % f}x{w - w % f}")

    # ---- the pieces adaptation needs -----------------------------------------------
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text-encoder states (N, L, D) of ``prompts`` (the UNet's cross-attention input)."""
        with torch.no_grad():
            embeds, _ = self.pipe.encode_prompt(prompts, self.device, 1, False)
        return embeds

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE latent (sampled from the posterior) x ``scaling_factor`` of images in [-1, 1]."""
        with torch.no_grad():
            dist = self.vae.encode(x.to(self.device, self.dtype)).latent_dist
            return dist.sample(generator) * self.vae.config.scaling_factor

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet predicts at training step t: v = √ᾱ ε − √(1−ᾱ) z₀ (v-prediction) or ε."""
        if self.prediction_type == "v_prediction":
            return self.pipe.scheduler.get_velocity(latents, noise, t)
        if self.prediction_type == "epsilon":
            return noise
        raise ModelLoadError(f"{self.spec!r}: unsupported prediction_type {self.prediction_type!r} "
                             "(epsilon or v_prediction)")


def config_spec(cfg, kind: str) -> str:
    """The model spec a ``RestoreConfig`` names for ``kind``: ``sd_model`` (upscale) or
    ``sd_inpaint_model`` (inpaint)."""
    return cfg.sd_model if kind == "upscale" else cfg.sd_inpaint_model


def _pipeline_class(kind: str):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionUpscalePipeline

    return {"upscale": StableDiffusionUpscalePipeline, "inpaint": StableDiffusionInpaintPipeline}[kind]


def load_sd_model(spec: str | None, kind: str, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, cache_dir: str | None = None) -> StableDiffusionModel:
    """Load a ``kind`` pipeline ("upscale" | "inpaint") from a hub id, folder or fsspec URI.

    ``spec=None`` takes ``DEFAULT_MODELS[kind]``. Raises ``ModelLoadError`` with one line
    for a missing folder, an uncached hub id offline, a pipeline of another type or a UNet
    whose input channels are not those of ``kind``.
    """
    if kind not in KINDS:
        raise ModelLoadError(f"unknown Stable Diffusion model kind {kind!r}; accepted: {', '.join(KINDS)}")
    spec = spec or DEFAULT_MODELS[kind]
    folder = resolve_model_folder(spec, cache_dir, allow_patterns=SD_HUB_PATTERNS)
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise ModelLoadError(f"{spec!r} is not a diffusers pipeline folder (no model_index.json)")
    cls = _pipeline_class(kind)
    extra = {"safety_checker": None, "feature_extractor": None}  # never fetched nor loaded
    extra.update({"requires_safety_checker": False} if kind == "inpaint" else {"watermarker": None})
    try:
        pipe = cls.from_pretrained(folder, use_safetensors=True, dtype=dtype, **extra)
    except Exception as exc:  # noqa: BLE001 - diffusers / transformers raise many types
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelLoadError(f"cannot load {cls.__name__} from {spec!r}: {text[:300]}") from None
    channels = pipe.unet.config.in_channels
    if channels != _UNET_CHANNELS[kind]:
        raise ModelLoadError(f"{spec!r}: its UNet takes {channels} input channels; a {kind} model takes "
                             f"{_UNET_CHANNELS[kind]}")
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.eval().requires_grad_(False)
    model = StableDiffusionModel(pipe=pipe, kind=kind, spec=spec, device=torch.device(device), dtype=dtype)
    if model.prediction_type not in ("epsilon", "v_prediction"):
        raise ModelLoadError(f"{spec!r}: unsupported prediction_type {model.prediction_type!r}")
    return model
