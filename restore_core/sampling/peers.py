"""The field's standard samplers on our prior: DDRM, DiffPIR and DPS through deepinv.

Owns ``SAMPLERS``, ``PriorDenoiser``, ``check_sampler`` and ``peer_sample``; imports
torch, deepinv (lazily), the schedule-free model wrapper, ``svd_physics`` and
``restore_core.progress``; never the adaptation or jobs. ``sampler=alg1`` stays ADIR's
Algorithm 1 (``sampling.alg1``); the other choices run deepinv 0.5.0's implementations
unchanged:

* ``ddrm``: Kawar et al., "Denoising Diffusion Restoration Models" (η = 0.85, η_b = 1),
  over ``svd_physics.decompose(operator)``;
* ``diffpir``: Zhu et al., "Denoising Diffusion Models for Plug-and-Play Image
  Restoration" (ζ, λ below), an HQS with the closed-form SVD proximal step;
* ``dps``: Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse
  Problems", the VP SDE with the DDPM solver and ``weight`` below.

The denoiser (deepinv's convention, ``deepinv.models.Denoiser``): ``D(x, σ)`` takes
x = x₀ + σ n on the [0, 1] scale. On the model's [−1, 1] scale that is u = 2x − 1 =
u₀ + 2σ n, i.e. the DDPM state x_t = √ᾱ u with √((1 − ᾱ)/ᾱ) = 2σ, so
ᾱ = 1/(1 + 4σ²) (ADIR eq. 2-3 with the ratio of the variance-preserving forward process).
The ε-model is evaluated at the training timestep whose ratio √((1 − ᾱ_t)/ᾱ_t) is
nearest to 2σ (log scale), and Tweedie's formula (ADIR eq. 14) gives
x̂₀ = (x_t − √(1 − ᾱ) ε̂)/√ᾱ = u − 2σ ε̂, clamped to [−1, 1] (as deepinv's own
``DiffUNet``) and returned on [0, 1]; σ = 0 returns x. The model is read through
``DiffusionModel.eps`` at every call, so a LoRA adapter attached to its UNet
(``restore_core.adaptation``) is what the sampler samples with: adaptation runs over any
sampler (ADIR §3: it "can be incorporated into any conditional sampling scheme").

Ranges: the measurement y = A x + e on [−1, 1] becomes y₀₁ = (y + A·1)/2 = A x₀₁ + e/2
on [0, 1] (A is linear), and σ_y becomes σ_255/255. The samplers need σ_y: the config's
``noise_sigma`` (0–255), or, when it is negative, ``estimate_noise_sigma(y)``.

Sampling noise: DDRM and DiffPIR draw from the global torch RNG, DPS from its solver's
generator. ``peer_sample`` seeds both from one integer drawn from the caller's generator
inside ``torch.random.fork_rng``, so one row seed fixes the output and the caller's
global RNG is untouched. ``steps`` is the number of denoiser evaluations: DDRM runs at
the σ of the respaced schedule's timesteps (``NoiseSchedule.respace``), DiffPIR and DPS
use ``steps`` iterations of their own schedules. Each denoiser call of ``peer_sample`` is
one unit of the tracked row's ``sampling`` stage (``restore_core.progress``).
"""

from __future__ import annotations

import itertools
import time

import torch

from restore_core import progress
from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError, InputError

SAMPLERS = ("alg1", "ddrm", "diffpir", "dps")
PEERS = SAMPLERS[1:]
DDRM_ETA, DDRM_ETAB = 0.85, 1.0  # deepinv defaults (the DDRM paper's)
DIFFPIR_ZETA, DIFFPIR_LAMBDA = 0.1, 7.0  # deepinv defaults
MIN_NOISE_01 = 0.5 / 255  # DiffPIR's ρ_t = λσ²/σ_t² needs σ_y > 0


def sigma_ratio(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """√((1 − ᾱ)/ᾱ): the noise-to-signal ratio of x_t on the [−1, 1] scale (= 2σ)."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


class PriorDenoiser(torch.nn.Module):
    """Our ε-prior as a deepinv denoiser D(x, σ) on [0, 1] by Tweedie (module doc).

    ``clip=False`` returns the unclamped x̂₀ (still mapped to [0, 1])."""

    def __init__(self, model, clip: bool = True):
        super().__init__()
        self.model = model  # a DiffusionModel (not an nn.Module: its UNet is not re-registered here)
        self.clip = clip
        self.log_ratio = sigma_ratio(model.schedule.full().alphas_cumprod).log()

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose ratio is nearest 2σ (log scale), per image."""
        target = (2 * sigma.double()).clamp_min(1e-12).log()
        return (self.log_ratio[None, :] - target[:, None].cpu()).abs().argmin(dim=1)

    def forward(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0]).cpu()
        out = x.clone()
        live = sigma > 0
        if not live.any():
            return out
        s = sigma[live]
        a_bar = (1.0 / (1.0 + 4.0 * s**2)).to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        u = 2 * x[live] - 1
        eps = self.model.eps(a_bar.sqrt() * u, self.timestep(s).to(self.model.device))
        x0 = u - (2 * s).to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1) * eps
        if self.clip:
            x0 = x0.clamp(-1, 1)
        out[live] = (x0 + 1) / 2
        return out


