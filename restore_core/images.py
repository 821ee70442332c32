"""Reading and writing images through fsspec, with clear errors for bad files.

``read_image`` accepts anything PIL decodes and converts it to RGB in [-1, 1]:
greyscale is replicated, palette images are expanded, an alpha channel is composited on
white, and 16-bit or 32-bit integer images are scaled from their full range to 8 bits.
Bad files fail with one-line ``InputError`` messages: missing, empty (0 bytes), not an
image, truncated or corrupt, too small (either side < 2 pixels), or above the
decompression-bomb cap (checked from the header before any pixel is decoded).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from restore_core import storage
from restore_core.errors import InputError

DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE = 2
Image.MAX_IMAGE_PIXELS = None  # we enforce our own cap, with our own message


def decode_image_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode encoded image bytes into a (1, 3, H, W) float32 tensor in [-1, 1]."""
    if len(data) == 0:
        raise InputError(f"cannot read {name}: file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError(f"cannot read {name}: not an image file PIL recognises") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad headers
        raise InputError(f"cannot read {name}: bad image header ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(f"cannot read {name}: {w}x{h} = {w * h} pixels exceeds the cap of "
                         f"{max_pixels} (decompression-bomb guard; raise max_pixels to allow)")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InputError(f"cannot read {name}: image is {w}x{h}; each side must be >= {MIN_SIDE} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL warns on some truncations instead of raising
            img.load()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {name}: truncated or corrupt {img.format or 'image'} data "
                         f"({type(exc).__name__}: {exc})") from None
    return from_uint8(_to_rgb_uint8(img))


def _to_rgb_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        if img.mode == "F":
            top = max(1.0, float(arr.max()))
        arr = np.clip(arr / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=-1)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(img.convert("RGBA")).astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1 - alpha)
        return rgb.round().astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read ``uri`` (any fsspec URI) as a (1, 3, H, W) float32 tensor in [-1, 1]."""
    return decode_image_bytes(storage.read_bytes(uri), uri, max_pixels)


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 → (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) in [-1, 1] → H×W×3 uint8 (one channel is replicated)."""
    if x.dim() == 4:
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def encode_png(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(x: torch.Tensor, uri: str) -> None:
    """Write an image tensor as PNG, atomically (see ``storage.atomic_write_bytes``)."""
    storage.atomic_write_bytes(uri, encode_png(x))


def center_crop_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Centre-crop H and W down to multiples of ``m`` (the SR factor or the UNet stride).

    Cropping, not padding, is the policy: padded borders would be restored as content.
    """
    h, w = x.shape[-2:]
    nh, nw = h - h % m, w - w % m
    if nh == 0 or nw == 0:
        raise InputError(f"image {h}x{w} is smaller than the required multiple {m}")
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top:top + nh, left:left + nw]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, anti-aliased resize to (H, W), clamped to [-1, 1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` and take the central size×size square."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = resize(x, (max(size, round(h * scale)), max(size, round(w * scale))))
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]
