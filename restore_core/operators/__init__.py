r"""Degradation operators :math:`y = A(x) + e`, one registry by task name.

Owns the forward models of every restoration task; imports nothing from the methods,
the samplers or the job layer (``restore_core.images`` only to read a mask image).

Tensors are (B, C, H, W) in the model range [-1, 1]. Additive white Gaussian noise given as
σ on the 0–255 scale (the papers' σ = 10) becomes :math:`\sigma_{model} = 2\sigma/255`,
because the affine map :math:`u \mapsto 2u/255 - 1` scales every difference by 2/255
(σ = 10 → 0.0784); see :func:`sigma_to_model_range` and :meth:`Operator.degrade`.

Every operator is a small ``torch.nn.Module`` whose parameters (kernels, masks, boundary
weights) are registered buffers, so ``.to(device)``, ``.to(dtype)`` and ``state_dict`` work
(the deepinv pattern, ``../shared/STYLE.md``). Linear operators implement ``A`` *and* an
explicit ``A_adjoint`` (transposed convolution, mask, replication); the single adjoint test
in ``tests/test_operators.py`` checks :math:`\langle Ax, y\rangle = \langle x, A^\top y\rangle`
for every linear task of :data:`TASKS`.

Boundary handling (blur and SR): *truncated, renormalised kernel*. Near the border the
taps that fall outside the image are dropped and the remaining weights are rescaled to sum
to 1. This is what PIL ``Image.resize`` and ``torch.nn.functional.interpolate(...,
antialias=True)`` do, so ``sr4`` reproduces a standard bicubic downscale exactly (to float
rounding), a constant image stays constant, and no wrap-around artefacts appear. As a
linear map it is :math:`A = D\,S\,K_0` — zero-padded correlation :math:`K_0`, stride-s
subsampling :math:`S`, and a fixed diagonal :math:`D = \mathrm{diag}(1/(S K_0 \mathbf 1))` —
hence :math:`A^\top = K_0^\top S^\top D`, a ``conv_transpose2d`` of :math:`D y`.

Tasks (:data:`TASKS`); parameters are given in the spec, e.g. ``"deblur_gauss:sigma=3"``:

* ``sr2``, ``sr4``, ``sr8`` — ADIR §4.1: bicubic anti-aliasing filter then stride-s
  subsampling. The filter is the Keys cubic (a = −0.5) stretched by s, as in MATLAB
  ``imresize``/PIL with antialiasing: 4s taps per axis, output pixel i centred on input
  coordinate :math:`s\,i + (s-1)/2`. H and W must be multiples of s: ``build_operator``
  refuses other sizes and the job layer centre-crops inputs first
  (:func:`restore_core.images.center_crop_to_multiple`; cropping, not padding, so no
  invented border is restored as content).
* ``deblur_box5`` — ADIR §4.2: uniform 5×5 blur, same-size output.
* ``deblur_gauss`` — ADIR Fig. 14: isotropic Gaussian, ``sigma`` = 2 by default, kernel
  side :math:`2\lceil 3\sigma\rceil + 1` (13 at σ = 2), normalised to sum 1.
* ``colorize`` — ADIR §4.3: :math:`y = \tfrac13(x_R + x_G + x_B)`, one channel.
  :math:`A^\top y` replicates y into the three channels *divided by 3*, the exact adjoint of
  the mean (the paper's "replication" up to that factor).
* ``inpaint`` — :math:`y = m \odot x` with a binary mask m shared by the channels:
  ``mode=box`` (default) a centred square hole of side ``size`` (a fraction of min(H, W)
  if < 1, default 0.5 as in SHRED's CelebA square, or pixels if an integer ≥ 1);
  ``mode=random`` keeps exactly round(``keep``·H·W) pixels (default 0.2) drawn with
  ``seed``; ``mode=mask`` takes ``mask`` = a tensor (H, W) or an image URI (white = kept;
  the URI may not contain commas when given inside the spec string).
* ``cs`` — SHRED §5/A.4 compressed sensing: uniform random pixel subsampling keeping
  round(``rate``·H·W) pixels (default rate 0.05), drawn with ``seed`` (default 0). y keeps
  the image shape with zeros at unobserved pixels; ``n_measurements`` counts only kept ones.
* ``jpeg`` — JPEG at quality ``q`` (default 15) through PIL, per image. Non-linear:
  ``is_linear`` is False, ``A_adjoint`` and ``lambda_max`` raise ``MethodError``. Serves
  InDI and DIIP.
* ``denoise`` — the identity, for pure noise removal (DIIP, InDI).

>>> op = build_operator("sr4", (3, 32, 32))
>>> op.output_shape, round(op.lambda_max(), 4) < 0.1
((3, 8, 8), True)
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from restore_core.errors import InputError, MethodError

TASKS: tuple[str, ...] = (
    "sr2", "sr4", "sr8", "deblur_box5", "deblur_gauss", "colorize", "inpaint", "cs", "jpeg", "denoise",
)

#: Parameters each task accepts in its spec string or as keyword arguments.
TASK_PARAMS: dict[str, tuple[str, ...]] = {
    "sr2": (), "sr4": (), "sr8": (), "deblur_box5": (), "deblur_gauss": ("sigma",),
    "colorize": (), "inpaint": ("mode", "size", "keep", "seed", "mask"), "cs": ("rate", "seed"),
    "jpeg": ("q",), "denoise": (),
}

#: Channel counts an image may have (greyscale or RGB).
ACCEPTED_CHANNELS = (1, 3)

# λ_max(AᵀA) of the filter operators, keyed by (taps, stride, padding, H, W).
_LAMBDA_CACHE: dict[tuple, float] = {}


def sigma_to_model_range(sigma_255: float) -> float:
    """Noise σ on the 0–255 scale → σ in the [-1, 1] model range (× 2/255)."""
    return 2.0 * float(sigma_255) / 255.0


def _parse_value(value: str) -> Any:
    value = value.strip()
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def parse_task(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:k=v,k=v"`` → (name, params); numbers become int or float, the rest stay str.

    >>> parse_task("inpaint:mode=random,keep=0.3")
    ('inpaint', {'mode': 'random', 'keep': 0.3})
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty task name; accepted: {', '.join(TASKS)}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"bad task parameter {item!r} in {spec!r}; expected key=value")
        params[key.strip()] = _parse_value(value)
    return name, params


class Operator(torch.nn.Module):
    r"""Base class: a forward model :math:`A` on images of shape ``image_shape`` (C, H, W).

    Subclasses define ``forward_op`` (and ``adjoint_op`` when linear) and set
    ``_output_shape``. ``A``/``A_adjoint`` validate their argument first, so bad input fails
    with a one-line ``InputError`` instead of a traceback from inside torch.
    """

    is_linear = True
    #: y has the image's shape, so a blind method (DIIP, InDI) can map y to x̂ without A.
    blind_ok = True
    name = "operator"

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        self._output_shape = self.image_shape
        self._lambda_max: float | None = None
        self.task = self.name

    # --- the forward model ------------------------------------------------------------
    def forward_op(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint_op(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the degradation A (no noise) to x of shape (B, *image_shape)."""
        self.check_input(x)
        return self.forward_op(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply Aᵀ to y of shape (B, *output_shape); non-linear tasks raise ``MethodError``."""
        if not self.is_linear:
            raise MethodError(f"task {self.name!r} is non-linear and has no adjoint; "
                              "use a blind method (diip, indi)")
        self._check(y, self.output_shape, "measurement")
        return self.adjoint_op(y)

    def degrade(self, x: torch.Tensor, noise_sigma_255: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        r""":math:`y = A(x) + \sigma_{model}\,n`, :math:`n \sim \mathcal N(0, I)` from ``generator``.

        σ is given on the 0–255 scale (:func:`sigma_to_model_range`). The noise is drawn on
        the generator's device (CPU when None) so a seed gives the same y on every device.
        """
        y = self.A(x)
        if noise_sigma_255 < 0:
            raise InputError(f"noise sigma must be >= 0 (0-255 scale), got {noise_sigma_255}")
        if noise_sigma_255:
            device = generator.device if generator is not None else "cpu"
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=device).to(y.device)
            y = y + sigma_to_model_range(noise_sigma_255) * noise
        return y

    # --- properties used by samplers and metrics ---------------------------------------
    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape (C, h, w) of one measurement y."""
        return self._output_shape

    def n_measurements(self) -> int:
        """Number of measured values per image (m in the consistency ‖Ax − y‖/√m)."""
        return math.prod(self.output_shape)

    def lambda_max(self) -> float:
        r"""Largest eigenvalue of :math:`A^\top A` (= ‖A‖₂²), by the power method, cached.

        Samplers divide the guidance step by it (ADIR eq. 17 with a normalised scale).
        """
        if not self.is_linear:
            raise MethodError(f"task {self.name!r} is non-linear; λ_max(AᵀA) is undefined")
        if self._lambda_max is None:
            self._lambda_max = self._power_method(self.image_shape)
        return self._lambda_max

    def _power_method(self, shape: tuple[int, ...], iters: int = 1000, tol: float = 1e-6) -> float:
        """Power iteration on AᵀA for images of ``shape``, in float64 from a fixed random
        start, on the buffers' device; stops when the Rayleigh quotient moves by less than
        ``tol`` (relative) in one step, which leaves it within ~1e-3 of λ_max for blurs
        whose top eigenvalues cluster (tested against a dense eigen-decomposition)."""
        ref = next(iter(self.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        g = torch.Generator().manual_seed(0)
        x = torch.randn((1,) + tuple(shape), generator=g, dtype=torch.float64).to(device)
        lam = 0.0
        with torch.no_grad():
            for _ in range(iters):
                x = x / x.norm()
                z = self.adjoint_op(self.forward_op(x))
                new = float((x * z).sum())
                if abs(new - lam) <= tol * abs(new):
                    return new
                lam, x = new, z
        return lam

    # --- validation ---------------------------------------------------------------------
    def _check(self, x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{self.name}: expected a (B, C, H, W) {what} tensor, got {got}")
        if x.shape[1] != shape[0]:
            raise InputError(f"{self.name}: {what} has {x.shape[1]} channels but the operator "
                             f"was built for {shape[0]}")
        if tuple(x.shape[2:]) != tuple(shape[1:]):
            raise InputError(f"{self.name}: {what} is {x.shape[2]}x{x.shape[3]} but the operator "
                             f"was built for {shape[1]}x{shape[2]}")
        if not torch.isfinite(x).all():
            raise InputError(f"{self.name}: {what} contains NaN or inf values")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``InputError`` unless x is a finite (B, *image_shape) tensor."""
        self._check(x, self.image_shape, "image")

    def extra_repr(self) -> str:
        return f"task={self.task!r}, image_shape={self.image_shape}, output_shape={self.output_shape}"


class FilterSubsample(Operator):
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
    """``sr{s}``: bicubic anti-aliasing + stride-s subsampling (ADIR §4.1)."""

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
    """Same-size blur by an odd separable kernel (``deblur_box5``, ``deblur_gauss``)."""

    def __init__(self, image_shape, taps: torch.Tensor, name: str):
        super().__init__(image_shape, taps, stride=1, padding=taps.numel() // 2, name=name)


class Colorize(Operator):
    r"""``colorize`` (ADIR §4.3): :math:`y = \tfrac13\sum_c x_c`, :math:`A^\top y = \tfrac13[y, y, y]`.

    No parameters, hence no buffers; λ_max(AᵀA) = 1/3."""

    name = "colorize"
    blind_ok = False

    def __init__(self, image_shape):
        if image_shape[0] != 3:
            raise InputError(f"colorize needs 3-channel (RGB) images, got {image_shape[0]} channel(s)")
        super().__init__(image_shape)
        self._output_shape = (1,) + self.image_shape[1:]

    def forward_op(self, x):
        return x.mean(dim=1, keepdim=True)

    def adjoint_op(self, y):
        return y.expand(-1, 3, -1, -1) / 3.0


class Mask(Operator):
    r"""Pixel projection :math:`y = m \odot x` with a binary mask m (``inpaint``, ``cs``);
    it is symmetric and idempotent, so :math:`A^\top = A` and λ_max = 1."""

    def __init__(self, image_shape, mask: torch.Tensor, name: str):
        super().__init__(image_shape)
        self.name = self.task = name
        self.register_buffer("mask", mask.to(torch.float32).reshape(1, 1, *self.image_shape[1:]))

    def forward_op(self, x):
        return x * self.mask.to(x.dtype)

    def adjoint_op(self, y):
        return y * self.mask.to(y.dtype)

    def n_measurements(self) -> int:
        return int(self.mask.sum().item()) * self.image_shape[0]

    def degrade(self, x, noise_sigma_255=0.0, generator=None):
        """y = m ⊙ (x + σn): unobserved pixels carry no measurement, so no noise either."""
        return super().degrade(x, noise_sigma_255, generator) * self.mask.to(x.dtype)


class Jpeg(Operator):
    """``jpeg``: PIL JPEG encode/decode at quality ``q`` per image (non-linear, no adjoint).

    x is quantised to 8 bits first (the codec's own input), so A is piecewise constant and
    not differentiable; blind methods (DIIP, InDI) use only y.
    """

    name = "jpeg"
    is_linear = False

    def __init__(self, image_shape, q: int = 15):
        super().__init__(image_shape)
        if isinstance(q, bool) or not isinstance(q, (int, float)) or q != int(q) or not 1 <= q <= 100:
            raise InputError(f"jpeg quality q must be an integer in 1..100, got {q!r}")
        self.q = int(q)

    def forward_op(self, x):
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


class Identity(Operator):
    """``denoise``: A = I (noise is the only degradation)."""

    name = "denoise"

    def forward_op(self, x):
        return x.clone()

    def adjoint_op(self, y):
        return y.clone()


def _kept_pixels_mask(h: int, w: int, rate: float, seed: int, what: str) -> torch.Tensor:
    """Binary (h, w) mask keeping exactly round(rate·h·w) (at least 1) uniformly drawn pixels."""
    if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        raise InputError(f"{what} must be in (0, 1], got {rate!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    n = max(1, round(rate * h * w))
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(h * w)
    mask[torch.randperm(h * w, generator=g)[:n]] = 1.0
    return mask.reshape(h, w)


def _inpaint_mask(h: int, w: int, params: dict[str, Any]) -> torch.Tensor:
    mode = params.pop("mode", "box")
    if mode == "box":
        size = params.pop("size", 0.5)
        if isinstance(size, int) and size >= 1:
            side = size
        elif isinstance(size, float) and 0 < size < 1:
            side = max(1, round(size * min(h, w)))
        else:
            raise InputError(f"inpaint size must be a fraction in (0, 1) or whole pixels >= 1, got {size!r}")
        if side >= min(h, w):
            raise InputError(f"inpaint box of {side} px does not fit inside a {h}x{w} image")
        mask = torch.ones((h, w))
        top, left = (h - side) // 2, (w - side) // 2
        mask[top:top + side, left:left + side] = 0
    elif mode == "random":
        mask = _kept_pixels_mask(h, w, params.pop("keep", 0.2), params.pop("seed", 0), "inpaint keep rate")
    elif mode == "mask":
        mask = params.pop("mask", None)
        if isinstance(mask, str):
            from restore_core.images import read_image

            mask = read_image(mask).mean(dim=1)[0] > 0
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape[-2:]) != (h, w) or mask.numel() != h * w:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise InputError(f"inpaint mode=mask needs mask= a {h}x{w} tensor or image URI, got {got}")
        mask = (mask.reshape(h, w).float() > 0.5).float()
    else:
        raise InputError(f"unknown inpaint mode {mode!r}; accepted: box, random, mask")
    if params:
        raise InputError(f"parameter(s) {', '.join(sorted(params))} do not apply to inpaint mode={mode}")
    if mask.sum() == 0:
        raise InputError("inpaint mask keeps no pixel")
    return mask


def build_operator(task: str, image_shape: tuple[int, int, int], **params) -> Operator:
    """The operator for ``task`` (``"sr4"``, ``"deblur_gauss:sigma=3"``, …) on images of
    shape (C, H, W). Keyword ``params`` override those in the spec string.

    Raises ``InputError`` for an unknown task or parameter, a bad parameter value, a
    channel count other than 1 or 3, or an image too small for / not divisible by an SR
    factor.
    """
    name, spec_params = parse_task(task)
    spec_params.update(params)
    unknown = sorted(set(spec_params) - set(TASK_PARAMS[name]))
    if unknown:
        accepted = ", ".join(TASK_PARAMS[name]) or "none"
        raise InputError(f"unknown parameter(s) {', '.join(unknown)} for task {name!r}; accepted: {accepted}")
    try:
        c, h, w = (int(v) for v in image_shape)
    except (TypeError, ValueError):
        raise InputError(f"image_shape must be (C, H, W), got {image_shape!r}") from None
    if c not in ACCEPTED_CHANNELS:
        raise InputError(f"images must have 1 or 3 channels, got {c}")
    if h < 1 or w < 1:
        raise InputError(f"image_shape must have positive H and W, got {image_shape!r}")
    shape = (c, h, w)
    if name in ("sr2", "sr4", "sr8"):
        op: Operator = SuperResolution(shape, int(name[2:]))
    elif name == "deblur_box5":
        op = Blur(shape, box_taps(5), name)
    elif name == "deblur_gauss":
        sigma = spec_params.get("sigma", 2.0)
        if not isinstance(sigma, (int, float)) or not 0 < sigma <= 20:
            raise InputError(f"deblur_gauss sigma must be a number in (0, 20], got {sigma!r}")
        op = Blur(shape, gaussian_taps(float(sigma)), name)
    elif name == "colorize":
        op = Colorize(shape)
    elif name == "inpaint":
        op = Mask(shape, _inpaint_mask(h, w, dict(spec_params)), name)
    elif name == "cs":
        mask = _kept_pixels_mask(h, w, spec_params.get("rate", 0.05), spec_params.get("seed", 0), "cs rate")
        op = Mask(shape, mask, name)
    elif name == "jpeg":
        op = Jpeg(shape, spec_params.get("q", 15))
    else:
        op = Identity(shape)
    op.task = task
    return op
