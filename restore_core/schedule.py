"""The DDPM noise schedule and its respacing (pure tensor arithmetic, no model).

``NoiseSchedule`` keeps ᾱ (float64) on a subsequence of the training timesteps. For the
full chain (T = 1000) the subsequence is 0..T−1. ``respace(n)`` keeps n evenly spaced
timesteps (rounded ``linspace(0, T−1, n)``, as guided-diffusion's ``space_timesteps``
with one section) and recomputes every derived quantity on that subsequence
(paper 000 eq. 7 with the subsequence's own β):

    β_i = 1 − ᾱ_{τ_i} / ᾱ_{τ_{i−1}}   (ᾱ_{τ_{−1}} := 1),   α_i = 1 − β_i,
    β̃_i = β_i (1 − ᾱ_{τ_{i−1}}) / (1 − ᾱ_{τ_i})          (posterior variance).

The UNet is always called with the original index τ_i (``timesteps[i]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from restore_core.errors import ConfigError


@dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # ᾱ on the subsequence, float64, ascending timesteps
    timesteps: torch.Tensor  # original indices τ_i fed to the model (int64)
    num_train_timesteps: int

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor) -> "NoiseSchedule":
        acp = alphas_cumprod.to(torch.float64)
        return cls(acp, torch.arange(len(acp)), len(acp))

    @classmethod
    def from_scheduler(cls, scheduler) -> "NoiseSchedule":
        """From a diffusers scheduler (uses its ``alphas_cumprod``)."""
        return cls.from_alphas_cumprod(torch.as_tensor(scheduler.alphas_cumprod))

    def __len__(self) -> int:
        return len(self.timesteps)

    def respace(self, n_steps: int) -> "NoiseSchedule":
        """Keep ``n_steps`` evenly spaced timesteps of the full chain."""
        T = self.num_train_timesteps
        if not 1 <= n_steps <= T:
            raise ConfigError(f"steps must be in 1..{T}, got {n_steps}")
        if n_steps == len(self):
            return self
        full = self.full()
        idx = torch.from_numpy(np.unique(np.round(np.linspace(0, T - 1, n_steps)).astype(np.int64)))
        return NoiseSchedule(full.alphas_cumprod[idx], idx, T)

    def full(self) -> "NoiseSchedule":
        if len(self) != self.num_train_timesteps:
            raise ConfigError("respacing an already respaced schedule is not supported")
        return self

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def betas(self) -> torch.Tensor:
        return 1.0 - self.alphas_cumprod / self.alphas_cumprod_prev

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def posterior_variance(self) -> torch.Tensor:
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        """log β̃ with the first entry (β̃_0 = 0) replaced by β̃_1, as guided-diffusion."""
        pv = self.posterior_variance
        return torch.log(torch.cat([pv[1:2], pv[1:]])) if len(pv) > 1 else torch.log(self.betas)
