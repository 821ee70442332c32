"""ADIR and its ablation arms over one implementation (paper 000 §3.2-3.3, Table 6).

* ``gd``: guided DDPM sampling with the base model, no adaptation (Algorithm 1 alone;
  the paper's "GD" baseline).
* ``ia_y``: adapt a fresh LoRA on y itself (eq. 18), then sample with Algorithm 1.
* ``adir``: adapt a fresh LoRA on the K retrieved neighbours (eq. 19-20), then sample.

The adapter lives only inside ``lora_adapter``: the base weights are untouched afterwards.
"""

from __future__ import annotations

import torch

from restore_core.adaptation import adapt_lora, lora_adapter
from restore_core.errors import MethodError
from restore_core.guided_sampling import guided_ddpm_sample
from restore_core.methods.base import base_info, register, require_linear_operator


class GuidedDiffusion:
    """Algorithm 1, optionally after image-adaptive LoRA tuning on ``adapt_on``."""

    needs_operator = True

    def __init__(self, name: str, adapt_on: str | None):
        self.name = name
        self.adapt_on = adapt_on  # None | "y" | "neighbours"
        self.uses_neighbours = adapt_on == "neighbours"

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        require_linear_operator(self.name, operator)
        info = base_info()
        if self.adapt_on is None:
            x, sample_info = self._sample(y, operator, model, cfg, generator)
            info.update(sample_info, stop_reason="steps")
            return x, info
        if self.adapt_on == "neighbours":
            if neighbours is None or len(neighbours) == 0:
                raise MethodError(f"method {self.name!r} needs retrieved neighbour images; none were given")
            images = neighbours
        else:
            images = y if y.shape[1] == model.in_channels else y.expand(-1, model.in_channels, -1, -1)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
        with lora_adapter(model, cfg.lora_rank, cfg.lora_alpha) as params:
            adapt_info = adapt_lora(model, images, params, iters=cfg.adapt_iters, lr=cfg.adapt_lr,
                                    batch_size=cfg.adapt_batch, crop_size=cfg.adapt_crop, seed=seed)
            x, sample_info = self._sample(y, operator, model, cfg, generator)
        info.update(adapt_info)
        info.update(sample_info, stop_reason="steps")
        return x, info

    @staticmethod
    def _sample(y, operator, model, cfg, generator):
        return guided_ddpm_sample(model, y, operator, scale=cfg.guidance_scale, steps=cfg.steps,
                                  generator=generator, scale_mode=cfg.guidance_mode)


register(GuidedDiffusion("gd", None))
register(GuidedDiffusion("ia_y", "y"))
register(GuidedDiffusion("adir", "neighbours"))
