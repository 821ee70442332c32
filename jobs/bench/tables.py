"""Tables, provenance and resuming shared by the restoration benches (``jobs.bench.common``).

Owns ``summarise`` (one entry per arm: means, paired gains with standard errors against a
reference arm on every metric of ``common.PAIRED_METRICS``), ``write_tables`` (json,
parquet, rows, run provenance), ``run_info``, ``previous_rows`` (a rerun reuses the rows
whose inputs are unchanged, ``RESUME_KEYS``) and ``print_table``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Any

import numpy as np
import torch

from jobs.bench.common import PAIRED_METRICS, paired_gain

LEADING = ("psnr", "ssim", "gmsd", "nlpd", "lpips", "musiq", "musiq-ava", "heldout_loss", "consistency",
           "seconds_total", "seconds_retrieve", "seconds_adapt", "seconds_sample")  # first columns
# What a run's rows depend on: a rerun resumes them only when all of these are unchanged.
RESUME_KEYS = ("task", "split", "noise_sigma", "seed", "images", "config", "prior", "metrics")
RESUME_INDEX_KEYS = ("count", "kind", "embedder")
_SKIP = {"image_id", "arm", "seed", "status", "error", "neighbour_ids"}


def summarise(records: list[dict], arms: list, reference: str = "gd", focus: str | None = "adir") -> list[dict]:
    """One object per arm (``common.Arm``, or a name): means over its successful rows and
    the paired differences to ``reference`` (``<metric>_gain_vs_<ref>``, ``…_se_…``,
    ``wins_vs_<ref>`` on PSNR); the ``focus`` arm also gets ``paired``: its PSNR and GMSD
    differences to every other arm."""
    table = []
    names = [getattr(a, "name", a) for a in arms]
    for arm in arms:
        name = getattr(arm, "name", arm)
        rows = [r for r in records if r["arm"] == name]
        ok = [r for r in rows if r["status"] == "ok"]
        entry: dict[str, Any] = {"arm": name, "method": getattr(arm, "method", name),
                                 "neighbours": getattr(arm, "neighbours", None),
                                 "overrides": list(getattr(arm, "overrides", ())), "n_images": len(ok),
                                 "n_failed": len(rows) - len(ok)}
        found = {k for r in ok for k, v in r.items() if k not in _SKIP and isinstance(v, (int, float))}
        for key in [k for k in LEADING if k in found] + sorted(found - set(LEADING)):
            values = [float(r[key]) for r in ok if r.get(key) is not None and math.isfinite(float(r[key]))]
            entry[key] = float(np.mean(values)) if values else None
        if ok:
            entry["psnr_std"] = float(np.std([r["psnr"] for r in ok]))
        entry["seconds_per_image"] = entry.pop("seconds_total", None)  # retrieve + adapt + sample
        if name != reference:
            for metric in PAIRED_METRICS:
                gain = paired_gain(records, name, reference, metric)
                if gain:
                    entry[f"{metric}_gain_vs_{reference}"] = gain["gain"]
                    entry[f"{metric}_gain_se_vs_{reference}"] = gain["se"]
                    if metric == "psnr":
                        entry[f"wins_vs_{reference}"] = gain["wins"]
                        entry["n_paired"] = gain["n"]
        if name == focus:
            entry["paired"] = {f"{other}:{metric}": g for other in names if other not in (name, reference)
                               for metric in ("psnr", "gmsd") for g in [paired_gain(records, name, other, metric)]
                               if g}
        errors = sorted({r["error"] for r in rows if r["error"]})
        if errors:
            entry["errors"] = errors[:3]
        table.append(entry)
    return table


def write_tables(output: str, name: str, table: list[dict], rows: list[dict], run: dict) -> None:
    """``<name>.json`` (list per arm/config), ``<name>.parquet``, ``<name>_rows.parquet`` and
    ``<name>_run.json`` (provenance) under ``output``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from restore_core import storage

    storage.atomic_write_bytes(os.path.join(output, f"{name}.json"), json.dumps(table, indent=1).encode())
    storage.atomic_write_bytes(os.path.join(output, f"{name}_run.json"),
                               json.dumps(run, indent=1, default=str).encode())
    flat = [{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in t.items()} for t in table]
    pq.write_table(pa.Table.from_pylist(flat), os.path.join(output, f"{name}.parquet"))
    columns = list(dict.fromkeys(k for r in rows for k in r))  # from_pylist would keep the first row's keys only
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows]),
                   os.path.join(output, f"{name}_rows.parquet"))


