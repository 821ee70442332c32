"""DIIP (slides): blind restoration by fitting the initial noise of a frozen DDIM.

Algorithm 1 of the slides: z* = argmin_z ‖g(z) − y‖² (eq. 2) with g the deterministic
DDIM of the prior (skip ``cfg.diip.skip``), optimised by Adam from z ~ N(0, I); no
operator is used. The loop is SHRED's (``shred.optimise_initial_noise``) with H = I.

Start (deviation, ``diip.init``; ``INITS`` are what ``adir bench diip`` compares): z⁰ is the
exact DDIM inversion (``sampling.inversion.ddim_invert``) of the prior's own Tweedie
estimate of the clean image from y at the noise level σ (``"denoised"``), as SHRED starts
from the inversion of A⁺y. g's range holds noisy images as well as clean ones, so eq. 2's
optimum is y itself and only the path regularises; at this prior's scale the path from
N(0, I) (``"noise"``, Algorithm 1 line 1) stays below y's PSNR before it fits the noise,
and the inversion of y (``"y"``) starts at the optimum. From the denoised start the
search only moves g(z) back towards y, so the discrepancy rule below normally stops at
once and the restoration is the start: the gain is the prior's, reached through g's range.
From an inverted image Adam runs at ``start_lr`` (the config's rate × SHRED's
``PINV_LR_FACTOR``).

Fitting y completely reproduces its degradation, so the optimisation is stopped early by
one of the slides' self-supervised rules:

* ``slope`` (degradations that *add* high frequencies: noise, JPEG): the normalised loss
  slope Δ_k = (L_k − L_{k+1}) / L_k; stop when Δ_k < ``slope_eps``. Deviations: Δ is
  averaged over the last ``slope_window`` iterations, since Adam's single steps are noisy,
  and the rule waits for k ≥ ``k_min``: from a random start the loss bounces during the
  first Adam steps (Δ < 0), and a rule that fires then returns noise.
* ``noise`` (deviation, beside ``slope``): Morozov's discrepancy principle for additive
  noise, stop once L_k ≤ (τσ)², because a fit closer than the noise fits the noise; τ =
  ``DISCREPANCY_TAU`` slightly above 1 as the principle asks, since the wavelet σ and
  ‖n‖²/n themselves err by a few per cent on a 64² crop. σ is ``cfg.noise_sigma`` (0–255)
  or, when that is negative (blind), the wavelet estimate from y
  (``sampling.peers.estimate_noise_sigma``), floored at ``MIN_CHECK_SIGMA`` (``rule_sigma``).
* ``laplacian`` (degradations that *remove* them: blur, low resolution): σ²_k, the
  variance of the Laplacian of the grey-level g(z_k), rises while details are fitted and
  falls once the blur is; stop when k > ``k_min`` and σ² has not exceeded its peak for
  ``patience`` iterations (the slides' σ²_k > σ²_{k+1} is ``patience = 1``), and return
  g(z) at the peak.
* ``auto``: slope and noise for ``denoise`` and ``jpeg``, laplacian for every other known
  task, and all three (the first to fire wins) when the task is blind (no operator);
  ``both`` forces that; ``slope``, ``noise``, ``laplacian`` run one rule alone.

With an operator whose output is smaller than the image (SR), y is presented as a blurry
full-size image (bicubic upsampling), as the slides do; a 1-channel y is repeated over
the model's channels. ``info`` reports the rule that fired and its iteration. The rules
read the batch-mean loss and sharpness (one image per call in the job layer).

Safeguard (deviation, whenever the ``noise`` rule runs): an output whose loss stays above
2σ² is estimated worse than y itself (``keep_or_input``), and y is returned for it with a
warning: from N(0, I) the search stalls on some textures. σ is floored at
``MIN_CHECK_SIGMA`` because the wavelet estimate sees almost no noise in a JPEG, whose
artefacts are blocks, not white noise. From the denoised start, an output further from
that start than ``REPRESENT_FRACTION`` of the denoiser's correction is returned as y too
(``keep_or_input``'s ``ref``): the inversion regenerates a photo only approximately, and
that error can swamp the small correction of a JPEG of a smooth crop.
"""

from __future__ import annotations

import itertools
import time

import torch
import torch.nn.functional as F

