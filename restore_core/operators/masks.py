r"""Pixel masks: ``inpaint`` and ``cs``, :math:`y = m \odot x` with a binary m shared by channels.

Owns ``Mask`` and the mask generators (the only place that reads a mask image):

* ``inpaint`` — ``mode=box`` (default) a centred square hole of side ``size`` (a fraction
  of min(H, W) if < 1, default 0.5 as in SHRED's CelebA square, or pixels if an integer
  ≥ 1); ``mode=random`` keeps exactly round(``keep``·H·W) pixels (default 0.2) drawn with
  ``seed``; ``mode=mask`` takes ``mask`` = a tensor (H, W) or an image URI (white = kept;
  the URI may not contain commas when given inside the spec string).
* ``edit`` — ADIR §4.4 text-guided editing: ``mask`` = a tensor (H, W) or an image URI of
  the region to *fill* (white = fill, the diffusers convention; the operator's ``mask``
  buffer is its complement, the kept pixels), or by default a centred box of ``size``.
* ``cs`` — SHRED §5/A.4 compressed sensing: uniform random pixel subsampling keeping
  round(``rate``·H·W) pixels (default rate 0.05), drawn with ``seed`` (default 0). y keeps
  the image shape with zeros at unobserved pixels; ``n_measurements`` counts only kept ones.

>>> m = inpaint_mask(8, 8, {"size": 4})
>>> int(m.sum()), int(m[2:6, 2:6].sum())
(48, 0)
"""

from __future__ import annotations

from typing import Any

import torch

from restore_core.errors import InputError
from restore_core.images import read_image
from restore_core.operators.base import LinearOperator


class Mask(LinearOperator):
    r"""Pixel projection :math:`y = m \odot x` (buffer ``mask``, shape (1, 1, H, W)).

    It is symmetric and idempotent, so :math:`A^\top = A^+ = A` (the masked input is the
    minimum-norm x with :math:`m \odot x = y`) and λ_max = 1."""

    def __init__(self, image_shape, mask: torch.Tensor, name: str):
        super().__init__(image_shape)
        self.name = self.task = name
        self.register_buffer("mask", mask.to(torch.float32).reshape(1, 1, *self.image_shape[1:]))

    def forward_op(self, x):
        return x * self.mask.to(x.dtype)

    adjoint_op = forward_op
    pinv_op = forward_op

    def n_measurements(self) -> int:
        return int(self.mask.sum().item()) * self.image_shape[0]

    def degrade(self, x, noise_sigma_255=0.0, generator=None):
        """y = m ⊙ (x + σn): unobserved pixels carry no measurement, so no noise either."""
        return super().degrade(x, noise_sigma_255, generator) * self.mask.to(x.dtype)


def kept_pixels_mask(h: int, w: int, rate: float, seed: int, what: str) -> torch.Tensor:
    """Binary (h, w) mask keeping exactly round(rate·h·w) (at least 1) uniformly drawn pixels."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise InputError(f"{what} must be in (0, 1], got {rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    n = max(1, round(rate * h * w))
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(h * w)
    mask[torch.randperm(h * w, generator=g)[:n]] = 1.0
    return mask.reshape(h, w)


def _box_mask(h: int, w: int, size: Any) -> torch.Tensor:
    if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
        side = size
    elif isinstance(size, float) and 0 < size < 1:
        side = max(1, round(size * min(h, w)))
    else:
        raise InputError(f"inpaint size must be a fraction in (0, 1) or whole pixels >= 1, got {size!r}")
    if side >= min(h, w):
        raise InputError(f"inpaint box of {side} px does not fit inside a {h}x{w} image")
    mask = torch.ones((h, w))
    top, left = (h - side) // 2, (w - side) // 2
    mask[top:top + side, left:left + side] = 0
    return mask


def _given_mask(h: int, w: int, mask: Any) -> torch.Tensor:
    if isinstance(mask, str):
        mask = read_image(mask).mean(dim=1)[0] > 0
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape[-2:]) != (h, w) or mask.numel() != h * w:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"inpaint mode=mask needs mask= a {h}x{w} tensor or image URI, got {got}")
    return (mask.reshape(h, w).float() > 0.5).float()


def inpaint_mask(h: int, w: int, params: dict[str, Any]) -> torch.Tensor:
    """The (h, w) keep-mask of an ``inpaint`` spec's parameters (see the module docstring)."""
    params = dict(params)
    mode = params.pop("mode", "box")
    if mode == "box":
        mask = _box_mask(h, w, params.pop("size", 0.5))
    elif mode == "random":
        mask = kept_pixels_mask(h, w, params.pop("keep", 0.2), params.pop("seed", 0), "inpaint keep rate")
    elif mode == "mask":
        mask = _given_mask(h, w, params.pop("mask", None))
    else:
        raise InputError(f"unknown inpaint mode {mode!r}; accepted: box, random, mask")
    if params:
        raise InputError(f"parameter(s) {', '.join(sorted(params))} do not apply to inpaint mode={mode}")
    if mask.sum() == 0:
        raise InputError("inpaint mask keeps no pixel")
    return mask


def edit_mask(h: int, w: int, params: dict[str, Any]) -> torch.Tensor:
    """The (h, w) keep-mask of an ``edit`` spec: 1 − the fill region (see the module docstring)."""
    given, size = params.get("mask"), params.get("size")
    if given is None:
        return _box_mask(h, w, 0.5 if size is None else size)
    if size is not None:
        raise InputError("edit takes either mask= (the region to fill) or size= (a centred box), not both")
    fill = read_image(given).mean(dim=1)[0] > 0 if isinstance(given, str) else given
    if not isinstance(fill, torch.Tensor) or tuple(fill.shape[-2:]) != (h, w) or fill.numel() != h * w:
        got = "x".join(map(str, fill.shape[-2:])) if isinstance(fill, torch.Tensor) else type(fill).__name__
        raise InputError(f"edit mask is {got} but the image is {h}x{w}; the mask must have the image's size")
    keep = (fill.reshape(h, w).float() <= 0.5).float()
    if keep.sum() == 0 or keep.sum() == h * w:
        raise InputError(f"edit mask fills {'every' if keep.sum() == 0 else 'no'} pixel; white marks the region "
                         "to fill, black the pixels kept")
    return keep


def cs_mask(h: int, w: int, params: dict[str, Any]) -> torch.Tensor:
    """The (h, w) keep-mask of a ``cs`` spec: ``rate`` (default 0.05) of the pixels, ``seed``."""
    return kept_pixels_mask(h, w, params.get("rate", 0.05), params.get("seed", 0), "cs rate")
