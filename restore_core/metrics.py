"""Image-quality metrics: a thin wrapper over pyiqa.

Images arrive in the model range [-1, 1] and are mapped to [0, 1] for pyiqa. By default
only metrics that need no downloaded weights run:

* full-reference (need the ground truth): psnr, ssim, fsim, gmsd, vif, nlpd;
* no-reference: piqe.

(pyiqa's ``metric_mode``: nlpd is full-reference, so it sits in ``DEFAULT_FR``.)

Metrics with learned weights come from a local weights dir (``weights_dir``, or
``$ADIR_METRIC_WEIGHTS``), never from the network: lpips, musiq (KonIQ), musiq-ava and
niqe, with pyiqa's own file names (``WEIGHT_FILES``), passed to pyiqa as
``pretrained_model_path``. A missing file raises ``ModelLoadError`` naming the file and the
dir. LPIPS also builds torchvision's AlexNet with its ImageNet weights, fetched through
torch.hub: put ``alexnet-owt-7be5be79.pth`` under ``<weights_dir>/checkpoints/`` (the
torch.hub layout; the dir serves as the hub dir while the metric is built). pyiqa caveats:
``musiq-koniq`` is now spelled ``musiq``; ``musiq-ava`` loaded from a local path needs
``num_class=10`` (pyiqa sets it only when it downloads the checkpoint itself).

FID compares two sets of images, not one image with its reference, so it is not a row
metric: ``fid(dir_a, dir_b, weights_dir)`` computes it between two folders, with the
Inception weights ``pt_inception-2015-12-05-6726825d.pth`` from the weights dir.

``consistency`` is the data-consistency error ‖A x̂ − y‖/√m on the 0–255 scale.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch

from restore_core.errors import ConfigError, ModelLoadError

DEFAULT_FR: tuple[str, ...] = ("psnr", "ssim", "fsim", "gmsd", "vif", "nlpd")
DEFAULT_NR: tuple[str, ...] = ("piqe",)
WEIGHT_FILES: dict[str, tuple[str, dict]] = {
    "lpips": ("LPIPS_v0.1_alex-df73285e.pth", {}),
    "musiq": ("musiq_koniq_ckpt-e95806b9.pth", {}),
    "musiq-ava": ("musiq_ava_ckpt-e8d3f067.pth", {"num_class": 10}),
    "niqe": ("niqe_modelparameters.mat", {}),
}
# weights fetched through torch.hub while a metric is built, relative to the weights dir
HUB_FILES: dict[str, str] = {"lpips": os.path.join("checkpoints", "alexnet-owt-7be5be79.pth")}
FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
# smallest image side pyiqa's implementation accepts (measured: vif's steerable pyramid pads
# by 4 at its coarsest level, ssim's 11x11 window); smaller images skip the metric
MIN_SIDE: dict[str, int] = {"vif": 33, "ssim": 11}
FULL_REFERENCE = set(DEFAULT_FR) | {"lpips"}
KNOWN = set(DEFAULT_FR) | set(DEFAULT_NR) | set(WEIGHT_FILES)


def _weights_file(metric: str, fname: str, weights_dir: str | None) -> str:
    """Path of ``fname`` in the weights dir, or ModelLoadError naming file and dir."""
    wdir = weights_dir or os.environ.get("ADIR_METRIC_WEIGHTS")
    path = os.path.join(wdir, fname) if wdir else None
    if not path or not os.path.isfile(path):
        raise ModelLoadError(f"metric {metric!r} needs weights file {fname!r} in "
                             f"{wdir or '<no weights dir set: metrics_weights_dir or ADIR_METRIC_WEIGHTS>'}")
    return path


weights_file = _weights_file  # public name: the restore job's preflight checks weights before any work


@contextlib.contextmanager
def _hub_dir(path: str | None):
    """Use ``path`` as torch.hub's dir (torchvision backbones) for the duration."""
    if path is None:
        yield
        return
    previous = torch.hub.get_dir()
    torch.hub.set_dir(path)
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


@functools.lru_cache(maxsize=None)
def _metric(name: str, device: str, weights_dir: str | None):
    import pyiqa

    kwargs, hub = {}, None
    if name in WEIGHT_FILES:
        fname, extra = WEIGHT_FILES[name]
        kwargs = {"pretrained_model_path": _weights_file(name, fname, weights_dir), **extra}
        if name in HUB_FILES:
            path = _weights_file(name, HUB_FILES[name], weights_dir)
            hub = path[: -len(HUB_FILES[name])]
    with _hub_dir(hub):
        return pyiqa.create_metric(name, device=torch.device(device), **kwargs)


def compute_metrics(x: torch.Tensor, gt: torch.Tensor | None = None, names: tuple[str, ...] | list[str] | None = None,
                    weights_dir: str | None = None, device: str = "cpu") -> dict[str, float]:
    """Named metrics of ``x`` (B, 3, H, W) in [-1, 1] (batch mean); full-reference ones only
    with ``gt``, and only those whose ``MIN_SIDE`` the image reaches (others are left out)."""
    names = tuple(names) if names else DEFAULT_FR + DEFAULT_NR
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; accepted: {', '.join(sorted(KNOWN))}")
    x01 = ((x.detach().float().clamp(-1, 1) + 1) / 2).to(device)
    out: dict[str, float] = {}
    for name in names:
        if min(x.shape[-2:]) < MIN_SIDE.get(name, 1):
            continue
        if name in FULL_REFERENCE:
            if gt is None:
                continue
            g01 = ((gt.detach().float().clamp(-1, 1) + 1) / 2).to(device)
            with torch.no_grad():
                value = _metric(name, device, weights_dir)(x01, g01)
        else:
            with torch.no_grad():
                value = _metric(name, device, weights_dir)(x01)
        out[name] = float(value.mean())
    return out


def consistency(x: torch.Tensor, y: torch.Tensor, operator) -> float:
    """‖A x̂ − y‖ / √m on the 0–255 scale (m measured values per image), batch mean."""
    with torch.no_grad():
        r = operator.A(x.to(y.dtype)) - y
    per_image = r.flatten(1).norm(dim=1) / math.sqrt(operator.n_measurements())
    return float(per_image.mean()) * 255.0 / 2.0


def fid(dir_a: str, dir_b: str, weights_dir: str | None = None, device: str = "cpu") -> float:
    """Fréchet Inception Distance between the images of two local folders (pyiqa clean-fid
    mode), with the Inception weights ``FID_WEIGHTS`` from the weights dir."""
    import pyiqa
    from pyiqa.utils import download_util

    path = _weights_file("fid", FID_WEIGHTS, weights_dir)
    previous = download_util.DEFAULT_CACHE_DIR  # pyiqa looks the Inception file up here
    download_util.DEFAULT_CACHE_DIR = os.path.dirname(os.path.abspath(path))
    try:
        metric = pyiqa.create_metric("fid", device=torch.device(device))
    finally:
        download_util.DEFAULT_CACHE_DIR = previous
    return float(metric(dir_a, dir_b, device=torch.device(device), num_workers=0, verbose=False))
