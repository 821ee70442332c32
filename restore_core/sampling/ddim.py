"""Deterministic DDIM (η = 0) as a differentiable generator x_T ↦ x₀ (SHRED, DIIP).

Owns ``ddim_timesteps``, ``ddim_decode`` and ``ddim_sample``; imports only torch. Used by
SHRED (Algorithm 1: f(x_T) is a DDIM with skip δt) and DIIP (the
frozen generator g(z)), which optimise x_T through it.

Timesteps: T−1, T−1−δt, T−1−2δt, … ≥ 0 (``ddim_timesteps(1000, 100)`` gives 999, 899, …,
99: ten steps), then the last step goes to x₀ (ᾱ_prev := 1). Each step is

    x̂₀ = (x_t − √(1−ᾱ_t) ε_θ(x_t, t)) / √ᾱ_t
    x_prev = √ᾱ_prev · x̂₀ + √(1−ᾱ_prev) · ε_θ(x_t, t)        (DDIM with σ_t = 0)

No clamping, so the map stays smooth; callers clamp the final image if they need to.

Gradient modes (``GRAD_MODES``):

* ``"full"``: differentiate through every UNet call (as the SHRED paper does);
* ``"skip-unet"``: UNet calls under ``torch.no_grad`` and ε treated as a constant, so the
  gradient reaches x_T only through the DDIM arithmetic (as the public BIRD code does);
  much cheaper in memory and time;
* ``"none"``: no graph at all (plain deterministic sampling).
"""

from __future__ import annotations

import contextlib

import torch

from restore_core.errors import ConfigError

GRAD_MODES = ("full", "skip-unet", "none")


def ddim_timesteps(num_train_timesteps: int, skip: int) -> list[int]:
    """The DDIM timesteps T−1, T−1−skip, … ≥ 0, in sampling order."""
    if not isinstance(skip, int) or not 1 <= skip <= num_train_timesteps:
        raise ConfigError(f"bad DDIM skip {skip!r}; accepted: an integer in 1..{num_train_timesteps}")
    return list(range(num_train_timesteps - 1, -1, -skip))


def ddim_decode(model, x_T: torch.Tensor, timesteps: list[int], unet_grad: bool = True) -> torch.Tensor:
    """Run deterministic DDIM from ``x_T`` over ``timesteps`` (descending) down to x₀.

    ``unet_grad=False`` wraps the UNet calls in ``no_grad`` but keeps the arithmetic
    differentiable in x_T (BIRD). Learned-variance models: only the ε channels are used.
    """
    acp = model.schedule.alphas_cumprod.tolist()  # full training schedule, index = timestep
    x = x_T
    for k, t in enumerate(timesteps):
        a_t = acp[t]
        a_prev = acp[timesteps[k + 1]] if k + 1 < len(timesteps) else 1.0
        with contextlib.nullcontext() if unet_grad else torch.no_grad():
            eps = model.eps(x, t)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x


def ddim_sample(model, x_T: torch.Tensor, skip: int = 100, grad: str = "full") -> torch.Tensor:
    """x₀ = f(x_T): DDIM with skip ``skip`` over the model's T steps, gradient mode ``grad``."""
    if grad not in GRAD_MODES:
        raise ConfigError(f"bad DDIM grad mode {grad!r}; accepted: {', '.join(GRAD_MODES)}")
    timesteps = ddim_timesteps(model.schedule.num_train_timesteps, skip)
    with torch.no_grad() if grad == "none" else contextlib.nullcontext():
        return ddim_decode(model, x_T, timesteps, unet_grad=grad == "full")