def run_info(args, setup, seconds: float, **extra) -> dict:
    """Provenance of a bench run: command, configuration, prior, index, machine."""
    from restore_core.models.pixel_unet import resolve_model_folder

    prior_training = None
    training_json = os.path.join(resolve_model_folder(setup.model.spec), "training.json")
    if os.path.exists(training_json):
        with open(training_json) as f:
            t = json.load(f)
        prior_training = {k: t.get(k) for k in ("command", "steps", "wall_seconds", "final_train_loss", "seed")}
    device = setup.device
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name()})"
    return {
        "command": "adir " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "config": setup.cfg.to_dict(), "task": args.task, "split": args.split, "noise_sigma": args.noise,
        "seed": args.seed, **extra,
        "images": setup.image_ids, "prior": setup.model.spec, "prior_training": prior_training,
        "index": setup.index_info, "metrics": list(setup.metric_names), "device": device,
        "cpu_threads": torch.get_num_threads(), "machine": platform.node(), "platform": platform.platform(),
        "torch": torch.__version__, "wall_seconds": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def previous_rows(output: str, name: str, run: dict, keys: tuple[str, ...] = RESUME_KEYS) -> dict[tuple[str, str], dict]:
    """The successful rows of an interrupted or shorter run ``name`` in ``output``,
    keyed by (image_id, arm), when that run's inputs (``keys``) equal ``run``'s; ``ConfigError``
    naming the differences otherwise (nothing is silently mixed or thrown away).

    The image lists match when the earlier one is a prefix of this one: crops are drawn in
    sequence from ``--seed`` and each crop's noise is seeded by its position, so image i is
    the same crop and the same y in a run of 6 images as in a run of 20, and ``--images 20``
    extends a finished ``--images 6`` run. A shorter rerun is refused, since rewriting the
    tables would drop the longer run's rows."""
    import pyarrow.parquet as pq

    from restore_core.errors import ConfigError

    rows_path, run_path = os.path.join(output, f"{name}_rows.parquet"), os.path.join(output, f"{name}_run.json")
    if not (os.path.exists(rows_path) and os.path.exists(run_path)):
        return {}
    with open(run_path) as f:
        before = json.load(f)

    def canon(x):
        return json.loads(json.dumps(x, default=str))

    def same(key):
        old, new = canon(before.get(key)), canon(run.get(key))
        if key == "images" and isinstance(old, list) and isinstance(new, list):
            return old == new[:len(old)]
        return old == new

    differs = [k for k in keys if not same(k)]
    differs += [f"index.{k}" for k in RESUME_INDEX_KEYS
                if canon((before.get("index") or {}).get(k)) != canon(run["index"].get(k))]
    if differs:
        raise ConfigError(f"{output} holds rows of a run with other inputs ({', '.join(differs)} differ); "
                          f"pass --overwrite to start over or choose another --output")
    rows = pq.read_table(rows_path).to_pylist()
    return {(r["image_id"], r["arm"]): r for r in rows if r["status"] == "ok"}


def print_table(title: str, table: list[dict], key: str = "arm", reference: str = "gd") -> None:
    """A fixed-width text table of the columns present, then the focus arm's paired gains."""
    ref = reference
    cols = [("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("gmsd", "GMSD", "{:.4f}"),
            ("nlpd", "NLPD", "{:.4f}"), ("lpips", "LPIPS", "{:.3f}"), ("musiq", "MUSIQ", "{:.1f}"),
            ("heldout_loss", "l_simple", "{:.4f}"), ("consistency", "cons", "{:.2f}"),
            (f"psnr_gain_vs_{ref}", "dPSNR", "{:+.2f}"), (f"psnr_gain_se_vs_{ref}", "+-se", "{:.2f}"),
            (f"gmsd_gain_vs_{ref}", "dGMSD", "{:+.4f}"), (f"gmsd_gain_se_vs_{ref}", "+-se", "{:.4f}"),
            (f"wins_vs_{ref}", "wins", "{}"), ("seconds_per_image", "s/img", "{:.1f}")]
    cols = [c for c in cols if any(t.get(c[0]) is not None for t in table)]
    width = max([12] + [len(str(t[key])) for t in table])
    print(title)
    print(f"{key:<{width}} {'n':>3} " + " ".join(f"{h:>8}" for _, h, _ in cols))
    for t in table:
        cells = [(fmt.format(t[k]) if t.get(k) is not None else "-") for k, _, fmt in cols]
        print(f"{t[key]:<{width}} {t['n_images']:>3} " + " ".join(f"{c:>8}" for c in cells))
    for t in table:
        for other, g in (t.get("paired") or {}).items():
            se = f" +- {g['se']:.4g}" if g["se"] is not None else ""
            print(f"{t[key]} vs {other}: {g['gain']:+.4g}{se}, {g['wins']} better of {g['n']}")
