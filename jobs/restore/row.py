"""One manifest row, end to end, in a plain Python process (the Ray actors only call it).

``load_context(job)`` loads what every row shares, once per worker: the diffusion prior
and, when the job has an index, the retriever (embedder + index). ``process_row(row, ctx,
output_uri)`` then does, for one validated manifest row (``jobs.restore.manifest``):

1. **load** — read the input (``restore_core.images``: RGB, decompression-bomb cap
   ``max_pixels``). Sizes: the restored image x must have sides divisible by the UNet's
   downsampling factor f and, for ``srS``, by S. Benchmark rows (``degrade=true``) centre-
   crop the clean input to a multiple of lcm(f, S) and make y = A(x) + noise with the row's
   seed; the input is the GT. Production rows (``degrade=false``) take the input *as* y,
   centre-cropped to a multiple of lcm(f, S)/S, so for ``srS`` the output is S× larger;
   ``colorize`` inputs are reduced to one channel (their mean); the GT, if ``gt_uri`` is
   given, is cropped the same way and must match the output size.
2. **retrieve** — methods that use neighbours (adir) get the K nearest corpus images of y
   (``index_builder.retrieval.Retriever``), fetched through fsspec.
3. **restore** — ``restore_core.restore.restore_one`` (adapt a fresh LoRA, sample; the
   adapter is dropped inside the method, so the base weights are the same for every row).
4. **score** — ``restore_core.metrics`` (full-reference ones only with a GT) and the
   data consistency ‖A x̂ − y‖/√m. A metric that cannot be computed is null.
5. **write** — restored/, observed/ and gt/ PNGs atomically, then the result record
   (``jobs.restore.results.write_result``): the record is the row's commit.

Failures are data: an ``AdirError`` becomes ``status=failed`` with its one-line message,
any other exception ``"ExceptionType: message"``. If even the failure record cannot be
written (storage down), the returned dict says ``record_written=False`` and the job
counts the row as failed; a rerun redoes it. No Ray here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from jobs.restore.job_config import JobConfig
from jobs.restore.results import write_result
from restore_core import images, metrics, storage
from restore_core.models.pixel_unet import DiffusionModel, load_diffusion_model
from restore_core.errors import AdirError, InputError, MethodError
from restore_core.methods import get_method
from restore_core.operators import build_operator, parse_task
from restore_core.restore import restore_one

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What a worker loads once and every row shares."""

    job: JobConfig
    model: DiffusionModel
    retriever: Any | None
    seconds_load: float


def load_context(job: JobConfig) -> WorkerContext:
    """Load the prior (and the retriever when ``job.index`` is set) once per worker."""
    start = time.perf_counter()
    model = load_diffusion_model(job.model, device=job.torch_device)
    retriever = None
    if job.index:
        from index_builder.retrieval import Retriever

        kwargs = {"embedder": job.embedder} if job.embedder is not None else {}
        retriever = Retriever.load(job.index, device=job.torch_device, **kwargs)
    return WorkerContext(job=job, model=model, retriever=retriever, seconds_load=time.perf_counter() - start)


