"""The registry: task name → builder, and ``build_operator``, the one way to get an operator.

Each builder takes the checked image shape (C, H, W) and the task's parameters (already
checked against ``base.TASK_PARAMS`` by ``parse_task`` / ``TaskSpec.with_params``) and
checks the parameter *values* itself. Adding a task is one ``TASK_PARAMS`` entry and one
``BUILDERS`` entry.

>>> op = build_operator("deblur_gauss:sigma=3", (3, 24, 24))
>>> op.name, op.task, op.kernel_1d.numel()
('deblur_gauss', 'deblur_gauss:sigma=3', 19)
>>> build_operator(parse_task("sr2"), (1, 8, 8)).output_shape
(1, 4, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from restore_core.errors import InputError
from restore_core.operators.base import (
    ACCEPTED_CHANNELS,
    TASK_PARAMS,
    Identity,
    Operator,
    TaskSpec,
    parse_task,
)
from restore_core.operators.blur import Blur, box_taps, gaussian_taps
from restore_core.operators.color import Colorize
from restore_core.operators.jpeg import Jpeg
from restore_core.operators.masks import Mask, cs_mask, edit_mask, inpaint_mask
from restore_core.operators.resample import SuperResolution

Shape = tuple[int, int, int]


def _gaussian_blur(shape: Shape, params: dict[str, Any]) -> Operator:
    sigma = params.get("sigma", 2.0)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma <= 20:
        raise InputError(f"deblur_gauss sigma must be a number in (0, 20], got {sigma!r}")
    return Blur(shape, gaussian_taps(float(sigma)), "deblur_gauss")


BUILDERS: dict[str, Callable[[Shape, dict[str, Any]], Operator]] = {
    "sr2": lambda shape, p: SuperResolution(shape, 2),
    "sr4": lambda shape, p: SuperResolution(shape, 4),
    "sr8": lambda shape, p: SuperResolution(shape, 8),
    "deblur_box5": lambda shape, p: Blur(shape, box_taps(5), "deblur_box5"),
    "deblur_gauss": _gaussian_blur,
    "colorize": lambda shape, p: Colorize(shape),
    "inpaint": lambda shape, p: Mask(shape, inpaint_mask(shape[1], shape[2], p), "inpaint"),
    "cs": lambda shape, p: Mask(shape, cs_mask(shape[1], shape[2], p), "cs"),
    "jpeg": lambda shape, p: Jpeg(shape, p.get("q", 15)),
    "denoise": lambda shape, p: Identity(shape),
    "edit": lambda shape, p: Mask(shape, edit_mask(shape[1], shape[2], p), "edit"),
}
assert BUILDERS.keys() == TASK_PARAMS.keys(), "every task of the grammar needs exactly one builder"


def _checked_shape(image_shape) -> Shape:
    try:
        c, h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise InputError(f"image_shape must be (C, H, W), got {image_shape!r}") from None
    if c not in ACCEPTED_CHANNELS:
        raise InputError(f"images must have 1 or 3 channels, got {c}")
    if h < 1 or w < 1:
        raise InputError(f"image_shape must have positive H and W, got {image_shape!r}")
    return c, h, w


def build_operator(task: str | TaskSpec, image_shape: tuple[int, int, int], **params: Any) -> Operator:
    """The operator for ``task`` (a spec string such as ``"sr4"`` or
    ``"deblur_gauss:sigma=3"``, or a parsed ``TaskSpec``) on images of shape (C, H, W).
    Keyword ``params`` override those of the spec.

    Raises ``InputError`` for an unknown task or parameter, a bad parameter value, a
    channel count other than 1 or 3, or an image too small for / not divisible by an SR
    factor. ``operator.task`` is the spec as text (the string given, when one was).
    """
    spec = parse_task(task)
    if params:
        spec = spec.with_params(**params)
    op = BUILDERS[spec.name](_checked_shape(image_shape), spec.params)
    op.task = task if isinstance(task, str) else str(spec)
    return op
