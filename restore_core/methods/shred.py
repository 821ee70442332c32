"""SHRED: restoration by optimising only the initial noise of a DDIM.

Algorithm 1 / eq. 13-16: f is the deterministic DDIM (σ_t = 0) with skip δt
(``restore_core.sampling.ddim``; δt = 100 → 10 steps of a T = 1000 model), and Adam minimises
L_IR(x_T) = ‖y − H(f(x_T))‖ (eq. 15, the plain norm, per image) over x_T only, so every
intermediate latent stays on the sampler's path. ``optimise_initial_noise`` is that loop;
DIIP (``restore_core.methods.diip``) reuses it with its own loss and stopping rules.

Settings (``cfg.shred``, defaults from appendix A unless noted): ``iters`` N = 100 (paper
50-200), ``lr`` 0.003 for SR / deblurring (A.2, A.3) and 0.01 for inpainting and compressed
sensing (A.4, A.5); ``grad``:

* ``full``: back-propagate through every UNet call of the unrolled DDIM (the paper);
* ``skip-unet``: UNet calls under no_grad (the public BIRD code). ε is then a constant
  and ∂x₀/∂x_T is a scalar (∏ √ᾱ_prev/√ᾱ_t), so each step is an Adam step along the
  image-space gradient Hᵀ(Hx − y): cheaper, but x₀ is no longer constrained to f's range
  through the gradient.

Deviations, both measured by ``adir bench inversion`` (numbers in the README):

* ``init = "pinv"`` (default; ``"noise"`` is Algorithm 1 line 1): x_T⁰ is the exact DDIM
  inversion (``sampling.inversion.ddim_invert``) of the baseline inverse A⁺y. The prior's
  10-step DDIM regenerates inverted photos almost exactly, so f's range holds them; but
  from N(0, I) a few dozen Adam steps at the paper's lr do not reach them at this scale
  (textured crops stay at flat colour fields), while f(x_T⁰) = A⁺y is a restoration from
  the first iterate. f is very sensitive near an inverted photo: the first Adam steps at
  the paper's rate (each coordinate moves by lr) throw the image far off, so from this
  start the default rate is ``PINV_LR_FACTOR`` × appendix A's.
* Stopping by the discrepancy principle (the paper's "N can be set by L_IR < ε" with
  ε = ``tau``·σ): each image keeps the *first* iterate whose RMS residual ‖y − H(x)‖/√m
  is at most τσ (fitting y further fits its noise), else its lowest-residual iterate;
  the loop stops once every image has met it. σ is ``cfg.noise_sigma`` (0–255), or the
  wavelet estimate from y when that is negative (``sampling.peers.estimate_noise_sigma``).
  ``loss_eps`` (RMS, [-1, 1] units) is a floor under ε; ``tau = 0`` and ``loss_eps = 0``
  give the plain lowest-residual run of N iterations.

Progress (``restore_core.progress``): each evaluation of the loop is one unit of the
tracked row's ``fitting`` stage (of ``iters``; a stop rule ends it early), for DIIP too.
The DDIM steps inside an evaluation are not reported: one unit is a whole f(x_T).

``sphere``: after every Adam step x_T is rescaled to the sphere of radius √(C·H·W), the
typical norm of N(0, I) samples (off by default: no gain in our measurements).

Blind deconvolution (``shred_blind``, eq. 17-19): H_θ is a depthwise convolution with a
``kernel_size``² kernel θ = softmax(logits) (normalised and non-negative by construction;
the paper uses Ren et al.'s kernel network instead), optimised jointly with x_T, logits
by Adam at ``kernel_lr``. The kernel starts as a narrow Gaussian (σ = 1 px).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from restore_core import progress
from restore_core.errors import MethodError, SamplingDivergedError
from restore_core.methods.base import base_info, register, require_linear_operator
from restore_core.operators import TASKS, sigma_to_model_range
from restore_core.sampling.ddim import ddim_decode, ddim_timesteps
from restore_core.sampling.inversion import ddim_invert
from restore_core.sampling.peers import estimate_noise_sigma

SHRED_TASKS = ("sr4",) + tuple(t for t in TASKS if t not in ("sr4", "jpeg", "denoise"))
BLIND_TASKS = ("deblur_gauss", "deblur_box5")  # operator given: only its size is used
LR_BY_TASK = {"inpaint": 0.01, "cs": 0.01}  # appendix A.4, A.5; every other task 0.003 (A.2, A.3)
DEFAULT_LR = 0.003
INITS = ("pinv", "noise")
PINV_LR_FACTOR = 0.1  # from the inverted A⁺y, the paper's rate wrecks the start in a few Adam steps
INVERT_FIXED_POINT = 6  # fixed-point iterations per inverted DDIM step (sampling.inversion)


def initial_noise(shape: tuple[int, ...], generator: torch.Generator | None, device, sphere: bool) -> torch.Tensor:
    """x_T ~ N(0, I) from ``generator`` (on the CPU for reproducibility), optionally on the sphere."""
    x = torch.randn(shape, generator=generator).to(device)
    return project_to_sphere(x) if sphere else x


def project_to_sphere(x: torch.Tensor) -> torch.Tensor:
    """Rescale each image of x to norm √(C·H·W)."""
    norms = x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return x * (math.sqrt(x[0].numel()) / norms)


def start_point(model, init: str, ref: torch.Tensor, skip: int, generator, sphere: bool = False) -> torch.Tensor:
    """x_T⁰: ``"noise"`` N(0, I) (Algorithm 1 line 1) or ``"pinv"`` the DDIM inversion of ``ref``."""
    if init == "noise":
        return initial_noise(tuple(ref.shape), generator, ref.device, sphere)
    if init != "pinv":
        raise MethodError(f"bad initialisation {init!r}; accepted: {', '.join(INITS)}")
    return ddim_invert(model, ref.clamp(-1, 1), skip, INVERT_FIXED_POINT)


def noise_level(y: torch.Tensor, noise_sigma: float) -> tuple[float, float]:
    """(σ on the 0–255 scale, σ in model units): the given one, or estimated from y when < 0."""
    sigma = estimate_noise_sigma(y) if noise_sigma < 0 else float(noise_sigma)
    return sigma, sigma_to_model_range(sigma)


def optimise_initial_noise(model, x_T: torch.Tensor, loss_fn, monitor, *, skip: int, iters: int, lr: float,
                           grad: str = "full", sphere: bool = False, extra_params=None) -> dict:
    """Adam on x_T (and ``extra_params``: a list of Adam param groups) of Σ loss_fn(f(x_T)).

    ``loss_fn(x0) -> (B,)`` per-image losses. After each evaluation
    ``monitor(k, x0.detach(), losses.detach())`` returns a stop reason or None; the
    monitor keeps whichever output it wants to return. Returns the loop's info.
    """
    if grad not in ("full", "skip-unet"):
        raise MethodError(f"bad gradient mode {grad!r}; accepted: full, skip-unet")
    timesteps = ddim_timesteps(model.schedule.num_train_timesteps, skip)
    z = x_T.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [z], "lr": lr}] + list(extra_params or []))
    reason, k = "iters", 0
    progress.report("fitting", 0, iters)
    for k in range(1, iters + 1):
        x0 = ddim_decode(model, z, timesteps, unet_grad=grad == "full")
        losses = loss_fn(x0)
        if not torch.isfinite(losses).all():
            raise SamplingDivergedError(f"NaN/inf loss at iteration {k}")
        progress.report("fitting", k, iters)
        stop = monitor(k, x0.detach(), losses.detach())
        if stop:
            reason = stop
            break
        if k == iters:
            break  # the last evaluation needs no step
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
        if sphere:
            with torch.no_grad():
                z.copy_(project_to_sphere(z))
    return {"iterations": k, "steps": len(timesteps), "unet_calls": k * len(timesteps), "stop_reason": reason,
            "grad": grad, "sphere": sphere}


class Discrepancy:
    """Per image: the first iterate with RMS residual ≤ eps, else the lowest-residual one.

    ``losses`` are the residual norms ‖y − H(x)‖; RMS = norm/√m. An image that has met
    eps keeps that iterate (later ones fit its noise); the loop stops once all have
    (``eps = 0``: never, the lowest residual over the run is kept).
    """

    def __init__(self, m: int, eps: float):
        self.m, self.eps = m, eps
        self.best_x, self.best, self.done = None, None, None
        self.stop_k: torch.Tensor | None = None
        self.history: list[float] = []

    def __call__(self, k, x0, losses):
        rms = losses / math.sqrt(self.m)
        self.history.append(float(rms.mean()))
        if self.best is None:
            self.best_x, self.best = x0.clone(), rms.clone()
            self.done = torch.zeros_like(rms, dtype=torch.bool)
            self.stop_k = torch.ones_like(rms, dtype=torch.long)
        else:
            better = ~self.done & (rms < self.best)
            self.best = torch.where(better, rms, self.best)
            self.best_x = torch.where(better.view(-1, 1, 1, 1), x0, self.best_x)
            self.stop_k = torch.where(better, torch.full_like(self.stop_k, k), self.stop_k)
        if self.eps > 0:
            self.done |= rms <= self.eps
            if bool(self.done.all()):
                return "discrepancy"
        return None


def task_lr(cfg_lr: float | None, task_name: str | None, init: str = "noise") -> float:
    """``cfg_lr``, else appendix A's rate for the task, ×``PINV_LR_FACTOR`` from the inverted A⁺y."""
    if cfg_lr is not None:
        return cfg_lr
    return LR_BY_TASK.get(task_name or "", DEFAULT_LR) * (PINV_LR_FACTOR if init == "pinv" else 1.0)


