"""Shared setup, scoring and tables of the restoration benches (``bench ablation``, ``cost``, ``peers``).

Owns ``Arm`` (one row kind of a table: a method, where its adaptation images come from,
and config overrides), the bench options, ``prepare`` (prior, held-out crops and their
measurements, retrieval index), ``run_arm`` (restore one crop with one arm and score it),
paired differences with standard errors, the table writers, provenance and resuming.

Every restoration and its scores go through the job's own row stages
(``jobs.restore.row.restore`` / ``score``: ``restore_one`` and the method code the jobs use). Neighbour sources (``Arm.neighbours``): ``clip`` / ``random`` / ``mse`` are
``index_builder.retrieval.Retriever.neighbours`` modes over the training-photo corpus;
``oracle`` is K crops of the target's *own* photo at windows disjoint from the target's
(``oracle_neighbours``): the best neighbours retrieval could ever find, so the gap
between ``oracle`` and ``clip`` is what retrieval loses, and the gap between ``oracle`` and
no adaptation is what adaptation on relevant images can buy at this scale. ``open`` is
CLIP retrieval over the corpus with the target's own photo added to it as one more photo
(``open_neighbours``: as many windows disjoint from the target as the corpus holds per
training photo): whether retrieval finds relevant images when the corpus has them.

Imports restore_core, index_builder, jobs.restore.row (the row stages) and jobs.build_index.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger("adir.bench")

HELDOUT_TIMESTEPS = 10  # timesteps (evenly spaced over 0..T-1) of the held-out ℓ_simple
TRAIN_SPLIT_SEED_OFFSET = 100_003
ORACLE_TRIES = 2000  # random windows tried per oracle neighbour before giving up
# metric -> True when higher is better (paired gains count wins in that direction)
PAIRED_METRICS = {"psnr": True, "ssim": True, "gmsd": False, "nlpd": False}


@dataclass(frozen=True)
class Arm:
    """One arm: ``method`` of the registry (or ``bicubic``), its neighbour source (None |
    clip | random | mse | oracle | open) and ``key=value`` config overrides."""

    name: str
    method: str
    neighbours: str | None = None
    overrides: tuple[str, ...] = ()


def add_common_options(p: argparse.ArgumentParser, tuning: bool = True) -> None:
    """Options shared by the benches (``tuning``: the preset and its steps/iters/lr
    overrides, which ``bench cost`` replaces by its configurations)."""
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
    sources: list[str] = field(default_factory=list)  # the photo of each crop
    boxes: list[tuple[int, int, int]] = field(default_factory=list)  # (top, left, side) in that photo
    retrieved: dict = field(default_factory=dict)  # (image, mode, k, seed) -> (neighbours, seconds)


def restore_config(args, preset: str | None = None, extra: list[str] = ()):
    """``preset`` (default ``args.preset``) with the command-line overrides and ``extra``
    ``key=value`` strings on top (``ConfigError`` on a bad value). The bench's noise σ is
    what the peer samplers assume (``noise_sigma``), unless ``--set`` says otherwise."""
    from restore_core.config import RestoreConfig

    overrides = [f"{key}={value}" for key, value in
                 (("steps", getattr(args, "steps", None)), ("adapt_iters", getattr(args, "iters", None)),
                  ("adapt_lr", getattr(args, "lr", None)), ("k", args.k), ("guidance_scale", args.scale),
                  ("noise_sigma", args.noise))
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
    from restore_core.errors import ConfigError
    from restore_core.metrics import DEFAULT_FR, DEFAULT_NR, WEIGHT_FILES
    from restore_core.models.pixel_unet import load_diffusion_model
    from restore_core.operators import build_operator

    if args.images <= 0:
        raise ConfigError(f"--images must be > 0, got {args.images}")
    cfg = cfg or restore_config(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_diffusion_model(args.model, device=device)
    size = args.size or model.sample_size
    model.check_image_shape((model.in_channels, size, size))
    operator = build_operator(args.task, (model.in_channels, size, size)).to(device)
    boxes: list = []
    if args.split == "heldout":
        crops, sources = bundled_photos.random_crops(bundled_photos.HELDOUT_PHOTOS, args.images, size,
                                                     seed=args.seed, boxes=boxes)
    else:  # another seed than the corpus's, or the test crops would be the first corpus crops
        crops, sources = bundled_photos.random_crops(bundled_photos.TRAIN_PHOTOS, args.images, size,
                                                     seed=args.seed + TRAIN_SPLIT_SEED_OFFSET, boxes=boxes)
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
    return BenchSetup(model, operator, crops, image_ids, ys, retriever, index_info, cfg, names, device,
                      sources=sources, boxes=boxes)


def heldout_loss(model, gt: torch.Tensor, seed: int) -> float:
    """ℓ_simple (ADIR eq. 6) of ``model`` on the ground-truth crop, averaged over
    ``HELDOUT_TIMESTEPS`` evenly spaced t with noise fixed by ``seed`` (same for every arm)."""
    from restore_core.adaptation import l_simple

    T = model.schedule.num_train_timesteps
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for t in np.linspace(0, T - 1, HELDOUT_TIMESTEPS).round().astype(int):
            total += float(l_simple(model, gt, int(t), torch.randn(gt.shape, generator=g)))
    return total / HELDOUT_TIMESTEPS


def oracle_neighbours(photo: str, box: tuple[int, int, int], k: int, size: int, seed: int) -> torch.Tensor:
    """K random square windows of ``photo`` (side between the target's and the photo's
    shorter side's half, at least ``size``) that do not overlap the target window ``box``,
    resized to ``size``; ``ConfigError`` when the photo has no room for them."""
    import torch.nn.functional as F

    from restore_core.bundled_photos import load_photo
    from restore_core.errors import ConfigError

    image = load_photo(photo)
    h, w = image.shape[-2:]
    top0, left0, side0 = box
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k * ORACLE_TRIES):
        side = int(rng.integers(min(side0, h, w), max(min(side0, h, w), min(h, w) // 2) + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        if top < top0 + side0 and top0 < top + side and left < left0 + side0 and left0 < left + side:
            continue  # overlaps the target
        crop = image[..., top:top + side, left:left + side]
        out.append(F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True,
                                 align_corners=False).clamp(-1, 1) if side != size else crop)
        if len(out) == k:
            return torch.cat(out)
    raise ConfigError(f"photo {photo!r} has no room for {k} windows disjoint from the target crop")


def open_neighbours(setup: BenchSetup, i: int, k: int, size: int,
                    seed: int) -> tuple[torch.Tensor, list[str], float]:
    """The K CLIP-nearest images to y_i over the corpus plus windows of the target's own
    photo disjoint from it (as many as the corpus has per training photo), nearest first,
    their ids (``<photo>-own-<j>`` for the added windows) and the share of the K that
    came from the target's photo."""
    from index_builder.index import spherical_distance
    from restore_core.bundled_photos import TRAIN_PHOTOS

    query = setup.retriever.embedder.embed(setup.ys[i])
    corpus = setup.retriever.search_vectors(query, k)[0]
    n_own = max(k, round(setup.retriever.index.count / len(TRAIN_PHOTOS)))
    own = oracle_neighbours(setup.sources[i], setup.boxes[i], n_own, size, seed)
    own_distance = spherical_distance(np.linalg.norm(setup.retriever.embedder.embed(own) - query, axis=1))
    ranked = sorted([(float(n["distance"]), 0, j) for j, n in enumerate(corpus)]
                    + [(float(d), 1, j) for j, d in enumerate(own_distance)])[:k]
    picked = [corpus[j] for _, src, j in ranked if src == 0]
    fetched = iter(setup.retriever.fetch(picked, size=size)) if picked else iter(())  # in the order asked
    images = torch.stack([next(fetched) if src == 0 else own[j] for _, src, j in ranked])
    ids = [corpus[j]["image_id"] if src == 0 else f"{setup.sources[i]}-own-{j}" for _, src, j in ranked]
    return images, ids, sum(src for _, src, _ in ranked) / len(ranked)


def retrieve(setup: BenchSetup, i: int, mode: str, k: int, seed: int) -> tuple[list[dict], float]:
    """Neighbours of y_i (cached per image, mode, K and seed) and the seconds they took."""
    key = (i, mode, k, seed)
    if key not in setup.retrieved:
        start = time.perf_counter()
        found = setup.retriever.neighbours(setup.ys[i], k, mode=mode, seed=seed)
        setup.retrieved[key] = (found, time.perf_counter() - start)
    return setup.retrieved[key]


def _neighbours(setup: BenchSetup, arm: Arm, i: int, cfg, seed: int, record: dict):
    """The adaptation images of ``arm`` for crop ``i`` (None when it adapts on none)."""
    if arm.neighbours is None:
        return None
    size = setup.crops.shape[-1]
    t0 = time.perf_counter()
    if arm.neighbours == "oracle":
        images = oracle_neighbours(setup.sources[i], setup.boxes[i], cfg.k, size, seed)
        record["neighbour_ids"] = [f"{setup.sources[i]}-oracle-{j}" for j in range(cfg.k)]
        record["seconds_retrieve"] = time.perf_counter() - t0
        return images.to(setup.device)
    if arm.neighbours == "open":
        images, record["neighbour_ids"], record["own_photo_share"] = open_neighbours(setup, i, cfg.k, size, seed)
        record["seconds_retrieve"] = time.perf_counter() - t0
        return images.to(setup.device)
    found, seconds = retrieve(setup, i, arm.neighbours, cfg.k, seed)
    images = setup.retriever.fetch(found, size=size)
    record["neighbour_ids"] = [n["image_id"] for n in found]
    record["seconds_retrieve"] = seconds + time.perf_counter() - t0
    return images


def run_arm(setup: BenchSetup, arm: Arm, i: int, seed: int, cfg=None, weights_dir: str | None = None,
            save_dir: str | None = None, label: str | None = None) -> dict:
    """Restore crop ``i`` with ``arm`` (recorded as ``label``, default the arm's name) and
    score it through the job's own row stages (``jobs.restore.row.restore`` and ``score``);
    failures are rows with the error. Retrieval time counts in the row's total even when
    the neighbours come from the cache (``bench cost`` reuses them)."""
    import dataclasses

    from jobs.restore.row import Measurement, WorkerContext
    from jobs.restore.row import restore as restore_stage
    from jobs.restore.row import score as score_stage
    from restore_core.adaptation import evaluate_after_adaptation
    from restore_core.errors import AdirError
    from restore_core.images import write_png

    cfg = (cfg or setup.cfg).with_overrides(arm.overrides) if arm.overrides else (cfg or setup.cfg)
    gt = setup.crops[i:i + 1].to(setup.device)
    m = Measurement(setup.ys[i], setup.operator, gt.cpu())
    record: dict[str, Any] = {"image_id": setup.image_ids[i], "arm": label or arm.name, "seed": seed,
                              "status": "ok", "error": None, "neighbour_ids": [], "seconds_retrieve": 0.0}
    start = time.perf_counter()
    try:
        if arm.method == "bicubic":
            x = _bicubic(m.y, setup.operator)
            info = {"seconds_total": time.perf_counter() - start}
        else:
            neighbours = _neighbours(setup, arm, i, cfg, seed, record)
            ctx = WorkerContext(job=None, model=setup.model, retriever=setup.retriever, seconds_load=0.0)
            with evaluate_after_adaptation(lambda model: {"heldout_loss": heldout_loss(model, gt, seed)}):
                x, info = restore_stage(m, dataclasses.replace(cfg, method=arm.method), ctx, neighbours, seed)
            if "heldout_loss" not in info and arm.method == "gd":  # no adaptation: the base prior
                info["heldout_loss"] = heldout_loss(setup.model, gt, seed)
    except AdirError as exc:
        record.update(status="failed", error=str(exc), seconds_total=time.perf_counter() - start)
        log.warning("%s on %s failed: %s", record["arm"], record["image_id"], exc)
        return record
    x = x.detach().float().cpu()
    scoring = dataclasses.replace(cfg, metrics=tuple(setup.metric_names), metrics_weights_dir=weights_dir)
    record.update(score_stage(x, m, scoring, "cpu"))
    record.update({key: info.get(key) for key in ("heldout_loss", "seconds_adapt", "seconds_sample", "steps",
                                                  "iterations", "adapt_loss_last")})
    record["seconds_total"] = record["seconds_retrieve"] + float(info.get("seconds_total", 0.0))
    if save_dir is not None:
        write_png(x, os.path.join(save_dir, f"{record['image_id']}_{record['arm']}.png"))
    return record


def _bicubic(y: torch.Tensor, operator) -> torch.Tensor:
    """Bicubic upsampling of an SR measurement to the image size (the classical reference)."""
    from restore_core.errors import MethodError
    from restore_core.images import resize

    if not operator.name.startswith("sr"):
        raise MethodError(f"arm 'bicubic' needs a super-resolution task (sr2, sr4, sr8), got {operator.name!r}")
    return resize(y, tuple(operator.image_shape[1:]))


def paired_gain(records: list[dict], arm: str, other: str, key: str = "psnr") -> dict | None:
    """Paired difference of ``key`` (``arm − other``) over the images both restored: mean,
    its standard error (so a reader can tell a few tenths of a dB from noise), wins (images
    where ``arm`` is better, in the metric's direction: ``PAIRED_METRICS``) and n."""
    ref = {r["image_id"]: r.get(key) for r in records if r["arm"] == other and r["status"] == "ok"}
    diffs = [r[key] - ref[r["image_id"]] for r in records
             if r["arm"] == arm and r["status"] == "ok" and r.get(key) is not None
             and ref.get(r["image_id"]) is not None]
    if not diffs:
        return None
    se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else None
    sign = 1 if PAIRED_METRICS.get(key, True) else -1
    return {"gain": float(np.mean(diffs)), "se": se, "wins": int(sum(sign * d > 0 for d in diffs)), "n": len(diffs)}
