"""``adir bench pair A B``: two finished bench runs on the same crops, compared image by image.

``bench ablation`` and ``bench peers`` compare arms within one run, on one prior. To
compare what a run cannot vary (two priors, two embedders, two indexes), run the same
bench twice with the same ``--task --split --noise --seed --images`` and pair the runs:
every arm present in both is matched on (image_id, arm), and the paired difference B − A
of PSNR, SSIM, GMSD and NLPD is reported with its standard error and wins (images where B
is better, in each metric's direction), as ``jobs.bench.common.paired_gain`` does inside
a run. Runs whose crops or observations could differ (task, split, noise, seed, or image
list) are refused with what differs; the priors, configs and indexes may differ, that is
the point, and both are printed.

Example (is prior B better than prior A by DDRM's PSNR on 32 held-out crops?)::

    adir bench peers --task sr4 --images 32 --seed 2024 --samplers ddrm --arms pinv,ddrm --model A --output runs/a
    adir bench peers --task sr4 --images 32 --seed 2024 --samplers ddrm --arms pinv,ddrm --model B --output runs/b
    adir bench pair runs/a runs/b --arms ddrm
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from jobs.bench.common import PAIRED_METRICS, paired_gain
from restore_core.errors import ConfigError

#: run.json keys that fix the crops and the observations y
SAME_INPUTS = ("task", "split", "noise_sigma", "seed", "images")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs=2, metavar="RUN", help="two --output folders of the same bench (A, then B)")
    p.add_argument("--arms", default=None, help="comma-separated arms to pair (default: every arm in both)")
    p.add_argument("--output", default=None, help="JSON file for the paired gains (default: print only)")


def load_run(folder: str) -> tuple[str, dict, list[dict]]:
    """(bench name, run.json, rows) of a finished bench folder."""
    import pyarrow.parquet as pq

    found = sorted(glob.glob(os.path.join(folder, "*_rows.parquet")))
    names = [os.path.basename(f)[:-len("_rows.parquet")] for f in found]
    names = [n for n in names if os.path.exists(os.path.join(folder, f"{n}_run.json"))]
    if len(names) != 1:
        raise ConfigError(f"{folder}: expected one bench run (<name>_rows.parquet with <name>_run.json), "
                          f"found {names or 'none'}")
    name = names[0]
    with open(os.path.join(folder, f"{name}_run.json")) as f:
        run = json.load(f)
    return name, run, pq.read_table(os.path.join(folder, f"{name}_rows.parquet")).to_pylist()


def pair(a: str, b: str, arms: list[str] | None = None) -> dict:
    """The paired gains B − A per arm and metric (module doc)."""
    (name_a, run_a, rows_a), (name_b, run_b, rows_b) = load_run(a), load_run(b)
    if name_a != name_b:
        raise ConfigError(f"{a} is a {name_a} run and {b} a {name_b} run: pair two runs of the same bench")
    differs = [k for k in SAME_INPUTS if run_a.get(k) != run_b.get(k)]
    if differs:
        raise ConfigError(f"{a} and {b} restored different crops or observations ({', '.join(differs)} differ); "
                          f"rerun one with the other's --task --split --noise --seed --images")
    common = [arm for arm in dict.fromkeys(r["arm"] for r in rows_a) if arm in {r["arm"] for r in rows_b}]
    if arms:
        missing = [arm for arm in arms if arm not in common]
        if missing:
            raise ConfigError(f"arm(s) {missing} are not in both runs; in both: {', '.join(common) or 'none'}")
        common = arms
    records = [{**r, "arm": f"{r['arm']}@A"} for r in rows_a] + [{**r, "arm": f"{r['arm']}@B"} for r in rows_b]
    gains = []
    for arm in common:
        for metric in PAIRED_METRICS:
            g = paired_gain(records, f"{arm}@B", f"{arm}@A", metric)
            if g:
                gains.append({"arm": arm, "metric": metric, **g})
    return {"bench": name_a, "a": {"run": a, "prior": run_a.get("prior"), "config": run_a.get("config")},
            "b": {"run": b, "prior": run_b.get("prior"), "config": run_b.get("config")},
            "inputs": {k: run_a.get(k) for k in SAME_INPUTS if k != "images"}, "n_images": len(run_a["images"]),
            "gains": gains}


def main(args: argparse.Namespace) -> int:
    from restore_core import storage

    arms = [x for x in args.arms.split(",") if x] if args.arms else None
    result = pair(args.runs[0], args.runs[1], arms)
    print(f"{result['bench']}: B − A on {result['n_images']} crops, {result['inputs']}")
    print(f"  A {args.runs[0]}: prior {result['a']['prior']}")
    print(f"  B {args.runs[1]}: prior {result['b']['prior']}")
    for g in result["gains"]:
        se = f" +- {g['se']:.4g}" if g["se"] is not None else ""
        print(f"{g['arm']:<14} {g['metric']:<5} {g['gain']:+.4g}{se}  (B better on {g['wins']} of {g['n']})")
    if args.output:
        storage.atomic_write_bytes(args.output, json.dumps(result, indent=1, default=str).encode())
        print(f"written: {args.output}")
    return 0
