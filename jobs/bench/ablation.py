"""``adir bench ablation``: ADIR's Table 6 ablation at toy scale (ADIR §4, Table 6).

On ``--images`` held-out photo crops (``restore_core.bundled_photos.HELDOUT_PHOTOS``: no
crop of these photos is in the prior's training data or in the retrieval corpus), each
degraded by ``--task`` (+ Gaussian noise ``--noise`` on the 0–255 scale), five arms
restore the same y with the same seed (the paper compares arms at the same seed):

=============  ==========================================================================
``gd``         Algorithm 1 with the base prior, no adaptation (the paper's "GD")
``ia_y``       LoRA adapted on y itself (eq. 18), then Algorithm 1
``ia_random``  LoRA adapted on K random corpus images
``ia_mse``     LoRA adapted on the K pixel-MSE-nearest corpus images (thumbnails)
``adir``       LoRA adapted on the K embedding-nearest corpus images (eq. 19-20)
``ia_oracle``  LoRA adapted on K crops of the target's own photo, disjoint from the target
=============  ==========================================================================

``ia_oracle`` (``common.oracle_neighbours``) is the best any retrieval could do: its gap to
``gd`` is what adaptation on relevant images buys at this scale, its gap to ``adir`` what
retrieval loses. ``--set sampler=ddrm`` (or diffpir, dps) runs every arm with that sampler.

``--extra-arms`` adds other methods of the registry (``shred``, ``diip``, ``indi``; a
method that cannot run the task is reported as failed with its reason, never dropped) and
``bicubic`` (SR tasks: bicubic upsampling of y, the classical reference).

Every restoration goes through ``restore_core.restore.restore_one`` and the method code
the jobs use (``jobs.bench.common.run_arm``); the retrieval arms differ only in the
neighbour images (``index_builder.retrieval.Retriever.neighbours(mode=random|mse|clip)``).

Retrieval corpus: ``--index`` (an index folder from ``adir build-index``) or, by default,
``--corpus`` crops of the training photos exported to ``<output>/corpus`` and indexed
(exact ``flat`` index) into ``<output>/index`` with the shipped embedder (``--embedder``).

Reported per arm (``ablation.json``: a list, one object per arm; the same as
``ablation.parquet``): mean PSNR, SSIM, GMSD, NLPD and the other default pyiqa metrics (LPIPS, MUSIQ
too with ``--metrics-weights DIR``), ``heldout_loss`` — ℓ_simple (eq. 6) of the model the
arm sampled with (adapted or not) on the ground-truth crop, at 10 fixed timesteps and
noises per image — data consistency ‖A x̂ − y‖/√m (0–255), seconds per image per stage,
and the paired PSNR and GMSD differences to ``gd`` with their standard errors (and the
images where the arm beats gd); ``adir`` has its paired differences to every other arm.
``ablation_rows.parquet`` has one row per image and arm; ``ablation_run.json`` the exact
command, configuration, model/embedder/index provenance and machine; ``images/`` the
restored crops. The tables are rewritten after every image, and a rerun into the same
``--output`` resumes: rows whose inputs are unchanged (:data:`RESUME_KEYS`) are reused, so
an overnight run cut short loses at most one image; other inputs are an error unless
``--overwrite``.

Configuration: ``--preset`` (``fast`` by default: respaced steps and short adaptation, see
``RestoreConfig.PRESETS``; ``paper`` is Table 1) with ``--steps``, ``--iters``, ``--lr``,
``--k``, ``--scale`` and free ``--set key=value`` overrides on top. Do not tune on the
held-out crops: ``--split train`` runs the same bench on crops of the training photos (the
corpus's photos too), which is what tuning should use.

Imports ``jobs.bench.common`` (setup, arms, scoring) and ``jobs.bench.tables``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from jobs.bench.common import Arm, add_common_options, prepare, run_arm
from jobs.bench.tables import (
    previous_rows,
    print_table,
    run_info,
    summarise,
    write_tables,
)

log = logging.getLogger("adir.bench.ablation")

ARM_SPECS = {arm.name: arm for arm in (
    Arm("gd", "gd"), Arm("ia_y", "ia_y"), Arm("ia_random", "adir", "random"), Arm("ia_mse", "adir", "mse"),
    Arm("adir", "adir", "clip"), Arm("ia_oracle", "adir", "oracle"),
    Arm("bicubic", "bicubic"), Arm("pinv", "pinv"), Arm("shred", "shred"), Arm("diip", "diip"),
    Arm("indi", "indi"),
)}
ARMS = ("gd", "ia_y", "ia_random", "ia_mse", "adir", "ia_oracle")
EXTRA_ARMS = ("bicubic", "pinv", "shred", "diip", "indi")


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--extra-arms", default=None,
                   help=f"comma-separated extra arms from {', '.join(EXTRA_ARMS)} (default: bicubic for SR tasks)")
    p.add_argument("--save-images", type=int, default=8, help="write restored PNGs for the first N crops")
    p.add_argument("--overwrite", action="store_true",
                   help="start over instead of resuming the rows a previous run left in --output")


def run_rows(args, setup, arms: list[Arm], name: str, reference: str, start: float) -> tuple[list[dict], list[dict]]:
    """Every arm on every crop (same seed per crop for every arm), resuming the rows a
    previous run ``name`` left in ``args.output``; the tables are rewritten after every
    image, so an interrupted run leaves the tables of the images done."""
    from restore_core.images import write_png

    image_dir = os.path.join(args.output, "images")
    os.makedirs(image_dir, exist_ok=True)
    done = {} if args.overwrite else previous_rows(args.output, name, run_info(args, setup, 0.0))
    if done:
        log.info("resuming: %d rows of a previous run are reused (--overwrite starts over)", len(done))
    records, table = [], []
    for i, image_id in enumerate(setup.image_ids):
        save = image_dir if i < args.save_images else None
        if save:
            write_png(setup.crops[i:i + 1], os.path.join(image_dir, f"{image_id}_gt.png"))
        for arm in arms:
            if (image_id, arm.name) in done:
                records.append(done[(image_id, arm.name)])
                continue
            records.append(run_arm(setup, arm, i, args.seed + i, weights_dir=args.metrics_weights, save_dir=save))
            r = records[-1]
            log.info("[%d/%d] %s %-12s psnr %s  %.1fs", i + 1, len(setup.image_ids), image_id, arm.name,
                     f"{r['psnr']:.2f}" if r.get("psnr") is not None else r["status"], r.get("seconds_total", 0))
        table = summarise(records, arms, reference=reference)
        write_tables(args.output, name, table, records, run_info(args, setup, time.perf_counter() - start))
    return records, table


def main(args: argparse.Namespace) -> int:
    from restore_core.errors import ConfigError

    torch.set_num_threads(args.threads)
    names = [a for a in args.arms.split(",") if a]
    extra = args.extra_arms if args.extra_arms is not None else ("bicubic" if args.task.startswith("sr") else "")
    extras = [a for a in extra.split(",") if a]
    bad = [a for a in names if a not in ARMS] + [a for a in extras if a not in EXTRA_ARMS]
    if bad or not names:
        raise ConfigError(f"unknown arm(s) {bad or '(none given)'}; accepted: {', '.join(ARMS + EXTRA_ARMS)}")
    arms = [ARM_SPECS[a] for a in names + extras]
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    setup = prepare(args)
    log.info("%d %s crops of %s, %d arms, index of %d images; config steps=%d adapt_iters=%d lr=%g k=%d",
             len(setup.image_ids), args.task, args.split, len(arms), setup.index_info["count"],
             setup.cfg.steps, setup.cfg.adapt_iters, setup.cfg.adapt_lr, setup.cfg.k)
    _, table = run_rows(args, setup, arms, "ablation", "gd", start)
    print_table(f"ablation: {args.task}, {len(setup.image_ids)} {args.split} crops, steps={setup.cfg.steps}, "
                f"adapt_iters={setup.cfg.adapt_iters}, lr={setup.cfg.adapt_lr:g}, K={setup.cfg.k}, "
                f"sampler={setup.cfg.sampler}", table)
    print(f"written: {os.path.join(args.output, 'ablation.json')}")
    return 3 if any(t["n_failed"] for t in table if t["arm"] in ARMS) else 0
