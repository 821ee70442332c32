"""``adir train-prior``: the project's own small pixel-space DDPM prior.

An ε-prediction DDPM (paper 000, eq. 6: ℓ_simple = ‖ε − ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖²)
with a diffusers ``UNet2DModel`` and a linear-β ``DDPMScheduler`` of T = 1000, trained on
random crops of the bundled *training* photos (``restore_core.bundled_photos``).

The UNet is fully convolutional with no attention, so it is trained on small patches
(32² by default: four times cheaper per step than 64²) and runs at 64² or larger at
inference. EMA weights are exported with ``save_pretrained`` in the diffusers pipeline
layout (``unet/`` + ``scheduler/``) together with ``training.json`` (command, seed,
steps, losses, wall time, held-out loss against time).

Training is resumable: ``<run-dir>/checkpoint.pt`` holds the model, the EMA, the
optimiser, the step, the data-pool seed and the RNG states; rerunning the same command
continues from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops

log = logging.getLogger("adir.train_prior")
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PRIOR_OUT = REPO_ROOT / "models" / "prior"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/prior", help="checkpoints and logs (resumed if present)")
    p.add_argument("--output", default=str(DEFAULT_PRIOR_OUT), help="where EMA weights are exported")
    p.add_argument("--steps", type=int, default=20000, help="total optimisation steps")
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes (0: no limit)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--patch", type=int, default=32, help="training crop size")
    p.add_argument("--sample-size", type=int, default=64, help="sample_size recorded in the UNet config")
    p.add_argument("--channels", default="32,64,96", help="block_out_channels")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--pool", type=int, default=3000, help="crops per data pool (refreshed each epoch)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--export-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def build_unet(channels: tuple[int, ...], layers_per_block: int, sample_size: int):
    """A fully convolutional UNet2DModel: no attention blocks, GroupNorm(8)."""
    from diffusers import UNet2DModel

    n = len(channels)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3,
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
        norm_num_groups=8,
    )


def l_simple_batch(unet, alphas_cumprod: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """ℓ_simple (eq. 6) averaged over the batch, for per-sample timesteps ``t``."""
    a = alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps = unet(xt, t).sample[:, :3]
    return torch.mean((eps - noise) ** 2)


def main(args: argparse.Namespace) -> int:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    channels = tuple(int(c) for c in args.channels.split(","))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    acp = scheduler.alphas_cumprod.double()
    torch.manual_seed(args.seed)
    unet = build_unet(channels, args.layers_per_block, args.sample_size)
    ema = EMAModel(unet.parameters(), decay=args.ema_decay)
    opt = torch.optim.Adam(unet.parameters(), lr=args.lr)
    state = {"step": 0, "pool_seed": args.seed, "seconds": 0.0, "history": []}
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)
        unet.load_state_dict(ckpt["unet"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        state = json.loads(ckpt["state"])
        torch.set_rng_state(ckpt["rng"])
        log.info("resumed from %s at step %d", ckpt_path, state["step"])
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("UNet %s, %.2fM parameters, patch %d, batch %d", channels, n_params / 1e6, args.patch, args.batch)

    # Fixed held-out evaluation: crops of held-out photos, fixed t and noise.
    g = torch.Generator().manual_seed(1234)
    held, _ = random_crops(HELDOUT_PHOTOS, 64, args.patch, seed=999)
    held_t = torch.randint(0, 1000, (64,), generator=g)
    held_noise = torch.randn(held.shape, generator=g)

    def heldout_loss() -> float:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        with torch.no_grad():
            loss = float(l_simple_batch(unet, acp, held, held_t, held_noise))
        ema.restore(unet.parameters())
        return loss

    def save_checkpoint() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "state": json.dumps(state), "rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, ckpt_path)

    def export(final_loss: float) -> None:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".prior-", dir=out.parent))
        tmp.chmod(0o755)
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        ema.restore(unet.parameters())
        scheduler.save_pretrained(tmp / "scheduler")
        meta = {
            "command": "adir train-prior " + " ".join(sys.argv[2:]),
            "seed": args.seed, "steps": state["step"], "batch": args.batch, "patch": args.patch,
            "channels": list(channels), "layers_per_block": args.layers_per_block,
            "parameters": n_params, "lr": args.lr, "ema_decay": args.ema_decay,
            "final_train_loss": final_loss, "wall_seconds": round(state["seconds"], 1),
            "heldout_loss_vs_time": state["history"], "train_photos": list(TRAIN_PHOTOS),
            "heldout_photos": list(HELDOUT_PHOTOS),
        }
        (tmp / "training.json").write_text(json.dumps(meta, indent=1))
        old = out.with_name(out.name + ".old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        log.info("exported EMA weights at step %d to %s", state["step"], out)

    def make_pool():
        crops, _ = random_crops(TRAIN_PHOTOS, args.pool, args.patch, seed=state["pool_seed"],
                                scales=(0.25, 1.0))
        return crops

    pool = make_pool()
    pos = state.get("pos", (state["step"] * args.batch) % args.pool)
    start = time.time() - state["seconds"]
    running = None
    while state["step"] < args.steps:
        if args.minutes and time.time() - start > args.minutes * 60:
            log.info("time budget reached")
            break
        if pos + args.batch > args.pool:
            state["pool_seed"] += 1
            pool, pos = make_pool(), 0
        x0 = pool[pos:pos + args.batch]
        pos += args.batch
        state["pos"] = pos
        t = torch.randint(0, 1000, (x0.shape[0],))
        noise = torch.randn_like(x0)
        lr = args.lr * min(1.0, (state["step"] + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = l_simple_batch(unet, acp, x0, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        state["step"] += 1
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        state["seconds"] = time.time() - start
        if state["step"] % args.eval_every == 0:
            hl = heldout_loss()
            state["history"].append({"step": state["step"], "seconds": round(state["seconds"], 1),
                                     "train_loss": round(running, 5), "heldout_loss": round(hl, 5)})
            log.info("step %d  train %.4f  held-out %.4f  %.2f s/step", state["step"], running, hl,
                     state["seconds"] / max(1, state["step"]))
            save_checkpoint()
        if state["step"] % args.export_every == 0:
            export(running)
    save_checkpoint()
    if state["step"] % args.export_every or not Path(args.output).exists():
        export(running if running is not None else float("nan"))
    return 0
