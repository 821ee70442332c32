"""``adir bench core``: the cost of the core operations, and the guidance-scale table.

Timings on the shipped prior (``models/prior``) or on ``--model``, at ``--size``² (64² by
default): ms per UNet forward (batch 1), seconds for a guided
sr4 sample of ``--long-steps`` (1000) and ``--short-steps`` (100) steps, and seconds per
LoRA adaptation iteration at batch ``--batch`` (6, Table 1). One CPU thread unless
``--threads`` says otherwise, so numbers compare across machines' single cores.

``--scales`` instead measures the data consistency ‖A x̂ − y‖/√m (0–255 scale,
``metrics.consistency``) of guided sampling per task over a grid of guidance scales, on
held-out photo crops degraded with noise σ = ``--noise`` (0–255); this is the table
behind ``sampling.alg1.DEFAULT_SCALES``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

TASKS = ("sr2", "sr4", "sr8", "deblur_box5", "deblur_gauss", "colorize", "inpaint", "cs")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="diffusion model spec (default: the shipped prior)")
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--forward-reps", type=int, default=20)
    p.add_argument("--long-steps", type=int, default=1000)
    p.add_argument("--short-steps", type=int, default=100)
    p.add_argument("--adapt-iters", type=int, default=10)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--scales", action="store_true", help="measure consistency per task and scale instead")
    p.add_argument("--scale-grid", default="0,0.5,1,2,4", help="scales for --scales (comma-separated)")
    p.add_argument("--scale-mode", default="normalized", choices=("normalized", "paper"))
    p.add_argument("--steps", type=int, default=100, help="sampling steps for --scales")
    p.add_argument("--tasks", default=",".join(TASKS), help="tasks for --scales")
    p.add_argument("--noise", type=float, default=10.0, help="noise σ on the 0-255 scale for --scales")
    p.add_argument("--n", type=int, default=2, help="images per task for --scales")
    p.add_argument("--json", default=None, help="also write the results as JSON here")


def _model(args):
    """``--model``, or the shipped prior."""
    from restore_core.models.pixel_unet import load_diffusion_model

    return load_diffusion_model(args.model)


class _Clock:
    """Wall and CPU (process) seconds of a block: on a shared box the CPU time of this
    one-thread process is the stable number, the wall time shows the contention."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def bench_timings(model, args) -> dict:
    from restore_core.adaptation import adapt_lora, lora_adapter
    from restore_core.operators import build_operator
    from restore_core.sampling.alg1 import guided_ddpm_sample

    size = args.size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = {"size": size, "threads": torch.get_num_threads(), "model": model.spec}
    with torch.no_grad():
        model.eps(x, 500)  # warm-up
        with _Clock() as c:
            for _ in range(args.forward_reps):
                model.eps(x, 500)
    out["ms_per_forward"] = {"wall": 1000 * c.wall / args.forward_reps, "cpu": 1000 * c.cpu / args.forward_reps}
    op = build_operator("sr4", (3, size, size))
    y = op.A(x.clamp(-1, 1))
    for key, steps in (("sample_short", args.short_steps), ("sample_long", args.long_steps)):
        with _Clock() as c:
            guided_ddpm_sample(model, y, op, steps=steps, generator=torch.Generator().manual_seed(0))
        out[f"seconds_{key}"] = {"wall": c.wall, "cpu": c.cpu, "steps": steps}
    images = torch.rand(6, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with lora_adapter(model) as params:
        adapt_lora(model, images, params, iters=1, batch_size=args.batch, seed=0)  # warm-up
        with _Clock() as c:
            adapt_lora(model, images, params, iters=args.adapt_iters, batch_size=args.batch, seed=1)
    out["seconds_per_adapt_iter"] = {"wall": c.wall / args.adapt_iters, "cpu": c.cpu / args.adapt_iters,
                                     "batch": args.batch}
    return out


def bench_scales(model, args) -> list[dict]:
    from restore_core.bundled_photos import HELDOUT_PHOTOS, random_crops
    from restore_core.errors import SamplingDivergedError
    from restore_core.metrics import consistency
    from restore_core.operators import build_operator
    from restore_core.sampling.alg1 import guided_ddpm_sample

    x, _ = random_crops(HELDOUT_PHOTOS, args.n, args.size, seed=0)
    rows = []
    for task in args.tasks.split(","):
        op = build_operator(task, (3, args.size, args.size))
        y = op.degrade(x, args.noise, torch.Generator().manual_seed(1))
        row = {"task": task, "lambda_max": op.lambda_max(), "noise": args.noise, "steps": args.steps,
               "mode": args.scale_mode, "truth": consistency(x, y, op)}
        for s in (float(v) for v in args.scale_grid.split(",")):
            try:
                xh, _ = guided_ddpm_sample(model, y, op, scale=s, steps=args.steps, scale_mode=args.scale_mode,
                                           generator=torch.Generator().manual_seed(0))
                row[f"s={s:g}"] = consistency(xh, y, op)
            except SamplingDivergedError:
                row[f"s={s:g}"] = float("nan")
        rows.append(row)
        print("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main(args) -> int:
    torch.set_num_threads(args.threads)
    model = _model(args)
    if args.scales:
        result = {"scales": bench_scales(model, args)}
    else:
        result = bench_timings(model, args)
        r = result
        print(f"{r['model']}, {r['threads']} thread(s); wall / CPU seconds of this process:")
        print(f"  forward (batch 1)               {r['ms_per_forward']['wall']:8.1f} / {r['ms_per_forward']['cpu']:.1f} ms")
        for key in ("sample_short", "sample_long"):
            t = r[f"seconds_{key}"]
            print(f"  guided sr4 sample, {t['steps']:4d} steps  {t['wall']:8.2f} / {t['cpu']:.2f} s")
        t = r["seconds_per_adapt_iter"]
        print(f"  adaptation iteration (batch {t['batch']})  {t['wall']:8.3f} / {t['cpu']:.3f} s")
    if args.json:
        from restore_core import storage

        storage.atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    return 0
