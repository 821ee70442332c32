"""Tiled ε-prediction for images larger than the prior's tile (ADIR at the paper's 512² outputs).

Owns ``tile_layout``, ``TiledUNet``, ``tiled_model`` and ``check_max_side``; imports torch,
``restore_core.errors`` and the model wrapper, never the samplers or jobs.

ADIR (Tables 2, 4, 5) samples 512² outputs with a 256² prior. Running the UNet
on the whole image costs more than linearly (self-attention is quadratic in the number of
positions) and leaves the training resolution; cutting the image into independent tiles
leaves seams. Here the image stays whole for the sampler: ``TiledUNet`` looks like the UNet
to it (``unet(x_t, t).sample``), splits x_t into overlapping tiles, runs the UNet on each
and blends the predictions (ε and, for a learned-range model, the variance channels) with
weights that fall smoothly (raised cosine) to zero across each overlap. It does so at every
step, so neighbouring tiles agree on the shared pixels before the next x_t is drawn, and
the data-consistency step of Algorithm 1 (lines 5-7) sees the whole image and the whole
operator (a blur or SR filter straddling a tile border is exact). This is the
noise-prediction fusion of MultiDiffusion / Mixture of Diffusers, applied to the
unconditional prior only.

Layout per axis (``tile_layout``): a side ≤ ``tile`` is one tile (the untiled path, bit for
bit). A longer side gets n = ⌈side / tile⌉ tiles of the smallest length L, a multiple of the
UNet's downsampling factor, with n·L − (n−1)·overlap ≥ side, spread evenly from edge to
edge. So the count of tiles is what non-overlapping tiles would need, and the tile grows by
at most ``overlap`` + factor − 1 pixels instead: cost per pixel is bounded by
((tile + overlap + factor) / tile)² of the untiled cost (about 1.3 at 256/32/32) and total
cost is linear in pixels. Tiles of one call are batched ``tile_batch`` at a time.

``check_max_side`` is the cost guard: an output side beyond ``max_side`` is an
``InputError`` that states the UNet evaluations it would take and how to resize.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from restore_core.errors import InputError


def tile_layout(side: int, tile: int, overlap: int, factor: int = 1) -> tuple[int, list[int]]:
    """(tile length, start offsets) covering ``side`` pixels (see the module doc)."""
    if side <= tile:
        return side, [0]
    n = math.ceil(side / tile)
    length = min(side, factor * math.ceil((side + (n - 1) * overlap) / (n * factor)))
    starts = [round(i * (side - length) / (n - 1)) for i in range(n)]
    return length, starts


def _profile(length: int, starts: list[int], k: int) -> torch.Tensor:
    """1-D blending weights of tile ``k``: raised-cosine ramps across the overlaps with its
    neighbours, 1 elsewhere (including at the image border)."""
    w = torch.ones(length, dtype=torch.float64)
    pos = torch.arange(length, dtype=torch.float64) + 0.5
    if k > 0:
        r = starts[k - 1] + length - starts[k]
        w = torch.where(pos < r, torch.sin(0.5 * math.pi * pos / r) ** 2, w)
    if k < len(starts) - 1:
        r = starts[k] + length - starts[k + 1]
        back = length - pos
        w = torch.where(back < r, w * torch.sin(0.5 * math.pi * back / r) ** 2, w)
    return w.clamp_min(1e-6)


class TiledUNet(torch.nn.Module):
    """A UNet stand-in: ``forward(x, t).sample`` is the blended tiled prediction."""

    def __init__(self, unet: torch.nn.Module, tile: int, overlap: int, factor: int, tile_batch: int = 4):
        super().__init__()
        self.unet = unet
        self.tile, self.overlap, self.factor, self.tile_batch = int(tile), int(overlap), int(factor), int(tile_batch)

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    def layout(self, h: int, w: int) -> tuple[tuple[int, list[int]], tuple[int, list[int]]]:
        return (tile_layout(h, self.tile, self.overlap, self.factor),
                tile_layout(w, self.tile, self.overlap, self.factor))

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs):
        from diffusers.models.unets.unet_2d import UNet2DOutput

        (lh, tops), (lw, lefts) = self.layout(*x.shape[-2:])
        if len(tops) == 1 and len(lefts) == 1:
            return self.unet(x, t, **kwargs)
        boxes = [(top, left) for top in tops for left in lefts]
        weights = [(_profile(lh, tops, i)[:, None] * _profile(lw, lefts, j)[None, :]).to(x.device, x.dtype)
                   for i in range(len(tops)) for j in range(len(lefts))]
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        out = norm = None
        for c in range(0, len(boxes), self.tile_batch):
            chunk = boxes[c:c + self.tile_batch]
            tiles = torch.cat([x[..., top:top + lh, left:left + lw] for top, left in chunk])
            pred = self.unet(tiles, t.repeat(len(chunk)), **kwargs).sample
            if out is None:
                out = x.new_zeros((b, pred.shape[1]) + tuple(x.shape[-2:]), dtype=pred.dtype)
                norm = x.new_zeros(tuple(x.shape[-2:]), dtype=pred.dtype)
            for k, (top, left) in enumerate(chunk):
                wk = weights[c + k].to(pred.dtype)
                out[..., top:top + lh, left:left + lw] += wk * pred[k * b:(k + 1) * b]
                norm[top:top + lh, left:left + lw] += wk
        return UNet2DOutput(sample=out / norm)

    def tiles_per_call(self, h: int, w: int) -> int:
        (_, tops), (_, lefts) = self.layout(h, w)
        return len(tops) * len(lefts)


def resolved_tiling(model, tile_size: int = 0, tile_overlap: int = 0) -> tuple[int, int]:
    """(tile, overlap) in pixels: 0 means the model's sample size / tile // 8."""
    tile = int(tile_size) or int(model.sample_size)
    overlap = int(tile_overlap) or max(1, tile // 8)
    f = model.downsample_factor
    if tile % f:
        raise InputError(f"tile_size {tile} is not a multiple of the model's downsampling factor {f}")
    if overlap >= tile:
        raise InputError(f"tile_overlap {overlap} must be smaller than tile_size {tile}")
    return tile, overlap


def tiled_model(model, image_shape: tuple[int, ...], tile_size: int = 0, tile_overlap: int = 0,
                tile_batch: int = 4):
    """``model`` itself when the image fits in one tile, else a copy of the
    ``DiffusionModel`` whose ``unet`` is a ``TiledUNet`` around the same UNet (same weights,
    so a LoRA attached through it trains the shared modules)."""
    h, w = (int(v) for v in image_shape[-2:])
    tile, overlap = resolved_tiling(model, tile_size, tile_overlap)
    if (h <= tile and w <= tile) or isinstance(model.unet, TiledUNet):
        return model
    return dataclasses.replace(model, unet=TiledUNet(model.unet, tile, overlap, model.downsample_factor, tile_batch))


def check_max_side(model, image_shape: tuple[int, ...], max_side: int, steps: int,
                   tile_size: int = 0, tile_overlap: int = 0) -> None:
    """``InputError`` when the output's longer side exceeds ``max_side`` (0: no limit),
    naming the UNet evaluations the row would cost and how to shrink it."""
    h, w = (int(v) for v in image_shape[-2:])
    if not max_side or max(h, w) <= max_side:
        return
    tile, overlap = resolved_tiling(model, tile_size, tile_overlap)
    (_, tops), (_, lefts) = (tile_layout(s, tile, overlap, model.downsample_factor) for s in (h, w))
    calls = len(tops) * len(lefts) * int(steps)
    raise InputError(f"output {h}x{w} exceeds max_side={max_side}: {len(tops) * len(lefts)} tiles of "
                     f"{tile}² per step, {calls} UNet evaluations for {steps} steps; resize the input "
                     f"(adir make-manifest --resize) or raise max_side")
