r"""Separable filters with a truncated, renormalised boundary; same-size blurs.

Owns ``FilterSubsample`` (shared with super-resolution, ``resample.py``), the box and
Gaussian taps and ``Blur``:

* ``deblur_box5`` — ADIR §4.2: uniform 5×5 blur, same-size output.
* ``deblur_gauss`` — ADIR Fig. 14: isotropic Gaussian, ``sigma`` = 2 by default, kernel
  side :math:`2\lceil 3\sigma\rceil + 1` (13 at σ = 2), normalised to sum 1.

Boundary handling: near the border the taps that fall outside the image are dropped and
the remaining weights are rescaled to sum to 1. This is what PIL ``Image.resize`` and
``torch.nn.functional.interpolate(..., antialias=True)`` do, so ``sr4`` reproduces a
standard bicubic downscale exactly (to float rounding), a constant image stays constant,
and no wrap-around artefacts appear. As a linear map it is :math:`A = D\,S\,K_0` —
zero-padded correlation :math:`K_0`, stride-s subsampling :math:`S`, and a fixed diagonal
:math:`D = \mathrm{diag}(1/(S K_0 \mathbf 1))` — hence :math:`A^\top = K_0^\top S^\top D`,
a ``conv_transpose2d`` of :math:`D y`.

>>> op = Blur((3, 16, 16), box_taps(5), "deblur_box5")
>>> op.output_shape, op.state_dict()["kernel_1d"].numel()
((3, 16, 16), 5)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from restore_core.operators.base import LinearOperator

# λ_max(AᵀA) of the filter operators, keyed by (taps, stride, padding, H, W).
_LAMBDA_CACHE: dict[tuple, float] = {}


class FilterSubsample(LinearOperator):
    r"""Separable depthwise correlation, truncated-renormalised boundary, then stride-s
    subsampling: :math:`A x = D\,S\,(k \star_0 x)`, :math:`A^\top y = k \star_0^\top (S^\top D y)`.

    The kernel is separable, :math:`k = k_1 k_1^\top` (box, Gaussian and bicubic all are), so
    :math:`\star_0` runs as two 1-D correlations with zero padding p, each followed by
    keeping every s-th sample (S); this costs 2·taps instead of taps² per pixel. D (buffers
    ``boundary_h``/``boundary_w``, an outer product) divides each output by the kernel mass
    that fell inside the image. The adjoint runs the transposed 1-D convolutions in the
    reverse order. Blur is the case s = 1.
    """

    def __init__(self, image_shape, taps: torch.Tensor, stride: int, padding: int, name: str):
        super().__init__(image_shape)
        self.name = self.task = name
        c, h, w = self.image_shape
        taps = taps.to(torch.float64).flatten()
        self.stride, self.padding, self.taps = int(stride), int(padding), taps.numel()
        self.register_buffer("kernel_1d", taps.float())
        mass_h, mass_w = (F.conv1d(torch.ones(1, 1, n, dtype=torch.float64), taps[None, None],
                                   stride=self.stride, padding=self.padding)[0, 0] for n in (h, w))
        self.register_buffer("boundary_h", (1.0 / mass_h).float()[:, None])
        self.register_buffer("boundary_w", (1.0 / mass_w).float()[None, :])
        self._output_shape = (c, mass_h.numel(), mass_w.numel())
        # conv_transpose must give back exactly H (W): the extra samples (< stride) are the
        # ones the last stride window did not reach.
        self.output_padding = tuple(n - ((m.numel() - 1) * self.stride - 2 * self.padding + self.taps)
                                    for n, m in ((h, mass_h), (w, mass_w)))

    def lambda_max(self) -> float:
        """λ_max(AᵀA) from the power method on one channel (the filter acts on each channel
        alike), memoised per (taps, stride, H, W) so rows of equal size share it."""
        if self._lambda_max is None:
            key = (tuple(self.kernel_1d.tolist()), self.stride, self.padding) + self.image_shape[1:]
            if key not in _LAMBDA_CACHE:
                _LAMBDA_CACHE[key] = self._power_method((1,) + self.image_shape[1:])
            self._lambda_max = _LAMBDA_CACHE[key]
        return self._lambda_max

    def _weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.kernel_1d.to(x.dtype)
        c = x.shape[1]
        return (k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(),
                k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous())

    def _boundary(self, x: torch.Tensor) -> torch.Tensor:
        return (self.boundary_h * self.boundary_w).to(x.dtype)

    def forward_op(self, x):
        kv, kh = self._weights(x)
        c, s, p = x.shape[1], self.stride, self.padding
        z = F.conv2d(x, kv, stride=(s, 1), padding=(p, 0), groups=c)
        z = F.conv2d(z, kh, stride=(1, s), padding=(0, p), groups=c)
        return z * self._boundary(z)

    def adjoint_op(self, y):
        kv, kh = self._weights(y)
        c, s, p = y.shape[1], self.stride, self.padding
        oh, ow = self.output_padding
        z = F.conv_transpose2d(y * self._boundary(y), kh, stride=(1, s), padding=(0, p),
                               output_padding=(0, ow), groups=c)
        return F.conv_transpose2d(z, kv, stride=(s, 1), padding=(p, 0), output_padding=(oh, 0), groups=c)


def box_taps(size: int = 5) -> torch.Tensor:
    """1-D taps of the size × size uniform kernel summing to 1 (ADIR §4.2 uses 5)."""
    return torch.full((size,), 1.0 / size, dtype=torch.float64)


def gaussian_taps(sigma: float = 2.0) -> torch.Tensor:
    r"""1-D taps of the isotropic Gaussian :math:`\propto e^{-(u^2+v^2)/2\sigma^2}` on a
    :math:`(2\lceil 3\sigma\rceil+1)^2` grid, normalised to sum 1 (13 × 13 at σ = 2)."""
    radius = math.ceil(3 * sigma)
    u = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(u**2) / (2 * sigma**2))
    return g / g.sum()


class Blur(FilterSubsample):
    """Same-size blur by an odd separable kernel (``deblur_box5``, ``deblur_gauss``).

    The baseline inverse is y itself: the exact A⁺ divides by the kernel's frequency
    response, which is near zero for a box or a wide Gaussian, so it amplifies the
    measurement noise without bound (the blurred input is the floor a deblurring table
    reports).
    """

    def __init__(self, image_shape, taps: torch.Tensor, name: str):
        super().__init__(image_shape, taps, stride=1, padding=taps.numel() // 2, name=name)

    def pinv_op(self, y):
        return y.clone()