from restore_core.errors import MethodError
from restore_core.methods.base import base_info, register
from restore_core.methods.shred import (
    INVERT_FIXED_POINT,
    PINV_LR_FACTOR,
    initial_noise,
    noise_level,
    optimise_initial_noise,
)
from restore_core.models.indi_model import full_size
from restore_core.operators import TASKS, sigma_to_model_range
from restore_core.sampling.inversion import ddim_invert
from restore_core.sampling.peers import PriorDenoiser

HIGH_FREQUENCY_TASKS = ("denoise", "jpeg")  # degradations that add high frequencies
MIN_CHECK_SIGMA = 10.0  # floor (0-255) under every σ here (rule_sigma, start): JPEG's artefacts are not white noise
INITS = ("denoised", "y", "noise")
DISCREPANCY_TAU = 1.05  # the noise rule stops at L ≤ (τσ)²: Morozov's τ > 1 (module doc)
REPRESENT_FRACTION = 0.5  # keep_or_input: the output's distance to the denoised start, over its correction
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def laplacian_variance(x: torch.Tensor) -> torch.Tensor:
    """σ² of the Laplacian of the grey-level image, per image (B,)."""
    grey = x.mean(dim=1, keepdim=True)
    lap = F.conv2d(grey, _LAPLACIAN.to(x), padding=0)
    return lap.flatten(1).var(dim=1)


