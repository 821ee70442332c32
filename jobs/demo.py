"""``adir demo [--output DIR]``: the embedded default, end to end, offline.

On a fresh machine with no network it:

1. exports crops of the bundled *training* photographs (``restore_core.bundled_photos``)
   and builds the retrieval index from them with the shipped embedder (``adir
   build-index``, Ray, 2 workers);
2. exports one crop per *held-out* photograph (never seen by the prior, the embedder or
   the index) and writes a manifest that degrades each with ``sr4``, ``deblur_box5`` and
   ``colorize`` (benchmark mode: the crop is the ground truth), once for ADIR and once
   without adaptation (``gd``) as the comparison, both sampled by DDRM (``SAMPLER``);
3. restores the manifest with ``adir restore`` (the fast preset, local Ray, 2 workers);
   the reducer writes ``summary.json`` and ``report.html``;
4. prints the path of ``report.html``.

Sizes (chosen so the whole demo takes ≤ 10 minutes on a 2-core machine; see
``SIZES``): crops are the prior's sample size, the index holds ``corpus`` training crops,
``heldout`` crops × 3 tasks × 2 methods rows are restored, ADIR adapts on K = 8
neighbours. ``--tiny`` (used by the tests) shrinks everything to a smoke run: 16 corpus
crops, 6 rows of 3 steps; its cost is mostly starting Ray actors (each imports torch,
diffusers, open_clip and pyiqa). Everything lands under ``--output``: ``inputs/`` (crops, manifest), ``index/``
and the restore job's outputs (``restored/``, ``results/``, ``report.html``…). Rerunning
on the same folder resumes (the index build and the restore both skip finished work).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from jobs.restore.manifest import write_manifest
from restore_core.bundled_photos import HELDOUT_PHOTOS, export_crops, random_crops
from restore_core.images import write_png

TASKS: tuple[str, ...] = ("sr4", "deblur_box5", "colorize")
METHODS: tuple[str, ...] = ("adir", "gd")


@dataclass(frozen=True)
class DemoSize:
    """How much work the demo does."""

    corpus: int  # training crops embedded into the retrieval index
    heldout: int  # held-out crops restored (each with every task and method)
    restore_overrides: tuple[str, ...]  # restore keys on top of the fast preset and ``SAMPLER``


# The sampler of every demo row (``restore_core.sampling.peers``). Colorize observes only the
# channel mean, so its chroma is the prior's as the sampler draws it: with the shipped prior,
# Algorithm 1 and DiffPIR turn colorized crops blue (the prior's own unconditional samples
# are blue fields) while DDRM gives muted colour without a cast (``adir bench colorize``,
# README "Demo"); tests/test_colorize.py holds the demo to that.
SAMPLER = "ddrm"

SIZES: dict[str, DemoSize] = {
    # 3 crops x 3 tasks x 2 methods = 18 rows. adapt_crop=32: the prior was trained on
    # 32² patches, and adapting on them costs about a quarter of 64² (measured here:
    # adaptation/sampling time per row 1.3 at 32² against 6 at 64²).
    "default": DemoSize(corpus=240, heldout=3, restore_overrides=("k=8", "adapt_crop=32")),
    # smoke run for tests/CI: 1 crop x 3 tasks x 2 methods, a few steps
    "tiny": DemoSize(corpus=16, heldout=1,
                     restore_overrides=("k=2", "steps=3", "adapt_iters=2", "adapt_batch=2", "adapt_crop=32")),
}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--tiny", action="store_true", help="a smoke run with a few steps (tests, CI)")
    p.add_argument("--model", help="diffusion prior spec (default: the shipped models/prior)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers for indexing and restoring (default 2)")


def sample_size(model_spec: str | None) -> int:
    """The prior's training resolution: crops are made at this size."""
    from restore_core.models.pixel_unet import load_diffusion_model

    return int(load_diffusion_model(model_spec).sample_size)


