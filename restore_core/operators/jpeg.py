"""``jpeg``: JPEG at quality ``q`` (default 15) through PIL, per image; serves InDI and DIIP.

Non-linear, so ``Jpeg`` derives from ``Operator``, not ``LinearOperator``: it has no
``A_adjoint`` and no ``A_pinv`` (``is_linear`` is False; ``lambda_max`` raises
``MethodError``). x is quantised to 8 bits first (the codec's own input), so A is
piecewise constant and not differentiable; blind methods use only y.

>>> op = Jpeg((3, 16, 16), q=50)
>>> op.is_linear, hasattr(op, "A_adjoint"), op.A(torch.zeros(1, 3, 16, 16)).shape
(False, False, torch.Size([1, 3, 16, 16]))
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from restore_core.errors import InputError
from restore_core.operators.base import Operator


def _check_quality(q) -> int:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or q != int(q) or not 1 <= q <= 100:
        raise InputError(f"jpeg quality q must be an integer in 1..100, got {q!r}")
    return int(q)


class Jpeg(Operator):
    """PIL JPEG encode/decode at quality ``q`` of each image of the batch."""

    name = "jpeg"

    def __init__(self, image_shape, q: int = 15):
        super().__init__(image_shape)
        self.q = _check_quality(q)

    def forward_op(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for img in x:
            arr = ((img.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
            pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
            buf = io.BytesIO()
            pil.save(buf, format="JPEG", quality=self.q)
            dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(pil.mode), dtype=np.float32)
            dec = dec[..., None] if dec.ndim == 2 else dec
            out.append(torch.from_numpy(dec).permute(2, 0, 1) / 127.5 - 1.0)
        return torch.stack(out).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", q={self.q}"
