"""``pinv``: the measurement's own baseline, x̂ = A⁺y, clamped to [−1, 1].

The floor every benchmark table needs, and the cheapest method (no network call, no
randomness), so bookkeeping tests of the job layer can run rows through it in
milliseconds. What A⁺ is per task is the operator's ``A_pinv``
(``restore_core.operators``): bicubic upsampling for SR, the masked input for inpainting
and compressed sensing, the grey image repeated for colorization, y itself for blur and
denoising. For the non-linear ``jpeg`` and for blind use (no operator) it returns y, the
decoded image a user already has. The diffusion model is not used; the generator is
ignored (the output is deterministic).
"""

from __future__ import annotations

import time

import torch

from restore_core.errors import InputError
from restore_core.methods.base import base_info, register
from restore_core.operators import TASKS


class PseudoInverse:
    """x̂ = clamp(A⁺y), or clamp(y) where the operator is non-linear or unknown."""

    name = "pinv"
    needs_operator = False
    uses_neighbours = False
    tasks = ("sr4",) + tuple(t for t in TASKS if t != "sr4")

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        start = time.perf_counter()
        if operator is not None and operator.is_linear:
            with torch.no_grad():
                x = operator.A_pinv(y)
            how = "A_pinv"
        elif operator is None or tuple(operator.output_shape) == tuple(operator.image_shape):
            x, how = y, "y"
        else:  # a non-linear operator whose y is not an image (none today)
            raise InputError(f"pinv: task {operator.name!r} is non-linear and y is not image-shaped")
        info = base_info(stop_reason="closed_form", estimate=how,
                         seconds_sample=time.perf_counter() - start)
        return x.clamp(-1, 1).to(y.dtype), info


register(PseudoInverse())
