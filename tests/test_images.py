"""restore_core.images on real photos and on real bad files built in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from restore_core import images
from restore_core.errors import InputError
from restore_core.images import (
    center_crop,
    center_crop_to_multiple,
    decode_image_bytes,
    from_uint8,
    read_image,
    resize_short_side,
    to_uint8,
    write_png,
)

PHOTO = data.astronaut()[:96, 100:180]  # 96x80x3 uint8, a real photograph


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(tmp_path, name: str, payload: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(payload)
    return str(path)


def test_rgb_png_round_trip_is_exact(tmp_path):
    x = from_uint8(PHOTO)
    assert x.shape == (1, 3, 96, 80) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    path = str(tmp_path / "out" / "a.png")
    write_png(x, path)
    assert np.array_equal(to_uint8(read_image(path)), PHOTO)
    assert np.array_equal(to_uint8(read_image("file://" + path)), PHOTO)
    assert [f for f in os.listdir(tmp_path / "out")] == ["a.png"]  # no temporary left behind


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "RGBA", "LA", "P", "CMYK", "F"])
def test_modes_convert_to_rgb(tmp_path, mode):
    grey8 = np.asarray(Image.fromarray(PHOTO).convert("L"))
    if mode == "I;16":
        img = Image.fromarray(grey8.astype(np.uint16) * 257)  # full 16-bit range
        assert img.mode == "I;16"
    elif mode == "I":
        img = Image.fromarray(grey8.astype(np.int32) * 257)
    elif mode == "F":
        img = Image.fromarray(grey8.astype(np.float32) / 255.0)
    elif mode == "P":
        img = Image.fromarray(PHOTO).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        img = Image.fromarray(PHOTO).convert(mode)
    fmt = "TIFF" if mode in ("I", "F", "CMYK") else "PNG"
    x = read_image(_write(tmp_path, f"m.{fmt.lower()}", _png_bytes(img, fmt)))
    assert x.shape == (1, 3, 96, 80)
    arr = to_uint8(x)
    if mode in ("L", "I;16", "I", "F", "LA"):
        assert np.array_equal(arr[..., 0], arr[..., 2])
        assert np.abs(arr[..., 0].astype(int) - grey8).max() <= 1
    elif mode == "RGBA":
        assert np.array_equal(arr, PHOTO)  # opaque alpha: unchanged
    else:
        assert np.abs(arr.astype(int) - PHOTO).mean() < 12  # palette / CMYK approximations


def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 0      # transparent: white
    rgba[2:, :, 3] = 255    # opaque: the stored colour
    arr = to_uint8(decode_image_bytes(_png_bytes(Image.fromarray(rgba, "RGBA"))))
    assert (arr[:2] == 255).all() and (arr[2:] == [200, 0, 0]).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(PHOTO)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    x = read_image(_write(tmp_path, "r.jpg", _png_bytes(img, "JPEG", quality=95, exif=exif)))
    assert x.shape == (1, 3, 80, 96)


def _truncated_png() -> bytes:
    full = _png_bytes(Image.fromarray(PHOTO))
    return full[: len(full) // 2]


def _jpeg() -> bytes:
    return _png_bytes(Image.fromarray(PHOTO), "JPEG", quality=90)


def _corrupt_jpeg() -> bytes:
    """A valid JPEG whose first Huffman table is zeroed (the header still parses)."""
    full = bytearray(_jpeg())
    start = full.index(b"\xff\xc4")
    full[start + 4:start + 40] = bytes(36)
    return bytes(full)


BAD_FILES = {
    "empty.png": (b"", "file is empty (0 bytes)"),
    "notes.png": (b"this is a text file, not an image\n" * 20, "not an image file"),
    "cut.png": (_truncated_png(), "truncated or corrupt PNG data"),
    "broken.jpg": (_corrupt_jpeg(), "truncated or corrupt JPEG data"),
    "cut.jpg": (_jpeg()[: len(_jpeg()) // 2], "truncated or corrupt JPEG data (OSError: image file is truncated"),
    "dot.png": (_png_bytes(Image.new("RGB", (1, 1))), "image is 1x1; each side must be at least 2 pixels"),
    "line.png": (_png_bytes(Image.new("RGB", (40, 1))), "image is 40x1"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_give_one_line_input_errors(tmp_path, name):
    payload, message = BAD_FILES[name]
    path = _write(tmp_path, name, payload)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert message in str(err.value) and path in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_scheme(tmp_path):
    with pytest.raises(InputError, match="not found: .*nope.png"):
        read_image(str(tmp_path / "nope.png"))
    with pytest.raises(InputError, match="unknown URI scheme 'xyz'"):
        read_image("xyz://bucket/a.png")
    with pytest.raises(InputError, match="is a directory"):
        read_image(str(tmp_path))


def _png_claiming_size(w: int, h: int) -> bytes:
    """A small real PNG whose IHDR says w x h (CRC fixed): a bomb as far as the header goes."""
    png = bytearray(_png_bytes(Image.new("L", (8, 8))))
    png[16:24] = struct.pack(">II", w, h)  # IHDR data starts at byte 16
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def test_decompression_bomb_is_refused_from_the_header():
    """Refused from the header alone, before any pixel is decoded."""
    with pytest.raises(InputError, match="8000x8000 = 64000000 pixels exceeds the cap of 40000000"):
        decode_image_bytes(_png_claiming_size(8000, 8000), "bomb.png")
    with pytest.raises(InputError, match="exceeds the cap of 1000"):
        decode_image_bytes(_png_bytes(Image.fromarray(PHOTO)), "small.png", max_pixels=1000)
    # above 2 x Image.MAX_IMAGE_PIXELS PIL's own guard refuses first; same error class
    with pytest.raises(InputError, match=r"bomb.png: .*400000000 pixels.*decompression-bomb guard"):
        decode_image_bytes(_png_claiming_size(20000, 20000), "bomb.png", max_pixels=10**9)
    assert Image.MAX_IMAGE_PIXELS == images.DEFAULT_MAX_PIXELS


def test_uint8_conversions_and_crops():
    x = from_uint8(PHOTO)
    assert x[0, :, 0, 0].tolist() == pytest.approx([v / 127.5 - 1 for v in PHOTO[0, 0]])
    assert from_uint8(PHOTO[..., 0]).shape == (1, 3, 96, 80)
    assert to_uint8(x[:, :1]).shape == (96, 80, 3)
    with pytest.raises(InputError, match="uint8"):
        from_uint8(PHOTO.astype(np.float32))
    with pytest.raises(InputError, match="batch of 2"):
        to_uint8(torch.zeros(2, 3, 4, 4))
    y = center_crop_to_multiple(x[..., :95, :79], 8)
    assert y.shape[-2:] == (88, 72) and torch.equal(y, x[..., 3:91, 3:75])
    with pytest.raises(InputError, match="smaller than the required multiple 8"):
        center_crop_to_multiple(x[..., :5, :], 8)
    assert resize_short_side(x, 40).shape[-2:] == (48, 40)
    sq = center_crop(x, 32)
    assert sq.shape == (1, 3, 32, 32) and sq.min() >= -1 and sq.max() <= 1
