"""One manifest row, end to end, in a plain Python process: the row path the job and the benches share.

``load_context(job)`` loads what every row shares, once per worker: the diffusion prior
and, when the job has an index, the retriever (embedder + index). ``restore_row(row, ctx,
output_uri)`` then runs the five stages below on one validated manifest row
(``jobs.restore.manifest``) and returns its result record (``jobs.restore.results``); each
stage is a public function, so a bench can run a subset of them on its own data:

1. **load** (``load``) — read the input (``restore_core.images``: RGB, decompression-bomb
   cap ``max_pixels``). Sizes: the restored image x must have sides divisible by the UNet's
   downsampling factor f and, for ``srS``, by S. Benchmark rows (``degrade=true``) centre-
   crop the clean input to a multiple of lcm(f, S) and make y = A(x) + noise with the row's
   seed; the input is the GT. Production rows (``degrade=false``) take the input *as* y,
   centre-cropped to a multiple of lcm(f, S)/S, so for ``srS`` the output is S× larger;
   ``colorize`` inputs are reduced to one channel (their mean); the GT, if ``gt_uri`` is
   given, is cropped the same way and must match the output size.
2. **retrieve** (``retrieve``) — methods that use neighbours (adir) get the K nearest
   corpus images of y (``index_builder.retrieval.Retriever``), fetched through fsspec.
3. **restore** (``restore``) — ``restore_core.restore.restore_one`` (adapt a fresh LoRA,
   sample; the adapter is dropped inside the method, so the base weights are the same for
   every row). With a row tracker that has an adapter location (``RowRestorer.run``,
   ``commit_row``) the adapted LoRA is saved to ``adapters/<xx>/<id>-<row_key[:16]>.safetensors``
   under the output before sampling (``restore_core.adaptation.adapt_or_resume``), so a
   rerun of a row interrupted after its adaptation loads it instead of adapting again and
   writes the same image. The key holds the row's ``row_key`` (its columns and the run's
   settings), so other settings never load it; it is deleted once the row's record is
   committed (``drop_adapters``).
4. **write** (``write``) — restored/, observed/ and gt/ PNGs, each atomically, fanned out
   by a two-hex-digit digest of the id (``restored/3f/<id>.png``: 256 folders, so no folder
   holds a million files). Written before scoring, so a scoring failure keeps the image.
5. **score** (``score``) — ``restore_core.metrics`` (full-reference ones only with a GT)
   and the data consistency ‖A x̂ − y‖/√m. A metric that cannot be computed is null; a
   metric that cannot run at all (its weights are gone) fails the row, naming the metric,
   with its restored image kept and named in the record.

Progress: the row runs inside ``restore_core.progress.tracking``, so its loops report stage
and step (adapting 12/40, sampling 60/100) to its ``RowProgress``; ``row_work`` is the
work a row plans per stage, from its method's ``work(cfg)`` (the driver's ETA).

The caller commits the returned record after the images are written (the driver in
batched parts, ``commit_row`` one by one): the record is the row's commit. Failures are data: an ``AdirError`` becomes
``status=failed`` with its one-line message, any other exception ``"ExceptionType:
message"``. ``RowRestorer`` is the Ray actor body (heavy state in ``__init__``, one row per
call), the same shape as ``index_builder.shard_build.ShardEmbedder``; its ``progress``
answers from a second thread while ``run`` works. No Ray import here.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from jobs.restore import sd_rows
from jobs.restore.job_config import JobConfig
from jobs.restore.manifest import row_task
from jobs.restore.results import write_result
from restore_core import images, metrics, progress, storage
from restore_core.errors import AdirError, InputError, MethodError
from restore_core.methods import get_method
from restore_core.models.pixel_unet import DiffusionModel, load_diffusion_model
from restore_core.operators import build_operator
from restore_core.restore import restore_one

log = logging.getLogger(__name__)

#: The manifest columns every result record starts with (``base_record``).
RECORD_ROW_KEYS = ("image_id", "row_key", "method", "task", "noise_sigma", "seed", "degrade", "input_uri", "gt_uri")
#: Output folder and record column of each written image.
IMAGE_FOLDERS = {"output_path": "restored", "observed_path": "observed", "gt_path": "gt"}
ADAPTERS_DIR = "adapters"  # adapted LoRAs of rows not committed yet (module docstring, stage 3)


class MetricFailed(AdirError):
    """A metric could not run at all; the row's restored image is kept."""


@dataclass
class WorkerContext:
    """What a worker loads once and every row shares."""

    job: JobConfig
    model: DiffusionModel
    retriever: Any | None
    seconds_load: float
    sd_models: dict = dataclasses.field(default_factory=dict)  # SD pipelines by (kind, spec): sd_rows


