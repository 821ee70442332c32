"""ADIR's guided DDPM sampling for y = A x + e (ADIR, Algorithm 1, eq. 16-17).

Owns ``guided_ddpm_sample`` and the guidance-scale defaults; imports the model wrapper,
the schedule and ``restore_core.progress`` (each step is one unit of the tracked row's
``sampling`` stage), never adaptation or jobs code.

For i = n−1 … 0 over the (possibly respaced, ``restore_core.sampling.schedule``) chain:

    ε̂, Σ̂ ← ε_θ(x_t, t), Σ_θ(x_t, t)                         (line 3)
    μ̂ ← (x_t − β_t/√(1−ᾱ_t) · ε̂) / √α_t                     (line 4, eq. 5)
    y_t ← √ᾱ_t · y + √(1−ᾱ_t) · A ε̂                          (line 5, eq. 16)
    g ← −2 Aᵀ(A μ̂ − y_t)                                      (line 6, eq. 17)
    x_{t−1} ~ N(μ̂ + s Σ̂ g, Σ̂), with no noise at the last step (line 7)

Σ̂ is β̃_t for a 3-channel ε-model, the learned range for a 6-channel one
(``DiffusionModel.eps_and_logvar``). Noise is drawn on the CPU from the caller's
``torch.Generator`` (or one generator per image), so a seed fixes the output on a device.

Clipping (documented deviation, as guided-diffusion's ``clip_denoised=True`` that the
ADIR code builds on): with ``clip_denoised=True`` (default) line 4 is evaluated in its
equivalent posterior-mean form μ̂ = c₀·clamp(x̂₀, −1, 1) + c_t·x_t with
x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t (eq. 14); without the clamp both forms are identical.
The returned x̂₀ is clamped to [−1, 1]. ``clip_denoised=False`` gives line 4 verbatim.

Scale — mind it. s·Σ̂·g is a gradient step on ‖A x − y_t‖² with gain 2·s·Σ̂_t·λ along an
eigenvector of AᵀA with eigenvalue λ. λ_max(AᵀA) is ≈ 1/f² for a sum-to-one SR filter of
factor f (sr4: 0.063, sr8: 0.016) and 1 for blur/inpainting/cs (colorize: 1/3), so one
paper-style s is weak for one operator and divergent for another (a step with
2·s·Σ̂·λ_max > 2 amplifies the residual: NaN at s = 1000, 100 steps). Two modes:

* ``scale_mode="paper"``: s exactly as Algorithm 1 (Table 1: s = 10).
* ``scale_mode="normalized"`` (default): s_eff = s / λ_max(AᵀA) (``operator.lambda_max()``,
  power method), so the gain is 2·s·Σ̂_t along the top eigenvector for every operator, and
  the per-step factor s·Σ̂_t is capped at 1/2 (gain 1: one exact projection onto
  {A x = y_t} along that eigenvector, never an overshoot). Without the cap a step with
  2·s·Σ̂_t > 2 overshoots: max Σ̂ is 0.02 with T = 1000 steps but ≈ 0.18 / 0.33 with 100 /
  50 respaced steps, so any fixed s would be stable at one step count and divergent at
  another. Where s·Σ̂_t < 1/2 (all of a 1000-step chain for s ≤ 25) this is exactly
  Algorithm 1 with s/λ_max in place of s.

Per-task defaults (``DEFAULT_SCALES``, used when ``scale=None``) were chosen by measuring
the data consistency ‖A x̂ − y‖/√m on the 0–255 scale (``metrics.consistency``): the smallest s
of the grid whose consistency is within 10 % of the noise level (the discrepancy
principle). The table is in the README ("Guidance scale per task"); ``adir bench core
--scales`` redoes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from restore_core import progress
from restore_core.errors import ConfigError, InputError, SamplingDivergedError
from restore_core.models.pixel_unet import DiffusionModel

SCALE_MODES = ("normalized", "paper")
PAPER_SCALE = 10.0  # Table 1
# Normalized-mode defaults: the smallest s of the grid {1, 2, 4, 8, 16, 32} whose data
# consistency at 100 steps is within 10 % of the ground truth's own (the noise level:
# the discrepancy principle — fitting y closer than its noise only fits the noise).
DEFAULT_SCALES: dict[str, dict[str, float]] = {
    "normalized": {"sr2": 8.0, "sr4": 4.0, "sr8": 2.0, "deblur_box5": 16.0, "deblur_gauss": 8.0,
                   "colorize": 4.0, "inpaint": 16.0, "cs": 8.0, "denoise": 16.0},
    "paper": {},  # every task: PAPER_SCALE, as Table 1
}
FALLBACK_SCALE = 8.0  # normalized mode, a task without a measured default

def default_scale(task: str, scale_mode: str = "normalized") -> float:
    """The default guidance scale s for ``task`` (an operator name) in ``scale_mode``."""
    if scale_mode not in SCALE_MODES:
        raise ConfigError(f"bad guidance_mode {scale_mode!r}; accepted: {', '.join(SCALE_MODES)}")
    fallback = PAPER_SCALE if scale_mode == "paper" else FALLBACK_SCALE
    return DEFAULT_SCALES[scale_mode].get(task, fallback)


def _noise(shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """N(0, I) on the CPU: one generator for the batch, or one per image (so a batch equals
    the images sampled one by one with their own generators)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    return torch.cat([torch.randn((1,) + tuple(shape[1:]), generator=g) for g in generator])


