"""InDI training (paper 003, eq. 7-9, Fig. 10, Table 2) and the trained-model format.

The restorer F_θ(x_t, t) is a diffusers ``UNet2DModel`` (3 → 3 channels). The time
t ∈ [0, 1] goes through the UNet's sinusoidal time embedding as the float ``t·TIME_SCALE``
(``TIME_SCALE = 1000``, so the embedding sees the same range as a DDPM's step index).
The UNet predicts the residual: F_θ(x_t, t) = x_t + u_θ(x_t, t); this is only a
parametrisation of the same regressor of x (eq. 4), chosen because a small model trained
for minutes learns "x_t minus artefacts" much faster than "x" from scratch.
(Deviation: the paper's U-Net has no GroupNorm; diffusers' UNet2DModel always has it.)

Training pairs (x, y): clean random crops of the bundled *training* photos
(``restore_core.bundled_photos``) degraded by the task's operator
(``restore_core.operators``), or a user's paired folders. Each step draws t ~ p(t), noise
n and minimises the L1 loss of eq. 9 (p = 1)::

    x_t = (1 − t)·x + t·y + t·ε_t·n,   loss = |F_θ(x_t, t) − x|₁

with ε_t = ε (``constant``, eq. 7) or ε/√t (``inv_sqrt``, the Brownian form of eq. 8).
p(t) choices as Fig. 10 (a): ``linear_0`` U[0,1]; ``linear_a`` (1−a)U[0,1] + a·δ₁ (a from
``--p-t-a``, or spelled ``linear_0.5``); ``bias_t1`` sin(sπ/2); ``bias_t0``
sin((s−1)π/2)+1; ``bias_t0_t1`` sin²(sπ/2) (an arcsine law: mass at both ends).

For super-resolution y is presented at the output size (bicubic upsampling, as Table 2's
footnote does with bilinear), so x_t is a convex combination of same-size images.

Saved layout (``save_indi_model``): ``<dir>/`` = UNet ``save_pretrained`` (config.json +
safetensors) plus ``indi.json`` {task, eps, noise_schedule, p_t, time_scale, residual,
training stats}. ``load_indi_model(spec)`` reads it back.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from restore_core.errors import ConfigError, InputError, ModelLoadError
from restore_core.operators import build_operator, parse_task

TIME_SCALE = 1000.0
INDI_TASKS = ("jpeg", "deblur_box5", "deblur_gauss", "sr4", "denoise")  # tasks `adir train-indi` supports
P_T_CHOICES = ("linear_0", "linear_a", "bias_t1", "bias_t0", "bias_t0_t1")
NOISE_SCHEDULES = ("constant", "inv_sqrt")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INDI_DIR = REPO_ROOT / "models"


# ---- the model -------------------------------------------------------------------------
@dataclass
class IndiModel:
    """A trained InDI restorer and the settings it was trained with."""

    unet: torch.nn.Module
    task: str
    eps: float = 0.0
    noise_schedule: str = "constant"
    p_t: str = "bias_t1"
    residual: bool = True
    time_scale: float = TIME_SCALE
    meta: dict = field(default_factory=dict)
    spec: str = ""

    def __call__(self, x_t: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """F_θ(x_t, t): the estimate of the clean image x (eq. 4) at time t ∈ [0, 1]."""
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        out = self.unet(x_t, t * self.time_scale).sample
        return x_t + out if self.residual else out

    def eps_at(self, t: float, eps: float | None = None, schedule: str | None = None) -> float:
        """ε_t of eq. 8: ε (constant) or ε/√t (inv_sqrt)."""
        eps = self.eps if eps is None else eps
        schedule = schedule or self.noise_schedule
        if schedule == "constant" or eps == 0:
            return eps
        return eps / math.sqrt(max(t, 1e-12))


def build_indi_unet(channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1, sample_size: int = 64):
    """A fully convolutional UNet2DModel (no attention), GroupNorm(8)."""
    from diffusers import UNet2DModel

    n = len(channels)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
        layers_per_block=layers_per_block, down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n, norm_num_groups=8,
    )


def save_indi_model(model: IndiModel, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    model.unet.save_pretrained(path, safe_serialization=True)
    meta = {"task": model.task, "eps": model.eps, "noise_schedule": model.noise_schedule, "p_t": model.p_t,
            "residual": model.residual, "time_scale": model.time_scale, **model.meta}
    with open(os.path.join(path, "indi.json"), "w") as fh:
        json.dump(meta, fh, indent=2)


def default_indi_dir(task: str) -> str:
    """The shipped model folder of a task: ``models/indi-<task name>``."""
    return str(DEFAULT_INDI_DIR / f"indi-{parse_task(task)[0]}")


def load_indi_model(spec: str, device: str | torch.device = "cpu") -> IndiModel:
    """Load a folder written by ``save_indi_model`` (local path or fsspec URI)."""
    from diffusers import UNet2DModel

    from restore_core import storage

    where = storage.fetch_to_local(spec) if "://" in spec and not spec.startswith("file://") else spec
    where = where.removeprefix("file://")
    meta_path = os.path.join(where, "indi.json")
    if not os.path.isfile(meta_path):
        raise ModelLoadError(f"not an InDI model folder (no indi.json): {spec}")
    with open(meta_path) as fh:
        meta = json.load(fh)
    try:
        unet = UNet2DModel.from_pretrained(where, use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many types
        raise ModelLoadError(f"cannot load InDI model {spec!r}: {str(exc).strip().splitlines()[0]}") from None
    unet = unet.to(device).eval().requires_grad_(False)
    known = ("task", "eps", "noise_schedule", "p_t", "residual", "time_scale")
    return IndiModel(unet=unet, **{k: meta[k] for k in known if k in meta},
                     meta={k: v for k, v in meta.items() if k not in known}, spec=spec)


# ---- training data ---------------------------------------------------------------------
def full_size(y: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """y at the image size ``hw``: bicubic upsampling when y is smaller (SR), else y."""
    if tuple(y.shape[-2:]) == tuple(hw):
        return y
    return F.interpolate(y, size=tuple(hw), mode="bicubic", align_corners=False).clamp(-1, 1)


def degrade_pairs(x: torch.Tensor, task: str, noise_sigma: float = 0.0, generator=None) -> torch.Tensor:
    """y for each clean crop in ``x`` under ``task``, presented at the crop's size."""
    op = build_operator(task, tuple(x.shape[1:]))
    with torch.no_grad():
        y = op.degrade(x, noise_sigma, generator)
    return full_size(y, x.shape[-2:])


