"""``adir train-indi``: train an InDI restorer F_θ(x_t, t) for one task (paper 003, eq. 9).

Pairs come from the bundled training photos degraded by the task's operator, or from a
user's paired folders (``--clean DIR --degraded DIR``, same file names). The EMA model is
written with ``save_pretrained`` plus ``indi.json`` (see ``restore_core.indi_training``)
to ``--output`` (default ``models/indi-<task>``), which ``method=indi`` loads by default.

Example (the shipped JPEG model)::

    adir train-indi --task jpeg:q=15 --minutes 22 --threads 1
"""

from __future__ import annotations

import argparse
import logging

import torch

from restore_core.errors import ConfigError
from restore_core.indi_training import (
    INDI_TASKS,
    NOISE_SCHEDULES,
    P_T_CHOICES,
    TrainSettings,
    default_indi_dir,
    load_paired_folders,
    save_indi_model,
    train_indi,
)
from restore_core.operators import parse_task

log = logging.getLogger("adir.train_indi")


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
