"""What the row path does differently for Stable Diffusion rows (ADIR §4.1, §4.4).

The stages of ``jobs.restore.row`` call these; for pixel-prior methods each is a no-op:

* ``check_row`` — an ``edit`` row needs a prompt (the row's ``prompt`` column or the
  job's ``sd.prompt``): refused before any model is loaded or run;
* ``with_prompt`` — the row's ``prompt`` column into ``cfg.sd.prompt``;
* ``row_model`` — the model the row's method runs on: the worker's pixel prior, or the
  Stable Diffusion pipeline of the method's ``model_kind`` (``sd_model`` /
  ``sd_inpaint_model``), loaded on first use and kept in the worker context (one per kind);
* ``operator_params`` — the ``edit`` mask from ``mask_uri`` (white = fill), which must
  have the input's size and is centre-cropped exactly as the input is;
* ``text_neighbours`` — ``adir_edit`` retrieves by the prompt's text embedding (eq. 19
  with the open_clip text tower); an index whose embedder has no text tower is refused.

Imports restore_core only (no Ray).
"""

from __future__ import annotations

import dataclasses

from restore_core import images
from restore_core.errors import InputError
from restore_core.methods import get_method


def _kind(cfg) -> str:
    return getattr(get_method(cfg.method), "model_kind", "")


def with_prompt(cfg, row: dict):
    """``cfg`` with the row's prompt (when the row has one) as ``sd.prompt``."""
    if row.get("prompt") is None:
        return cfg
    return dataclasses.replace(cfg, sd=dataclasses.replace(cfg.sd, prompt=str(row["prompt"])))


def check_row(row: dict, cfg) -> None:
    """InputError for an SD row that cannot run, before any model work."""
    if _kind(cfg) == "inpaint" and not cfg.sd.prompt.strip():
        raise InputError(f"method {cfg.method!r} needs a prompt: fill the manifest column prompt "
                         "(or set sd.prompt for every row)")


def row_model(ctx, cfg):
    """The pixel prior, or the SD pipeline the row's method runs on (cached in ``ctx.sd_models``)."""
    kind = _kind(cfg)
    if not kind:
        return ctx.model
    from restore_core.models.stable_diffusion import config_spec, load_sd_model

    key = (kind, config_spec(cfg, kind))
    if key not in ctx.sd_models:
        ctx.sd_models[key] = load_sd_model(key[1], kind, device=ctx.job.torch_device)
    return ctx.sd_models[key]


def operator_params(row: dict, task, x_in, multiple: int, max_pixels: int) -> dict:
    """``{"mask": fill}`` for an ``edit`` row with ``mask_uri`` (cropped like the input), else {}."""
    if task.name != "edit" or not row.get("mask_uri"):
        return {}
    mask = images.read_image(row["mask_uri"], max_pixels=max_pixels)
    if tuple(mask.shape[-2:]) != tuple(x_in.shape[-2:]):
        raise InputError(f"mask {row['mask_uri']} is {mask.shape[-2]}x{mask.shape[-1]} but the input is "
                         f"{x_in.shape[-2]}x{x_in.shape[-1]}; the mask must have the input's size")
    return {"mask": images.center_crop_to_multiple(mask, multiple).mean(dim=1)[0] > 0}


def text_neighbours(retriever, cfg) -> list[dict] | None:
    """The K nearest corpus rows of the prompt's text embedding for ``adir_edit`` (clip
    retrieval), else None (the row retrieves by its image, or at random)."""
    if _kind(cfg) != "inpaint" or cfg.retrieval != "clip":
        return None
    return retriever.search_vectors(retriever.embedder.embed_text([cfg.sd.prompt]), cfg.k)[0]
