"""``adir train-indi``: train an InDI restorer F_θ(x_t, t) for one task
("Inversion by Direct Iteration", eq. 7-9, Fig. 10, Table 2).

Training pairs (x, y): clean random crops of the bundled *training* photos
(``restore_core.bundled_photos``) degraded by the task's operator
(``restore_core.operators``), or a user's paired folders (``--clean DIR --degraded DIR``,
same file names). Each step draws t ~ p(t), noise n and minimises the L1 loss of eq. 9
(p = 1)::

    x_t = (1 − t)·x + t·y + t·ε_t·n,   loss = |F_θ(x_t, t) − x|₁

with ε_t = ε (``constant``, eq. 7) or ε/√t (``inv_sqrt``, the Brownian form of eq. 8).
p(t) choices as Fig. 10 (a): ``linear_0`` U[0,1]; ``linear_a`` (1−a)U[0,1] + a·δ₁ (a from
``--p-t-a``, or spelled ``linear_0.5``); ``bias_t1`` sin(sπ/2); ``bias_t0``
sin((s−1)π/2)+1; ``bias_t0_t1`` sin²(sπ/2) (an arcsine law: mass at both ends).
For super-resolution y is presented at the output size (``indi_model.full_size``).

The loop (pools, EMA, time budget) is ``jobs.train.loop``. The EMA model is written
with ``save_indi_model`` (``restore_core.models.indi_model``: ``save_pretrained`` plus
``indi.json``) to ``--output`` (default ``models/indi-<task>``), which ``method=indi``
loads by default.

Example (the shipped JPEG model)::

    adir train-indi --task jpeg:q=15 --minutes 22 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass

import torch

from jobs.train import loop
from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops
from restore_core.errors import ConfigError, InputError
from restore_core.models.indi_model import (
    INDI_TASKS,
    IndiModel,
    build_indi_unet,
    default_indi_dir,
    full_size,
    save_indi_model,
)
from restore_core.operators import build_operator, parse_task

log = logging.getLogger("adir.train_indi")
P_T_CHOICES = ("linear_0", "linear_a", "bias_t1", "bias_t0", "bias_t0_t1")
NOISE_SCHEDULES = ("constant", "inv_sqrt")


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
    ``eval_every`` steps and at the end.
    """
    if settings.noise_schedule not in NOISE_SCHEDULES:
        raise ConfigError(f"bad noise schedule {settings.noise_schedule!r}; accepted: {', '.join(NOISE_SCHEDULES)}")
    sample_t(settings.p_t, 1, a=settings.p_t_a)  # validate early
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    unet = build_indi_unet(settings.channels, settings.layers_per_block, sample_size=64)
    kind = {"task": settings.task, "eps": settings.eps, "noise_schedule": settings.noise_schedule,
            "p_t": settings.p_t}
    model = IndiModel(unet=unet, **kind)
    ema = loop.Ema(unet, settings.ema_decay)
    ema_model = IndiModel(unet=ema.module, **kind)
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

    def evaluate() -> float:
        with torch.no_grad():
            return float(indi_loss(ema_model, ex, ey, et, en))

    stats: dict = {"train_loss": [], "eval_loss": [], "eval_step": [], "eval_loss_initial": evaluate()}
    window: list[float] = []

    def record(state: dict) -> None:
        stats["train_loss"].append(sum(window) / len(window))
        window.clear()
        stats["eval_loss"].append(evaluate())
        stats["eval_step"].append(state["step"])
        if callback is not None:
            callback(state["step"], stats)

    def train_step(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> float:
        x, y = batch
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
        ema.update(unet)
        window.append(loss.item())
        return window[-1]

    start = time.perf_counter()
    state = loop.new_state(settings.seed)
    pool = loop.Pool(make_pool, settings.batch, state, shuffle=g)
    loop.run(state, steps=settings.steps, minutes=settings.minutes, pool=pool, train_step=train_step,
             eval_every=settings.eval_every, on_eval=record)
    if window:  # the last step was not an evaluation step (step count or time budget)
        record(state)
    stats.update(steps=state["step"], seconds=time.perf_counter() - start,
                 params=sum(p.numel() for p in unet.parameters()))
    ema_model.meta = {"training": {k: v for k, v in vars(settings).items()}, "stats": stats}
    ema_model.meta["training"]["channels"] = list(settings.channels)
    return ema_model, stats


def configure_parser(p: argparse.ArgumentParser) -> None:
    d = TrainSettings()
    p.add_argument("--task", required=True,
                   help=f"one of {', '.join(INDI_TASKS)}, with parameters e.g. jpeg:q=15, deblur_gauss:sigma=2")
    p.add_argument("--output", default=None, help="model folder (default models/indi-<task>)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--minutes", type=float, default=d.minutes, help="stop after this many minutes (0: no limit)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--patch", type=int, default=d.patch, help="training crop size")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--ema-decay", type=float, default=d.ema_decay)
    p.add_argument("--eps", type=float, default=d.eps, help="ε of eq. 7 (model range [-1, 1])")
    p.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, default=d.noise_schedule)
    p.add_argument("--p-t", default=d.p_t, help=f"p(t): {', '.join(P_T_CHOICES)} or linear_<a>")
    p.add_argument("--p-t-a", type=float, default=d.p_t_a, help="a of linear_a")
    p.add_argument("--noise-sigma", type=float, default=d.noise_sigma, help="AWGN on y (0-255 scale)")
    p.add_argument("--channels", default=",".join(map(str, d.channels)), help="UNet block_out_channels")
    p.add_argument("--layers-per-block", type=int, default=d.layers_per_block)
    p.add_argument("--pool", type=int, default=d.pool, help="crops per data pool (refreshed each pass)")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--clean", default=None, help="folder of clean images (user pairs)")
    p.add_argument("--degraded", default=None, help="folder of degraded images, same names as --clean")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    name, _ = parse_task(args.task)
    if name not in INDI_TASKS:
        raise ConfigError(f"train-indi: unsupported task {name!r}; accepted: {', '.join(INDI_TASKS)}")
    if (args.clean is None) != (args.degraded is None):
        raise ConfigError("train-indi: give both --clean and --degraded, or neither")
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise ConfigError(f"bad --channels {args.channels!r}; expected e.g. 32,64,64") from None
    torch.set_num_threads(args.threads)
    settings = TrainSettings(
        task=args.task, steps=args.steps, minutes=args.minutes, batch=args.batch, patch=args.patch, lr=args.lr,
        ema_decay=args.ema_decay, eps=args.eps, noise_schedule=args.noise_schedule, p_t=args.p_t,
        p_t_a=args.p_t_a, noise_sigma=args.noise_sigma, channels=channels, layers_per_block=args.layers_per_block,
        pool=args.pool, eval_every=args.eval_every, seed=args.seed,
    )
    pairs = load_paired_folders(args.clean, args.degraded) if args.clean else None
    output = args.output or default_indi_dir(args.task)

    def report(step: int, stats: dict) -> None:
        log.info("step %d: train L1 %.4f, held-out L1 %.4f", step, stats["train_loss"][-1], stats["eval_loss"][-1])

    log.info("training InDI for %s (%s) -> %s", args.task, "user pairs" if pairs else "bundled photos", output)
    model, stats = train_indi(settings, pairs=pairs, callback=report)
    save_indi_model(model, output)
    log.info("done: %d steps in %.0f s, held-out L1 %.4f -> %.4f; saved %s", stats["steps"], stats["seconds"],
             stats["eval_loss_initial"], stats["eval_loss"][-1], output)
    return 0
