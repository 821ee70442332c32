"""ADIR and its ablation arms over one implementation, with any sampler (ADIR §3.2-3.3, Table 6).

* ``gd``: the sampler with the base model, no adaptation (with Algorithm 1: the paper's
  "GD" baseline; with ``sampler=ddrm|diffpir|dps``: that peer alone).
* ``ia_y``: adapt a fresh LoRA on y itself (eq. 18), then sample.
* ``adir``: adapt a fresh LoRA on the K retrieved neighbours (eq. 19-20), then sample
  (``retrieval=random|mse`` gives the ``ia_random`` / ``ia_mse`` arms of Table 6).

The sampler is ``cfg.sampler``: ``alg1`` (ADIR Algorithm 1, ``sampling.alg1``) or a
deepinv peer (``sampling.peers``: DDRM, DiffPIR, DPS). ADIR's adaptation "can be
incorporated into any conditional sampling scheme" (§3): the adapter lives only inside
``lora_adapter``, the peer's denoiser reads the model through ``DiffusionModel.eps``, so
the peer samples with the adapted weights, and the base weights are bit-identical
afterwards. ``check_sampler`` runs before the adaptation, so a peer that cannot run the
task (no SVD) fails before any work.

``cfg.samples`` > 1 averages that many posterior samples (each with its own noise from the
row's generator): an estimate of the posterior mean, the MMSE output a user asks for
when distortion (PSNR) matters. A posterior sample has twice the posterior mean's
expected squared error, so the mean of N samples trades perception for about
10·log10(2N/(N+1)) dB of PSNR.

The adaptation seed is drawn from a *copy* of the row's generator, so one seed fixes the
whole row and every arm samples with the same noise as ``gd`` (the paper compares arms at
the same seed); for the same reason a row whose adapter was saved before an interruption
(``adaptation.adapt_or_resume``) resumes with it and gives the same image. Progress
(``restore_core.progress``): ``adapting`` iterations, then ``sampling`` steps × samples
(``work``). Config fields used: adapt_iters, adapt_lr, adapt_batch, adapt_crop,
lora_rank, lora_alpha (Table 1 / ADIR §4 defaults), steps, guidance_scale, guidance_mode,
sampler, noise_sigma, samples.
"""

from __future__ import annotations

import torch

from restore_core import progress
from restore_core.adaptation import adapt_lora, adapt_or_resume, lora_adapter
from restore_core.errors import MethodError
from restore_core.methods.base import base_info, register, require_linear_operator
from restore_core.operators import TASKS
from restore_core.sampling.alg1 import guided_ddpm_sample
from restore_core.sampling.peers import check_sampler, peer_sample

LINEAR_TASKS = ("sr4",) + tuple(t for t in TASKS if t not in ("sr4", "jpeg"))


class GuidedDiffusion:
    """A conditional sampler, optionally after image-adaptive LoRA tuning on y or on the neighbours."""

    needs_operator = True
    tasks = LINEAR_TASKS

    def __init__(self, name: str, adapt_on: str | None):
        self.name = name
        self.adapt_on = adapt_on  # None | "y" | "neighbours"
        self.uses_neighbours = adapt_on == "neighbours"

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        require_linear_operator(self.name, operator)
        structure = check_sampler(cfg.sampler, operator)  # before any work
        info = base_info()
        if self.adapt_on is None:
            x, sample_info = sample(y, operator, model, cfg, generator, structure)
        else:
            images = self._adaptation_images(y, model, neighbours)
            seed = _adaptation_seed(generator)
            with lora_adapter(model, cfg.lora_rank, cfg.lora_alpha, attention=cfg.lora_attention) as params:
                adapt_info = adapt_or_resume(model.unet, cfg.adapt_iters, lambda: adapt_lora(
                    model, images, params, iters=cfg.adapt_iters, lr=cfg.adapt_lr, batch_size=cfg.adapt_batch,
                    crop_size=cfg.adapt_crop, seed=seed))
                x, sample_info = sample(y, operator, model, cfg, generator, structure)
            info.update(adapt_info)
            info["adapted_on"] = f"{len(images)} {'neighbours' if self.uses_neighbours else 'measurement(s) y'}"
        info.update(sample_info, stop_reason="steps")
        return x, info

    def work(self, cfg) -> dict[str, int]:
        """Units per progress stage (``restore_core.progress``): adaptation iterations, then
        sampling steps × samples."""
        adapting = {"adapting": cfg.adapt_iters} if self.adapt_on else {}
        return adapting | {"sampling": cfg.steps * cfg.samples}

    def _adaptation_images(self, y, model, neighbours):
        if self.adapt_on == "neighbours":
            if neighbours is None or len(neighbours) == 0:
                raise MethodError(f"method {self.name!r} needs retrieved neighbour images; none were given "
                                  "(set k > 0 and an index, or use ia_y / gd)")
            return neighbours
        # eq. 18 on y itself; a 1-channel y (colorize) is replicated to the model's channels
        return y if y.shape[1] == model.in_channels else y.expand(-1, model.in_channels, -1, -1)


def sample(y, operator, model, cfg, generator, structure=None) -> tuple[torch.Tensor, dict]:
    """``cfg.samples`` draws of ``cfg.sampler`` for y, averaged (one draw: the sample itself).

    Draws follow one another on the row's generator, so draw 1 is the single sample of the
    same seed. ``info["seconds_sample"]`` is the total over the draws."""
    total, info, seconds = None, {}, 0.0
    for _ in progress.repeat(cfg.samples):
        if cfg.sampler == "alg1":
            x, info = guided_ddpm_sample(model, y, operator, scale=cfg.guidance_scale, steps=cfg.steps,
                                         generator=generator, scale_mode=cfg.guidance_mode)
        else:
            x, info = peer_sample(model, y, operator, cfg.sampler, steps=cfg.steps, noise_sigma=cfg.noise_sigma,
                                  generator=generator, structure=structure, dps_weight=cfg.dps_weight)
        total = x if total is None else total + x
        seconds += info["seconds_sample"]
    info = dict(info, sampler=cfg.sampler, samples=cfg.samples, seconds_sample=seconds)
    return total / cfg.samples, info


register(GuidedDiffusion("gd", None))
register(GuidedDiffusion("ia_y", "y"))
register(GuidedDiffusion("adir", "neighbours"))


def _adaptation_seed(generator) -> int:
    """A seed derived from the row's generator without advancing it."""
    if generator is None:
        return 0
    first = generator[0] if isinstance(generator, (list, tuple)) else generator
    copy = torch.Generator(device=first.device).set_state(first.get_state())
    return int(torch.randint(0, 2**31 - 1, (1,), generator=copy, device=first.device))
