"""The InDI restorer and its folder format ("Inversion by Direct Iteration", eq. 4, 7, 8).

The restorer F_θ(x_t, t) is a diffusers ``UNet2DModel`` (3 → 3 channels). The time
t ∈ [0, 1] goes through the UNet's sinusoidal time embedding as the float ``t·TIME_SCALE``
(``TIME_SCALE = 1000``, so the embedding sees the same range as a DDPM's step index).
The UNet predicts the residual: F_θ(x_t, t) = x_t + u_θ(x_t, t); this is only a
parametrisation of the same regressor of x (eq. 4), chosen because a small model trained
for minutes learns "x_t minus artefacts" much faster than "x" from scratch.
(Deviation: the paper's U-Net has no GroupNorm; diffusers' UNet2DModel always has it.)

Folder layout (``save_indi_model``): the UNet's ``save_pretrained`` (config.json +
safetensors) plus ``indi.json`` {task, eps, noise_schedule, p_t, time_scale, residual,
training stats}. ``load_indi_model(spec)`` reads it back. Training lives in
``jobs/train/indi.py``; sampling in ``restore_core.methods.indi``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from restore_core.errors import ModelLoadError
from restore_core.models.pixel_unet import conv_unet
from restore_core.operators import parse_task

TIME_SCALE = 1000.0
INDI_TASKS = ("jpeg", "deblur_box5", "deblur_gauss", "sr4", "denoise")  # tasks `adir train-indi` supports
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INDI_DIR = REPO_ROOT / "models"


@dataclass
class IndiModel:
    """A trained InDI restorer and the settings it was trained with."""

    unet: torch.nn.Module
    task: str
    eps: float = 0.0
    noise_schedule: str = "constant"
    p_t: str = "bias_t1"
    residual: bool = True
    time_scale: float = TIME_SCALE
    meta: dict = field(default_factory=dict)
    spec: str = ""

    def __call__(self, x_t: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """F_θ(x_t, t): the estimate of the clean image x (eq. 4) at time t ∈ [0, 1]."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        out = self.unet(x_t, t * self.time_scale).sample
        return x_t + out if self.residual else out

    def eps_at(self, t: float, eps: float | None = None, schedule: str | None = None) -> float:
        """ε_t of eq. 8: ε (constant) or ε/√t (inv_sqrt)."""
        eps = self.eps if eps is None else eps
        schedule = schedule or self.noise_schedule
        if schedule == "constant" or eps == 0:
            return eps
        return eps / math.sqrt(max(t, 1e-12))


def build_indi_unet(channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1, sample_size: int = 64):
    """The restorer's UNet: fully convolutional, RGB → RGB (``pixel_unet.conv_unet``)."""
    return conv_unet(channels, layers_per_block, sample_size)


def save_indi_model(model: IndiModel, path: str) -> None:
    """Write ``model`` in the folder layout ``load_indi_model`` reads."""
    os.makedirs(path, exist_ok=True)
    model.unet.save_pretrained(path, safe_serialization=True)
    meta = {"task": model.task, "eps": model.eps, "noise_schedule": model.noise_schedule, "p_t": model.p_t,
            "residual": model.residual, "time_scale": model.time_scale, **model.meta}
    with open(os.path.join(path, "indi.json"), "w") as fh:
        json.dump(meta, fh, indent=2)


def default_indi_dir(task: str) -> str:
    """The shipped model folder of a task: ``models/indi-<task name>``."""
    return str(DEFAULT_INDI_DIR / f"indi-{parse_task(task)[0]}")


def load_indi_model(spec: str, device: str | torch.device = "cpu") -> IndiModel:
    """Load a folder written by ``save_indi_model`` (local path or fsspec URI)."""
    from diffusers import UNet2DModel

    from restore_core import storage

    where = storage.fetch_to_local(spec) if "://" in spec and not spec.startswith("file://") else spec
    where = where.removeprefix("file://")
    meta_path = os.path.join(where, "indi.json")
    if not os.path.isfile(meta_path):
        raise ModelLoadError(f"not an InDI model folder (no indi.json): {spec}")
    with open(meta_path) as fh:
        meta = json.load(fh)
    try:
        unet = UNet2DModel.from_pretrained(where, use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types
        raise ModelLoadError(f"cannot load InDI model {spec!r}: {str(exc).strip().splitlines()[0]}") from None
    unet = unet.to(device).eval().requires_grad_(False)
    known = ("task", "eps", "noise_schedule", "p_t", "residual", "time_scale")
    return IndiModel(unet=unet, **{k: meta[k] for k in known if k in meta},
                     meta={k: v for k, v in meta.items() if k not in known}, spec=spec)


def full_size(y: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """y at the image size ``hw``: bicubic upsampling when y is smaller (SR), else y.

    InDI's x_t is a convex combination of same-size images, so a super-resolution y is
    presented at the output size (as the InDI paper's Table 2 footnote does, there bilinear).
    """
    if tuple(y.shape[-2:]) == tuple(hw):
        return y
    return F.interpolate(y, size=tuple(hw), mode="bicubic", align_corners=False).clamp(-1, 1)
