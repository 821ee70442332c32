"""``adir bench diip``: DIIP's PSNR-vs-iteration curves, and where its stopping rules stop.

DIIP (Diffusion Image Prior, eq. 2) minimises ‖g(z) − y‖² over the initial noise z of the
prior's deterministic DDIM g, and relies on early stopping: g's range holds noisy images
too (``adir bench inversion``), so the optimum reproduces the degradation. This bench
measures the path. For each task (``denoise:σ``, ``jpeg:σ`` with JPEG's own quality), start
(``methods.diip.INITS``) and learning rate, it runs DIIP's loop
(``shred.optimise_initial_noise`` with ``diip.pixel_loss``) for ``--iters`` iterations on
training crops without stopping, and scores every iterate against the ground truth (the
GT is used only here, never by the method). Beside it, the method's own rules
(``diip.StoppingRules`` per image, ``rules_for(diip.rule)``, σ as the method estimates it)
are fed the same iterates and record where they would stop, and ``keep_or_input`` (the
safeguard) is applied to that output.

Columns (gains in dB over y, mean over crops; ``_min`` is the worst crop): ``ref`` (the
image the start inverts: y, or the prior's Tweedie estimate; none from N(0, I)), ``first``
(the start, g(z⁰): ``ref`` less the inversion's error), ``peak`` and ``peak_iter`` (the best iterate, an oracle), ``stop`` and
``stop_iter`` (the rules' output after the safeguard: what the method returns), ``last``,
and ``loss_first`` / ``loss_last`` in units of the rules' noise variance σ² (``rule_sigma``).
The JSON holds the mean gain per iteration of every row, and the per-crop figures.

Examples (the README's curves: Algorithm 1 from N(0, I), then the method's denoised start;
``--set noise_sigma=12`` fixes σ instead of estimating it)::

    adir bench diip --tasks denoise:25,jpeg:0 --starts noise --lrs 0.01,0.03 --iters 40 --n-images 1
    adir bench diip --tasks denoise:25,jpeg:0 --starts denoised --lrs 0.0003,0.003 --iters 15 --n-images 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from jobs.bench.inversion import SPLITS, psnr
from restore_core.bundled_photos import random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError
from restore_core.methods.diip import (
    DISCREPANCY_TAU,
    INITS,
    StoppingRules,
    keep_or_input,
    pixel_loss,
    rule_sigma,
    rules_for,
    start_point,
)
from restore_core.methods.shred import noise_level, optimise_initial_noise
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator

log = logging.getLogger("adir.bench_diip")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="prior folder or hub id (default: the shipped prior)")
    p.add_argument("--tasks", default="denoise:25,jpeg:0", help="task:σ(0-255),... (jpeg: its default q 15)")
    p.add_argument("--starts", default=",".join(INITS), help=f"comma-separated subset of {', '.join(INITS)}")
    p.add_argument("--lrs", default="0.003", help="Adam learning rates, comma-separated")
    p.add_argument("--iters", type=int, default=40, help="iterations per curve (never stopped early)")
    p.add_argument("--n-images", type=int, default=2, help="crops (batched: one curve per crop)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--split", default="train", choices=list(SPLITS), help="tune on train only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="DIIP config overrides (diip.skip, diip.rule, diip.grad, noise_sigma, ...)")
    p.add_argument("--output", default="runs/bench_diip.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=100)


class Curve:
    """A never-stopping monitor: per-iteration PSNR gain over y, and per image the
    method's rules fed the same iterates (what they return, and when, the first time they fire)."""

    def __init__(self, gt, y, make_rules):
        self.gt, self.y_psnr = gt, psnr(y, gt)
        self.gains: list[torch.Tensor] = []
        self.losses: list[torch.Tensor] = []
        self.rules = [make_rules() for _ in range(len(gt))]
        self.stopped: list[tuple[int, torch.Tensor] | None] = [None] * len(gt)
        self.last = None

    def __call__(self, k, x0, losses):
        self.gains.append(psnr(x0, self.gt) - self.y_psnr)
        self.losses.append(losses)
        for i, rules in enumerate(self.rules):
            if self.stopped[i] is None and rules(k, x0[i:i + 1], losses[i:i + 1]):
                self.stopped[i] = (rules.fired_at, rules.x)
        self.last = x0

    def outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image, the rules' output (the last iterate where none fired) and its iteration."""
        xs = [s[1] if s else self.last[i:i + 1] for i, s in enumerate(self.stopped)]
        ks = [s[0] if s else len(self.gains) for s in self.stopped]
        return torch.cat(xs), torch.tensor(ks, dtype=torch.float)


