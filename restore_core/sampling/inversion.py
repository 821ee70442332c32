"""DDIM inversion: the x_T that the deterministic DDIM of ``sampling.ddim`` maps to a given x₀.

Owns ``ddim_invert``; imports only torch and ``sampling.ddim``. SHRED (SHRED,
Algorithm 1) and DIIP (eq. 2) optimise x_T of f = ``ddim_decode``; the
inversion answers two questions for them: can f's range hold a photo at all (invert the
ground truth, regenerate, measure PSNR: ``adir bench inversion``), and where should the
optimisation start (the inversion of pinv(y) or of y sits near the answer, a random x_T
far from it).

One decode step (DDIM, σ_t = 0, ``ddim_decode``) from x_t to x_prev is

    x_prev = √ᾱ_prev · (x_t − √(1−ᾱ_t) ε(x_t, t)) / √ᾱ_t + √(1−ᾱ_prev) · ε(x_t, t),

so given x_prev the inverse step solves the implicit equation

    x_t = √ᾱ_t · (x_prev − √(1−ᾱ_prev) ε) / √ᾱ_prev + √(1−ᾱ_t) · ε,   ε = ε(x_t, t).

``fixed_point = 0`` is the usual approximate DDIM inversion (ε evaluated at x_prev);
every further fixed-point iteration re-evaluates ε at the current x_t estimate, which
makes the inversion exact when it converges (as in exact-inversion variants of DDIM).
"""

from __future__ import annotations

import torch

from restore_core.sampling.ddim import ddim_timesteps


@torch.no_grad()
def ddim_invert(model, x0: torch.Tensor, skip: int, fixed_point: int = 3) -> torch.Tensor:
    """x_T with ``ddim_decode(model, x_T, ddim_timesteps(T, skip)) ≈ x0`` (see module doc)."""
    timesteps = ddim_timesteps(model.schedule.num_train_timesteps, skip)[::-1]  # ascending
    acp = model.schedule.alphas_cumprod.tolist()
    x, a_prev = x0, 1.0
    for t in timesteps:
        a_t = acp[t]
        x_t = x
        for _ in range(fixed_point + 1):
            eps = model.eps(x_t, t)
            x_t = a_t**0.5 * (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5 + (1 - a_t) ** 0.5 * eps
        x, a_prev = x_t, a_t
    return x
