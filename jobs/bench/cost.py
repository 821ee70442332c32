"""``adir bench cost``: the paper's configuration against faster ones, on the same images (P2).

Every configuration restores the same ``--images`` held-out crops (as ``bench ablation``:
same crops, degradation, seeds, and the same K embedding-nearest neighbours, retrieved
once per image and counted in every configuration's time) with ``--method`` (default
``adir``). Configurations (``--configs``, the first is the reference):

* a preset name of ``RestoreConfig.PRESETS``: ``paper`` (Table 1: 1000 steps, 400
  adaptation iterations at lr 1e-4) or ``fast`` (respaced steps, short adaptation);
* ``NAME=PRESET:key=value;key=value`` for a variant, e.g.
  ``fast50=fast:steps=50;adapt_iters=20``.

``cost.json`` (and ``cost.parquet``): one object per configuration with its settings,
``seconds_per_image`` (retrieve + adapt + sample), the seconds per stage, PSNR, SSIM, the
other default metrics, consistency, and against the reference ``speedup_vs_<ref>`` (ratio
of seconds per image) and ``psnr_delta_vs_<ref>`` (mean paired PSNR difference, negative =
loss). The goal of issue 4 — ≥ 10× less wall time at ≤ 0.3 dB PSNR loss — is printed as
met or not for every configuration. ``cost_rows.parquet`` has one row per image and
configuration, ``cost_run.json`` the provenance (command, machine, prior, index).

Imports the setup and scoring of ``jobs.bench.common`` and ``jobs.bench.tables``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from jobs.bench.common import Arm, add_common_options, prepare, restore_config, run_arm
from jobs.bench.tables import print_table, run_info, summarise, write_tables

log = logging.getLogger("adir.bench.cost")
GOAL_SPEEDUP = 10.0
GOAL_PSNR_LOSS = 0.3


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_common_options(p, tuning=False)
    p.add_argument("--configs", default="paper,fast",
                   help="comma-separated PRESET or NAME=PRESET:key=value;key=value (first = reference)")
    p.add_argument("--method", default="adir", help="method every configuration runs (default adir)")
    p.set_defaults(images=4)


def parse_configs(text: str, args) -> list[tuple[str, object]]:
    """``[(name, RestoreConfig)]`` from ``--configs`` (``ConfigError`` on a bad entry)."""
    from restore_core.errors import ConfigError

    out = []
    for item in (c.strip() for c in text.split(",") if c.strip()):
        name, _, rest = item.partition("=")
        preset, _, overrides = (rest or name).partition(":")
        cfg = restore_config(args, preset=preset, extra=[o for o in overrides.split(";") if o])
        out.append((name, cfg))
    if not out or len({n for n, _ in out}) != len(out):
        raise ConfigError(f"--configs needs distinct configuration names; got {text!r}")
    return out


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    configs = parse_configs(args.configs, args)
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    setup = prepare(args, cfg=configs[0][1])
    arm = Arm(args.method, args.method, "clip" if args.method == "adir" else None)
    records = []
    for i, image_id in enumerate(setup.image_ids):
        for name, cfg in configs:
            r = run_arm(setup, arm, i, args.seed + i, cfg=cfg, weights_dir=args.metrics_weights, label=name)
            records.append(r)
            log.info("[%d/%d] %s %-8s psnr %s  %.1fs", i + 1, len(setup.image_ids), image_id, name,
                     f"{r['psnr']:.2f}" if r.get("psnr") is not None else r["status"], r.get("seconds_total", 0))
    ref = configs[0][0]
    table = summarise(records, [n for n, _ in configs], reference=ref, focus=None)
    ref_seconds = table[0].get("seconds_per_image")
    for j, (name, cfg) in enumerate(configs):
        entry = table[j] = {"config": name, "method": args.method, "steps": cfg.steps,
                            "adapt_iters": cfg.adapt_iters, "adapt_lr": cfg.adapt_lr, "k": cfg.k,
                            "retrieval": cfg.retrieval,
                            **{k: v for k, v in table[j].items() if k not in ("arm", "method", "retrieval",
                                                                               "steps", "iterations")}}
        gain = entry.pop(f"psnr_gain_vs_{ref}", None)
        entry[f"psnr_delta_vs_{ref}"] = 0.0 if name == ref else gain
        seconds = entry.get("seconds_per_image")
        entry[f"speedup_vs_{ref}"] = (ref_seconds / seconds) if ref_seconds and seconds else None
        if name != ref and gain is not None and entry[f"speedup_vs_{ref}"] is not None:
            entry["meets_goal"] = bool(entry[f"speedup_vs_{ref}"] >= GOAL_SPEEDUP and gain >= -GOAL_PSNR_LOSS)
    write_tables(args.output, "cost", table, records, run_info(args, setup, time.perf_counter() - start))
    print_table(f"cost: {args.method} on {args.task}, {len(setup.image_ids)} {args.split} crops "
                f"(reference {ref})", [dict(t, arm=t["config"]) for t in table], reference=ref)
    for entry in table[1:]:
        print(f"{entry['config']}: {entry[f'speedup_vs_{ref}'] or float('nan'):.1f}x less wall time than {ref}, "
              f"PSNR {entry[f'psnr_delta_vs_{ref}'] if entry[f'psnr_delta_vs_{ref}'] is not None else float('nan'):+.2f} dB; "
              f"goal (>= {GOAL_SPEEDUP:g}x at <= {GOAL_PSNR_LOSS} dB loss) "
              f"{'met' if entry.get('meets_goal') else 'not met'}")
    print(f"written: {os.path.join(args.output, 'cost.json')}")
    return 3 if any(t["n_failed"] for t in table) else 0