def residual_norm(y: torch.Tensor, forward):
    def loss_fn(x0):
        return (forward(x0) - y).flatten(1).norm(dim=1)  # eq. 15: ‖y − H(f(x_T))‖ per image

    return loss_fn


def fit(model, y: torch.Tensor, forward, ref: torch.Tensor, m: int, cfg, task: str | None, generator,
        extra_params=None, x_T: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """SHRED's loop on ‖y − forward(f(x_T))‖ from ``start_point`` (of ``ref`` = A⁺y), with
    the discrepancy stop (module doc). ``x_T`` overrides the start (``adir bench inversion``
    starts from the inverted ground truth). Returns (x̂ clamped to [-1, 1], info)."""
    s = cfg.shred
    sigma255, sigma = noise_level(y, cfg.noise_sigma)
    eps = max(s.loss_eps, s.tau * sigma)
    lr = task_lr(s.lr, task, s.init if x_T is None else "pinv")
    monitor = Discrepancy(m, eps)
    start = time.perf_counter()
    if x_T is None:
        x_T = start_point(model, s.init, ref, s.skip, generator, s.sphere)
    loop = optimise_initial_noise(model, x_T, residual_norm(y, forward), monitor, skip=s.skip, iters=s.iters,
                                  lr=lr, grad=s.grad, sphere=s.sphere, extra_params=extra_params)
    info = base_info(**loop, init=s.init, lr=lr, noise_sigma=sigma255, eps=eps,
                     loss_start=monitor.history[0], loss_end=float(monitor.best.mean()),
                     stop_iterations=monitor.stop_k.tolist())
    info["seconds_sample"] = time.perf_counter() - start
    return monitor.best_x.clamp(-1, 1), info


class Shred:
    """Non-blind SHRED: known linear H (sr, deblur, inpaint, cs, colorize)."""

    name = "shred"
    needs_operator = True
    uses_neighbours = False
    tasks = SHRED_TASKS

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        require_linear_operator(self.name, operator)
        op = operator.to(y.device)
        return fit(model, y, op.forward_op, op.A_pinv(y), op.n_measurements(), cfg, op.name, generator)

    def work(self, cfg) -> dict[str, int]:
        """Units per progress stage (``restore_core.progress``): at most ``shred.iters``."""
        return {"fitting": cfg.shred.iters}


def anisotropic_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """A normalised ``size``² Gaussian kernel with axes σ_x, σ_y rotated by θ (radians)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).float()


def random_anisotropic_kernel(size: int, generator: torch.Generator | None = None,
                              sigma_range: tuple[float, float] = (0.8, 3.0)) -> torch.Tensor:
    """A random anisotropic Gaussian blur kernel (SHRED §5.1 / A.3)."""
    lo, hi = sigma_range
    sx, sy, th = torch.rand(3, generator=generator).tolist()
    return anisotropic_gaussian_kernel(size, lo + (hi - lo) * sx, lo + (hi - lo) * sy, math.pi * th)


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 'same' convolution with replicate padding (the operators' convention)."""
    k = kernel.shape[-1]
    left, right = k // 2, k - 1 - k // 2
    xp = F.pad(x, (left, right, left, right), mode="replicate")
    return F.conv2d(xp, kernel.to(x.dtype).expand(x.shape[1], 1, k, k), groups=x.shape[1])


class ShredBlind:
    """Blind deconvolution: H_θ(x) = k_θ ∗ x with k_θ = softmax(logits), eq. 17-19."""

    name = "shred_blind"
    needs_operator = False
    uses_neighbours = False
    tasks = BLIND_TASKS

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        s = cfg.shred
        if operator is not None and tuple(operator.output_shape) != tuple(operator.image_shape):
            raise MethodError(f"shred_blind handles same-size blur only; task {operator.name!r} changes the size "
                              f"{tuple(operator.image_shape)} -> {tuple(operator.output_shape)}")
        size = s.kernel_size
        r = torch.arange(size, dtype=torch.float32, device=y.device) - (size - 1) / 2
        logits = (-(r[:, None] ** 2 + r[None, :] ** 2) / 2.0).requires_grad_(True)  # Gaussian σ = 1 start

        def kernel():
            return torch.softmax(logits.flatten(), 0).view(1, 1, size, size)

        x_hat, info = fit(model, y, lambda x: blur(x, kernel()), y, y[0].numel(), cfg, "deblur", generator,
                          extra_params=[{"params": [logits], "lr": s.kernel_lr}])
        info["kernel"] = kernel().detach()[0, 0].cpu()
        return x_hat, info

    work = Shred.work


register(Shred())
register(ShredBlind())
