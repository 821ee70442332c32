"""Square, resized copies of a folder of images (``adir make-manifest --resize N``).

ADIR's super-resolution table (ADIR Table 2) works at a fixed geometry: each photo
(DIV2K-style, any size and aspect) is centre-cropped to a square and resized to 512², the
ground truth; y is that image degraded to 128² (sr4) or 64² (sr8); the 256² prior samples
the 512² output in tiles (``restore_core.sampling.tiled``). This module makes the
ground-truth copies, so that ``make-manifest --degrade --resize 512`` writes a manifest of
exactly that geometry. It is also the resize policy for inputs too large to restore at
their own size: a y resized to N×N costs ⌈N·f / tile⌉² tile evaluations per step.

Copies are written as PNG (lossless) with the bicubic anti-aliased filter of
``restore_core.images.resize``; file stems are kept (``-2``, ``-3``, … on a clash).
"""

from __future__ import annotations

import os

from restore_core import storage
from restore_core.errors import InputError
from restore_core.images import read_image, resize, write_png


def centre_square(x, size: int):
    """The central min(H, W)² square of (B, C, H, W), resized to size × size."""
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize(x[..., top:top + side, left:left + side], (size, size))


def resize_folder(images: str, out_dir: str, size: int) -> str:
    """Write a centre-square ``size``² PNG of every image under ``images`` to ``out_dir``."""
    from jobs.restore.manifest import IMAGE_SUFFIXES

    if not isinstance(size, int) or size < 8:
        raise InputError(f"bad --resize {size!r}; expected an image side >= 8 (ADIR Table 2: 512)")
    uris = [u for u in storage.listdir(images) if u.lower().endswith(IMAGE_SUFFIXES)]
    if not uris:
        raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {images}")
    storage.makedirs(out_dir)
    seen: set[str] = set()
    for uri in uris:
        base = os.path.splitext(uri.rsplit("/", 1)[-1])[0]
        stem, n = base, 1
        while stem in seen:
            n += 1
            stem = f"{base}-{n}"
        seen.add(stem)
        write_png(centre_square(read_image(uri), size), storage.join(out_dir, f"{stem}.png"))
    return out_dir
