"""Image-quality metrics: a thin wrapper over pyiqa.

Images arrive in the model range [-1, 1] and are mapped to [0, 1] for pyiqa. By default
only metrics that need no downloaded weights run:

* full-reference (need the ground truth): psnr, ssim, fsim, gmsd, vif, nlpd;
* no-reference: piqe.

Metrics with learned weights come from a local weights dir (``weights_dir``, or
``$ADIR_METRIC_WEIGHTS``), never from the network: lpips, musiq (KonIQ), musiq-ava and
niqe, with pyiqa's own file names (``WEIGHT_FILES``). A missing file raises
``ModelLoadError`` naming the file and the dir. LPIPS also needs torchvision's AlexNet
backbone in ``$TORCH_HOME/hub/checkpoints``. pyiqa caveats: ``musiq-koniq`` is now spelled
``musiq``; ``musiq-ava`` loaded from a local path needs ``num_class=10``. FID is a
distribution metric, not a per-image one, so it is not computed per row.

``consistency`` is the data-consistency error ‖A x̂ − y‖/√m on the 0–255 scale.
"""

from __future__ import annotations

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
FULL_REFERENCE = set(DEFAULT_FR) | {"lpips"}
KNOWN = set(DEFAULT_FR) | set(DEFAULT_NR) | set(WEIGHT_FILES)


@functools.lru_cache(maxsize=None)
def _metric(name: str, device: str, weights_dir: str | None):
    import pyiqa

    kwargs = {}
    if name in WEIGHT_FILES:
        fname, extra = WEIGHT_FILES[name]
        wdir = weights_dir or os.environ.get("ADIR_METRIC_WEIGHTS")
        path = os.path.join(wdir, fname) if wdir else None
        if not path or not os.path.isfile(path):
            raise ModelLoadError(f"metric {name!r} needs weights file {fname!r} in "
                                 f"{wdir or '<no weights dir set: metrics_weights_dir or ADIR_METRIC_WEIGHTS>'}")
        kwargs = {"pretrained_model_path": path, **extra}
    return pyiqa.create_metric(name, device=torch.device(device), **kwargs)


def compute_metrics(x: torch.Tensor, gt: torch.Tensor | None = None, names: tuple[str, ...] | list[str] | None = None,
                    weights_dir: str | None = None, device: str = "cpu") -> dict[str, float]:
    """Named metrics of ``x`` (1, 3, H, W) in [-1, 1]; full-reference ones only with ``gt``."""
    names = tuple(names) if names else DEFAULT_FR + DEFAULT_NR
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; accepted: {', '.join(sorted(KNOWN))}")
    x01 = ((x.detach().float().clamp(-1, 1) + 1) / 2).to(device)
    out: dict[str, float] = {}
    for name in names:
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