def curve_row(model, x, task: str, sigma: float, init: str, lr: float, iters: int, cfg: RestoreConfig,
              seed: int) -> dict:
    """One curve per crop of ``x`` for (task, start, lr); the row's summary and mean curve."""
    d = cfg.diip
    op = build_operator(task, tuple(x.shape[1:])).to(x.device)
    y = torch.cat([op.degrade(x[i:i + 1], sigma, torch.Generator().manual_seed(seed + i)) for i in range(len(x))])
    levels = [noise_level(y[i:i + 1], cfg.noise_sigma) for i in range(len(y))]  # as the method, per image
    sigmas = [rule_sigma(lv[1]) for lv in levels]
    rules = rules_for(d.rule, op)
    start = time.perf_counter()
    starts = [start_point(model, init, y[i:i + 1], levels[i][0], d.skip, torch.Generator().manual_seed(seed + i))
              for i in range(len(y))]
    z = torch.cat([s[0] for s in starts])
    inverted = torch.cat([s[1] for s in starts]) if init != "noise" else None
    refs = [s[1] if init == "denoised" and "noise" in rules else None for s in starts]  # as the method
    seconds_start = time.perf_counter() - start
    # one StoppingRules per image, at the image's own σ² (built in image order by Curve)
    variances = iter([(DISCREPANCY_TAU * s) ** 2 for s in sigmas])
    curve = Curve(x, y, lambda: StoppingRules(rules, d.slope_eps, d.slope_window, d.k_min, d.patience,
                                              noise_var=next(variances)))
    start = time.perf_counter()
    optimise_initial_noise(model, z, pixel_loss(y), curve, skip=d.skip, iters=iters, lr=lr, grad=d.grad)
    seconds = time.perf_counter() - start
    out, stop_k = curve.outputs()
    kept = torch.cat([keep_or_input(out[i:i + 1], y[i:i + 1], sigmas[i] if "noise" in rules else 0.0, refs[i])[0]
                      for i in range(len(y))])
    g = torch.stack(curve.gains)  # (iterations, B)
    noise_var = torch.tensor([s**2 for s in sigmas])
    loss = torch.stack(curve.losses) / noise_var
    stop = psnr(kept, x) - curve.y_psnr
    peak = g.max(0)
    return {"task": f"{task} σ{sigma:g}", "start": init, "lr": lr, "y_psnr": float(curve.y_psnr.mean()),
            "ref": float((psnr(inverted, x) - curve.y_psnr).mean()) if inverted is not None else float("nan"),
            "first": float(g[0].mean()), "peak": float(peak.values.mean()), "peak_min": float(peak.values.min()),
            "peak_iter": float(peak.indices.float().mean() + 1), "stop": float(stop.mean()),
            "stop_min": float(stop.min()), "stop_iter": float(stop_k.mean()), "last": float(g[-1].mean()),
            "loss_first": float(loss[0].mean()), "loss_last": float(loss[-1].mean()),
            "seconds_start": seconds_start / len(x), "seconds_per_iter": seconds / len(x) / max(len(g), 1),
            "curve": [round(float(v), 3) for v in g.mean(1)],
            "per_image": {"first": g[0].tolist(), "peak": peak.values.tolist(), "stop": stop.tolist(),
                          "stop_iter": stop_k.tolist(), "loss_first": loss[0].tolist()}}


def parse_tasks(spec: str) -> list[tuple[str, float]]:
    out = []
    for item in (v.strip() for v in spec.split(",") if v.strip()):
        task, _, sigma = item.rpartition(":")
        try:
            out.append((task, float(sigma)))
        except ValueError:
            raise ConfigError(f"bad --tasks item {item!r}; expected task:sigma, e.g. denoise:25") from None
        if not task:
            raise ConfigError(f"bad --tasks item {item!r}; expected task:sigma, e.g. denoise:25")
    return out


def format_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k not in ("task", "start", "curve", "per_image")] if rows else []
    lines = ["| task | start | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['start']} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    return "\n".join(lines)


def main(args) -> int:
    tasks = parse_tasks(args.tasks)
    starts = [v.strip() for v in args.starts.split(",") if v.strip()]
    if not starts or any(s not in INITS for s in starts):
        raise ConfigError(f"bad --starts {args.starts!r}; accepted: {', '.join(INITS)}")
    try:
        lrs = [float(v) for v in args.lrs.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"bad --lrs {args.lrs!r}; expected e.g. 0.003,0.01") from None
    if not tasks or not lrs or min(lrs) <= 0 or args.iters < 1 or args.n_images < 1:
        raise ConfigError("--tasks and --lrs must be non-empty, learning rates > 0, --iters and --n-images >= 1")
    torch.set_num_threads(args.threads)
    cfg = RestoreConfig().with_overrides(args.set)
    model = load_diffusion_model(args.model)
    x, sources = random_crops(SPLITS[args.split], args.n_images, args.size, seed=args.seed)
    x = x.to(model.device)
    log.info("%s crops: %s", args.split, sources)
    rows = []
    for task, sigma in tasks:
        for init in starts:
            for lr in lrs:
                rows.append(curve_row(model, x, task, sigma, init, lr, args.iters, cfg, args.seed))
                log.info("%s", {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in rows[-1].items()
                                if k not in ("curve", "per_image")})
    print(f"DIIP curves, {args.split} crops {sources} at {args.size}², {args.iters} iterations, skip {cfg.diip.skip}, "
          f"rules {cfg.diip.rule}")
    print(format_table(rows))
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump({"split": args.split, "sources": sources, "size": args.size, "iters": args.iters,
                       "overrides": args.set, "seed": args.seed, "rows": rows}, fh, indent=2)
    return 0
