"""``restore_one``: one row's restoration in a plain Python process (no Ray).

It validates the measurement and the model, picks the method named by the config (or
the ``method`` argument), runs it with a generator seeded from ``seed`` and returns the
restored image with an ``info`` dict (seconds per stage, steps, iterations, stop reason,
warnings). The job layer calls it inside Ray actors; tests and notebooks call it directly.
"""

from __future__ import annotations

import time

import torch

from restore_core.config import RestoreConfig
from restore_core.errors import InputError
from restore_core.methods import get_method


def restore_one(y: torch.Tensor, operator, model, cfg: RestoreConfig | None = None, *,
                method: str | None = None, neighbours: torch.Tensor | None = None,
                seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Restore measurement ``y`` (B, C, h, w) in [-1, 1]; returns (x̂ in [-1, 1], info)."""
    cfg = cfg or RestoreConfig()
    name = method or cfg.method
    impl = get_method(name)
    if y.dim() != 4:
        raise InputError(f"expected y of shape (B, C, H, W), got {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise InputError("the measurement y contains NaN or inf values")
    if operator is not None:
        expected = operator.output_shape
        if tuple(y.shape[1:]) != tuple(expected):
            raise InputError(f"y has shape {tuple(y.shape[1:])} but task {operator.name!r} produces {expected}")
        model.check_image(torch.empty((1,) + tuple(operator.image_shape)))
    elif y.shape[1] != model.in_channels:
        raise InputError(f"image has {y.shape[1]} channels but the model expects {model.in_channels}")
    generator = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    x, info = impl.restore(y.to(model.device), operator, model, cfg, neighbours=neighbours, generator=generator)
    info["method"] = name
    info["seconds_total"] = time.perf_counter() - start
    return x, info
