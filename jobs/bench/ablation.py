"""``adir bench ablation``: ADIR's Table 6 ablation at toy scale (paper 000 §4, Table 6).

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
=============  ==========================================================================

``--extra-arms`` adds other methods of the registry (``shred``, ``diip``, ``indi``; a
method that cannot run the task is reported as failed with its reason, never dropped) and
``bicubic`` (SR tasks: bicubic upsampling of y, the classical reference).

Every restoration goes through ``restore_core.restore.restore_one`` and the method code
the jobs use; the three retrieval arms differ only in the neighbour images
(``index_builder.retrieval.Retriever.neighbours(mode=random|mse|clip)``).

Retrieval corpus: ``--index`` (an index folder from ``adir build-index``) or, by default,
``--corpus`` crops of the training photos exported to ``<output>/corpus`` and indexed
(exact ``flat`` index) into ``<output>/index`` with the shipped embedder (``--embedder``).

Reported per arm (``ablation.json``: a list, one object per arm; the same as
``ablation.parquet``): mean PSNR, SSIM and the other default pyiqa metrics (LPIPS, MUSIQ
too with ``--metrics-weights DIR``), ``heldout_loss`` — ℓ_simple (eq. 6) of the model the
arm sampled with (adapted or not) on the ground-truth crop, at 10 fixed timesteps and
noises per image — data consistency ‖A x̂ − y‖/√m (0–255), seconds per image per stage,
and the paired PSNR difference to ``gd`` (mean, and images where the arm beats gd).
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

Imports restore_core, index_builder and jobs.build_index (index folder writer).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger("adir.bench.ablation")

ARMS = ("gd", "ia_y", "ia_random", "ia_mse", "adir")
METHOD_OF = {"gd": "gd", "ia_y": "ia_y", "ia_random": "adir", "ia_mse": "adir", "adir": "adir"}
RETRIEVAL_OF = {"ia_random": "random", "ia_mse": "mse", "adir": "clip"}
EXTRA_ARMS = ("bicubic", "shred", "diip", "indi")
LEADING = ("psnr", "ssim", "lpips", "musiq", "musiq-ava", "heldout_loss", "consistency", "seconds_total",
           "seconds_retrieve", "seconds_adapt", "seconds_sample")  # first columns of the tables
HELDOUT_TIMESTEPS = 10
TRAIN_SPLIT_SEED_OFFSET = 100_003  # timesteps (evenly spaced over 0..T-1) of the held-out ℓ_simple


def add_common_options(p: argparse.ArgumentParser, tuning: bool = True) -> None:
    """Options shared by ``bench ablation`` and ``bench cost`` (``tuning``: the preset and
    its steps/iters/lr overrides, which ``bench cost`` replaces by its configurations)."""
    from restore_core.config import PRESETS

    p.add_argument("--task", default="sr4", help="degradation (operators.TASKS, params allowed: deblur_gauss:sigma=3)")
    p.add_argument("--images", type=int, default=20, help="held-out crops (default 20)")
    p.add_argument("--size", type=int, default=None, help="crop side (default: the prior's sample size)")
    p.add_argument("--noise", type=float, default=0.0, help="measurement noise σ on the 0-255 scale (default 0)")
    p.add_argument("--seed", type=int, default=0, help="crops, degradation noise and every arm's sampling seed")
    p.add_argument("--model", default=None, help="diffusion prior spec (default: the shipped models/prior)")
    p.add_argument("--embedder", default=None, help="embedder folder/spec for the default index (default: shipped)")
    p.add_argument("--index", default=None, help="an index folder from `adir build-index` (default: build one)")
    p.add_argument("--corpus", type=int, default=2000, help="training-photo crops in the default index (default 2000)")
    if tuning:
        p.add_argument("--preset", default="fast", choices=tuple(PRESETS), help="base configuration (default fast)")
        p.add_argument("--steps", type=int, default=None, help="diffusion steps (overrides the preset)")
        p.add_argument("--iters", type=int, default=None, help="adaptation iterations (overrides the preset)")
        p.add_argument("--lr", type=float, default=None, help="adaptation learning rate (overrides the preset)")
    p.add_argument("--k", type=int, default=None, help="K neighbours (default 20, Table 1)")
    p.add_argument("--scale", type=float, default=None, help="guidance scale (default: per-task default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any RestoreConfig override, repeatable (e.g. --set adapt_batch=4)")
    p.add_argument("--split", default="heldout", choices=("heldout", "train"),
                   help="photos the test crops come from; train is for tuning only (default heldout)")
    p.add_argument("--metrics-weights", default=None,
                   help="local dir of pyiqa weights: adds lpips, musiq, musiq-ava (see restore_core.metrics)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--output", required=True, help="output folder")


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_common_options(p)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    p.add_argument("--extra-arms", default=None,
                   help=f"comma-separated extra arms from {', '.join(EXTRA_ARMS)} (default: bicubic for SR tasks)")
    p.add_argument("--save-images", type=int, default=8, help="write restored PNGs for the first N crops")
    p.add_argument("--overwrite", action="store_true",
                   help="start over instead of resuming the rows a previous run left in --output")


# ---- setup shared with bench cost ---------------------------------------------------------

@dataclass
class BenchSetup:
    model: Any
    operator: Any
    crops: torch.Tensor  # (N, 3, S, S) ground truth in [-1, 1]
    image_ids: list[str]
    ys: list[torch.Tensor]  # (1, C, h, w) measurements
    retriever: Any
    index_info: dict
    cfg: Any  # RestoreConfig
    metric_names: tuple[str, ...]
    device: str
    retrieved: dict = field(default_factory=dict)  # (image, mode, k, seed) -> (neighbours, seconds)


def restore_config(args, preset: str | None = None, extra: list[str] = ()):
    """``preset`` (default ``args.preset``) with the command-line overrides and ``extra``
    ``key=value`` strings on top (``ConfigError`` on a bad value)."""
    from restore_core.config import RestoreConfig

    overrides = [f"{key}={value}" for key, value in
                 (("steps", getattr(args, "steps", None)), ("adapt_iters", getattr(args, "iters", None)),
                  ("adapt_lr", getattr(args, "lr", None)), ("k", args.k), ("guidance_scale", args.scale))
                 if value is not None]
    return RestoreConfig.preset(preset or args.preset).with_overrides(overrides + list(args.set) + list(extra))


def build_default_index(output: str, n: int, size: int, embedder: str | None, seed: int) -> str:
    """Export ``n`` training-photo crops to ``<output>/corpus`` and index them (flat, exact)
    with the embedder into ``<output>/index``; returns the index folder."""
    from index_builder.embedder import load_embedder, normalize_spec
    from index_builder.shard_build import embed_rows
    from jobs.build_index import write_index_folder
    from restore_core.bundled_photos import export_crops

    index_dir = os.path.join(output, "index")
    spec = normalize_spec(embedder)
    rows = export_crops(os.path.join(output, "corpus"), "train", n, size, seed=seed)
    emb, skipped = embed_rows(load_embedder(spec), [r[0] for r in rows], [r[1] for r in rows])
    if skipped.num_rows:
        log.warning("%d corpus crops could not be read", skipped.num_rows)
    write_index_folder(index_dir, emb, spec, kind="flat")
    return index_dir


def default_index(args, size: int) -> str:
    """``<output>/index`` as a previous run built it (same corpus size and embedder, no
    ``--overwrite``), else built anew."""
    from index_builder.embedder import normalize_spec

    index_dir = os.path.join(args.output, "index")
    manifest_path = os.path.join(index_dir, "index.json")
    embedder_path = os.path.join(index_dir, "embedder.json")
    if not getattr(args, "overwrite", False) and os.path.exists(manifest_path) and os.path.exists(embedder_path):
        with open(manifest_path) as f, open(embedder_path) as g:
            same = json.load(f)["count"] == args.corpus and json.load(g) == normalize_spec(args.embedder)
        if same:
            log.info("reusing the index a previous run built: %s", index_dir)
            return index_dir
    return build_default_index(args.output, args.corpus, size, args.embedder, args.seed)


def prepare(args, cfg=None) -> BenchSetup:
    """Load the prior, cut and degrade the test crops, load or build the index."""
    from index_builder.retrieval import Retriever
    from restore_core import bundled_photos
    from restore_core.models.pixel_unet import load_diffusion_model
    from restore_core.errors import ConfigError
    from restore_core.metrics import DEFAULT_FR, DEFAULT_NR, WEIGHT_FILES
    from restore_core.operators import build_operator

    if args.images <= 0:
        raise ConfigError(f"--images must be > 0, got {args.images}")
    cfg = cfg or restore_config(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_diffusion_model(args.model, device=device)
    size = args.size or model.sample_size
    model.check_image_shape((model.in_channels, size, size))
    operator = build_operator(args.task, (model.in_channels, size, size)).to(device)
    if args.split == "heldout":
        crops, sources = bundled_photos.random_crops(bundled_photos.HELDOUT_PHOTOS, args.images, size,
                                                     seed=args.seed)
    else:  # another seed than the corpus's, or the test crops would be the first corpus crops
        crops, sources = bundled_photos.random_crops(bundled_photos.TRAIN_PHOTOS, args.images, size,
                                                     seed=args.seed + TRAIN_SPLIT_SEED_OFFSET)
    image_ids = [f"{photo}-{i:03d}" for i, photo in enumerate(sources)]
    ys = []
    with torch.no_grad():
        for i in range(args.images):
            ys.append(operator.degrade(crops[i:i + 1].to(device), args.noise,
                                       torch.Generator().manual_seed(args.seed + i)))
    start = time.perf_counter()
    index = args.index or default_index(args, size)
    retriever = Retriever.load(index, device=device)
    index_info = {"index": index, "built": args.index is None, "count": retriever.index.count,
                  "kind": retriever.index.kind, "embedder": retriever.embedder_spec,
                  "recall": retriever.index.manifest.get("recall"),
                  "seconds_build_or_load": round(time.perf_counter() - start, 2)}
    names = DEFAULT_FR + DEFAULT_NR
    if args.metrics_weights:
        names += tuple(n for n in ("lpips", "musiq", "musiq-ava") if n in WEIGHT_FILES)
    return BenchSetup(model, operator, crops, image_ids, ys, retriever, index_info, cfg, names, device)


def heldout_loss(model, gt: torch.Tensor, seed: int) -> float:
    """ℓ_simple (eq. 6) of ``model`` on the ground-truth crop, averaged over
    ``HELDOUT_TIMESTEPS`` evenly spaced t with noise fixed by ``seed`` (same for every arm)."""
    from restore_core.adaptation import l_simple

    T = model.schedule.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for t in np.linspace(0, T - 1, HELDOUT_TIMESTEPS).round().astype(int):
            total += float(l_simple(model, gt, int(t), torch.randn(gt.shape, generator=g)))
    return total / HELDOUT_TIMESTEPS


def retrieve(setup: BenchSetup, i: int, mode: str, k: int, seed: int) -> tuple[list[dict], float]:
    """Neighbours of y_i (cached per image, mode, K and seed) and the seconds they took."""
    key = (i, mode, k, seed)
    if key not in setup.retrieved:
        start = time.perf_counter()
        found = setup.retriever.neighbours(setup.ys[i], k, mode=mode, seed=seed)
        setup.retrieved[key] = (found, time.perf_counter() - start)
    return setup.retrieved[key]


def run_arm(setup: BenchSetup, arm: str, i: int, seed: int, cfg=None, weights_dir: str | None = None,
            save_dir: str | None = None, label: str | None = None) -> dict:
    """Restore crop ``i`` with ``arm`` (recorded as ``label``, default the arm) and score it;
    failures are rows with the error. Retrieval time counts in the row's total even when
    the neighbours come from the cache (``bench cost`` reuses them across configurations)."""
    from restore_core.adaptation import evaluate_after_adaptation
    from restore_core.errors import AdirError
    from restore_core.images import write_png
    from restore_core.metrics import compute_metrics, consistency
    from restore_core.restore import restore_one

    cfg = cfg or setup.cfg
    gt = setup.crops[i:i + 1].to(setup.device)
    y = setup.ys[i]
    record: dict[str, Any] = {"image_id": setup.image_ids[i], "arm": label or arm, "seed": seed, "status": "ok",
                              "error": None, "neighbour_ids": [], "seconds_retrieve": 0.0}
    start = time.perf_counter()
    try:
        if arm == "bicubic":
            x = _bicubic(y, setup.operator)
            info = {"seconds_total": time.perf_counter() - start}
        else:
            neighbours = None
            if arm in RETRIEVAL_OF:
                found, seconds = retrieve(setup, i, RETRIEVAL_OF[arm], cfg.k, seed)
                t0 = time.perf_counter()
                neighbours = setup.retriever.fetch(found, size=gt.shape[-1])
                record["neighbour_ids"] = [n["image_id"] for n in found]
                record["seconds_retrieve"] = seconds + time.perf_counter() - t0
            with evaluate_after_adaptation(lambda m: {"heldout_loss": heldout_loss(m, gt, seed)}):
                x, info = restore_one(y, setup.operator, setup.model, cfg, method=METHOD_OF.get(arm, arm),
                                      neighbours=neighbours, seed=seed)
            if "heldout_loss" not in info and arm in ARMS:  # gd: no adaptation, the base prior
                info["heldout_loss"] = heldout_loss(setup.model, gt, seed)
    except AdirError as exc:
        record.update(status="failed", error=str(exc), seconds_total=time.perf_counter() - start)
        log.warning("%s on %s failed: %s", arm, record["image_id"], exc)
        return record
    x = x.detach().float()
    record.update(compute_metrics(x.cpu(), gt.cpu(), names=setup.metric_names, weights_dir=weights_dir))
    record["consistency"] = consistency(x.to(y.device), y, setup.operator)
    record.update({key: info.get(key) for key in ("heldout_loss", "seconds_adapt", "seconds_sample", "steps",
                                                  "iterations", "adapt_loss_last")})
    record["seconds_total"] = record["seconds_retrieve"] + float(info.get("seconds_total", 0.0))
    if save_dir is not None:
        write_png(x.cpu(), os.path.join(save_dir, f"{record['image_id']}_{record['arm']}.png"))
    return record


def _bicubic(y: torch.Tensor, operator) -> torch.Tensor:
    """Bicubic upsampling of an SR measurement to the image size (the classical reference)."""
    from restore_core.errors import MethodError
    from restore_core.images import resize

    if not operator.name.startswith("sr"):
        raise MethodError(f"arm 'bicubic' needs a super-resolution task (sr2, sr4, sr8), got {operator.name!r}")
    return resize(y, tuple(operator.image_shape[1:]))


def paired_gain(records: list[dict], arm: str, other: str) -> dict | None:
    """Paired PSNR difference ``arm − other`` over the images both restored: mean, its
    standard error (so a reader can tell a few tenths of a dB from noise), wins and n."""
    ref = {r["image_id"]: r.get("psnr") for r in records if r["arm"] == other and r["status"] == "ok"}
    diffs = [r["psnr"] - ref[r["image_id"]] for r in records
             if r["arm"] == arm and r["status"] == "ok" and ref.get(r["image_id"]) is not None]
    if not diffs:
        return None
    se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else None
    return {"gain": float(np.mean(diffs)), "se": se, "wins": int(sum(d > 0 for d in diffs)), "n": len(diffs)}


def summarise(records: list[dict], arms: list[str], reference: str = "gd") -> list[dict]:
    """One object per arm: means over its successful rows, paired PSNR difference to
    ``reference`` on the images both restored."""
    skip = {"image_id", "arm", "seed", "status", "error", "neighbour_ids"}
    table = []
    for arm in arms:
        rows = [r for r in records if r["arm"] == arm]
        ok = [r for r in rows if r["status"] == "ok"]
        entry: dict[str, Any] = {"arm": arm, "method": METHOD_OF.get(arm, arm),
                                 "retrieval": RETRIEVAL_OF.get(arm), "n_images": len(ok),
                                 "n_failed": len(rows) - len(ok)}
        found = {k for r in ok for k, v in r.items() if k not in skip and isinstance(v, (int, float))}
        keys = [k for k in LEADING if k in found] + sorted(found - set(LEADING))
        for key in keys:
            values = [float(r[key]) for r in ok if r.get(key) is not None and math.isfinite(float(r[key]))]
            entry[key] = float(np.mean(values)) if values else None
        if ok:
            entry["psnr_std"] = float(np.std([r["psnr"] for r in ok]))
        entry["seconds_per_image"] = entry.pop("seconds_total", None)  # retrieve + adapt + sample
        if arm != reference:
            gain = paired_gain(records, arm, reference)
            if gain:
                entry[f"psnr_gain_vs_{reference}"] = gain["gain"]
                entry[f"psnr_gain_se_vs_{reference}"] = gain["se"]
                entry[f"wins_vs_{reference}"] = gain["wins"]
                entry["n_paired"] = gain["n"]
        if arm == "adir":
            entry["paired"] = {other: g for other in arms if other not in (arm, reference)
                               for g in [paired_gain(records, arm, other)] if g}
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
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(output, f"{name}_rows.parquet"))


def run_info(args, setup: BenchSetup, seconds: float) -> dict:
    """Provenance of a bench run: command, configuration, prior, index, machine."""
    prior_training = None
    from restore_core.models.pixel_unet import resolve_model_folder

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
        "seed": args.seed,
        "images": setup.image_ids, "prior": setup.model.spec, "prior_training": prior_training,
        "index": setup.index_info, "metrics": list(setup.metric_names), "device": device,
        "cpu_threads": torch.get_num_threads(), "machine": platform.node(), "platform": platform.platform(),
        "torch": torch.__version__, "wall_seconds": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# What a run's rows depend on: a rerun resumes them only when all of these are unchanged.
RESUME_KEYS = ("task", "split", "noise_sigma", "seed", "images", "config", "prior", "metrics")
RESUME_INDEX_KEYS = ("count", "kind", "embedder")


def previous_rows(output: str, run: dict) -> dict[tuple[str, str], dict]:
    """The successful rows of an interrupted (or shorter) run in ``output``, keyed by
    (image_id, arm), when that run's inputs equal ``run``'s; ``ConfigError`` naming the
    differences otherwise (nothing is silently mixed or thrown away)."""
    import pyarrow.parquet as pq

    from restore_core.errors import ConfigError

    rows_path, run_path = os.path.join(output, "ablation_rows.parquet"), os.path.join(output, "ablation_run.json")
    if not (os.path.exists(rows_path) and os.path.exists(run_path)):
        return {}
    with open(run_path) as f:
        before = json.load(f)

    def canon(x):
        return json.loads(json.dumps(x, default=str))

    differs = [k for k in RESUME_KEYS if canon(before.get(k)) != canon(run.get(k))]
    differs += [f"index.{k}" for k in RESUME_INDEX_KEYS
                if canon((before.get("index") or {}).get(k)) != canon(run["index"].get(k))]
    if differs:
        raise ConfigError(f"{output} holds rows of a run with other inputs ({', '.join(differs)} differ); "
                          f"pass --overwrite to start over or choose another --output")
    rows = pq.read_table(rows_path).to_pylist()
    return {(r["image_id"], r["arm"]): r for r in rows if r["status"] == "ok"}


def print_table(title: str, table: list[dict], key: str = "arm") -> None:
    cols = [("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("lpips", "LPIPS", "{:.3f}"),
            ("musiq", "MUSIQ", "{:.1f}"), ("piqe", "PIQE", "{:.1f}"), ("heldout_loss", "l_simple", "{:.4f}"),
            ("consistency", "cons", "{:.2f}"), ("psnr_gain_vs_gd", "dPSNR", "{:+.2f}"),
            ("psnr_gain_se_vs_gd", "+-se", "{:.2f}"), ("wins_vs_gd", "wins", "{}"), ("seconds_per_image", "s/img", "{:.1f}")]
    cols = [c for c in cols if any(t.get(c[0]) is not None for t in table)]
    print(title)
    print(f"{key:<12} {'n':>3} " + " ".join(f"{h:>9}" for _, h, _ in cols))
    for t in table:
        cells = [(fmt.format(t[k]) if t.get(k) is not None else "-") for k, _, fmt in cols]
        print(f"{t[key]:<12} {t['n_images']:>3} " + " ".join(f"{c:>9}" for c in cells))
    for t in table:
        for other, g in (t.get("paired") or {}).items():
            se = f" +- {g['se']:.2f}" if g["se"] is not None else ""
            print(f"{t[key]} vs {other}: {g['gain']:+.2f}{se} dB, {g['wins']} wins of {g['n']}")


def main(args: argparse.Namespace) -> int:
    from restore_core.errors import ConfigError

    torch.set_num_threads(args.threads)
    arms = [a for a in args.arms.split(",") if a]
    extra = args.extra_arms if args.extra_arms is not None else ("bicubic" if args.task.startswith("sr") else "")
    extras = [a for a in extra.split(",") if a]
    bad = [a for a in arms if a not in ARMS] + [a for a in extras if a not in EXTRA_ARMS]
    if bad or not arms:
        raise ConfigError(f"unknown arm(s) {bad or '(none given)'}; accepted: {', '.join(ARMS + EXTRA_ARMS)}")
    os.makedirs(args.output, exist_ok=True)
    start = time.perf_counter()
    setup = prepare(args)
    log.info("%d %s crops of %s, %d arms, index of %d images; config steps=%d adapt_iters=%d lr=%g k=%d",
             len(setup.image_ids), args.task, args.split, len(arms + extras), setup.index_info["count"],
             setup.cfg.steps, setup.cfg.adapt_iters, setup.cfg.adapt_lr, setup.cfg.k)
    image_dir = os.path.join(args.output, "images")
    os.makedirs(image_dir, exist_ok=True)
    done = {} if args.overwrite else previous_rows(args.output, run_info(args, setup, 0.0))
    if done:
        log.info("resuming: %d rows of a previous run are reused (--overwrite starts over)", len(done))
    records = []
    for i, image_id in enumerate(setup.image_ids):
        from restore_core.images import write_png

        save = image_dir if i < args.save_images else None
        if save:
            write_png(setup.crops[i:i + 1], os.path.join(image_dir, f"{image_id}_gt.png"))
        for arm in arms + extras:
            if (image_id, arm) in done:
                records.append(done[(image_id, arm)])
                continue
            records.append(run_arm(setup, arm, i, args.seed + i, weights_dir=args.metrics_weights, save_dir=save))
            r = records[-1]
            log.info("[%d/%d] %s %-9s psnr %s  %.1fs", i + 1, len(setup.image_ids), image_id, arm,
                     f"{r['psnr']:.2f}" if r.get("psnr") is not None else r["status"], r.get("seconds_total", 0))
        # rewritten after every image, so an interrupted run leaves the tables of the images done
        table = summarise(records, arms + extras)
        write_tables(args.output, "ablation", table, records, run_info(args, setup, time.perf_counter() - start))
    print_table(f"ablation: {args.task}, {len(setup.image_ids)} {args.split} crops, steps={setup.cfg.steps}, "
                f"adapt_iters={setup.cfg.adapt_iters}, lr={setup.cfg.adapt_lr:g}, K={setup.cfg.k}", table)
    print(f"written: {os.path.join(args.output, 'ablation.json')}")
    return 3 if any(t["n_failed"] for t in table if t["arm"] in ARMS) else 0
