"""``restore_one``: one row's restoration in a plain Python process (no Ray).

Owns input validation for a row and the dispatch to a method; imports the registry
(``restore_core.methods``), never Ray or the jobs. The job layer calls it inside Ray
actors; tests, benchmarks and notebooks call it directly.

Checks, each an ``InputError`` (or ``MethodError``) with a one-line message naming the
problem and what is accepted, before any work starts:

* y (and the neighbours) must be finite, (B, C, h, w), in the model range [−1, 1]
  (values beyond ±4 mean a 0–255 or 0–1 image was passed unconverted);
* with an operator: y's shape must be what the operator produces, the operator's image
  channels must be the model's, the image sides a multiple of the UNet's downsampling;
* without one (blind): y's channels must be the model's;
* the method must accept the task (``Method.tasks``).

The configuration is trusted: a ``RestoreConfig`` is validated when it is built
(``restore_core.config``), so neither this function nor the methods check it again.

Warnings (in ``info["warnings"]``) note what runs but may be off: an image size other
than the prior's training size.
"""

from __future__ import annotations

import time

import torch

from restore_core.config import RestoreConfig
from restore_core.errors import InputError, MethodError
from restore_core.methods import get_method
from restore_core.sampling.tiled import check_max_side, tiled_model

MAX_ABS_VALUE = 4.0  # |y| beyond this cannot be a [-1, 1] image plus plausible noise


def _check_tensor(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise InputError(f"{what} must be a (B, C, H, W) tensor, got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if t.numel() == 0:
        raise InputError(f"{what} is empty (shape {tuple(t.shape)})")
    if not torch.isfinite(t).all():
        raise InputError(f"{what} contains NaN or inf values")
    peak = float(t.abs().max())
    if peak > MAX_ABS_VALUE:
        raise InputError(f"{what} has values up to {peak:g}; expected the model range [-1, 1] "
                         "(convert 0-255 images with images.from_uint8)")


def restore_one(y: torch.Tensor, operator, model, cfg: RestoreConfig | None = None, *,
                method: str | None = None, neighbours: torch.Tensor | None = None,
                seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Restore measurement ``y`` (B, C, h, w) in [−1, 1] with ``cfg.method`` (or ``method``).

    ``cfg`` is a validated ``RestoreConfig`` and is not checked again; ``method``, when
    given, replaces its method through the same validation.

    Returns (x̂ (B, C, H, W) in [−1, 1], info) where info has the method's fields
    (``steps``, ``iterations``, ``stop_reason``, ``seconds_adapt``, ``seconds_sample``, …)
    plus ``method``, ``seed``, ``seconds_total`` and ``warnings``. The same seed gives the
    same output on the same device.
    """
    cfg = cfg or RestoreConfig()
    if method is not None and method != cfg.method:
        cfg = cfg.updated({"method": method})  # checked like any config value; cfg itself is trusted
    name = cfg.method
    impl = get_method(name)
    _check_tensor(y, "the measurement y")
    warnings: list[str] = []
    if operator is not None:
        expected = tuple(operator.output_shape)
        if tuple(y.shape[1:]) != expected:
            raise InputError(f"y has shape {tuple(y.shape[1:])} but task {operator.name!r} on images of "
                             f"{tuple(operator.image_shape)} produces {expected}")
        image_shape = tuple(operator.image_shape)
        if operator.name not in impl.tasks:
            raise MethodError(f"method {name!r} cannot restore task {operator.name!r}; it accepts: "
                              f"{', '.join(impl.tasks)}")
    else:
        image_shape = tuple(y.shape[1:])
    if image_shape[0] != model.in_channels:
        raise InputError(f"the image has {image_shape[0]} channels but the model {model.spec!r} expects "
                         f"{model.in_channels}")
    model.check_image_shape(image_shape)
    check_max_side(model, image_shape, cfg.max_side, cfg.steps, cfg.tile_size, cfg.tile_overlap)
    if not getattr(impl, "model_kind", ""):  # a Stable Diffusion pipeline samples the whole latent itself
        model = tiled_model(model, image_shape, cfg.tile_size, cfg.tile_overlap)  # no-op when it fits one tile
    if neighbours is not None:
        _check_tensor(neighbours, "the neighbour images")
        if neighbours.shape[1] != model.in_channels:
            raise InputError(f"the neighbour images have {neighbours.shape[1]} channels but the model "
                             f"{model.spec!r} expects {model.in_channels}")
    if image_shape[1:] != (model.sample_size, model.sample_size):
        warnings.append(f"image {image_shape[1]}x{image_shape[2]} differs from the prior's training size "
                        f"{model.sample_size}x{model.sample_size}")
    if operator is not None:
        operator = operator.to(model.device)  # buffers (kernels, masks) next to the model
    generator = torch.Generator().manual_seed(int(seed))
    start = time.perf_counter()
    x, info = impl.restore(y.to(model.device), operator, model, cfg,
                           neighbours=None if neighbours is None else neighbours.to(model.device),
                           generator=generator)
    info["warnings"] = warnings + list(info.get("warnings", []))
    info.update(method=name, seed=int(seed), seconds_total=time.perf_counter() - start)
    return x, info
