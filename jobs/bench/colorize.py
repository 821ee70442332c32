"""``adir bench colorize``: where a colorization's colour comes from, measured as a cast.

Colorize (ADIR §4.3) observes only the channel mean y = ⅓(R + G + B)
(``restore_core.operators.color``): A⁺ and Aᵀ replicate y, and every sampler's data step
moves x along (1, 1, 1) only, so the two chroma dimensions of the output are the prior's
alone. A global colour cast is then a property of the prior as the sampler draws from
it, not of the guidance. This bench measures it per sampler on the same crops:

* the cast: the image-mean (Cb, Cr) of the output minus the ground truth's (ITU-R
  BT.601 chroma, 0–255 scale; a blue cast is ΔCb > 0 with ΔCr < 0), averaged over crops,
  and the mean length of that difference per crop (``cast``). ``pinv`` (the grey
  image, zero chroma) is the floor a sampler must beat to add any colour information;
* PSNR and the luminance consistency ‖A x̂ − y‖/√m (0–255);
* ``--unconditional``: the prior's own unconditional DDPM samples (Algorithm 1 with
  s = 0) beside the mean (Cb, Cr) of the crops, which shows whether the prior's samples
  carry the cast with no measurement at all.

Rows run ``gd`` (no adaptation) through ``restore_one`` with each ``--samplers`` entry
(``sampler=alg1|ddrm|diffpir|dps``, ``restore_core.sampling.peers``). Crops come from
the training photos by default (``--split``): tune on ``train`` only. ``--grid FILE``
writes a PNG with one row per arm (ground truth first) to look at.

Example::

    adir bench colorize --images 8 --samplers alg1,ddrm,diffpir --unconditional --grid /tmp/colorize/grid.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops
from restore_core.config import RestoreConfig
from restore_core.errors import ConfigError
from restore_core.images import write_png
from restore_core.metrics import consistency
from restore_core.models.pixel_unet import load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one
from restore_core.sampling.alg1 import guided_ddpm_sample
from restore_core.sampling.peers import SAMPLERS

#: BT.601 rows of (Cb, Cr) on RGB (ITU-R BT.601; JPEG's YCbCr without the 128 offset)
CBCR = torch.tensor([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64)
SPLITS = {"train": TRAIN_PHOTOS, "heldout": HELDOUT_PHOTOS}
GREY_PHOTOS = ("brick", "grass", "gravel", "camera", "moon")  # greyscale sources: nothing to colorize


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="diffusion prior spec (default: the shipped models/prior)")
    p.add_argument("--images", type=int, default=8, help="crops of colour photos (default 8)")
    p.add_argument("--size", type=int, default=None, help="crop side (default: the prior's sample size)")
    p.add_argument("--steps", type=int, default=100, help="diffusion steps (default 100, the fast preset's)")
    p.add_argument("--samplers", default="alg1,ddrm,diffpir", help=f"comma-separated subset of {', '.join(SAMPLERS)}")
    p.add_argument("--unconditional", action="store_true", help="add the prior's unconditional samples")
    p.add_argument("--split", default="train", choices=tuple(SPLITS), help="photos of the crops (default train)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--grid", default=None, help="PNG file: ground truth, then one row per arm")
    p.add_argument("--output", default="runs/bench_colorize.json")
    p.add_argument("--threads", type=int, default=2)


def mean_cbcr(x: torch.Tensor) -> torch.Tensor:
    """Image-mean (Cb, Cr) of RGB images in [−1, 1] on the 0–255 scale, (B, 2)."""
    return torch.einsum("kc,bc->bk", CBCR, x.double().mean((2, 3))) * 127.5


def colour_crops(split: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``n`` crops of the split's colour photos (greyscale sources left out)."""
    return random_crops(tuple(p for p in SPLITS[split] if p not in GREY_PHOTOS), n, size, seed=seed)


