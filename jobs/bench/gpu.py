"""``adir bench gpu``: the paper-scale figures on one accelerator, in a few minutes.

Runs, on ``--device`` (default: cuda when available):

1. the guided-diffusion 256² ImageNet network (``restore_core.models.guided_diffusion``,
   ``unet_config`` of ``imagenet256-uncond``, 552M parameters) with random weights, written
   as the folder the converter writes and loaded through the normal loader (or ``--model``,
   a converted folder with the real weights): ms per forward at 256², batch 1, in fp32 and
   bf16 (and the bf16 output's relative deviation from fp32);
2. one ADIR row (sr4, 256² output, K = 20 neighbours given directly) with the ``fast`` and
   the ``paper`` preset (ADIR Table 1), and one sr8 row at 512² output (tiled,
   ``restore_core.sampling.tiled``) with the fast preset: seconds per image (adaptation /
   sampling / total); the paper reports 1,308 s per image on an RTX A6000;
3. faiss: exact inner-product search of 1,000 queries in 100,000 × 512 vectors on the GPU
   when this faiss has GPU support (else on the CPU, said so);
4. the shipped embedder (``index_builder.embedder``): images per second, batch 64.

``--small`` swaps in a 2-level network at 32² and a few steps / iterations: the same code
path, runnable on a CPU in seconds (the test suite runs it). Random weights make the
restorations meaningless as images; only the timings count. Prints a table, ``--json``
writes the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time

import torch

SMALL_OVERRIDES = {"steps": 3, "adapt_iters": 1, "adapt_batch": 2, "k": 2}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--model", default=None, help="a converted guided-diffusion folder (default: random weights)")
    p.add_argument("--small", action="store_true", help="tiny network at 32², few steps (a CPU smoke run)")
    p.add_argument("--skip-paper", action="store_true", help="leave out the paper-preset row (the longest)")
    p.add_argument("--reps", type=int, default=10, help="timed forwards per dtype (default 10)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timer(device: torch.device, out: dict, key: str):
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    out[key] = time.perf_counter() - start


def random_prior(folder: str, small: bool, seed: int = 0) -> str:
    """The converter's folder layout with the paper's architecture (or a 2-level one for
    ``small``) and random weights."""
    from diffusers import UNet2DModel

    from restore_core.models.guided_diffusion import (
        VARIANTS,
        Architecture,
        scheduler,
        unet_config,
    )

    arch = (Architecture(model_channels=32, num_res_blocks=1, attention_levels=(1,), channel_mult=(1, 2),
                         sample_size=32) if small else VARIANTS["imagenet256-uncond"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(**unet_config(arch))
    unet.save_pretrained(os.path.join(folder, "unet"), safe_serialization=True)
    scheduler().save_pretrained(os.path.join(folder, "scheduler"))
    return folder


def bench_forward(folder: str, device: torch.device, reps: int) -> dict:
    from restore_core.models.pixel_unet import load_diffusion_model

    out: dict = {}
    ref = None
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = load_diffusion_model(folder, device=device, dtype=dtype)
        s = model.sample_size
        x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            eps = model.eps(x, 500)  # warm-up
            with _timer(device, out, f"{name}_seconds"):
                for _ in range(reps):
                    model.eps(x, 500)
        out[f"ms_forward_{name}"] = 1000 * out.pop(f"{name}_seconds") / reps
        if ref is None:
            ref, out["parameters"], out["size"] = eps.float(), sum(p.numel() for p in model.unet.parameters()), s
        else:
            out["bf16_rel_l2"] = float((eps.float() - ref).norm() / ref.norm())
        del model
    return out


def bench_rows(folder: str, device: torch.device, small: bool, skip_paper: bool) -> list[dict]:
    from restore_core.bundled_photos import HELDOUT_PHOTOS, TRAIN_PHOTOS, random_crops
    from restore_core.config import RestoreConfig
    from restore_core.errors import AdirError
    from restore_core.models.pixel_unet import load_diffusion_model
    from restore_core.operators import build_operator
    from restore_core.restore import restore_one

    model = load_diffusion_model(folder, device=device)
    s = model.sample_size
    plan = [("fast", "sr4", s)] + ([] if skip_paper else [("paper", "sr4", s)]) + [("fast", "sr8", 2 * s)]
    rows = []
    for preset, task, side in plan:
        cfg = RestoreConfig.preset(preset)
        if small:
            cfg = cfg.updated(SMALL_OVERRIDES)
        gt, _ = random_crops(HELDOUT_PHOTOS, 1, side, seed=0)
        neighbours, _ = random_crops(TRAIN_PHOTOS, cfg.k, s, seed=1)
        op = build_operator(task, (3, side, side))
        row = {"preset": preset, "task": task, "output": f"{side}x{side}", "steps": cfg.steps,
               "adapt_iters": cfg.adapt_iters}
        try:
            with _timer(device, row, "seconds_per_image"):
                _, info = restore_one(op.A(gt), op, model, cfg, method="adir", neighbours=neighbours)
        except AdirError as exc:  # e.g. random weights diverging: report it, keep the other figures
            row.update(seconds_per_image=float("nan"), error=str(exc))
            info = {}
        row.update(seconds_adapt=info.get("seconds_adapt"), seconds_sample=info.get("seconds_sample"))
        rows.append(row)
    return rows


def bench_faiss(device: torch.device, small: bool) -> dict:
    try:
        import faiss
        import numpy as np
    except ImportError:
        return {"faiss": "not installed"}
    n, d, q = (2_000, 64, 100) if small else (100_000, 512, 1_000)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, d), dtype=np.float32)
    queries = rng.standard_normal((q, d), dtype=np.float32)
    index = faiss.IndexFlatIP(d)
    gpu = device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(base)
    index.search(queries[:10], 20)  # warm-up
    start = time.perf_counter()
    index.search(queries, 20)
    seconds = time.perf_counter() - start
    return {"faiss_on": "gpu" if gpu else "cpu", "faiss_vectors": n, "faiss_dim": d,
            "faiss_queries_per_s": q / seconds}


def bench_embedding(device: torch.device, small: bool) -> dict:
    from index_builder.embedder import load_embedder

    embedder = load_embedder(None, device=str(device), batch_size=64)
    n = 16 if small else 512
    images = torch.rand(n, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    embedder.embed(images[:4])  # warm-up
    out: dict = {}
    with _timer(device, out, "seconds"):
        embedder.embed(images)
    return {"embed_images_per_s": n / out["seconds"], "embed_batch": 64}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result: dict = {"device": str(device), "small": bool(args.small),
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory(prefix="adir-bench-gpu-") as tmp:
        folder = args.model or random_prior(tmp, args.small)
        result["model"] = args.model or "random weights, " + ("small 2-level" if args.small else "imagenet256-uncond")
        result["forward"] = bench_forward(folder, device, args.reps)
        result["rows"] = bench_rows(folder, device, args.small, args.skip_paper)
    result["faiss"] = bench_faiss(device, args.small)
    result["embedding"] = bench_embedding(device, args.small)
    return result


def _print(result: dict) -> None:
    f = result["forward"]
    print(f"device {result['device']} ({result['device_name']}); model: {result['model']}, "
          f"{f['parameters'] / 1e6:.1f}M parameters")
    print(f"  forward {f['size']}², batch 1: fp32 {f['ms_forward_fp32']:.1f} ms, bf16 {f['ms_forward_bf16']:.1f} ms "
          f"(bf16 rel. L2 vs fp32 {f['bf16_rel_l2']:.2e})")
    for r in result["rows"]:
        print(f"  adir {r['task']} {r['output']:>9} preset {r['preset']:5} ({r['steps']} steps, {r['adapt_iters']} "
              f"iters): {r['seconds_per_image']:.1f} s/image (adapt {r['seconds_adapt'] or 0:.1f}, "
              f"sample {r['seconds_sample'] or 0:.1f})" + (f" FAILED: {r['error']}" if "error" in r else ""))
    fa = result["faiss"]
    print("  faiss: " + (fa["faiss"] if "faiss" in fa else
                         f"{fa['faiss_queries_per_s']:.0f} queries/s on {fa['faiss_on']} "
                         f"({fa['faiss_vectors']} x {fa['faiss_dim']}, exact)"))
    print(f"  embedding: {result['embedding']['embed_images_per_s']:.1f} images/s")


def main(args: argparse.Namespace) -> int:
    result = run(args)
    _print(result)
    if args.json:
        from restore_core import storage

        storage.atomic_write_bytes(args.json, json.dumps(result, indent=2).encode())
    return 0
