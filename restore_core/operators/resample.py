r"""Super-resolution ``sr2``, ``sr4``, ``sr8`` (ADIR §4.1): bicubic anti-aliasing, stride s.

The filter is the Keys cubic (a = −0.5) stretched by s, as in MATLAB ``imresize``/PIL with
antialiasing: 4s taps per axis, output pixel i centred on input coordinate
:math:`s\,i + (s-1)/2`, with the truncated-renormalised border of ``blur.FilterSubsample``.
H and W must be multiples of s: the constructor refuses other sizes and the job layer
centre-crops inputs first (:func:`restore_core.images.center_crop_to_multiple`; cropping,
not padding, so no invented border is restored as content).

The baseline inverse is bicubic upsampling, the floor every SR table reports. The exact
:math:`A^\top(AA^\top)^{-1}y` fits y exactly but, through :math:`(AA^\top)^{-1}`, amplifies
the measurement noise, so at σ = 10 it scores below bicubic.

>>> op = SuperResolution((3, 32, 32), 4)
>>> op.output_shape, round(op.lambda_max(), 4) < 0.1
((3, 8, 8), True)
>>> op.A_pinv(op.A(torch.zeros(1, 3, 32, 32))).shape
torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from restore_core.errors import InputError
from restore_core.operators.blur import FilterSubsample


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = −0.5: MATLAB ``imresize``, PIL, torch antialias)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def bicubic_antialias_taps(factor: int) -> torch.Tensor:
    r"""1-D taps (4s) of the separable bicubic anti-aliasing kernel for downscaling by s.

    Output pixel i is centred on input coordinate :math:`c_i = s\,i + (s-1)/2`; the taps are
    the pixels j with :math:`|j - c_i| < 2s`, weighted :math:`\mathrm{cubic}((j - c_i)/s)` and
    normalised to sum 1 (PIL's ``ImagingResample`` taps exactly these).
    """
    s = int(factor)
    offsets = np.arange(4 * s) - (2 * s - 0.5)  # j - c_i for the 4s taps
    w = _keys_cubic(offsets / s)
    return torch.from_numpy(w / w.sum())


class SuperResolution(FilterSubsample):
    """``sr{s}``: bicubic anti-aliasing + stride-s subsampling; A⁺ baseline: bicubic upsampling."""

    blind_ok = False

    def __init__(self, image_shape, factor: int):
        _, h, w = image_shape
        name = f"sr{factor}"
        if h < factor or w < factor:
            raise InputError(f"{name}: image {h}x{w} is smaller than the factor {factor}")
        if h % factor or w % factor:
            raise InputError(f"{name}: image {h}x{w} is not divisible by {factor}; crop it to "
                             f"{h - h % factor}x{w - w % factor} first (images.center_crop_to_multiple)")
        # With 4s taps centred at s*i + (s-1)/2, output 0 reaches 1.5s pixels before the
        # image and output H/s - 1 reaches 1.5s pixels after it: symmetric zero padding.
        super().__init__(image_shape, bicubic_antialias_taps(factor), stride=factor,
                         padding=(3 * factor) // 2, name=name)
        self.factor = factor

    def pinv_op(self, y):
        """Keys-cubic (a = −0.5) interpolation by s on the same pixel centres as A (half-pixel
        convention) with renormalised border taps: PIL's ``Image.resize(BICUBIC)``, i.e.
        ``restore_core.images.resize``; linear in y."""
        return F.interpolate(y, size=self.image_shape[1:], mode="bicubic", antialias=True, align_corners=False)
