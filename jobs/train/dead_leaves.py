"""Synthetic dead-leaves images: training data with the statistics of natural images.

The dead-leaves model (Matheron; Lee, Mumford and Huang, "Occlusion models for natural
images", 2001) drops opaque disks one over another. With radii drawn from a power law
p(r) ∝ r^-3 between ``r_min`` and ``r_max`` the images are scale invariant, so their power
spectrum falls like natural images' (about 1/f²), and they hold what a denoiser has to
learn from photos: sharp occluding edges at every scale and flat regions between them.
``adir train-prior --synthetic F`` mixes a fraction F of them into every training pool.

The disks are drawn front to back (a new disk fills only the pixels that no disk in
front of it covers), at ``supersample`` × the resolution and averaged down, so the edges
are anti-aliased. Each disk's colour is a pixel of a random training photo (``palette``),
so the colour distribution is the photos' own and no held-out photo is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from restore_core.errors import InputError


def photo_palette(names: tuple[str, ...] | list[str], per_photo: int = 4096, seed: int = 0) -> torch.Tensor:
    """(len(names) · per_photo, 3) colours in [-1, 1]: random pixels of the named bundled photos."""
    from restore_core.bundled_photos import load_photo

    g = torch.Generator().manual_seed(seed)
    colours = []
    for name in names:
        pixels = load_photo(name)[0].flatten(1).T  # (H·W, 3)
        colours.append(pixels[torch.randint(len(pixels), (per_photo,), generator=g)])
    return torch.cat(colours)


def dead_leaves(n: int, size: int, palette: torch.Tensor, seed: int = 0, r_min: float = 1.0,
                r_max: float | None = None, disks: int = 400, supersample: int = 2,
                chunk: int = 256) -> torch.Tensor:
    """``n`` dead-leaves images, (n, 3, size, size) in [-1, 1]; the same seed gives the same images.

    Radii (in output pixels) follow p(r) ∝ r^-3 on [``r_min``, ``r_max``] (default: size);
    at most ``disks`` disks per image, and pixels no disk reached keep a background colour
    drawn from the palette, as if a last leaf lay under all the others."""
    if n <= 0 or size <= 0:
        raise InputError(f"dead_leaves needs n > 0 and size > 0, got n={n}, size={size}")
    if palette.ndim != 2 or palette.shape[1] != 3 or len(palette) == 0:
        raise InputError(f"palette must be a non-empty (N, 3) tensor of colours, got {tuple(palette.shape)}")
    r_max = float(r_max or size)
    if not 0 < r_min < r_max:
        raise InputError(f"dead_leaves needs 0 < r_min < r_max, got {r_min}, {r_max}")
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, chunk):
        out.append(_draw(min(chunk, n - start), size, palette, g, r_min, r_max, disks, supersample))
    return torch.cat(out)


def _draw(n: int, size: int, palette: torch.Tensor, g: torch.Generator, r_min: float, r_max: float,
          disks: int, supersample: int) -> torch.Tensor:
    side = size * supersample
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / supersample  # output-pixel units
    # label[i, y, x]: which disk shows at the pixel, 0 for the background leaf
    label = torch.zeros(n, side, side, dtype=torch.int16)
    open_ = torch.ones(n, side, side, dtype=torch.bool)
    colours = palette[torch.randint(len(palette), (n, disks + 1), generator=g)]  # (n, disks + 1, 3)
    # inverse CDF of p(r) ∝ r^-3: r^-2 is uniform between r_max^-2 and r_min^-2
    lo, hi = r_max ** -2, r_min ** -2
    r = (lo + torch.rand(n, disks, generator=g) * (hi - lo)) ** -0.5
    # centres may lie outside the image by up to r, so large disks enter from the borders
    cy = torch.rand(n, disks, generator=g) * (size + 2 * r) - r
    cx = torch.rand(n, disks, generator=g) * (size + 2 * r) - r
    for k in range(disks):
        dy = (coords.view(1, side) - cy[:, k:k + 1]) ** 2
        dx = (coords.view(1, side) - cx[:, k:k + 1]) ** 2
        inside = dy.unsqueeze(2) + dx.unsqueeze(1) <= (r[:, k] ** 2).view(n, 1, 1)
        inside &= open_
        label.masked_fill_(inside, k + 1)
        open_ &= ~inside
        if k % 32 == 31 and not open_.any():
            break
    image = colours[torch.arange(n).view(n, 1, 1), label.long()]  # (n, side, side, 3)
    return F.avg_pool2d(image.permute(0, 3, 1, 2), supersample).clamp(-1, 1).contiguous()