def one_line(exc: BaseException) -> str:
    """The error column: AdirError messages as they are, others prefixed by their type."""
    text = " ".join(str(exc).split()) if str(exc).strip() else ""
    if isinstance(exc, AdirError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _sr_factor(task: str) -> int:
    name, _ = parse_task(task)
    return int(name[2:]) if name in ("sr2", "sr4", "sr8") else 1


def prepare_measurement(row: dict, model: DiffusionModel, max_pixels: int):
    """(y, operator, gt | None) of a row, following the size policy of the module docstring."""
    name, _ = parse_task(row["task"])
    s, f = _sr_factor(row["task"]), model.downsample_factor
    multiple = math.lcm(f, s)
    x_in = images.read_image(row["input_uri"], max_pixels=max_pixels)
    if row["degrade"]:
        gt = images.center_crop_to_multiple(x_in, multiple)
        operator = build_operator(row["task"], (model.in_channels,) + tuple(gt.shape[-2:]))
        generator = torch.Generator().manual_seed(int(row["seed"]))
        with torch.no_grad():
            y = operator.degrade(gt, row["noise_sigma"], generator)
        return y, operator, gt
    y = images.center_crop_to_multiple(x_in, multiple // s)
    if name == "colorize":
        y = y.mean(dim=1, keepdim=True)
    shape = (model.in_channels, y.shape[-2] * s, y.shape[-1] * s)
    operator = build_operator(row["task"], shape)
    gt = None
    if row["gt_uri"]:
        gt = images.center_crop_to_multiple(images.read_image(row["gt_uri"], max_pixels=max_pixels), multiple)
        if tuple(gt.shape[-2:]) != shape[1:]:
            raise InputError(f"gt {row['gt_uri']} is {gt.shape[-2]}x{gt.shape[-1]} after cropping but the "
                             f"restored image is {shape[1]}x{shape[2]}")
    return y, operator, gt


def score(x: torch.Tensor, y: torch.Tensor, operator, gt: torch.Tensor | None, cfg, device: str) -> dict:
    """Metrics of one restored image; one that fails to compute is null (logged)."""
    out: dict[str, float | None] = {}
    names = tuple(cfg.metrics) or metrics.DEFAULT_FR + metrics.DEFAULT_NR
    for name in names:
        if gt is None and name in metrics.FULL_REFERENCE:
            continue
        try:
            out.update(metrics.compute_metrics(x, gt, names=(name,), weights_dir=cfg.metrics_weights_dir,
                                               device=device))
        except AdirError:
            raise  # a missing weights file is a configuration problem, not a bad value
        except Exception as exc:  # noqa: BLE001 - pyiqa fails on degenerate images in many ways
            log.warning("metric %s failed: %s", name, one_line(exc))
            out[name] = None
    try:
        out["consistency"] = metrics.consistency(x.to(y.device), y, operator)
    except Exception as exc:  # noqa: BLE001
        log.warning("consistency failed: %s", one_line(exc))
        out["consistency"] = None
    return out


def row_config(row: dict, job: JobConfig):
    """The job's RestoreConfig with the row's method and its k/steps overrides."""
    changes = {"method": row["method"]}
    changes.update({key: row[key] for key in ("k", "steps") if row.get(key) is not None})
    return dataclasses.replace(job.restore, **changes)


def _base_record(row: dict) -> dict:
    return {key: row.get(key) for key in
            ("image_id", "method", "task", "noise_sigma", "seed", "degrade", "input_uri", "gt_uri")}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _restore_and_write(row: dict, ctx: WorkerContext, output_uri: str, record: dict) -> None:
    cfg = row_config(row, ctx.job)
    image_id = row["image_id"]
    t0 = time.perf_counter()
    y, operator, gt = prepare_measurement(row, ctx.model, cfg.max_pixels)
    y, operator = y.to(ctx.model.device), operator.to(ctx.model.device)
    record["seconds_load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    neighbours = None
    if get_method(cfg.method).uses_neighbours:
        if ctx.retriever is None:
            raise MethodError(f"method {cfg.method!r} needs retrieved neighbours; set the job's index")
        found = ctx.retriever.neighbours(y, cfg.k, mode=cfg.retrieval, seed=int(row["seed"]))
        record["neighbour_ids"] = [str(n["image_id"]) for n in found]
        record["neighbour_uris"] = [str(n["uri"]) for n in found]
        neighbours = ctx.retriever.fetch(found).to(ctx.model.device)
    record["seconds_retrieve"] = time.perf_counter() - t0

    x, info = restore_one(y, operator, ctx.model, cfg, neighbours=neighbours, seed=int(row["seed"]))
    for key in ("seconds_adapt", "seconds_sample"):
        record[key] = float(info.get(key, 0.0))
    record.update(steps=int(info.get("steps", 0)), iterations=int(info.get("iterations", 0)),
                  stop_reason=str(info.get("stop_reason", "")))
    for warning in info.get("warnings", []):
        log.warning("%s: %s", image_id, warning)

    t0 = time.perf_counter()
    record.update(score(x, y, operator, gt, cfg, str(ctx.model.device)))
    record["seconds_score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    paths = {"output_path": ("restored", x), "observed_path": ("observed", y), "gt_path": ("gt", gt)}
    for column, (folder, image) in paths.items():
        if image is None:
            continue
        relative = f"{folder}/{image_id}.png"
        images.write_png(image.cpu(), storage.join(output_uri, relative))
        record[column] = relative
    record["seconds_write"] = time.perf_counter() - t0


def process_row(row: dict, ctx: WorkerContext, output_uri: str) -> dict:
    """Restore one validated manifest row; returns its result record (see jobs.restore.results).

    Never raises for a row's own problems: they become ``status=failed`` records. The
    returned dict also carries ``record_written`` (False when storage refused the record).
    """
    start = time.perf_counter()
    record = _base_record(row)
    record.update(status="ok", error=None, neighbour_ids=[], neighbour_uris=[], worker_pid=os.getpid())
    try:
        _restore_and_write(row, ctx, output_uri, record)
    except Exception as exc:  # noqa: BLE001 - failures are data
        record = _base_record(row)
        record.update(status="failed", error=one_line(exc), neighbour_ids=[], neighbour_uris=[],
                      worker_pid=os.getpid(), stop_reason="error")
        if not isinstance(exc, AdirError):
            log.warning("row %s crashed", row["image_id"], exc_info=True)
    record["seconds_total"] = time.perf_counter() - start
    record["finished_at"] = _now()
    try:
        write_result(output_uri, record)
        written = True
    except Exception as exc:  # noqa: BLE001 - storage down: the row is counted failed, redone on resume
        record.update(status="failed", error=f"could not write the result record: {one_line(exc)}")
        written = False
    return {**record, "record_written": written}
