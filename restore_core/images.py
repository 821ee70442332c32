"""Reading, writing and resizing images, with one-line errors for bad files.

Owns the conversion between encoded files and (1, 3, H, W) float32 tensors in the model
range [-1, 1] (0 ↦ −1, 255 ↦ 1). Reads and writes go through ``restore_core.storage`` (any
fsspec URI). Imports nothing else from the project.

``read_image`` / ``decode_image_bytes`` accept anything PIL decodes and convert it to RGB:

* greyscale (L, 1) is replicated into three channels; palette images (P) are expanded;
* an alpha channel (RGBA, LA, PA, P with transparency) is composited on **white**, the
  usual background of transparent web images (dropping alpha would show whatever colour
  the transparent pixels happen to store);
* 16-bit integer images (``I;16*``) are scaled from 0–65535 to 0–255; 32-bit ``I`` images
  are read as 16-bit (how PIL opens 16-bit PNG/TIFF) when their maximum exceeds 255 and as
  8-bit otherwise; float ``F`` images are read as 0–1 when their maximum is ≤ 1, else 0–255;
* CMYK, YCbCr and the like go through PIL's ``convert("RGB")``;
* the EXIF orientation tag is applied, so camera photos come out upright;
* multi-frame files (GIF, TIFF pages) give their first frame.

Bad files fail with ``InputError`` (one line, naming the file): missing, empty (0 bytes),
not an image, truncated or corrupt (the whole file is decoded and PIL warnings count as
errors; damage inside JPEG entropy-coded data that libjpeg recovers from decodes with
artefacts and cannot be told apart), too small (a side under :data:`MIN_SIDE` = 2 pixels:
no operator or metric is meaningful on a line of pixels), or more than ``max_pixels`` pixels — the decompression-bomb
guard, checked from the header before any pixel is decoded. PIL's own guard
(``Image.MAX_IMAGE_PIXELS``) is set to the same default cap and stays as a second line of
defence: PIL refuses outright above twice that, whatever ``max_pixels`` says.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from restore_core import storage
from restore_core.errors import InputError

DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: larger than 8K UHD (33 MP), far below a bomb
MIN_SIDE = 2
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS


def decode_image_bytes(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Decode encoded image bytes into a (1, 3, H, W) float32 tensor in [-1, 1].

    ``name`` only labels error messages. See the module docstring for the conversions and
    the errors.
    """
    if len(data) == 0:
        raise InputError(f"cannot read {name}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap follows
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError(f"cannot read {name}: not an image file (PIL recognises no format in it)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read {name}: {exc} (decompression-bomb guard)") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad headers
        raise InputError(f"cannot read {name}: bad image header ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(f"cannot read {name}: {w}x{h} = {w * h} pixels exceeds the cap of {max_pixels} "
                         "(decompression-bomb guard; raise max_pixels to allow it)")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InputError(f"cannot read {name}: image is {w}x{h}; each side must be at least {MIN_SIDE} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL only warns on some broken files
            img.load()
            img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {name}: truncated or corrupt {img.format or 'image'} data "
                         f"({type(exc).__name__}: {exc})") from None
    return from_uint8(_to_rgb_uint8(img, name))


def _to_rgb_uint8(img: Image.Image, name: str) -> np.ndarray:
    """H×W×3 uint8 RGB from any PIL mode (conversions in the module docstring)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":
            top = 65535.0 if arr.max() > 255 else 255.0
        else:
            top = 1.0 if arr.max() <= 1.0 else 255.0
        grey = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return (rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {name}: colour mode {mode!r} cannot be converted to RGB ({exc})") from None


def read_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read ``uri`` (a path or any fsspec URI) as a (1, 3, H, W) float32 tensor in [-1, 1]."""
    return decode_image_bytes(storage.read_bytes(uri), str(uri), max_pixels)


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """H×W×3 (or H×W grey, replicated) uint8 → (1, 3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise InputError(f"from_uint8 expects a uint8 array, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise InputError(f"from_uint8 expects an HxW or HxWx3 array, got shape {arr.shape}")
    x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) in [-1, 1] → H×W×3 uint8, clamped and rounded (1 channel is
    replicated)."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise InputError(f"to_uint8 converts one image; got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise InputError(f"to_uint8 expects a (C, H, W) tensor with 1 or 3 channels, got {tuple(x.shape)}")
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def encode_png(x: torch.Tensor) -> bytes:
    """PNG bytes of one image tensor in [-1, 1] (8-bit RGB)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buf, format="PNG")
    return buf.getvalue()


def write_png(x: torch.Tensor, uri: str) -> None:
    """Write an image tensor as PNG, atomically (``storage.atomic_write_bytes``)."""
    storage.atomic_write_bytes(uri, encode_png(x))


def center_crop_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Centre-crop H and W down to multiples of ``m`` (the SR factor or the UNet stride).

    Cropping, not padding, is the policy: padded borders would be restored as content.
    At most m − 1 rows and columns go, split evenly (the extra one from the bottom/right).
    """
    h, w = x.shape[-2:]
    nh, nw = h - h % m, w - w % m
    if nh == 0 or nw == 0:
        raise InputError(f"image {h}x{w} is smaller than the required multiple {m}")
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top:top + nh, left:left + nw]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, anti-aliased resize of (B, C, H, W) to ``size`` = (H', W'), clamped to [-1, 1]
    (the same filter as PIL's ``Image.resize(BICUBIC)``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so that the shorter side is ``size``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    return resize(x, (max(size, round(h * scale)), max(size, round(w * scale))))


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side to ``size`` and take the central size × size square (the
    CLIP-style preprocessing of the embedder and the index thumbnails)."""
    x = resize_short_side(x, size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]
