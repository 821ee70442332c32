"""ADIR on Stable Diffusion (ADIR, revised version, §4.1, §4.4; Table 1 row ADIR-SD) and its baselines.

* ``sd`` (task ``sr4``): the x4 upscaler pipeline on y as it is — the "Stable Diffusion"
  row of the SR table. ``adir_sd``: the same after a fresh LoRA is tuned on the K retrieved
  neighbours (``latent_adaptation.upscaler_loss``: crops z, A(z) as the conditioning, the
  VAE latent of z as the target's z₀). The output is 4x y.
* ``sd_edit`` (task ``edit``): text-guided inpainting with the SD inpainting pipeline;
  ``adir_edit``: after a LoRA tuned on neighbours retrieved by the prompt's text embedding
  (eq. 19 with the text tower), with SD's inpainting training (random masks, the prompt
  dropped to "" at ``sd.prompt_drop``). The ``edit`` operator's mask keeps the pixels
  outside the region to fill; after decoding those pixels are pasted back from y, so they
  are the input's exactly (the VAE round trip would otherwise change them).

The adapter lives only inside ``sd_lora_adapter``: the base weights are bit-identical after
every row. Adaptation draws its seed from a copy of the row's generator (as ``adir``), so
an adapted run samples with the same noise as its baseline at the same seed (the paper
compares at equal seeds). With the empty prompt, classifier-free guidance is the identity
(the conditional and unconditional predictions are the same), so it is skipped. For the
same reason an adapted row interrupted after its adaptation resumes from its saved adapter
(``adaptation.adapt_or_resume``) with the same image. Progress (``restore_core.progress``):
``adapting`` iterations, then ``sampling`` the pipeline's steps (its step callbacks).

Config fields used: ``sd.{steps, noise_level, guidance_scale, prompt, prompt_drop}``,
adapt_iters, adapt_lr, adapt_batch, adapt_crop (None: the model's native image side, capped
by the neighbours'), lora_rank, lora_alpha. Imports the SD model family, the latent
adaptation and the operator registry; never the jobs.
"""

from __future__ import annotations

import time

import torch

from restore_core import progress
from restore_core.adaptation import adapt_or_resume
from restore_core.errors import InputError, MethodError
from restore_core.latent_adaptation import (
    inpaint_loss,
    sd_lora_adapter,
    train_adapter,
    upscaler_loss,
)
from restore_core.methods.adir import _adaptation_seed
from restore_core.methods.base import base_info, register
from restore_core.models.stable_diffusion import StableDiffusionModel
from restore_core.operators import build_operator


def _require_model(method: str, model, kind: str) -> StableDiffusionModel:
    if not isinstance(model, StableDiffusionModel) or model.kind != kind:
        got = model.kind if isinstance(model, StableDiffusionModel) else type(model).__name__
        key = "sd_model" if kind == "upscale" else "sd_inpaint_model"
        raise MethodError(f"method {method!r} needs a Stable Diffusion {kind} pipeline (config {key}); got {got}")
    return model


def _neighbours(method: str, neighbours) -> torch.Tensor:
    if neighbours is None or len(neighbours) == 0:
        raise MethodError(f"method {method!r} needs retrieved neighbour images; none were given "
                          "(set k > 0 and an index)")
    return neighbours


def _crop_size(cfg, model: StableDiffusionModel, neighbours: torch.Tensor) -> int:
    """adapt_crop, or the model's native side capped by the neighbours', as a multiple of the
    model's factor (so the crop's latent passes the UNet)."""
    f = model.downsample_factor
    size = cfg.adapt_crop or min(model.sample_size, min(neighbours.shape[-2:]))
    if size < f or size % f:
        raise InputError(f"adaptation crop {size} must be a positive multiple of {f} for {model.spec!r} "
                         "(set adapt_crop)")
    return size


def _guidance(cfg, prompt: str, default: float) -> float:
    scale = default if cfg.sd.guidance_scale is None else cfg.sd.guidance_scale
    return scale if prompt else 1.0  # empty prompt: conditional == unconditional, guidance is the identity


