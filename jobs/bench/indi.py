"""``adir bench indi``: InDI's perception–distortion table over the number of steps N
("Inversion by Direct Iteration", Table 3 / Fig. 3).

Held-out crops (``bundled_photos.HELDOUT_PHOTOS``, never seen in training) are degraded
by the model's own task; each N in ``--steps`` restores them with the chosen sampler and
the table reports the mean PSNR / SSIM (distortion) and the offline no-reference metrics
(perception; PIQE by default, plus any of niqe, musiq, musiq-ava whose weights are in
``--metrics-weights-dir``), and seconds per image. The degraded input itself is the first
row. Results also go to ``--output`` as JSON.

Example::

    adir bench indi --model models/indi-jpeg --n-images 8 --size 64
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from jobs.train.indi import degrade_pairs
from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
from restore_core.errors import ConfigError
from restore_core.methods.indi import indi_sample
from restore_core.metrics import compute_metrics
from restore_core.models.indi_model import default_indi_dir, load_indi_model

log = logging.getLogger("adir.bench_indi")
DISTORTION = ("psnr", "ssim")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=default_indi_dir("jpeg"), help="trained InDI model folder")
    p.add_argument("--steps", default="1,2,4,10,50", help="comma-separated N values")
    p.add_argument("--sampler", choices=("indi", "naive", "cold"), default="indi")
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="crop size")
    p.add_argument("--perception", default="piqe", help="no-reference metrics, comma-separated")
    p.add_argument("--metrics-weights-dir", default=None, help="weights for niqe / musiq (offline)")
    p.add_argument("--output", default="runs/bench_indi.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def run_bench(model, x: torch.Tensor, y: torch.Tensor, steps: list[int], sampler: str, perception: tuple[str, ...],
              weights_dir: str | None, seed: int) -> list[dict]:
    names = DISTORTION + perception
    rows = [_score("input y", x, y, names, weights_dir, 0.0)]
    for n in steps:
        start = time.perf_counter()
        out = torch.cat([indi_sample(model, y[i:i + 1], n, sampler, generator=torch.Generator().manual_seed(seed + i))
                         for i in range(len(y))]).clamp(-1, 1)
        rows.append(_score(f"N={n}", x, out, names, weights_dir, (time.perf_counter() - start) / len(y)))
        log.info("N=%d done", n)
    return rows


def _score(label: str, x: torch.Tensor, out: torch.Tensor, names, weights_dir, seconds: float) -> dict:
    per = [compute_metrics(out[i:i + 1], x[i:i + 1], names, weights_dir) for i in range(len(x))]
    row = {"row": label, "seconds_per_image": seconds}
    row.update({k: sum(m[k] for m in per) / len(per) for k in per[0]})
    return row


def format_table(rows: list[dict]) -> str:
    keys = [k for k in rows[0] if k != "row"]
    lines = ["| steps | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + r["row"] + " | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(args) -> int:
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"bad --steps {args.steps!r}; expected e.g. 1,2,4,10,50") from None
    if not steps or min(steps) < 1:
        raise ConfigError(f"bad --steps {args.steps!r}; every N must be >= 1")
    torch.set_num_threads(args.threads)
    model = load_indi_model(args.model)
    x, _ = random_crops(HELDOUT_PHOTOS, args.n_images, args.size, seed=args.seed)
    y = degrade_pairs(x, model.task, generator=torch.Generator().manual_seed(args.seed))
    perception = tuple(n for n in args.perception.split(",") if n)
    rows = run_bench(model, x, y, steps, args.sampler, perception, args.metrics_weights_dir, args.seed)
    print(f"InDI {model.task} ({args.model}), sampler {args.sampler}, {args.n_images} held-out crops of "
          f"{args.size}², ε = {model.eps} ({model.noise_schedule})")
    print(format_table(rows))
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump({"model": args.model, "task": model.task, "sampler": args.sampler, "rows": rows}, fh, indent=2)
    return 0