def load_paired_folders(clean_dir: str, degraded_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs with the same file name in two folders; degraded images upsampled to size."""
    from restore_core.images import read_image

    names = sorted(n for n in os.listdir(clean_dir) if not n.startswith("."))
    xs, ys = [], []
    for name in names:
        other = os.path.join(degraded_dir, name)
        if not os.path.isfile(other):
            continue
        x = read_image(os.path.join(clean_dir, name))
        xs.append(x)
        ys.append(full_size(read_image(other), x.shape[-2:]))
    if not xs:
        raise InputError(f"no file names in common between {clean_dir} and {degraded_dir}")
    size = min(min(x.shape[-2:]) for x in xs)
    return torch.cat([x[..., :size, :size] for x in xs]), torch.cat([y[..., :size, :size] for y in ys])


# ---- eq. 7-9 ---------------------------------------------------------------------------
def sample_t(p_t: str, n: int, generator: torch.Generator | None = None, a: float = 0.5) -> torch.Tensor:
    """n draws of t ~ p(t) (Fig. 10 (a)); ``linear_<a>`` spells linear_a with that a."""
    s = torch.rand(n, generator=generator)
    if p_t.startswith("linear_") and p_t not in P_T_CHOICES:
        try:
            a = float(p_t[len("linear_"):])
        except ValueError:
            raise ConfigError(f"bad p(t) {p_t!r}; accepted: {', '.join(P_T_CHOICES)} or linear_<a>") from None
        p_t = "linear_a"
    if p_t == "linear_0":
        return s
    if p_t == "linear_a":
        if not 0 <= a <= 1:
            raise ConfigError(f"linear_a needs 0 <= a <= 1, got {a}")
        ones = torch.rand(n, generator=generator) < a
        return torch.where(ones, torch.ones_like(s), s)
    if p_t == "bias_t1":
        return torch.sin(s * math.pi / 2)
    if p_t == "bias_t0":
        return torch.sin((s - 1) * math.pi / 2) + 1
    if p_t == "bias_t0_t1":
        return torch.sin(s * math.pi / 2) ** 2
    raise ConfigError(f"bad p(t) {p_t!r}; accepted: {', '.join(P_T_CHOICES)} or linear_<a>")


def interpolate(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, eps: float, noise_schedule: str,
                noise: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)x + t·y + t·ε_t·n (eq. 7/8), t of shape (B,)."""
    t4 = t.view(-1, 1, 1, 1).to(x.dtype)
    if noise_schedule == "constant":
        scale = t4 * eps
    elif noise_schedule == "inv_sqrt":
        scale = t4.sqrt() * eps  # t·ε/√t
    else:
        raise ConfigError(f"bad noise schedule {noise_schedule!r}; accepted: {', '.join(NOISE_SCHEDULES)}")
    return (1 - t4) * x + t4 * y + scale * noise


def indi_loss(model: IndiModel, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """The L1 objective of eq. 9 (p = 1), mean over pixels and batch."""
    x_t = interpolate(x, y, t, model.eps, model.noise_schedule, noise)
    return (model(x_t, t) - x).abs().mean()


@dataclass
class TrainSettings:
    task: str = "jpeg:q=15"
    steps: int = 3000
    minutes: float = 0.0  # wall-clock cap (0: none)
    batch: int = 16
    patch: int = 32
    lr: float = 5e-4
    ema_decay: float = 0.999
    eps: float = 0.06  # Table 2 (JPEG)
    noise_schedule: str = "constant"
    p_t: str = "bias_t1"
    p_t_a: float = 0.5
    noise_sigma: float = 0.0  # AWGN added to y (0-255 scale)
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    pool: int = 2000  # crops per data pool
    eval_every: int = 200
    seed: int = 0


def train_indi(settings: TrainSettings, pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
               callback=None) -> tuple[IndiModel, dict]:
    """Train F_θ with Adam on eq. 9; returns the EMA model and a stats dict.

    ``pairs`` (x, y) of equal size replace the bundled-photo pool (user data); each step
    takes random ``patch`` crops of them. ``callback(step, stats)`` is called every
    ``eval_every`` steps.
    """
    from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops

    if settings.noise_schedule not in NOISE_SCHEDULES:
        raise ConfigError(f"bad noise schedule {settings.noise_schedule!r}; accepted: {', '.join(NOISE_SCHEDULES)}")
    sample_t(settings.p_t, 1, a=settings.p_t_a)  # validate early
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    unet = build_indi_unet(settings.channels, settings.layers_per_block, sample_size=64)
    model = IndiModel(unet=unet, task=settings.task, eps=settings.eps, noise_schedule=settings.noise_schedule,
                      p_t=settings.p_t)
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_model = IndiModel(unet=ema, task=settings.task, eps=settings.eps, noise_schedule=settings.noise_schedule,
                          p_t=settings.p_t)
    opt = torch.optim.Adam(unet.parameters(), lr=settings.lr)

    def make_pool(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if pairs is not None:
            return pairs
        x, _ = random_crops(TRAIN_PHOTOS, settings.pool, settings.patch, seed=seed)
        return x, degrade_pairs(x, settings.task, settings.noise_sigma, torch.Generator().manual_seed(seed))

    # a fixed held-out evaluation batch (crops of the held-out photos, fixed t and noise)
    ex, _ = random_crops(HELDOUT_PHOTOS, 32, settings.patch, seed=10_000 + settings.seed)
    ey = degrade_pairs(ex, settings.task, settings.noise_sigma, torch.Generator().manual_seed(1))
    eg = torch.Generator().manual_seed(2)
    et = sample_t(settings.p_t, len(ex), eg, settings.p_t_a)
    en = torch.randn(ex.shape, generator=eg)

    px, py = make_pool(settings.seed)
    pool_round, cursor = 0, 0
    perm = torch.randperm(len(px), generator=g)
    start = time.perf_counter()
    stats: dict = {"train_loss": [], "eval_loss": [], "eval_step": []}
    running, step = [], 0

    def evaluate() -> float:
        with torch.no_grad():
            return float(indi_loss(ema_model, ex, ey, et, en))

    stats["eval_loss_initial"] = evaluate()
    for step in range(1, settings.steps + 1):
        if cursor + settings.batch > len(px):
            pool_round += 1
            if pairs is None:
                px, py = make_pool(settings.seed + pool_round)
            perm, cursor = torch.randperm(len(px), generator=g), 0
        idx = perm[cursor:cursor + settings.batch]
        cursor += settings.batch
        x, y = px[idx], py[idx]
        if x.shape[-1] > settings.patch:  # user pairs: random aligned crops
            top = int(torch.randint(0, x.shape[-2] - settings.patch + 1, (1,), generator=g))
            left = int(torch.randint(0, x.shape[-1] - settings.patch + 1, (1,), generator=g))
            x = x[..., top:top + settings.patch, left:left + settings.patch]
            y = y[..., top:top + settings.patch, left:left + settings.patch]
        t = sample_t(settings.p_t, len(x), g, settings.p_t_a)
        noise = torch.randn(x.shape, generator=g)
        loss = indi_loss(model, x, y, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            d = min(settings.ema_decay, (1 + step) / (10 + step))  # EMA warm-up
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)
        running.append(loss.item())
        timed_out = settings.minutes and time.perf_counter() - start > 60 * settings.minutes
        if step % settings.eval_every == 0 or step == settings.steps or timed_out:
            stats["train_loss"].append(sum(running) / len(running))
            running = []
            stats["eval_loss"].append(evaluate())
            stats["eval_step"].append(step)
            if callback is not None:
                callback(step, stats)
        if timed_out:
            break
    stats.update(steps=step, seconds=time.perf_counter() - start,
                 params=sum(p.numel() for p in unet.parameters()))
    ema_model.meta = {"training": {k: v for k, v in vars(settings).items()}, "stats": stats}
    ema_model.meta["training"]["channels"] = list(settings.channels)
    return ema_model, stats