def _step_reported(steps: int):
    """A ``callback_on_step_end`` reporting the pipeline's step i + 1 of ``steps``."""

    def on_step_end(pipe, i, t, tensors):
        progress.report("sampling", i + 1, steps)
        return tensors

    return on_step_end


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class SDMethod:
    """Shared flow: check, optionally adapt a fresh LoRA on the neighbours, then sample."""

    needs_operator = True
    model_kind = ""  # the StableDiffusionModel kind this method runs on (the row path loads it)

    def __init__(self, name: str, adapt: bool):
        self.name = name
        self.uses_neighbours = adapt

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        model = _require_model(self.name, model, self.model_kind)
        if operator is None or operator.name not in self.tasks:
            raise MethodError(f"method {self.name!r} restores task {self.tasks[0]!r}; got "
                              f"{getattr(operator, 'name', None)!r}")
        prompt = self._check(y, operator, model, cfg)
        info = base_info(steps=int(cfg.sd.steps), stop_reason="steps")
        if self.uses_neighbours:
            images = _neighbours(self.name, neighbours)
            seed = _adaptation_seed(generator)
            with sd_lora_adapter(model.unet, cfg.lora_rank, cfg.lora_alpha, seed=seed) as params:
                loss, extra = self._loss(model, images, operator, cfg, prompt)
                info.update(adapt_or_resume(model.unet, cfg.adapt_iters, lambda: train_adapter(
                    params, loss, model.unet, cfg.adapt_iters, cfg.adapt_lr, seed)))
                info.update(extra, adapted_on=f"{len(images)} neighbours")
                x, seconds = self._timed_sample(y, operator, model, cfg, prompt, generator)
        else:
            x, seconds = self._timed_sample(y, operator, model, cfg, prompt, generator)
        info["seconds_sample"] = seconds
        return x, info

    def work(self, cfg) -> dict[str, int]:
        """Units per progress stage (``restore_core.progress``): adaptation iterations (the
        adapted methods), then the pipeline's steps."""
        return ({"adapting": cfg.adapt_iters} if self.uses_neighbours else {}) | {"sampling": int(cfg.sd.steps)}

    def _timed_sample(self, y, operator, model, cfg, prompt, generator):
        start = time.perf_counter()
        steps = int(cfg.sd.steps)
        progress.report("sampling", 0, steps)
        with torch.no_grad():
            x = self._sample(y, operator, model, cfg, prompt, generator)
        progress.report("sampling", steps, steps)
        return x.float(), time.perf_counter() - start


class SDUpscale(SDMethod):
    """``sd`` / ``adir_sd``: StableDiffusionUpscalePipeline, y (B, 3, h, w) → x (B, 3, 4h, 4w)."""

    tasks = ("sr4",)
    model_kind = "upscale"

    def _check(self, y, operator, model, cfg) -> str:
        factor = round(operator.image_shape[-1] / operator.output_shape[-1])
        if factor != model.vae_factor:
            raise MethodError(f"{model.spec!r} upscales x{model.vae_factor}; task {operator.name!r} is x{factor}")
        top = int(model.pipe.config.max_noise_level)
        if not 0 <= cfg.sd.noise_level <= top:
            raise InputError(f"sd.noise_level {cfg.sd.noise_level} must be in 0..{top} for {model.spec!r}")
        return cfg.sd.prompt

    def _loss(self, model, images, operator, cfg, prompt):
        crop = _crop_size(cfg, model, images)
        degrade = build_operator(operator.task, (3, crop, crop)).to(model.device).A
        loss = upscaler_loss(model, images, degrade, crop, cfg.adapt_batch, cfg.sd.noise_level,
                             model.text_embeddings([prompt]))
        return loss, {"adapt_crop": crop}

    def _sample(self, y, operator, model, cfg, prompt, generator):
        out = model.pipe(prompt=[prompt] * len(y), image=_to_unit(y).to(model.dtype),
                         num_inference_steps=int(cfg.sd.steps), guidance_scale=_guidance(cfg, prompt, 9.0),
                         noise_level=int(cfg.sd.noise_level), generator=generator, output_type="pt",
                         callback=lambda i, t, latents: progress.report("sampling", i + 1, int(cfg.sd.steps))).images
        return out * 2 - 1


class SDEdit(SDMethod):
    """``sd_edit`` / ``adir_edit``: StableDiffusionInpaintPipeline on y with the ``edit``
    operator's mask (kept = 1), the fill region (1 − kept) regenerated from the prompt."""

    tasks = ("edit",)
    model_kind = "inpaint"

    def _check(self, y, operator, model, cfg) -> str:
        prompt = cfg.sd.prompt.strip()
        if not prompt:
            raise InputError(f"method {self.name!r} needs a prompt (manifest column prompt, or --set sd.prompt=...)")
        return prompt

    def _loss(self, model, images, operator, cfg, prompt):
        crop = _crop_size(cfg, model, images)
        stats = {"adapt_crop": crop}  # filled with the counts while training (read after it)
        loss = inpaint_loss(model, images, crop, cfg.adapt_batch, model.text_embeddings([prompt]),
                            model.text_embeddings([""]), cfg.sd.prompt_drop, stats)
        return loss, stats

    def _sample(self, y, operator, model, cfg, prompt, generator):
        fill = (1 - operator.mask).to(y).expand(len(y), 1, -1, -1)
        h, w = y.shape[-2:]
        out = model.pipe(prompt=[prompt] * len(y), image=_to_unit(y).to(model.dtype), mask_image=fill.to(model.dtype),
                         height=h, width=w, num_inference_steps=int(cfg.sd.steps),
                         guidance_scale=_guidance(cfg, prompt, 7.5), generator=generator, output_type="pt",
                         callback_on_step_end=_step_reported(int(cfg.sd.steps))).images
        return torch.where(fill > 0.5, out.to(y) * 2 - 1, y)


register(SDUpscale("sd", adapt=False))
register(SDUpscale("adir_sd", adapt=True))
register(SDEdit("sd_edit", adapt=False))
register(SDEdit("adir_edit", adapt=True))