def start_point(model, init: str, y: torch.Tensor, sigma255: float, skip: int,
                generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z⁰, the image it was inverted from): ``"noise"`` N(0, I) (Algorithm 1 line 1; no
    image), ``"y"`` the DDIM inversion of y, or ``"denoised"`` the inversion of the prior's
    Tweedie estimate of the clean image from y at noise level ``sigma255`` (0–255, floored at
    ``MIN_CHECK_SIGMA``; ``sampling.peers.PriorDenoiser``)."""
    if init == "noise":
        return initial_noise(tuple(y.shape), generator, y.device, sphere=False), None
    if init not in INITS:
        raise MethodError(f"bad DIIP initialisation {init!r}; accepted: {', '.join(INITS)}")
    ref = y.clamp(-1, 1)
    if init == "denoised":
        with torch.no_grad():
            ref = PriorDenoiser(model)((ref + 1) / 2, max(sigma255, MIN_CHECK_SIGMA) / 255.0) * 2 - 1
    return ddim_invert(model, ref, skip, INVERT_FIXED_POINT), ref


def start_lr(lr: float, init: str) -> float:
    """Adam's rate: ``lr`` from N(0, I), ×``shred.PINV_LR_FACTOR`` from an inverted image
    (g is as sensitive there as SHRED's f near its inverted start)."""
    return lr if init == "noise" else lr * PINV_LR_FACTOR


def rule_sigma(sigma: float) -> float:
    """σ (model units) of the noise rule and the safeguard: the noise level, floored at
    ``MIN_CHECK_SIGMA`` (the wavelet estimate sees almost no noise in a JPEG)."""
    return max(sigma, sigma_to_model_range(MIN_CHECK_SIGMA))


def pixel_loss(y: torch.Tensor):
    """Eq. 2 per image, as a mean over pixels: x₀ ↦ ‖x₀ − y‖²/n (B,)."""

    def loss_fn(x0):
        return ((x0 - y) ** 2).flatten(1).mean(dim=1)

    return loss_fn


def rules_for(rule: str, operator) -> tuple[str, ...]:
    if rule == "both" or (rule == "auto" and operator is None):
        return ("slope", "noise", "laplacian")
    if rule == "auto":
        return ("slope", "noise") if operator.name in HIGH_FREQUENCY_TASKS else ("laplacian",)
    return (rule,)


class StoppingRules:
    """The slides' two stopping rules over the batch-mean loss and sharpness."""

    def __init__(self, rules: tuple[str, ...], slope_eps: float, window: int, k_min: int, patience: int,
                 noise_var: float = 0.0):
        self.rules, self.slope_eps, self.window, self.noise_var = rules, slope_eps, window, noise_var
        self.k_min, self.patience = k_min, patience
        self.losses: list[float] = []
        self.sharpness: list[float] = []
        self.x = None  # the output to return
        self.peak_k, self.peak, self.peak_x = 0, float("-inf"), None
        self.fired_at = None

    def __call__(self, k, x0, losses):
        self.x = x0
        self.losses.append(float(losses.mean()))
        if "noise" in self.rules and self.losses[-1] <= self.noise_var:
            self.fired_at = k
            return "noise"
        if "slope" in self.rules and k >= self.k_min and len(self.losses) > self.window:
            recent = self.losses[-self.window - 1:]
            deltas = [(a - b) / max(a, 1e-12) for a, b in itertools.pairwise(recent)]
            if sum(deltas) / len(deltas) < self.slope_eps:
                self.fired_at = k
                return "slope"
        if "laplacian" in self.rules:
            s = float(laplacian_variance(x0).mean())
            self.sharpness.append(s)
            if k >= self.k_min and s > self.peak:
                self.peak_k, self.peak, self.peak_x = k, s, x0
            if k > self.k_min and self.peak_x is not None and k - self.peak_k >= self.patience:
                self.x = self.peak_x
                self.fired_at = self.peak_k
                return "laplacian"
        return None


class Diip:
    name = "diip"
    needs_operator = False
    uses_neighbours = False
    tasks = ("denoise",) + tuple(t for t in TASKS if t != "denoise")

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        d = cfg.diip
        sigma255, sigma = noise_level(y, cfg.noise_sigma)  # on y as given, before any resizing
        if operator is not None:
            y = full_size(y, operator.image_shape[-2:])
        if y.shape[1] != model.in_channels:
            y = y.expand(-1, model.in_channels, -1, -1)
        rules = rules_for(d.rule, operator)
        check = rule_sigma(sigma)
        monitor = StoppingRules(rules, d.slope_eps, d.slope_window, d.k_min, d.patience,
                                noise_var=(DISCREPANCY_TAU * check) ** 2)
        start = time.perf_counter()
        x_T, ref = start_point(model, d.init, y, sigma255, d.skip, generator)
        loop = optimise_initial_noise(model, x_T, pixel_loss(y), monitor, skip=d.skip, iters=d.iters,
                                      lr=start_lr(d.lr, d.init), grad=d.grad)
        noisy = "noise" in rules
        x_hat, kept = keep_or_input(monitor.x, y, check if noisy else 0.0,
                                    ref if noisy and d.init == "denoised" else None)
        info = base_info(**loop, rules=list(rules), init=d.init, noise_sigma=sigma255,
                         stop_iteration=monitor.fired_at or loop["iterations"], loss_start=monitor.losses[0],
                         loss_end=monitor.losses[-1])
        if not bool(kept.all()):
            info["warnings"].append(f"DIIP's fit of {int((~kept).sum())} image(s) is estimated worse than the "
                                    "input (‖g(z) − y‖² > 2σ², or g(z) far from the denoised start); "
                                    "returned the input there")
        info["seconds_sample"] = time.perf_counter() - start
        return x_hat.clamp(-1, 1), info

    def work(self, cfg) -> dict[str, int]:
        """Units per progress stage (``restore_core.progress``): at most ``diip.iters``
        fitting iterations (SHRED's loop reports them; a stop rule ends them early)."""
        return {"fitting": cfg.diip.iters}


def keep_or_input(x: torch.Tensor, y: torch.Tensor, sigma: float,
                  ref: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, x, or y where x is estimated to be further from the clean image than y.

    For y = x* + σn and an output x that has not fitted the noise, E‖x − y‖²/n ≈
    ‖x − x*‖²/n + σ², while y's own error is σ²: a loss above 2σ² says x is worse than y
    (an underfit on a texture the search cannot reach). ``sigma = 0`` skips that check.

    ``ref``, the denoised image the search started from: for a denoiser that acts as a
    projection, ‖ref − x*‖² ≈ ‖y − x*‖² − ‖ref − y‖² (Pythagoras), so x = ref + r beats y
    only while ‖r‖² < ‖ref − y‖², the correction the denoiser made. x is kept while
    ‖x − ref‖² ≤ ``REPRESENT_FRACTION``·‖ref − y‖² (a margin for the approximation): a
    small correction (a JPEG of a smooth crop) that g cannot represent after inversion is
    no gain. Returns (images, kept mask (B,))."""
    loss = (x - y).pow(2).flatten(1).mean(1)
    kept = loss <= 2 * sigma**2 if sigma > 0 else torch.ones_like(loss, dtype=torch.bool)
    if ref is not None:
        kept &= (x - ref).pow(2).flatten(1).mean(1) <= REPRESENT_FRACTION * (ref - y).pow(2).flatten(1).mean(1)
    return torch.where(kept.view(-1, 1, 1, 1), x, y), kept


register(Diip())
