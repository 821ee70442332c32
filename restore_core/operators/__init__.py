r"""Degradation operators :math:`y = A(x) + e`, one registry by task name.

Owns the forward models of every restoration task; imports nothing from the methods, the
samplers or the job layer (``restore_core.images`` only, to read a mask image).

* ``base`` — ``TaskSpec`` and ``parse_task`` (the task grammar, ``"name:k=v,k=v"``, and its
  one parameter check), ``Operator`` (any forward model), ``LinearOperator`` (adds the exact
  adjoint ``A_adjoint``, ``lambda_max`` and the baseline inverse ``A_pinv``), ``Identity``;
  the noise convention (σ on the 0–255 scale, :func:`sigma_to_model_range`).
* ``blur`` — separable filters with a truncated-renormalised border; ``deblur_box5``,
  ``deblur_gauss``.
* ``resample`` — ``sr2``, ``sr4``, ``sr8``: bicubic anti-aliasing then stride-s subsampling.
* ``masks`` — ``inpaint`` and ``cs`` (mask generation, mask images).
* ``color`` — ``colorize``.
* ``jpeg`` — ``jpeg``, the one non-linear operator (no adjoint).
* ``registry`` — ``BUILDERS`` (task name → builder) and ``build_operator``.

Tasks (:data:`TASKS`); parameters are given in the spec, e.g. ``"deblur_gauss:sigma=3"``.

>>> op = build_operator("sr4", (3, 32, 32))
>>> op.output_shape, op.is_linear, parse_task("sr4:").sr_factor
((3, 8, 8), True, 4)
"""

from restore_core.operators.base import (
    ACCEPTED_CHANNELS,
    SR_FACTORS,
    TASK_PARAMS,
    TASKS,
    Identity,
    LinearOperator,
    Operator,
    TaskSpec,
    check_params,
    parse_task,
    sigma_to_model_range,
)
from restore_core.operators.blur import Blur, FilterSubsample, box_taps, gaussian_taps
from restore_core.operators.color import Colorize
from restore_core.operators.jpeg import Jpeg
from restore_core.operators.masks import Mask, cs_mask, inpaint_mask, kept_pixels_mask
from restore_core.operators.registry import BUILDERS, build_operator
from restore_core.operators.resample import SuperResolution, bicubic_antialias_taps

#: Tasks whose operator is linear (has ``A_adjoint`` and ``A_pinv``).
LINEAR_TASKS: tuple[str, ...] = tuple(t for t in TASKS if t != "jpeg")

__all__ = [
    "ACCEPTED_CHANNELS",
    "BUILDERS",
    "LINEAR_TASKS",
    "SR_FACTORS",
    "TASKS",
    "TASK_PARAMS",
    "Blur",
    "Colorize",
    "FilterSubsample",
    "Identity",
    "Jpeg",
    "LinearOperator",
    "Mask",
    "Operator",
    "SuperResolution",
    "TaskSpec",
    "bicubic_antialias_taps",
    "box_taps",
    "build_operator",
    "check_params",
    "cs_mask",
    "gaussian_taps",
    "inpaint_mask",
    "kept_pixels_mask",
    "parse_task",
    "sigma_to_model_range",
]