def cast_row(arm: str, x: torch.Tensor, gt: torch.Tensor, y: torch.Tensor | None, op, seconds: float) -> dict:
    """The cast numbers of one arm's outputs ``x`` against ``gt`` (module doc)."""
    d = mean_cbcr(x) - mean_cbcr(gt)
    mse = ((x - gt) / 2).pow(2).flatten(1).mean(1)
    row = {"arm": arm, "d_cb": float(d[:, 0].mean()), "d_cr": float(d[:, 1].mean()),
           "cast": float(d.norm(dim=1).mean()), "cb": float(mean_cbcr(x)[:, 0].mean()),
           "cr": float(mean_cbcr(x)[:, 1].mean()), "seconds_per_image": seconds / len(x)}
    if y is not None:
        row["psnr"] = float((10 * torch.log10(1 / mse.clamp_min(1e-12))).mean())
        row["consistency"] = sum(consistency(x[i:i + 1], y[i:i + 1], op) for i in range(len(x))) / len(x)
    return row


def restore_all(arm: str, y: torch.Tensor, op, model, steps: int, seed: int) -> torch.Tensor:
    """``gd`` with sampler ``arm`` (or ``pinv``) on every crop, seed ``seed + i``."""
    overrides = ["method=pinv"] if arm == "pinv" else ["method=gd", f"sampler={arm}", "noise_sigma=0"]
    cfg = RestoreConfig().with_overrides(overrides + [f"steps={steps}"])
    return torch.cat([restore_one(y[i:i + 1], op, model, cfg, seed=seed + i)[0].cpu() for i in range(len(y))])


def run_bench(model, n: int, size: int, steps: int, samplers: list[str], unconditional: bool, split: str,
              seed: int) -> tuple[list[dict], torch.Tensor, list[torch.Tensor]]:
    """Rows (module doc), the ground-truth crops and each arm's outputs."""
    gt, _ = colour_crops(split, n, size, seed)
    op = build_operator("colorize", (model.in_channels, size, size))
    y = op.A(gt)
    rows = [cast_row("ground truth", gt, gt, None, op, 0.0)]
    outputs = []
    for arm in ["pinv"] + samplers:
        start = time.perf_counter()
        x = restore_all(arm, y, op, model, steps, seed)
        rows.append(cast_row(arm if arm == "pinv" else f"gd, sampler={arm}", x, gt, y, op,
                             time.perf_counter() - start))
        outputs.append(x)
    if unconditional:
        start = time.perf_counter()
        x, _ = guided_ddpm_sample(model, None, None, steps=steps, generator=torch.Generator().manual_seed(seed),
                                  image_shape=(model.in_channels, size, size), batch_size=n)
        rows.append(cast_row("prior, unconditional", x.cpu(), gt, None, op, time.perf_counter() - start))
        outputs.append(x.cpu())
    return rows, gt, outputs


def format_table(rows: list[dict]) -> str:
    keys = ("d_cb", "d_cr", "cast", "cb", "cr", "psnr", "consistency", "seconds_per_image")
    lines = ["| arm | ΔCb | ΔCr | cast | Cb | Cr | PSNR | consistency | s / image |", "|---" * 9 + "|"]
    for r in rows:
        lines.append(f"| {r['arm']} | " + " | ".join(f"{r[k]:.2f}" if k in r else "" for k in keys) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    if any(s not in SAMPLERS for s in samplers):
        raise ConfigError(f"bad --samplers {args.samplers!r}; accepted: {', '.join(SAMPLERS)}")
    if args.images < 1:
        raise ConfigError(f"--images must be >= 1, got {args.images}")
    torch.set_num_threads(args.threads)
    model = load_diffusion_model(args.model)
    size = args.size or model.sample_size
    rows, gt, outputs = run_bench(model, args.images, size, args.steps, samplers, args.unconditional, args.split,
                                  args.seed)
    print(f"colorize, {args.images} {args.split} crops of {size}², {args.steps} steps; (Cb, Cr) on 0-255, "
          "Δ = output - ground truth, cast = mean |Δ| per crop")
    print(format_table(rows))
    if args.grid:
        os.makedirs(os.path.dirname(args.grid) or ".", exist_ok=True)
        write_png(torch.cat([torch.cat(list(x), -1) for x in [gt] + outputs], -2)[None], args.grid)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output, "w") as fh:
            json.dump({"split": args.split, "images": args.images, "size": size, "steps": args.steps,
                       "seed": args.seed, "rows": rows}, fh, indent=2)
    return 0
