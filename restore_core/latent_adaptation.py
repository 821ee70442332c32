"""Image-adaptive LoRA tuning of a Stable Diffusion UNet in latent space (ADIR, revised version, §4, §4.1, §4.4).

The pixel-space counterpart is ``restore_core.adaptation`` (eq. 20 on ℓ_simple); this module
reuses its crops (``random_crop_batch``), its conv-layer list and its weight hash, and adds
what a latent model needs:

* ``sd_lora_adapter``: a fresh LoRA (r = 16, α = 8 on every Conv2d: ADIR (revised version) §4) attached
  with diffusers' own adapter API, ``UNet2DConditionModel.add_adapter(LoraConfig)``, and
  removed on exit with ``unload_lora`` (which puts the very base modules back and drops the
  peft config), so the state dict is bit-identical after every row. lora_A's init is drawn
  from ``seed`` on a forked RNG: rows are reproducible and the global RNG is untouched.
* ``train_adapter``: Adam on a batch loss, one batch per iteration (Table 1: 400 iterations,
  lr 1e-4), with the same seed giving the same crops, t and noise; its iterations are the
  tracked row's ``adapting`` stage (``restore_core.progress``).
* ``upscaler_loss``: §4.1 — random crops z of the neighbours, the low-resolution input
  A(z) (the task's operator) noised to ``noise_level`` by the pipeline's
  ``low_res_scheduler`` and concatenated to the noisy VAE latent of z, the level as the
  UNet's class label, the prompt's text states as cross-attention; loss
  ‖target − UNet(·)‖² with the scheduler's target (v = √ᾱ ε − √(1−ᾱ) z₀ for the x4
  upscaler's v-prediction). One t for the whole batch of 6 (ADIR, revised version, §4).
* ``inpaint_loss``: §4.4, SD's own inpainting training — random fill masks m per crop
  (``random_fill_masks``), the UNet input noisy latent ⊕ m resized to the latent ⊕ latent of
  z·(1 − m), and the text condition the prompt's or, with probability ``prompt_drop``,
  the empty prompt's (classifier-free training); the drop-outs are counted.

Imports torch, peft (lazily), ``restore_core.adaptation``, ``.progress`` and the errors; the model is a
``restore_core.models.stable_diffusion.StableDiffusionModel``. Never the methods or jobs.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from restore_core import progress
from restore_core.adaptation import ADAPTER, conv_module_names, random_crop_batch
from restore_core.errors import SamplingDivergedError

FULL_MASK_RATE = 0.25  # SD inpainting training masks the whole image for a quarter of the samples


@contextlib.contextmanager
def sd_lora_adapter(unet: torch.nn.Module, rank: int = 16, alpha: int = 8,
                    seed: int = 0) -> Iterator[list[torch.nn.Parameter]]:
    """A fresh LoRA on every Conv2d of a ``UNet2DConditionModel`` for one row; yields its
    trainable parameters and removes it on exit, even on error."""
    from peft import LoraConfig

    if getattr(unet, "peft_config", None):
        raise RuntimeError("the UNet already carries an adapter; unload it first")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=conv_module_names(unet), lora_dropout=0.0)
    device = next(unet.parameters()).device
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            unet.add_adapter(config, adapter_name=ADAPTER)
        params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        yield params
    finally:
        if getattr(unet, "peft_config", None):
            unet.unload_lora()


def train_adapter(params: list[torch.nn.Parameter], batch_loss: Callable[[torch.Generator], torch.Tensor],
                  unet: torch.nn.Module, iters: int = 400, lr: float = 1e-4, seed: int = 0) -> dict:
    """``iters`` Adam steps on ``batch_loss(generator)``; returns ``iterations``,
    ``adapt_loss_first``, ``adapt_loss_last`` (mean of the last 10) and ``seconds_adapt``."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    start = time.perf_counter()
    unet.train()
    progress.report("adapting", 0, iters)
    try:
        for it in range(iters):
            with torch.enable_grad():
                loss = batch_loss(g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise SamplingDivergedError(f"non-finite adaptation loss ({losses[-1]}) at iteration {it + 1}; "
                                            "lower adapt_lr")
            progress.report("adapting", it + 1, iters)
    finally:
        unet.eval()
    last = losses[-10:]
    return {"iterations": iters, "adapt_loss_first": losses[0] if losses else None,
            "adapt_loss_last": sum(last) / len(last) if last else None, "seconds_adapt": time.perf_counter() - start}


def _noisy_latents(model, z0: torch.Tensor, g: torch.Generator):
    """(z_t, t, target) with one t ∈ [0, T) for the batch and the scheduler's training target."""
    scheduler = model.pipe.scheduler
    t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=g).expand(len(z0)).to(model.device)
    noise = torch.randn(z0.shape, generator=g).to(model.device, z0.dtype)
    return scheduler.add_noise(z0, noise, t), t, model.training_target(z0, noise, t)


