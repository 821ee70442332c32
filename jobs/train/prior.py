"""``adir train-prior``: the project's own small pixel-space DDPM prior.

An ε-prediction DDPM ("Denoising Diffusion Probabilistic Models", ℓ_simple, eq. 14 there;
eq. 6 of the ADIR paper: ‖ε − ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖²) with a diffusers
``UNet2DModel`` and a linear-β ``DDPMScheduler`` of T = 1000, trained on random crops of
the bundled prior training photos (``restore_core.bundled_photos.PRIOR_TRAIN_PHOTOS``;
the held-out photos never enter training), optionally mixed with synthetic dead-leaves
images (``--synthetic``, ``jobs.train.dead_leaves``).

The UNet is fully convolutional with no attention, so it is trained on small patches
(32² by default: four times cheaper per step than 64²) and runs at 64² or larger at
inference. EMA weights are exported with ``save_pretrained`` in the diffusers pipeline
layout (``unet/`` + ``scheduler/``) together with ``training.json`` (command, seed,
steps, losses, wall time, held-out loss against time).

Training is resumable (``jobs.train.loop``): ``<run-dir>/checkpoint.pt`` holds the model,
the EMA, the optimiser, the step, the data-pool seed and the RNG states; rerunning the
same command continues from it. ``--init-from <exported prior>`` starts a new phase from
shipped weights (their step count and held-out history carry on; the optimiser and the
warm-up restart; the older phases are listed in ``training.json``), and ``--anneal``
cosine-decays the learning rate over the phase's ``--minutes`` budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from jobs.train import dead_leaves, loop
from restore_core.bundled_photos import HELDOUT_PHOTOS, PRIOR_TRAIN_PHOTOS, random_crops
from restore_core.errors import ConfigError
from restore_core.models.pixel_unet import conv_unet

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
    p.add_argument("--init-from", default=None,
                   help="start a new run from an exported prior folder (its EMA weights, step and "
                        "held-out history; fresh optimiser and warm-up; --minutes counts from here)")
    p.add_argument("--synthetic", type=float, default=0.0,
                   help="fraction of every data pool made of dead-leaves images (jobs.train.dead_leaves) "
                        "coloured from the training photos' pixels (default 0: photos only)")
    p.add_argument("--anneal", action="store_true",
                   help="cosine-decay the learning rate to 5%% over this phase's --minutes budget")


def l_simple_batch(unet, alphas_cumprod: torch.Tensor, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """ℓ_simple averaged over the batch, for per-sample timesteps ``t``."""
    a = alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps = unet(xt, t).sample[:, :3]
    return torch.mean((eps - noise) ** 2)


def _init_from(prior_dir: Path, seed: int):
    """The UNet and run state of an exported prior: weights, step, wall time, history."""
    from diffusers import UNet2DModel

    meta_path = prior_dir / "training.json"
    if not meta_path.is_file():
        raise ConfigError(f"--init-from needs an exported prior folder with training.json: {prior_dir}")
    meta = json.loads(meta_path.read_text())
    loaded = UNet2DModel.from_pretrained(prior_dir / "unet")
    cfg = loaded.config  # rebuilt as a conv_unet: the same architecture, no source path in its config
    unet = conv_unet(tuple(cfg.block_out_channels), cfg.layers_per_block, cfg.sample_size, cfg.out_channels)
    unet.load_state_dict(loaded.state_dict())
    earlier = meta.get("earlier_phases", []) + [
        {"command": meta["command"], "steps": meta["steps"], "wall_seconds": meta["wall_seconds"],
         "train_photos": meta["train_photos"]}]
    seconds = float(meta["wall_seconds"])
    state = {**loop.new_state(seed + 10_000 * len(earlier)), "step": meta["steps"], "seconds": seconds,
             "history": meta["heldout_loss_vs_time"], "phase_start_seconds": seconds,
             "phase_start_step": meta["steps"], "earlier_phases": earlier}
    return unet, state


def main(args: argparse.Namespace) -> int:
    from diffusers import DDPMScheduler

    torch.set_num_threads(args.threads)
    if args.anneal and not args.minutes:
        raise ConfigError("--anneal needs a --minutes budget")
    if not 0 <= args.synthetic < 1:
        raise ConfigError(f"--synthetic is a fraction of each pool in [0, 1), got {args.synthetic}")
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    channels = tuple(int(c) for c in args.channels.split(","))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    acp = scheduler.alphas_cumprod.double()
    torch.manual_seed(args.seed)
    unet = conv_unet(channels, args.layers_per_block, args.sample_size)
    state = loop.new_state(args.seed)
    if args.init_from:  # its architecture, also when resuming this phase from a checkpoint
        unet, state = _init_from(Path(args.init_from), args.seed)
        channels = tuple(unet.config.block_out_channels)
    ema = loop.Ema(unet, args.ema_decay)
    opt = torch.optim.Adam(unet.parameters(), lr=args.lr)
    checkpoint = loop.Checkpoint(run_dir, {"unet": unet, "ema": ema, "opt": opt})
    if checkpoint.exists():
        state = checkpoint.load()
    elif args.init_from:
        log.info("initialised from %s at step %d", args.init_from, state["step"])
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("UNet %s, %.2fM parameters, patch %d, batch %d", channels, n_params / 1e6, args.patch, args.batch)

    # Fixed held-out evaluation: crops of held-out photos, fixed t and noise.
    g = torch.Generator().manual_seed(1234)
    held, _ = random_crops(HELDOUT_PHOTOS, 64, args.patch, seed=999)
    held_t = torch.randint(0, 1000, (64,), generator=g)
    held_noise = torch.randn(held.shape, generator=g)

    def on_eval(state: dict) -> None:
        with torch.no_grad():
            hl = float(l_simple_batch(ema.module, acp, held, held_t, held_noise))
        state["history"].append({"step": state["step"], "seconds": round(state["seconds"], 1),
                                 "train_loss": round(state["loss"], 5), "heldout_loss": round(hl, 5)})
        log.info("step %d  train %.4f  held-out %.4f  %.2f s/step", state["step"], state["loss"], hl,
                 state["seconds"] / max(1, state["step"]))

    def export(state: dict) -> None:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".prior-", dir=out.parent))
        tmp.chmod(0o755)
        ema.module.save_pretrained(tmp / "unet", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        meta = {
            "command": "adir train-prior " + " ".join(sys.argv[2:]),
            "seed": args.seed, "steps": state["step"], "batch": args.batch, "patch": args.patch,
            "channels": list(channels), "layers_per_block": unet.config.layers_per_block,
            "parameters": n_params, "lr": args.lr, "anneal": args.anneal, "ema_decay": args.ema_decay,
            "synthetic_fraction": args.synthetic,
            "final_train_loss": state.get("loss", float("nan")), "wall_seconds": round(state["seconds"], 1),
            "heldout_loss_vs_time": state["history"], "train_photos": list(PRIOR_TRAIN_PHOTOS),
            "heldout_photos": list(HELDOUT_PHOTOS), "earlier_phases": state.get("earlier_phases", []),
        }
        (tmp / "training.json").write_text(json.dumps(meta, indent=1))
        old = out.with_name(out.name + ".old")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        log.info("exported EMA weights at step %d to %s", state["step"], out)

    n_synthetic = round(args.pool * args.synthetic)
    palette = dead_leaves.photo_palette(PRIOR_TRAIN_PHOTOS) if n_synthetic else None

    def make_pool(seed: int) -> tuple[torch.Tensor]:
        photos = random_crops(PRIOR_TRAIN_PHOTOS, args.pool - n_synthetic, args.patch, seed=seed, scales=(0.25, 1.0))[0]
        if not n_synthetic:
            return (photos,)
        mixed = torch.cat([photos, dead_leaves.dead_leaves(n_synthetic, args.patch, palette, seed=seed)])
        return (mixed[torch.randperm(len(mixed), generator=torch.Generator().manual_seed(seed))],)

    def train_step(batch: tuple[torch.Tensor], step: int) -> float:
        (x0,) = batch
        t = torch.randint(0, 1000, (x0.shape[0],))
        noise = torch.randn_like(x0)
        lr = args.lr * min(1.0, (step - state.get("phase_start_step", 0) + 1) / args.warmup)
        if args.anneal:
            done = min(1.0, loop.phase_seconds(state) / (args.minutes * 60))
            lr *= 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done))
        loop.set_lr(opt, lr)
        loss = l_simple_batch(unet, acp, x0, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.update(unet)
        return loss.item()

    loop.run(state, steps=args.steps, minutes=args.minutes, pool=loop.Pool(make_pool, args.batch, state),
             train_step=train_step, eval_every=args.eval_every, on_eval=on_eval, checkpoint=checkpoint,
             export=export, export_every=args.export_every)
    if state["step"] % args.export_every or not Path(args.output).exists():
        export(state)
    return 0
