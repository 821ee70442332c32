"""``adir bench peers``: our samplers against the field's on the same prior, crops and seeds.

One run restores the same ``--images`` held-out crops (``jobs.bench.common.prepare``: the
crops, degradation noise and seeds of ``bench ablation``) with every arm:

==================  =======================================================================
``pinv``            A⁺y (bicubic-style upsampling for SR, y for blur): the floor
``<s>``             sampler s alone, one posterior sample (s in ``--samplers``: alg1 is
                    ADIR's Algorithm 1, ddrm / diffpir / dps deepinv's, ``sampling.peers``)
``<s>_fid``         the mean of ``--fidelity-samples`` posterior samples of s (the
                    fidelity output: posterior-mean estimate, best PSNR at N× the cost)
``<s>_adir``        s after ADIR's adaptation on the K retrieved neighbours (eq. 19-20)
``ia_y``            ``--ablation-sampler`` after adaptation on y itself (eq. 18)
``ia_random``       … after adaptation on K random corpus images (Table 6)
``ia_oracle``       … after adaptation on K crops of the target's own photo, disjoint
                    from it (``common.oracle_neighbours``)
``ia_open``         … after adaptation on the K CLIP neighbours over the corpus with the
                    target's own photo added as one more photo (``common.open_neighbours``;
                    ``own_photo_share``: how many of the K came from it)
``fidelity``        ``--preset fidelity`` as a user runs it (the default method, adir,
                    with the preset's sampler and samples)
==================  =======================================================================

Reported (``peers.json``: one object per arm; ``peers_rows.parquet`` one row per image and
arm; ``peers_run.json`` provenance): PSNR, SSIM, GMSD, NLPD (full-reference, no weights),
LPIPS and MUSIQ with ``--metrics-weights``, data consistency ‖A x̂ − y‖/√m (0–255), seconds
per image, and ``peers_comparisons.json``: the paired differences (mean ± standard error,
wins) on PSNR and GMSD that the claims rest on — each ``<s>_adir`` against ``<s>`` and
``ia_random``, ``ia_oracle`` and ``ia_open`` against ``<s>``, each fidelity output and ``fidelity``
against ``ddrm``, every arm against ``pinv``. A rerun into the same ``--output`` resumes
like ``bench ablation``. Tune nothing on held-out crops: ``--split train`` is for tuning.

Imports ``jobs.bench.common``, ``jobs.bench.tables`` and ``jobs.bench.ablation.run_rows``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from jobs.bench.ablation import run_rows
from jobs.bench.common import Arm, add_common_options, paired_gain, prepare
from jobs.bench.tables import print_table

log = logging.getLogger("adir.bench.peers")

SAMPLERS = ("alg1", "ddrm", "diffpir", "dps")
ABLATION = ("ia_y", "ia_random", "ia_oracle", "ia_open")
NEIGHBOURS_OF = {"ia_y": None, "ia_random": "random", "ia_oracle": "oracle", "ia_open": "open"}


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    p.add_argument("--samplers", default=",".join(SAMPLERS), help=f"comma-separated subset of {', '.join(SAMPLERS)}")
    p.add_argument("--fidelity-samples", type=int, default=4, help="posterior samples averaged in <s>_fid (default 4)")
    p.add_argument("--ablation-sampler", default="ddrm", choices=SAMPLERS,
                   help="sampler of the ia_y / ia_random / ia_oracle / ia_open arms (default ddrm)")
    p.add_argument("--arms", default=None, help="comma-separated subset of the arm names (default: all)")
    p.add_argument("--save-images", type=int, default=4, help="write restored PNGs for the first N crops")
    p.add_argument("--overwrite", action="store_true",
                   help="start over instead of resuming the rows a previous run left in --output")
    p.set_defaults(noise=10.0)


def build_arms(args) -> list[Arm]:
    """The arms of the module doc, in table order (``--arms`` filters them by name)."""
    from restore_core.config import PRESETS, RestoreConfig
    from restore_core.errors import ConfigError

    samplers = [s for s in args.samplers.split(",") if s]
    bad = [s for s in samplers if s not in SAMPLERS]
    if bad or not samplers:
        raise ConfigError(f"unknown sampler(s) {bad or '(none given)'}; accepted: {', '.join(SAMPLERS)}")
    if args.fidelity_samples < 2:
        raise ConfigError(f"--fidelity-samples must be >= 2, got {args.fidelity_samples}")
    arms = [Arm("pinv", "pinv")]
    for s in samplers:
        arms += [Arm(s, "gd", None, (f"sampler={s}",)),
                 Arm(f"{s}_fid", "gd", None, (f"sampler={s}", f"samples={args.fidelity_samples}")),
                 Arm(f"{s}_adir", "adir", "clip", (f"sampler={s}",))]
    arms += [Arm(name, "ia_y" if name == "ia_y" else "adir", NEIGHBOURS_OF[name], (f"sampler={args.ablation_sampler}",))
             for name in ABLATION]
    if "fidelity" in PRESETS:
        fid = PRESETS["fidelity"]
        method = fid.get("method", RestoreConfig().method)  # what a user of the preset gets
        arms.append(Arm("fidelity", method, "clip" if method == "adir" else None,
                        tuple(f"{k}={v}" for k, v in fid.items() if k != "method")))
    if args.arms:
        wanted = [a for a in args.arms.split(",") if a]
        known = {a.name for a in arms}
        unknown = [a for a in wanted if a not in known]
        if unknown:
            raise ConfigError(f"unknown arm(s) {unknown}; accepted: {', '.join(a.name for a in arms)}")
        arms = [a for a in arms if a.name in wanted]
    return arms


def comparisons(records: list[dict], arms: list[Arm], ablation_sampler: str) -> list[dict]:
    """The paired differences the claims rest on (module doc), on PSNR and GMSD."""
    names = {a.name for a in arms}
    pairs = []
    for a in arms:
        if a.name.endswith("_adir"):
            s = a.name[:-5]
            pairs += [(a.name, s), (a.name, "ia_random")] if s == ablation_sampler else [(a.name, s)]
    pairs += [("ia_oracle", ablation_sampler), (f"{ablation_sampler}_adir", "ia_oracle"),
              ("ia_open", ablation_sampler), ("ia_open", f"{ablation_sampler}_adir"), ("ia_open", "ia_oracle")]
    pairs += [(a.name, "ddrm") for a in arms if a.name.endswith("_fid") or a.name == "fidelity"]
    pairs += [(a.name, "pinv") for a in arms if a.name != "pinv"]
    out = []
    for arm, other in pairs:
        if arm in names and other in names and arm != other:
            for metric in ("psnr", "gmsd"):
                g = paired_gain(records, arm, other, metric)
                if g:
                    out.append({"arm": arm, "vs": other, "metric": metric, **g})
    return out


def main(args: argparse.Namespace) -> int:
    from restore_core import storage

    torch.set_num_threads(args.threads)
    arms = build_arms(args)
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    setup = prepare(args)
    log.info("%d %s crops of %s, %d arms: %s", len(setup.image_ids), args.task, args.split, len(arms),
             ", ".join(a.name for a in arms))
    records, table = run_rows(args, setup, arms, "peers", "pinv", start)
    pairs = comparisons(records, arms, args.ablation_sampler)
    storage.atomic_write_bytes(os.path.join(args.output, "peers_comparisons.json"), json.dumps(pairs, indent=1).encode())
    print_table(f"peers: {args.task}, noise {args.noise:g}, {len(setup.image_ids)} {args.split} crops, "
                f"steps={setup.cfg.steps}, adapt_iters={setup.cfg.adapt_iters}, K={setup.cfg.k}", table,
                reference="pinv")
    for p in pairs:
        se = f" +- {p['se']:.4g}" if p["se"] is not None else ""
        print(f"{p['arm']} vs {p['vs']} ({p['metric']}): {p['gain']:+.4g}{se}, {p['wins']} better of {p['n']}")
    print(f"written: {os.path.join(args.output, 'peers.json')}")
    return 3 if any(t["n_failed"] for t in table) else 0