def heldout_crops(out_dir: str, n: int, size: int) -> list[tuple[str, str]]:
    """One ``size``² crop per held-out photo (cycling when ``n`` > 3), as PNGs;
    returns (crop id, path) pairs."""
    os.makedirs(out_dir, exist_ok=True)
    crops = []
    for i in range(n):
        photo = HELDOUT_PHOTOS[i % len(HELDOUT_PHOTOS)]
        x, _ = random_crops((photo,), 1, size, seed=100 + i)
        crop_id = f"{photo}-{i}"
        path = os.path.join(out_dir, f"{crop_id}.png")
        write_png(x, path)
        crops.append((crop_id, path))
    return crops


def manifest_rows(crops: list[tuple[str, str]]) -> list[dict]:
    """Every crop with every demo task and method, degraded in the worker (benchmark mode)."""
    return [
        {"image_id": f"{crop_id}.{task}.{method}", "input_uri": path, "task": task, "degrade": True,
         "noise_sigma": 0.0, "method": method, "seed": i}
        for i, (crop_id, path) in enumerate(crops) for task in TASKS for method in METHODS
    ]


def _run_cli(module, argv: list[str]) -> int:
    """Run another ``adir`` command's ``main`` in this process, parsed by its own parser."""
    parser = argparse.ArgumentParser(prog=f"adir {module.__name__.rsplit('.', 1)[-1]}")
    module.configure_parser(parser)
    return int(module.main(parser.parse_args(argv)) or 0)


def build_corpus_index(output: str, n_crops: int, side: int, workers: int) -> str:
    """Step 1: ``n_crops`` training crops under ``inputs/corpus`` and their index under
    ``index/`` (``adir build-index`` with the shipped embedder); returns the index URI."""
    from jobs import build_index

    corpus_dir = os.path.join(output, "inputs", "corpus")
    export_crops(corpus_dir, "train", n_crops, side, seed=0)
    index_uri = os.path.join(output, "index")
    shard_size = -(-n_crops // workers)  # one shard per worker: both embed at once
    code = _run_cli(build_index, ["--images", corpus_dir, "--output", index_uri, "--workers", str(workers),
                                  "--shard-size", str(shard_size)])
    if code != 0:
        raise RuntimeError(f"building the demo index failed (exit {code})")
    return index_uri


def prepare(output: str, size: DemoSize, model: str | None, workers: int) -> tuple[str, str]:
    """Steps 1-2: corpus crops + index, held-out crops + manifest; returns (index, manifest)."""
    side = sample_size(model)
    index_uri = build_corpus_index(output, size.corpus, side, workers)
    crops = heldout_crops(os.path.join(output, "inputs", "heldout"), size.heldout, side)
    manifest_uri = os.path.join(output, "inputs", "manifest.parquet")
    write_manifest(manifest_rows(crops), manifest_uri)
    return index_uri, manifest_uri


def main(args: argparse.Namespace) -> int:
    from jobs.ray_env import init_ray
    from jobs.restore import driver as restore_job

    start = time.monotonic()
    output = os.path.abspath(args.output)
    size = SIZES["tiny" if args.tiny else "default"]
    print(f"[adir demo] building the index and the manifest under {output}", flush=True)
    ray, started_here = init_ray(None)  # one local Ray for the index build and the restore
    try:
        index_uri, manifest_uri = prepare(output, size, args.model, args.workers)
        prepared = time.monotonic()
        argv = ["--manifest", manifest_uri, "--output", output, "--preset", "fast", "--workers", str(args.workers),
                "--set", f"index={index_uri}"]
        if args.model:
            argv += ["--set", f"model={args.model}"]
        for item in (f"sampler={SAMPLER}",) + size.restore_overrides:
            argv += ["--set", item]
        code = _run_cli(restore_job, argv)
    finally:
        if started_here:
            ray.shutdown()
    end = time.monotonic()
    print(f"[adir demo] index + manifest {prepared - start:.0f}s, restore + report {end - prepared:.0f}s, "
          f"total {end - start:.0f}s", flush=True)
    print(os.path.join(output, "report.html"), flush=True)
    return code
