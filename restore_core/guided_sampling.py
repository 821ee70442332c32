"""ADIR's guided DDPM sampling for y = A x + e (paper 000, Algorithm 1, eq. 16-17).

For t = T … 1 (or a respaced subsequence, ``restore_core.schedule``):

    ε̂, Σ̂ ← ε_θ(x_t, t), Σ_θ(x_t, t)                         (line 3)
    μ̂ ← (x_t − β_t/√(1−ᾱ_t) · ε̂) / √α_t                     (line 4)
    y_t ← √ᾱ_t · y + √(1−ᾱ_t) · A ε̂                          (line 5, eq. 16)
    g ← −2 Aᵀ(A μ̂ − y_t)                                      (line 6, eq. 17)
    x_{t−1} ~ N(μ̂ + s Σ̂ g, Σ̂), with no noise at the last step (line 7)

``clip_denoised=True`` (default) computes μ̂ from x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t clamped
to [−1, 1], as guided-diffusion does when sampling; without the clamp the two forms of
line 4 are identical.

Scale. The guidance step s Σ̂ g is a gradient step on ‖A x − y_t‖² with gain
2 s Σ̂_t λ(AᵀA). Σ̂_t spans three orders of magnitude over the chain and λ_max(AᵀA)
spans 1/64 (sr8) to 1 (inpainting), so one paper-style s is weak for one operator and
divergent for another (2 s Σ̂ λ_max ≥ 2 diverges). Two parametrisations:

* ``scale_mode="paper"``: s exactly as in Algorithm 1 (Table 1: s = 10).
* ``scale_mode="normalized"`` (default): s_eff = s / (2 Σ̂_t λ_max(AᵀA)), so the
  step along the top eigenvector of AᵀA has the same gain s at every t for every
  operator: s = 1 is one full projection step onto {A x = y_t} in that direction,
  0 < s < 2 is stable. The default is s = 1 (``DEFAULT_SCALE``); see the README's
  consistency table for the measurement behind it.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from restore_core.diffusion_model import DiffusionModel
from restore_core.errors import ConfigError, SamplingDivergedError

DEFAULT_SCALE = {"normalized": 1.0, "paper": 10.0}


def guided_ddpm_sample(
    model: DiffusionModel,
    y: torch.Tensor | None,
    operator=None,
    scale: float | None = None,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    scale_mode: str = "normalized",
    image_shape: tuple[int, int, int] | None = None,
    clip_denoised: bool = True,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Sample x̂₀ for a batch of measurements ``y`` (one per image) with Algorithm 1.

    With ``scale=0`` or ``operator=None`` this is the plain unconditional DDPM sampler;
    with s > 0 and an unadapted model it is the paper's "GD" baseline. ``image_shape``
    (C, H, W) is only needed when there is no operator. The same generator state gives
    the same output; noise is drawn on the CPU so results agree across devices.
    """
    if scale_mode not in DEFAULT_SCALE:
        raise ConfigError(f"bad scale_mode {scale_mode!r}; accepted: {', '.join(DEFAULT_SCALE)}")
    s = DEFAULT_SCALE[scale_mode] if scale is None else float(scale)
    guided = operator is not None and y is not None and s > 0
    schedule = model.schedule.respace(steps or len(model.schedule))
    if operator is not None:
        shape = (y.shape[0],) + tuple(operator.image_shape)
    elif image_shape is not None:
        shape = ((y.shape[0] if y is not None else 1),) + tuple(image_shape)
    else:
        raise ConfigError("guided_ddpm_sample needs an operator or an image_shape")
    device = model.device
    lam = operator.lambda_max() if guided and scale_mode == "normalized" else 1.0
    acp, acp_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
    betas, alphas = schedule.betas, schedule.alphas
    x = torch.randn(shape, generator=generator).to(device)
    y = y.to(device) if y is not None else None
    start = time.perf_counter()
    with torch.no_grad():
        for i in reversed(range(len(schedule))):
            eps, log_var = model.predict(x, i, schedule)
            a_bar, a_bar_prev = acp[i].item(), acp_prev[i].item()
            if clip_denoised:
                x0 = ((x - (1 - a_bar) ** 0.5 * eps) / a_bar**0.5).clamp(-1, 1)
                mu = (betas[i].item() * a_bar_prev**0.5 / (1 - a_bar)) * x0 + (
                    (1 - a_bar_prev) * alphas[i].item() ** 0.5 / (1 - a_bar)) * x
            else:
                mu = (x - betas[i].item() / (1 - a_bar) ** 0.5 * eps) / alphas[i].item() ** 0.5
            var = log_var.exp()
            if guided:
                y_t = a_bar**0.5 * y + (1 - a_bar) ** 0.5 * operator.A(eps)
                g = -2 * operator.A_adjoint(operator.A(mu) - y_t)
                if scale_mode == "paper":
                    mu = mu + s * var * g
                else:  # s_eff = s / (2 Σ̂ λ_max): the Σ̂ cancels
                    mu = mu + (s / (2 * lam)) * g
            if i > 0:
                x = mu + (0.5 * log_var).exp() * torch.randn(shape, generator=generator).to(device)
            else:
                x = mu
            if not torch.isfinite(x).all():
                raise SamplingDivergedError(
                    f"NaN/inf while sampling at step {len(schedule) - i} of {len(schedule)} "
                    f"(t={int(schedule.timesteps[i])}); lower the guidance scale (s={s}, mode={scale_mode})")
            if callback is not None:
                callback(i, x)
    info = {"steps": len(schedule), "guidance_scale": s, "guidance_mode": scale_mode,
            "seconds_sample": time.perf_counter() - start}
    return x.clamp(-1, 1), info
