r"""``colorize`` (ADIR §4.3): :math:`y = \tfrac13(x_R + x_G + x_B)`, one channel.

:math:`A^\top y = \tfrac13[y, y, y]` is the exact adjoint of the channel mean (ADIR's
"replication" up to that factor); :math:`AA^\top = \tfrac13 I`, so the pseudo-inverse
:math:`A^+ y = A^\top (AA^\top)^{-1} y = [y, y, y]` is the grey image repeated, and
λ_max(AᵀA) = 1/3. No parameters, hence no buffers.

>>> op = Colorize((3, 4, 4))
>>> op.output_shape, op.A_pinv(torch.ones(1, 1, 4, 4)).shape
((1, 4, 4), torch.Size([1, 3, 4, 4]))
"""

from __future__ import annotations

import torch

from restore_core.errors import InputError
from restore_core.operators.base import LinearOperator


class Colorize(LinearOperator):
    """Channel mean; A⁺ repeats the grey image into the three channels."""

    name = "colorize"
    blind_ok = False

    def __init__(self, image_shape):
        if image_shape[0] != 3:
            raise InputError(f"colorize needs 3-channel (RGB) images, got {image_shape[0]} channel(s)")
        super().__init__(image_shape)
        self._output_shape = (1,) + self.image_shape[1:]

    def forward_op(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)

    def adjoint_op(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(-1, 3, -1, -1) / 3.0

    def pinv_op(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(-1, 3, -1, -1).clone()