def _check_finite(t: torch.Tensor, what: str, step: int, n: int, schedule, s: float, mode: str) -> None:
    if not torch.isfinite(t).all():
        raise SamplingDivergedError(
            f"NaN/inf in {what} at sampling step {step} of {n} (t={int(schedule.timesteps[n - step])}); "
            f"lower the guidance scale (s={s:g}, mode={mode})")


def guided_ddpm_sample(
    model: DiffusionModel,
    y: torch.Tensor | None,
    operator=None,
    scale: float | None = None,
    steps: int | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    scale_mode: str = "normalized",
    callback: Callable[[int, torch.Tensor], None] | None = None,
    *,
    image_shape: tuple[int, int, int] | None = None,
    batch_size: int = 1,
    clip_denoised: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Sample x̂₀ (B, C, H, W) in [−1, 1] for measurements ``y`` (one per image) by Algorithm 1.

    ``steps`` < T respaces the chain (``NoiseSchedule.respace``); None runs all T steps.
    ``scale=None`` takes ``default_scale(operator.name, scale_mode)``. With ``scale=0`` or
    no operator this is the plain unconditional DDPM sampler (then ``image_shape`` and
    ``batch_size`` give the output shape); with s > 0 and an unadapted model it is the
    paper's "GD" baseline. ``callback(i, x)`` is called after every step.
    Raises ``SamplingDivergedError`` naming the step when x becomes NaN/inf.
    """
    if scale_mode not in SCALE_MODES:
        raise ConfigError(f"bad guidance_mode {scale_mode!r}; accepted: {', '.join(SCALE_MODES)}")
    if operator is not None and y is None:
        raise InputError("guided sampling with an operator needs the measurement y")
    if operator is not None:
        s = default_scale(operator.name, scale_mode) if scale is None else float(scale)
        shape = (y.shape[0],) + tuple(operator.image_shape)
    else:
        if image_shape is None:
            raise ConfigError("unconditional sampling needs image_shape=(C, H, W)")
        s = 0.0
        shape = (batch_size,) + tuple(image_shape)
    if not s >= 0:
        raise ConfigError(f"bad guidance scale {s}; accepted: a number >= 0")
    if generator is not None and not isinstance(generator, torch.Generator) and len(generator) != shape[0]:
        raise ConfigError(f"got {len(generator)} generators for a batch of {shape[0]}")
    guided = s > 0
    schedule = model.schedule.respace(steps or model.schedule.num_train_timesteps)
    n = len(schedule)
    lam = operator.lambda_max() if guided and scale_mode == "normalized" else 1.0
    acp, acp_prev = schedule.alphas_cumprod.tolist(), schedule.alphas_cumprod_prev.tolist()
    betas, alphas = schedule.betas.tolist(), schedule.alphas.tolist()
    device = model.device
    if guided:
        y = y.to(device=device, dtype=torch.float32)
    x = _noise(shape, generator).to(device)
    start = time.perf_counter()
    progress.report("sampling", 0, n)
    with torch.no_grad():
        for i in reversed(range(n)):
            eps, log_var = model.eps_and_logvar(x, i, schedule)  # line 3
            _check_finite(eps, "ε̂", n - i, n, schedule, s, scale_mode)
            a_bar, a_prev, beta = acp[i], acp_prev[i], betas[i]
            if clip_denoised:  # line 4 in posterior-mean form with x̂₀ clamped (module doc)
                x0 = ((x - (1 - a_bar) ** 0.5 * eps) / a_bar**0.5).clamp(-1, 1)
                mu = (beta * a_prev**0.5 / (1 - a_bar)) * x0 + ((1 - a_prev) * alphas[i] ** 0.5 / (1 - a_bar)) * x
            else:  # line 4 verbatim (eq. 5)
                mu = (x - beta / (1 - a_bar) ** 0.5 * eps) / alphas[i] ** 0.5
            if guided:
                y_t = a_bar**0.5 * y + (1 - a_bar) ** 0.5 * operator.A(eps)  # line 5, eq. 16
                g = -2 * operator.A_adjoint(operator.A(mu) - y_t)  # line 6, eq. 17
                step = log_var.exp() * s if scale_mode == "paper" else (log_var.exp() * s).clamp(max=0.5) / lam
                mu = mu + step * g  # line 7 mean: μ̂ + s Σ̂ g (normalized: capped, see module doc)
            x = mu + (0.5 * log_var).exp() * _noise(shape, generator).to(device) if i > 0 else mu
            _check_finite(x, "x", n - i, n, schedule, s, scale_mode)
            progress.report("sampling", n - i, n)
            if callback is not None:
                callback(i, x)
    info = {"steps": n, "guidance_scale": s, "guidance_mode": scale_mode,
            "seconds_sample": time.perf_counter() - start}
    return x.clamp(-1, 1), info