def upscaler_loss(model, images: torch.Tensor, degrade: Callable[[torch.Tensor], torch.Tensor], crop: int,
                  batch_size: int, noise_level: int, text: torch.Tensor) -> Callable[[torch.Generator], torch.Tensor]:
    """The batch loss of §4.1 on (A(z), latent(z)) pairs of random crops z of ``images``.

    ``degrade`` is the task's A for crop×crop images; ``text`` the (1, L, D) prompt states.
    """
    images = images.to(model.device, torch.float32)

    def loss(g: torch.Generator) -> torch.Tensor:
        z = random_crop_batch(images, batch_size, crop, g).to(model.device)
        with torch.no_grad():
            low = degrade(z).clamp(-1, 1)
            z0 = model.encode(z, g)
            level = torch.full((len(z),), int(noise_level), dtype=torch.long, device=model.device)
            low = model.pipe.low_res_scheduler.add_noise(
                low, torch.randn(low.shape, generator=g).to(low), level)
        zt, t, target = _noisy_latents(model, z0, g)
        pred = model.unet(torch.cat([zt, low.to(zt.dtype)], dim=1), t, encoder_hidden_states=text.expand(
            len(z), -1, -1), class_labels=level).sample
        return F.mse_loss(pred.float(), target.float())

    return loss


def random_fill_masks(n: int, h: int, w: int, g: torch.Generator, full_rate: float = FULL_MASK_RATE) -> torch.Tensor:
    """(n, 1, h, w) binary masks, 1 = fill: the whole image with probability ``full_rate``,
    else 1–4 random rectangles with sides uniform in [side/8, side/2]."""
    masks = torch.zeros(n, 1, h, w)
    for i in range(n):
        if float(torch.rand(1, generator=g)) < full_rate:
            masks[i] = 1
            continue
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            bh = int(torch.randint(max(1, h // 8), h // 2 + 1, (1,), generator=g))
            bw = int(torch.randint(max(1, w // 8), w // 2 + 1, (1,), generator=g))
            top = int(torch.randint(0, h - bh + 1, (1,), generator=g))
            left = int(torch.randint(0, w - bw + 1, (1,), generator=g))
            masks[i, :, top:top + bh, left:left + bw] = 1
    return masks


def inpaint_loss(model, images: torch.Tensor, crop: int, batch_size: int, text: torch.Tensor,
                 empty: torch.Tensor, prompt_drop: float, stats: dict) -> Callable[[torch.Generator], torch.Tensor]:
    """The batch loss of §4.4 (SD inpainting training) on random crops of ``images``.

    ``text`` / ``empty``: (1, L, D) states of the prompt and of ""; each sample takes the
    empty one with probability ``prompt_drop``. ``stats`` counts ``adapt_samples``,
    ``prompt_dropouts`` and ``adapt_fill_fraction`` (the mean share of pixels to fill).
    """
    images = images.to(model.device, torch.float32)
    stats.update(adapt_samples=0, prompt_dropouts=0, adapt_fill_fraction=0.0)

    def loss(g: torch.Generator) -> torch.Tensor:
        z = random_crop_batch(images, batch_size, crop, g).to(model.device)
        fill = random_fill_masks(len(z), crop, crop, g).to(model.device)
        with torch.no_grad():
            z0 = model.encode(z, g)
            masked = model.encode(z * (fill < 0.5), g)
        fill_latent = F.interpolate(fill, size=z0.shape[-2:]).to(z0.dtype)  # nearest, as the pipeline
        dropped = (torch.rand(len(z), generator=g) < prompt_drop).to(model.device)
        cond = torch.where(dropped.view(-1, 1, 1), empty.expand(len(z), -1, -1), text.expand(len(z), -1, -1))
        n = stats["adapt_samples"]
        stats["adapt_fill_fraction"] = (stats["adapt_fill_fraction"] * n + float(fill.mean()) * len(z)) / (n + len(z))
        stats["adapt_samples"] = n + len(z)
        stats["prompt_dropouts"] += int(dropped.sum())
        zt, t, target = _noisy_latents(model, z0, g)
        pred = model.unet(torch.cat([zt, fill_latent, masked], dim=1), t, encoder_hidden_states=cond).sample
        return F.mse_loss(pred.float(), target.float())

    return loss
