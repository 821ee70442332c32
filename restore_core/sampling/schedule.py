"""The DDPM noise schedule and its respacing (pure tensor arithmetic, no model).

Owns ``NoiseSchedule``; imports only torch/numpy and ``restore_core.errors``.

``NoiseSchedule`` keeps ᾱ (float64) on a subsequence τ_0 < τ_1 < … of the training
timesteps 0..T−1. For the full chain the subsequence is 0..T−1 and the derived β equal the
scheduler's own (ADIR eq. 2-3: α_t = 1 − β_t, ᾱ_t = ∏ α_s).

``respace(n)`` keeps n evenly spaced timesteps, τ_i = round(i·(T−1)/(n−1)), exactly what
guided-diffusion's ``space_timesteps(T, [n])`` (one section) picks, and recomputes every
derived quantity on that subsequence so that it is a valid DDPM of its own (as
guided-diffusion's ``SpacedDiffusion``):

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
        acp = torch.as_tensor(alphas_cumprod).to(torch.float64)
        return cls(acp, torch.arange(len(acp)), len(acp))

    @classmethod
    def from_scheduler(cls, scheduler) -> "NoiseSchedule":
        """From a diffusers scheduler object: ᾱ = cumprod(1 − β) recomputed in float64
        from its β (diffusers keeps ᾱ in float32)."""
        return cls.from_alphas_cumprod(torch.cumprod(1.0 - torch.as_tensor(scheduler.betas).double(), 0))

    @classmethod
    def from_scheduler_config(cls, config: dict) -> "NoiseSchedule":
        """From a diffusers ``scheduler_config.json`` dict (betas computed by diffusers)."""
        from diffusers import DDPMScheduler

        return cls.from_scheduler(DDPMScheduler.from_config(dict(config)))

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def is_full(self) -> bool:
        return len(self) == self.num_train_timesteps

    def respace(self, n_steps: int) -> "NoiseSchedule":
        """Keep ``n_steps`` evenly spaced timesteps of the full chain (see module doc)."""
        T = self.num_train_timesteps
        if not isinstance(n_steps, (int, np.integer)) or not 1 <= n_steps <= T:
            raise ConfigError(f"bad value for steps: {n_steps!r}; accepted: an integer in 1..{T}")
        if n_steps == len(self):
            return self
        if not self.is_full:
            raise ConfigError("respacing an already respaced schedule is not supported; respace the full one")
        idx = np.unique(np.round(np.linspace(0, T - 1, n_steps)).astype(np.int64))
        idx = torch.from_numpy(idx)
        return NoiseSchedule(self.alphas_cumprod[idx], idx, T)

    def full(self) -> "NoiseSchedule":
        """This schedule, which must be the full training chain (ConfigError otherwise)."""
        if not self.is_full:
            raise ConfigError("expected the full training schedule, got a respaced one")
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
        """β̃_i; β̃_0 = 0 (the last reverse step is deterministic)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        """log β̃ with the first entry (log 0) replaced by log β̃_1, as guided-diffusion."""
        pv = self.posterior_variance
        return torch.log(torch.cat([pv[1:2], pv[1:]])) if len(pv) > 1 else torch.log(self.betas)
