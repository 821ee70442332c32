"""ADIR and its ablation arms over one implementation (paper 000 §3.2-3.3, Table 6).

* ``gd``: guided DDPM sampling with the base model, no adaptation (Algorithm 1 alone; the
  paper's "GD" baseline).
* ``ia_y``: adapt a fresh LoRA on y itself (eq. 18), then sample with Algorithm 1.
* ``adir``: adapt a fresh LoRA on the K retrieved neighbours (eq. 19-20), then sample.

Imports the sampler (``guided_sampling``) and the adaptation (``adaptation``); the adapter
lives only inside ``lora_adapter``, so the base weights are bit-identical afterwards. The
adaptation seed is drawn from a *copy* of the row's generator, so one seed fixes the whole
row and every arm samples with the same noise as ``gd`` (the paper compares arms at the
same seed).
Config fields used: adapt_iters, adapt_lr, adapt_batch, adapt_crop, lora_rank, lora_alpha
(Table 1 / paper 001 defaults), steps, guidance_scale, guidance_mode.
"""

from __future__ import annotations

import torch

from restore_core.adaptation import adapt_lora, lora_adapter
from restore_core.errors import MethodError
from restore_core.sampling.alg1 import guided_ddpm_sample
from restore_core.methods.base import base_info, register, require_linear_operator
from restore_core.operators import TASKS

LINEAR_TASKS = ("sr4",) + tuple(t for t in TASKS if t not in ("sr4", "jpeg"))


class GuidedDiffusion:
    """Algorithm 1, optionally after image-adaptive LoRA tuning on y or on the neighbours."""

    needs_operator = True
    tasks = LINEAR_TASKS

    def __init__(self, name: str, adapt_on: str | None):
        self.name = name
        self.adapt_on = adapt_on  # None | "y" | "neighbours"
        self.uses_neighbours = adapt_on == "neighbours"

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        require_linear_operator(self.name, operator)
        info = base_info()
        if self.adapt_on is None:
            x, sample_info = self._sample(y, operator, model, cfg, generator)
        else:
            images = self._adaptation_images(y, model, neighbours)
            seed = _adaptation_seed(generator)
            with lora_adapter(model, cfg.lora_rank, cfg.lora_alpha) as params:
                adapt_info = adapt_lora(model, images, params, iters=cfg.adapt_iters, lr=cfg.adapt_lr,
                                        batch_size=cfg.adapt_batch, crop_size=cfg.adapt_crop, seed=seed)
                x, sample_info = self._sample(y, operator, model, cfg, generator)
            info.update(adapt_info)
            info["adapted_on"] = f"{len(images)} {'neighbours' if self.uses_neighbours else 'measurement(s) y'}"
        info.update(sample_info, stop_reason="steps")
        return x, info

    def _adaptation_images(self, y, model, neighbours):
        if self.adapt_on == "neighbours":
            if neighbours is None or len(neighbours) == 0:
                raise MethodError(f"method {self.name!r} needs retrieved neighbour images; none were given "
                                  "(set k > 0 and an index, or use ia_y / gd)")
            return neighbours
        # eq. 18 on y itself; a 1-channel y (colorize) is replicated to the model's channels
        return y if y.shape[1] == model.in_channels else y.expand(-1, model.in_channels, -1, -1)

    @staticmethod
    def _sample(y, operator, model, cfg, generator):
        return guided_ddpm_sample(model, y, operator, scale=cfg.guidance_scale, steps=cfg.steps,
                                  generator=generator, scale_mode=cfg.guidance_mode)


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
