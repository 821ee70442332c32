"""``adir bench inversion``: can the prior's DDIM hold a photo, and does SHRED's search reach it?

SHRED (zero-shot image restoration via DDIM inversion, Algorithm 1) and DIIP (Diffusion
Image Prior, eq. 2) optimise only the initial noise x_T of the deterministic DDIM f of
the prior (skip δt, ``sampling.ddim``). Two measurements separate "the prior is the
lever" from "the optimisation is the lever":

1. Range: DDIM-invert a ground-truth crop (``sampling.inversion.ddim_invert``; fixed-point
   0 is the usual approximate inversion, more iterations make it exact) and regenerate it
   through the same f: PSNR(f(x_T), x). If that is low, no search over x_T can restore
   the photo, whatever the optimiser.
2. Search: SHRED's loop (``methods.shred.optimise_initial_noise``, eq. 15-16, Adam at the
   method's learning rate) on the task from three starts: the inverted ground truth (the
   answer is in reach), N(0, I) (Algorithm 1's own start) and the inverted A⁺y (the
   method's default, ``shred.init=pinv``). Each row gives the PSNR of the first iterate,
   of the iterate the discrepancy rule keeps (first RMS residual ≤ τσ), of the best
   iterate and of the last, with the last residual in units of σ, beside A⁺y's PSNR.
   The learning rate is the method's for that start (``shred.task_lr``) unless set.

3. Restoration (``--restore``): the methods themselves through ``restore_one`` (with
   ``--preset`` and ``--set``) on the same crops, against the trivial baseline (A⁺y, or y
   for JPEG and blind use): PSNR, the gain, consistency (0–255) where A is linear, and
   iterations. ``--grid DIR`` writes ground truth | baseline | output PNGs to look at.

Both on training crops and on held-out ones (``bundled_photos``, split by source photo;
``--splits``). Tune on ``train`` only.

Examples::

    adir bench inversion --task sr4 --noise 10 --n-images 2 --size 64 --iters 40
    adir bench inversion --fixed-point "" --iters 0 --splits heldout --n-images 6 --preset fast \
        --restore shred=sr4:10,diip=denoise:25,diip=jpeg:0 --grid runs/inversion_grid
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time

import torch

from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError
from restore_core.images import write_png
from restore_core.methods.shred import (
    optimise_initial_noise,
    residual_norm,
    start_point,
    task_lr,
)
from restore_core.metrics import consistency
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator, sigma_to_model_range
from restore_core.restore import restore_one
from restore_core.sampling.ddim import ddim_decode, ddim_timesteps
from restore_core.sampling.inversion import ddim_invert

log = logging.getLogger("adir.bench_inversion")
SPLITS = {"train": TRAIN_PHOTOS, "heldout": HELDOUT_PHOTOS}
STARTS = ("gt", "noise", "pinv")
START_LABELS = {"gt": "inverted ground truth", "noise": "N(0, I)", "pinv": "inverted A⁺y"}
NOISY_SIGMA = 25


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="prior folder or hub id (default: the shipped prior)")
    p.add_argument("--task", default="sr4", help="a linear task (operator spec)")
    p.add_argument("--noise", type=float, default=10.0, help="noise σ on the 0-255 scale")
    p.add_argument("--n-images", type=int, default=2, help="crops per split")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--fixed-point", default="0,3,10", help="fixed-point iterations of the inversion, comma-separated")
    p.add_argument("--iters", type=int, default=40, help="SHRED iterations per start (0: range only)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for SHRED (shred.skip, shred.lr, shred.grad, shred.tau)")
    p.add_argument("--restore", default="", help="method=task:σ,... restored through restore_one, e.g. "
                   "shred=sr4:10,diip=denoise:25,diip=jpeg:0")
    p.add_argument("--preset", default=None, help="config preset for --restore (e.g. fast)")
    p.add_argument("--splits", default="train,heldout", help=f"comma-separated subset of {', '.join(SPLITS)}")
    p.add_argument("--grid", default=None, help="folder for ground truth | baseline | output PNGs of --restore")
    p.add_argument("--output", default="runs/bench_inversion.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=100)


def psnr(x: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) on [0, 1] of images in [-1, 1]."""
    mse = ((x.clamp(-1, 1) - gt) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def range_rows(model, x: torch.Tensor, skip: int, fixed_points: list[int], seed: int) -> list[dict]:
    """PSNR of f(inv(x)) against x per number of fixed-point iterations, the std of the
    inverted x_T; and the same for x + σ₂₅ noise (``NOISY_SIGMA``) at the largest number:
    if f holds the noisy image too, f's range is no prior and only early stopping regularises."""
    timesteps = ddim_timesteps(model.schedule.num_train_timesteps, skip)
    noisy = x + sigma_to_model_range(NOISY_SIGMA) * torch.randn(
        x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
    rows = []
    for label, target, fp in [("", x, fp) for fp in fixed_points] + [(f" of x + σ{NOISY_SIGMA} noise", noisy,
                                                                       max(fixed_points))]:
        start = time.perf_counter()
        x_T = ddim_invert(model, target, skip, fp)
        with torch.no_grad():
            p = psnr(ddim_decode(model, x_T, timesteps), target)
        rows.append({"row": f"regenerate{label}, fixed-point {fp}", "psnr_mean": float(p.mean()),
                     "psnr_min": float(p.min()), "x_T_std": float(x_T.flatten(1).std(1).mean()),
                     "seconds_per_image": (time.perf_counter() - start) / len(x)})
    return rows


class Trace:
    """A monitor for ``optimise_initial_noise`` that never stops: per-iteration PSNR and RMS/σ."""

    def __init__(self, gt: torch.Tensor, m: int, sigma: float):
        self.gt, self.m, self.sigma = gt, m, sigma
        self.psnr: list[torch.Tensor] = []
        self.rel: list[torch.Tensor] = []

    def __call__(self, k, x0, losses):
        self.psnr.append(psnr(x0, self.gt))
        self.rel.append(losses / math.sqrt(self.m) / self.sigma)

    def summary(self, tau: float) -> dict:
        p, r = torch.stack(self.psnr), torch.stack(self.rel)  # (iterations, B)
        met = r <= tau
        first = torch.where(met.any(0), met.float().argmax(0), r.argmin(0))  # the iterate the method keeps
        kept = p.gather(0, first[None])[0]
        return {"psnr_first": float(p[0].mean()), "psnr_kept": float(kept.mean()),
                "kept_iteration": float(first.float().mean() + 1), "psnr_best": float(p.max(0).values.mean()),
                "psnr_last": float(p[-1].mean()), "consistency_last_sigma": float(r[-1].mean()),
                "consistency_first_sigma": float(r[0].mean())}


def search_rows(model, x: torch.Tensor, op, noise: float, cfg: RestoreConfig, iters: int, seed: int) -> list[dict]:
    """SHRED from each of ``STARTS`` on y = A x + e; one row per start plus A⁺y's."""
    s = cfg.shred
    y = op.degrade(x, noise, torch.Generator().manual_seed(seed))
    ref = op.A_pinv(y)
    sigma = sigma_to_model_range(noise) if noise > 0 else 1.0 / 127.5
    r0 = (op.A(ref) - y).flatten(1).norm(dim=1) / math.sqrt(op.n_measurements()) / sigma
    rows = [{"row": "A⁺y (baseline)", "psnr_first": float(psnr(ref, x).mean()),
             "consistency_first_sigma": float(r0.mean())}]
    for name in STARTS:
        start = time.perf_counter()
        if name == "gt":
            x_T = ddim_invert(model, x, s.skip, 10)
        else:
            init = "noise" if name == "noise" else "pinv"
            x_T = start_point(model, init, ref, s.skip, torch.Generator().manual_seed(seed + 1))
        trace = Trace(x, op.n_measurements(), sigma)
        lr = task_lr(s.lr, op.name, "noise" if name == "noise" else "pinv")
        optimise_initial_noise(model, x_T, residual_norm(y, op.forward_op), trace, skip=s.skip, iters=iters,
                               lr=lr, grad=s.grad)
        row = {"row": f"SHRED from {START_LABELS[name]}", "lr": lr}
        row.update(trace.summary(s.tau))
        row["seconds_per_image"] = (time.perf_counter() - start) / len(x)
        rows.append(row)
        log.info("%s: %s", row["row"], {k: round(v, 2) for k, v in row.items() if k != "row"})
    return rows


def parse_restore(spec: str) -> list[tuple[str, str, float]]:
    """``method=task:σ,...`` → [(method, task, σ)]."""
    out = []
    for item in (v.strip() for v in spec.split(",") if v.strip()):
        method, _, rest = item.partition("=")
        task, _, sigma = rest.rpartition(":")
        try:
            out.append((method, task, float(sigma)))
        except ValueError:
            raise ConfigError(f"bad --restore item {item!r}; expected method=task:sigma, e.g. shred=sr4:10") from None
        if not method or not task:
            raise ConfigError(f"bad --restore item {item!r}; expected method=task:sigma, e.g. shred=sr4:10")
    return out


def restore_rows(model, x: torch.Tensor, method: str, task: str, sigma: float, cfg: RestoreConfig, seed: int,
                 grid: str | None, label: str) -> list[dict]:
    """One row: ``method`` on every crop (one restore_one call each, seed ``seed + i``) against the baseline."""
    op = build_operator(task, tuple(x.shape[1:])).to(model.device)
    blind = method == "shred_blind"
    per, tiles = [], []
    for i in range(len(x)):
        y = op.degrade(x[i:i + 1], sigma, torch.Generator().manual_seed(seed + i))
        base = op.A_pinv(y).clamp(-1, 1) if op.is_linear else y
        start = time.perf_counter()
        out, info = restore_one(y, None if blind else op, model, cfg, method=method, seed=seed + i)
        seconds = time.perf_counter() - start
        c = consistency(out, y, op) if op.is_linear else float("nan")
        per.append((float(psnr(base, x[i:i + 1])), float(psnr(out, x[i:i + 1])), c, info["iterations"], seconds))
        tiles.append(torch.cat([x[i:i + 1], base, out.to(x)], -1))
    if grid:
        os.makedirs(grid, exist_ok=True)
        write_png(torch.cat(tiles, -2), os.path.join(grid, f"{label}_{method}_{task.replace(':', '_')}.png"))
    mean = [sum(v) / len(v) for v in zip(*per)]
    return [{"row": f"{method} on {task} σ{sigma:g}", "psnr_baseline": mean[0], "psnr": mean[1],
             "gain": mean[1] - mean[0], "psnr_min_gain": min(p[1] - p[0] for p in per), "consistency": mean[2],
             "iterations": mean[3], "seconds_per_image": mean[4]}]


def format_table(rows: list[dict]) -> str:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("row", "split")]
    lines = ["| split | row | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        cells = [f"{r[k]:.4g}" if k in r else "" for k in keys]
        lines.append(f"| {r['split']} | {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_bench(model, task: str, noise: float, n_images: int, size: int, fixed_points: list[int], iters: int,
              cfg: RestoreConfig, seed: int, splits: list[str], restore: list[tuple[str, str, float]],
              restore_cfg: RestoreConfig, grid: str | None) -> list[dict]:
    op = build_operator(task, (model.in_channels, size, size)).to(model.device)
    if iters > 0 and not op.is_linear:
        raise ConfigError(f"bench inversion's search needs a linear task (SHRED); {task!r} is not")
    rows = []
    for split in splits:
        x, sources = random_crops(SPLITS[split], n_images, size, seed=seed)
        x = x.to(model.device)
        log.info("%s crops: %s", split, sources)
        found = range_rows(model, x, cfg.shred.skip, fixed_points, seed) if fixed_points else []
        found += search_rows(model, x, op, noise, cfg, iters, seed) if iters > 0 else []
        for method, rtask, sigma in restore:
            found += restore_rows(model, x, method, rtask, sigma, restore_cfg, seed, grid, split)
            log.info("%s", found[-1])
        rows += [{"split": split, **row} for row in found]
    return rows


def main(args) -> int:
    try:
        fixed_points = [int(v) for v in args.fixed_point.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"bad --fixed-point {args.fixed_point!r}; expected e.g. 0,3,10") from None
    if (fixed_points and min(fixed_points) < 0) or args.n_images < 1 or args.iters < 0:
        raise ConfigError("--fixed-point values must be >= 0, --n-images >= 1 and --iters >= 0")
    splits = [v.strip() for v in args.splits.split(",") if v.strip()]
    if not splits or any(v not in SPLITS for v in splits):
        raise ConfigError(f"bad --splits {args.splits!r}; accepted: {', '.join(SPLITS)}")
    restore = parse_restore(args.restore)
    torch.set_num_threads(args.threads)
    cfg = RestoreConfig().with_overrides(args.set)
    restore_cfg = (RestoreConfig.preset(args.preset) if args.preset else RestoreConfig()).with_overrides(args.set)
    model = load_diffusion_model(args.model)
    rows = run_bench(model, args.task, args.noise, args.n_images, args.size, fixed_points, args.iters, cfg,
                     args.seed, splits, restore, restore_cfg, args.grid)
    print(f"DDIM inversion, skip {cfg.shred.skip}, {args.task} σ = {args.noise:g}, {args.n_images} crops of "
          f"{args.size}² per split, {args.iters} SHRED iterations")
    print(format_table(rows))
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump({"task": args.task, "noise": args.noise, "size": args.size, "iters": args.iters,
                       "preset": args.preset, "overrides": args.set, "seed": args.seed, "rows": rows}, fh, indent=2)
    return 0
