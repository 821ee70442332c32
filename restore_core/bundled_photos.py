"""The offline photo corpus: real photographs shipped inside pip packages.

Sources are scikit-image's bundled ``skimage/data`` files, matplotlib's
``grace_hopper.jpg`` and pyiqa's bundled reference photos — no downloads. The split is by
*source photo*, so no crop of a held-out photo is ever used to train the prior or the
embedder, or enters the default retrieval corpus:

* ``TRAIN_PHOTOS``: astronaut, rocket, hubble_deep_field, ihc (immunohistochemistry),
  retina, motorcycle_left, motorcycle_right (a stereo pair: both sides stay in train so the
  pair cannot leak across the split), and the greyscale textures brick, grass, gravel and
  the greyscale photos camera and moon (replicated to RGB).
* ``HELDOUT_PHOTOS``: chelsea (cat), grace_hopper (portrait), coffee (cup).
* ``EXTRA_TRAIN_PHOTOS``: more training photographs for the prior only — pyiqa's five
  full-reference calibration photos (``ResultsCalibra/ref_dir``: caps, portrait, boat,
  houses, lighthouse) and its four efficiency-test photos (a smartphone photo and three
  video frames: night street, garden, sunset, snowy road), and scikit-image's greyscale
  coins and text (chalk on a board). Left out: scans, drawings, synthetic test patterns,
  the deliberately motion-blurred ``clock_motion`` and pyiqa's distorted copies.
  ``PRIOR_TRAIN_PHOTOS`` = ``TRAIN_PHOTOS`` + these.

Crops with random scales and flips from ``TRAIN_PHOTOS`` are the embedder's training data
and the retrieval corpus of the demo and the benchmarks; ``ALL_PHOTOS`` (corpus and
held-out photos) is the corpus of the embedder's recall evaluation.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from restore_core.errors import InputError

TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut", "rocket", "hubble_deep_field", "ihc", "retina", "motorcycle_left",
    "motorcycle_right", "brick", "grass", "gravel", "camera", "moon",
)
HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea", "grace_hopper", "coffee")
ALL_PHOTOS = TRAIN_PHOTOS + HELDOUT_PHOTOS
EXTRA_TRAIN_PHOTOS: tuple[str, ...] = (
    "pyiqa_i03", "pyiqa_i04", "pyiqa_i06", "pyiqa_i08", "pyiqa_i19", "pyiqa_spaq_10241",
    "pyiqa_frame_4wrw", "pyiqa_frame_7gzd", "pyiqa_frame_9ogw", "coins", "text",
)
PRIOR_TRAIN_PHOTOS = TRAIN_PHOTOS + EXTRA_TRAIN_PHOTOS

_SKIMAGE_FILES = {
    "astronaut": "astronaut.png", "rocket": "rocket.jpg", "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png", "retina": "retina.jpg", "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png", "brick": "brick.png", "grass": "grass.png",
    "gravel": "gravel.png", "camera": "camera.png", "moon": "moon.png", "chelsea": "chelsea.png",
    "coffee": "coffee.png", "coins": "coins.png", "text": "text.png",
}
# pyiqa installs these data files beside its package (paths relative to site-packages).
_PYIQA_FILES = {
    **{f"pyiqa_i{n}": f"ResultsCalibra/ref_dir/I{n}.bmp" for n in ("03", "04", "06", "08", "19")},
    "pyiqa_spaq_10241": "tests/test_efficiency_img_dir/SPAQ_10241.jpg",
    "pyiqa_frame_4wrw": "tests/test_efficiency_img_dir/frame_4wrwr48cdk6rbcjl.jpg",
    "pyiqa_frame_7gzd": "tests/test_efficiency_img_dir/frame_7gzdcz9sif0ekg31.jpg",
    "pyiqa_frame_9ogw": "tests/test_efficiency_img_dir/frame_9ogwhvvy7gfj6jzh.jpg",
}


def photo_path(name: str) -> str:
    """Local file path of a bundled photo."""
    if name == "grace_hopper":
        import matplotlib

        return os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if name in _PYIQA_FILES:
        from importlib.metadata import distribution

        return str(distribution("pyiqa").locate_file(_PYIQA_FILES[name]))
    if name not in _SKIMAGE_FILES:
        raise InputError(f"unknown bundled photo {name!r}; accepted: "
                         f"{', '.join(ALL_PHOTOS + EXTRA_TRAIN_PHOTOS)}")
    import skimage

    return str(Path(skimage.__file__).parent / "data" / _SKIMAGE_FILES[name])


@functools.cache
def _photo_uint8(name: str) -> np.ndarray:
    with Image.open(photo_path(name)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_photo(name: str) -> torch.Tensor:
    """The whole photo as a (1, 3, H, W) float32 tensor in [-1, 1]."""
    return _photo_tensor(name).clone()


@functools.cache
def _photo_tensor(name: str) -> torch.Tensor:
    arr = _photo_uint8(name)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def random_crops(
    names: tuple[str, ...] | list[str],
    n: int,
    size: int,
    seed: int = 0,
    scales: tuple[float, float] = (0.5, 1.0),
    flips: bool = True,
    boxes: list | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """``n`` random square crops (n, 3, size, size) in [-1, 1] and their source photo names.

    Each crop picks a photo uniformly, a scale s in ``scales`` (the photo is resized by s
    before cropping, so crops see objects at several sizes) and, if ``flips``, a random
    horizontal flip. The same seed gives the same crops. A ``boxes`` list receives each
    crop's window in its photo, ``(top, left, side)`` (``adir bench ablation``'s oracle arm
    adapts on windows disjoint from it).
    """
    if n <= 0:
        raise InputError(f"number of crops must be > 0, got {n}")
    rng = np.random.default_rng(seed)
    crops, sources = [], []
    for _ in range(n):
        name = names[int(rng.integers(len(names)))]
        photo = _photo_tensor(name)
        h, w = photo.shape[-2:]
        lo = max(scales[0], size / min(h, w))
        scale = float(rng.uniform(lo, max(lo, scales[1])))
        # Cut the window that covers ``size`` pixels of the photo resized by ``scale`` and
        # resize only that window: the same crop as resizing the whole photo, far cheaper.
        side = min(h, w, max(size, round(size / scale)))
        top = int(rng.integers(h - side + 1))
        left = int(rng.integers(w - side + 1))
        crop = photo[..., top:top + side, left:left + side]
        if boxes is not None:
            boxes.append((top, left, side))
        if side != size:
            crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True,
                                 align_corners=False).clamp(-1, 1)
        if flips and rng.random() < 0.5:
            crop = crop.flip(-1)
        crops.append(crop)
        sources.append(name)
    return torch.cat(crops), sources


def export_crops(out_dir: str, split: str, n: int, size: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Write ``n`` crops of the ``train`` or ``heldout`` split as PNGs.

    Returns ``(image_id, path, photo)`` per crop; image ids are ``<photo>-<index>``.
    """
    names = {"train": TRAIN_PHOTOS, "heldout": HELDOUT_PHOTOS}.get(split)
    if names is None:
        raise InputError(f"unknown split {split!r}; accepted: train, heldout")
    crops, sources = random_crops(names, n, size, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for i, (crop, photo) in enumerate(zip(crops, sources)):
        image_id = f"{photo}-{i:05d}"
        path = os.path.join(out_dir, f"{image_id}.png")
        arr = ((crop.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(path)
        rows.append((image_id, path, photo))
    return rows