@dataclass
class Measurement:
    """A row's observation y, its operator A and its ground truth (None when unknown)."""

    y: torch.Tensor
    operator: Any
    gt: torch.Tensor | None


def load_context(job: JobConfig, index_service: str | None = None) -> WorkerContext:
    """Load the prior (and the retriever when ``job.index`` is set) once per worker.

    ``index_service``: the name the driver gave the index's shard actors
    (``index_builder.serving.start_shard_servers``); the retriever then queries them and
    holds no index state of its own."""
    start = time.perf_counter()
    model = load_diffusion_model(job.model, device=job.torch_device)
    retriever = None
    if job.index:
        from index_builder.retrieval import Retriever

        kwargs = {"embedder": job.embedder} if job.embedder is not None else {}
        if index_service:
            from index_builder.serving import connect

            kwargs["shards"] = connect(job.index, index_service, job.index_servers)
        retriever = Retriever.load(job.index, device=job.torch_device, mmap=job.index_mmap, **kwargs)
    return WorkerContext(job=job, model=model, retriever=retriever, seconds_load=time.perf_counter() - start)


def one_line(exc: BaseException) -> str:
    """The error column: AdirError messages as they are, others prefixed by their type."""
    text = " ".join(str(exc).split()) if str(exc).strip() else ""
    if isinstance(exc, AdirError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def base_record(row: dict) -> dict:
    """The start of every result record of ``row``: its manifest columns."""
    return {key: row.get(key) for key in RECORD_ROW_KEYS}


def failed_record(row: dict, error: str) -> dict:
    """A complete ``status=failed`` record of ``row`` with the one-line ``error``."""
    return base_record(row) | {"status": "failed", "error": error, "neighbour_ids": [], "neighbour_uris": [],
                               "stop_reason": "error", "finished_at": _now()}


def row_config(row: dict, job: JobConfig):
    """The job's RestoreConfig with the row's method, its k/steps overrides and its noise level.

    The samplers that need σ_y (DDRM, DiffPIR, DPS; SHRED's discrepancy stop) get the row's
    ``noise_sigma`` when it is known: always for benchmark rows (``degrade``: the job made
    the noise), and for production rows when the column states a σ > 0 and the job did not
    set ``noise_sigma`` itself; otherwise σ is estimated from y."""
    changes = {"method": row["method"]}
    changes.update({key: row[key] for key in ("k", "steps") if row.get(key) is not None})
    if "steps" in changes and getattr(get_method(row["method"]), "model_kind", ""):
        # Stable Diffusion methods sample with their pipeline's own step count
        changes["sd"] = dataclasses.replace(job.restore.sd, steps=int(changes.pop("steps")))
    sigma = float(row.get("noise_sigma") or 0.0)
    if row.get("degrade") or (sigma > 0 and job.restore.noise_sigma < 0):
        changes["noise_sigma"] = sigma
    return sd_rows.with_prompt(dataclasses.replace(job.restore, **changes), row)


def row_work(row: dict, job: JobConfig) -> dict[str, int]:
    """Units of work the row plans per progress stage (``restore_core.progress``), in order:
    its method's ``work(cfg)`` (adaptation iterations, sampling steps × samples, …); {} for
    a method that reports no stages."""
    cfg = row_config(row, job)
    work = getattr(get_method(cfg.method), "work", None)
    return dict(work(cfg)) if work is not None else {}


# ---- the five stages -------------------------------------------------------------------
def load(row: dict, model: DiffusionModel, max_pixels: int) -> Measurement:
    """Stage 1: the row's measurement, following the size policy of the module docstring."""
    task = row_task(row)
    s, f = task.sr_factor, model.downsample_factor
    multiple = math.lcm(f, s)
    x_in = images.read_image(row["input_uri"], max_pixels=max_pixels)
    if row["degrade"]:
        gt = images.center_crop_to_multiple(x_in, multiple)
        operator = build_operator(task, (model.in_channels,) + tuple(gt.shape[-2:]),
                                  **sd_rows.operator_params(row, task, x_in, multiple, max_pixels))
        generator = torch.Generator().manual_seed(int(row["seed"]))
        with torch.no_grad():
            y = operator.degrade(gt, row["noise_sigma"], generator)
        return Measurement(y, operator, gt)
    y = images.center_crop_to_multiple(x_in, multiple // s)
    if task.name == "colorize":
        y = y.mean(dim=1, keepdim=True)
    shape = (model.in_channels, y.shape[-2] * s, y.shape[-1] * s)
    operator = build_operator(task, shape, **sd_rows.operator_params(row, task, x_in, multiple // s, max_pixels))
    gt = None
    if row["gt_uri"]:
        gt = images.center_crop_to_multiple(images.read_image(row["gt_uri"], max_pixels=max_pixels), multiple)
        if tuple(gt.shape[-2:]) != shape[1:]:
            raise InputError(f"gt {row['gt_uri']} is {gt.shape[-2]}x{gt.shape[-1]} after cropping but the "
                             f"restored image is {shape[1]}x{shape[2]}")
    return Measurement(y, operator, gt)


def retrieve(y: torch.Tensor, cfg, ctx: WorkerContext, seed: int) -> tuple[torch.Tensor | None, list[dict]]:
    """Stage 2: (the K neighbour images, their index entries) for methods that use them,
    else (None, [])."""
    if not get_method(cfg.method).uses_neighbours:
        return None, []
    if ctx.retriever is None:
        raise MethodError(f"method {cfg.method!r} needs retrieved neighbours; set the job's index")
    found = sd_rows.text_neighbours(ctx.retriever, cfg) or ctx.retriever.neighbours(y, cfg.k, mode=cfg.retrieval,
                                                                                     seed=seed)
    return ctx.retriever.fetch(found).to(ctx.model.device), found


def restore(m: Measurement, cfg, ctx: WorkerContext, neighbours: torch.Tensor | None, seed: int):
    """Stage 3: (x̂, info) of ``restore_core.restore.restore_one``."""
    return restore_one(m.y, m.operator, sd_rows.row_model(ctx, cfg), cfg, neighbours=neighbours, seed=seed)


def score(x: torch.Tensor, m: Measurement, cfg, device: str) -> dict:
    """Stage 5: metrics of one restored image; one that fails to compute is null (logged)."""
    out: dict[str, float | None] = {}
    names = tuple(cfg.metrics) or metrics.DEFAULT_FR + metrics.DEFAULT_NR
    for name in names:
        if m.gt is None and name in metrics.FULL_REFERENCE:
            continue
        try:
            out.update(metrics.compute_metrics(x, m.gt, names=(name,), weights_dir=cfg.metrics_weights_dir,
                                               device=device))
        except AdirError as exc:  # a missing weights file: the metric cannot run at all
            raise MetricFailed(f"scoring failed at metric {name!r}: {one_line(exc)}") from None
        except Exception as exc:
            log.warning("metric %s failed: %s", name, one_line(exc))
            out[name] = None
    try:
        out["consistency"] = metrics.consistency(x.to(m.y.device), m.y, m.operator)
    except Exception as exc:
        log.warning("consistency failed: %s", one_line(exc))
        out["consistency"] = None
    return out


def _fan_out(image_id: str) -> str:
    """The two-hex-digit folder of ``image_id`` (module docstring, stage 4)."""
    return hashlib.sha1(image_id.encode()).hexdigest()[:2]


def image_path(folder: str, image_id: str) -> str:
    """Relative path of one of a row's images under the output folder (module docstring)."""
    return f"{folder}/{_fan_out(image_id)}/{image_id}.png"


def adapter_uri(output_uri: str, row: dict) -> str | None:
    """Where the row's adapted LoRA is kept until its record is committed (module
    docstring, stage 3); None for a row without a ``row_key`` (nothing would tell a stale
    adapter from a current one)."""
    if not row.get("row_key"):
        return None
    image_id = row["image_id"]
    return storage.join(output_uri, ADAPTERS_DIR, _fan_out(image_id), f"{image_id}-{row['row_key'][:16]}.safetensors")


def drop_adapters(uris: list[str]) -> None:
    """Delete the saved adapters at ``uris`` (one call for a batch; missing ones are fine)."""
    if not uris:
        return
    fs, _ = storage.filesystem(uris[0])
    paths = [storage.filesystem(u)[1] for u in uris]
    try:
        fs.rm(paths)
    except FileNotFoundError:  # local file systems refuse a batch with a missing file
        for path in paths:
            if fs.exists(path):
                fs.rm(path)


def write(output_uri: str, image_id: str, x: torch.Tensor, m: Measurement) -> dict[str, str]:
    """Stage 4: the restored, observed and GT images as PNGs; returns their record columns."""
    paths = {}
    for column, image in (("output_path", x), ("observed_path", m.y), ("gt_path", m.gt)):
        if image is None:
            continue
        relative = image_path(IMAGE_FOLDERS[column], image_id)
        images.write_png(image.cpu(), storage.join(output_uri, relative))
        paths[column] = relative
    return paths


# ---- the row ---------------------------------------------------------------------------
def _run_stages(row: dict, ctx: WorkerContext, output_uri: str | None, record: dict) -> None:
    cfg = row_config(row, ctx.job)
    seed = int(row["seed"])
    t0 = time.perf_counter()
    sd_rows.check_row(row, cfg)
    m = load(row, sd_rows.row_model(ctx, cfg), cfg.max_pixels)
    m = Measurement(m.y.to(ctx.model.device), m.operator.to(ctx.model.device), m.gt)
    record["seconds_load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    neighbours, found = retrieve(m.y, cfg, ctx, seed)
    record["neighbour_ids"] = [str(n["image_id"]) for n in found]
    record["neighbour_uris"] = [str(n["uri"]) for n in found]
    record["seconds_retrieve"] = time.perf_counter() - t0

    x, info = restore(m, cfg, ctx, neighbours, seed)
    for key in ("seconds_adapt", "seconds_sample"):
        record[key] = float(info.get(key, 0.0))
    record.update(steps=int(info.get("steps", 0)), iterations=int(info.get("iterations", 0)),
                  stop_reason=str(info.get("stop_reason", "")))
    for warning in info.get("warnings", []):
        log.warning("%s: %s", row["image_id"], warning)

    t0 = time.perf_counter()
    if output_uri is not None:
        record.update(write(output_uri, row["image_id"], x, m))
    record["seconds_write"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    record.update(score(x, m, cfg, str(ctx.model.device)))
    record["seconds_score"] = time.perf_counter() - t0


def restore_row(row: dict, ctx: WorkerContext, output_uri: str | None = None,
                tracker: progress.RowProgress | None = None) -> dict:
    """Load, retrieve, restore, score and (when ``output_uri`` is given) write one validated
    manifest row; returns its result record, not yet committed.

    ``tracker`` receives the row's progress reports; with an ``adapter_uri`` it also makes
    the adaptation resumable (module docstring), and the caller then deletes that adapter
    once the record is committed. Never raises for a row's own problems: they become
    ``status=failed`` records.
    """
    start = time.perf_counter()
    record = base_record(row) | {"status": "ok", "error": None, "neighbour_ids": [], "neighbour_uris": []}
    try:
        with progress.tracking(tracker or progress.RowProgress(row["image_id"])):
            _run_stages(row, ctx, output_uri, record)
    except MetricFailed as exc:  # restored and written: keep what was done, say what failed
        record.update(status="failed", error=str(exc), stop_reason="error")
    except Exception as exc:
        record = failed_record(row, one_line(exc))
        if not isinstance(exc, AdirError):
            log.warning("row %s crashed", row["image_id"], exc_info=True)
    record["worker_pid"] = os.getpid()
    record["seconds_total"] = time.perf_counter() - start
    record["finished_at"] = _now()
    return record


def commit_row(row: dict, ctx: WorkerContext, output_uri: str) -> dict:
    """``restore_row`` then its record committed alone (in-process use: benches, notebooks);
    the returned dict also says ``record_written`` (False when storage refused the record:
    a rerun redoes the row)."""
    tracker = progress.RowProgress(row["image_id"], adapter_uri(output_uri, row))
    record = restore_row(row, ctx, output_uri, tracker)
    try:
        write_result(output_uri, record)
        written = True
    except Exception as exc:
        record.update(status="failed", error=f"could not write the result record: {one_line(exc)}")
        written = False
    if written and tracker.adapter:
        drop_adapters([tracker.adapter_uri])
    return {**record, "record_written": written}


class RowRestorer:
    """The restore actor's body: loads the shared state once; ``run`` restores one row.

    A load error does not raise (Ray would restart the actor in a loop): ``ready`` reports
    it and the driver stops the job before any row.
    """

    def __init__(self, job: JobConfig, output_uri: str, threads: int, index_service: str | None = None):
        from jobs.ray_env import quiet_library_noise

        quiet_library_noise()
        torch.set_num_threads(max(1, threads))
        self.output_uri, self.ctx, self.error = output_uri, None, None
        self.current: progress.RowProgress | None = None
        try:
            self.ctx = load_context(job, index_service)
        except Exception as exc:
            self.error = (isinstance(exc, AdirError), f"{type(exc).__name__}: {exc}".splitlines()[0])

    def ready(self) -> dict:
        return {"pid": os.getpid(), "error": self.error}

    def run(self, row: dict) -> tuple[dict, dict]:
        """(the row's record, its final progress snapshot), its images written; the driver
        commits the record, then deletes the row's adapter if the snapshot names one."""
        self.current = progress.RowProgress(row["image_id"], adapter_uri(self.output_uri, row))
        record = restore_row(row, self.ctx, self.output_uri, self.current)
        return record, self.current.snapshot()

    def progress(self) -> dict | None:
        """The running row's ``RowProgress.snapshot`` (the last row's once it ended)."""
        return None if self.current is None else self.current.snapshot()