def estimate_noise_sigma(y: torch.Tensor) -> float:
    """σ of white Gaussian noise in y (0–255 scale) by the median absolute deviation of
    its finest diagonal Haar coefficients (Donoho & Johnstone, "Ideal spatial adaptation
    by wavelet shrinkage"); image content biases it upwards on small, detailed y, and the
    zeros of a masked y (inpaint, cs) bias it downwards."""
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    if h == 0 or w == 0:
        return 0.0
    z = y[..., :h, :w].double()
    hh = (z[..., 0::2, 0::2] - z[..., 0::2, 1::2] - z[..., 1::2, 0::2] + z[..., 1::2, 1::2]) / 2
    return float(hh.abs().median() / 0.6745) * 255.0 / 2.0


def check_sampler(sampler: str, operator):
    """``ConfigError`` before any work when ``sampler`` cannot run ``operator`` (unknown
    sampler; no operator; a peer on an operator without an SVD, ``svd_physics``). Returns
    the operator's SVD structure for ``peer_sample`` (None for alg1)."""
    from restore_core.sampling.svd_physics import decompose

    if sampler not in SAMPLERS:
        raise ConfigError(f"bad value for sampler: {sampler!r}; accepted: {', '.join(SAMPLERS)}")
    if sampler == "alg1":
        return None
    if operator is None:
        raise ConfigError(f"sampler {sampler!r} needs a known degradation operator; the task is blind")
    return decompose(operator)


def _seed(generator) -> int:
    """One integer from the caller's generator, advancing it as a sample would (the second
    of two draws: the first is the adaptation's seed, ``methods.adir``, so the two differ)."""
    if generator is None:
        return 1
    first = generator[0] if isinstance(generator, (list, tuple)) else generator
    return int(torch.randint(0, 2**31 - 1, (2,), generator=first)[1])


def _build(sampler: str, denoiser, model, steps: int, sigma01: float, seed: int, device, dps_weight: float):
    """The deepinv sampler object for ``sampler`` (settings in the module constants, and DPS's weight)."""
    import deepinv

    if sampler == "ddrm":
        ratios = sigma_ratio(model.schedule.respace(steps).alphas_cumprod).flip(0)  # descending
        return deepinv.sampling.DDRM(denoiser, sigmas=(ratios / 2).numpy(), eta=DDRM_ETA, etab=DDRM_ETAB)
    if sampler == "diffpir":
        return deepinv.sampling.DiffPIR(denoiser, deepinv.optim.data_fidelity.L2(), sigma=sigma01,
                                        max_iter=steps, zeta=DIFFPIR_ZETA, lambda_=DIFFPIR_LAMBDA, device=device)
    rng = torch.Generator(device=device).manual_seed(seed)
    return deepinv.sampling.DPS(denoiser, num_steps=steps, weight=dps_weight, device=device, rng=rng,
                                dtype=torch.float32)


def peer_sample(model, y: torch.Tensor, operator, sampler: str, steps: int | None = None,
                noise_sigma: float = -1.0, generator=None, structure=None,
                dps_weight: float = RestoreConfig.dps_weight) -> tuple[torch.Tensor, dict]:
    """Sample x̂ (B, C, H, W) in [−1, 1] for ``y`` with the deepinv ``sampler`` on ``model``.

    ``noise_sigma`` is σ_y on the 0–255 scale; < 0 estimates it from y. ``structure``: the
    operator's ``check_sampler`` result, when the caller has it already. ``dps_weight``: DPS's
    guidance step (``RestoreConfig.dps_weight``; deepinv's default 1.0 barely guides). Returns (x̂, info)
    with ``steps``, ``sampler``, ``noise_sigma_assumed`` and ``seconds_sample``.
    """
    from restore_core.sampling.svd_physics import to_physics

    if sampler not in PEERS:
        raise ConfigError(f"bad value for sampler: {sampler!r}; accepted peers: {', '.join(PEERS)}")
    if operator is None or y is None:
        raise InputError(f"sampler {sampler!r} needs the operator and the measurement y")
    steps = int(steps or model.schedule.num_train_timesteps)
    sigma255 = estimate_noise_sigma(y) if noise_sigma is None or noise_sigma < 0 else float(noise_sigma)
    sigma01 = max(sigma255 / 255.0, MIN_NOISE_01)
    device = model.device
    structure = structure or check_sampler(sampler, operator)
    physics = to_physics(structure, operator.image_shape, sigma01, device=device)
    y = y.to(device=device, dtype=torch.float32)
    ones = torch.ones((1,) + tuple(operator.image_shape), device=device)
    y01 = (y + operator.A(ones)) / 2
    denoiser = PriorDenoiser(model)
    calls = itertools.count(1)  # the tracked row's sampling steps: denoiser calls (DPS skips its last)
    denoiser.register_forward_hook(lambda *_: progress.report("sampling", min(next(calls), steps), steps))
    seed = _seed(generator)
    start = time.perf_counter()
    progress.report("sampling", 0, steps)
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        runner = _build(sampler, denoiser, model, steps, sigma01, seed, device, dps_weight)
        if sampler == "dps":
            x01 = runner(y01, physics, x_init=(y.shape[0],) + tuple(operator.image_shape), seed=seed)
        else:
            x01 = runner(y01, physics)
    x = (2 * x01.detach().float() - 1).clamp(-1, 1)
    if not torch.isfinite(x).all():
        from restore_core.errors import SamplingDivergedError

        raise SamplingDivergedError(f"sampler {sampler!r} produced NaN/inf after {steps} steps")
    progress.report("sampling", steps, steps)
    info = {"steps": steps, "sampler": sampler, "noise_sigma_assumed": sigma255,
            "seconds_sample": time.perf_counter() - start}
    return x, info

