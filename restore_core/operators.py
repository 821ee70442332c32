"""Degradation operators y = A(x) + e, one registry by task name.

Tensors are (B, C, H, W) in the model range [-1, 1]. Additive white Gaussian noise given
as σ on the 0–255 scale (the papers' σ = 10) becomes σ_model = 2σ/255 in [-1, 1], because
the affine map u ↦ 2u/255 − 1 scales every difference by 2/255 (σ = 10 → 0.0784).

Every linear operator is a small ``torch.nn.Module`` whose parameters (kernels, masks) are
registered buffers, so ``.to(device)``, ``.to(dtype)`` and ``state_dict`` work. ``A`` is
written directly; ``A_adjoint`` is the vector–Jacobian product of ``A``
(Aᵀy = ∂⟨A(x), y⟩/∂x), which is the exact adjoint of any linear map whatever its boundary
handling; the adjoint test in ``tests/test_operators.py`` checks it for every task.

Tasks (``TASKS``):

* ``sr2``, ``sr4``, ``sr8`` — ADIR §4.1: a bicubic anti-aliasing filter (Keys cubic,
  a = −0.5, stretched by the factor s as in MATLAB ``imresize`` with antialiasing: 4s taps)
  then stride-s subsampling. Boundaries are *replicated* (edge pixels repeated), which
  matches PIL/torch bicubic downscaling at the borders. H and W must be multiples of s;
  ``build_operator`` refuses other sizes (the job layer centre-crops inputs to a multiple,
  see ``restore_core.images.center_crop_to_multiple``).
* ``deblur_box5`` — ADIR §4.2: uniform 5×5 blur, same-size output, replicate boundary.
* ``deblur_gauss`` — ADIR Fig. 14: isotropic Gaussian, σ_blur = 2 by default; the kernel
  is (2·⌈3σ⌉+1)² (13×13 at σ = 2), normalised to sum 1, replicate boundary.
* ``colorize`` — ADIR §4.3: y = mean over RGB, one channel; Aᵀ replicates the value into
  the three channels divided by 3 (the exact adjoint of the mean).
* ``inpaint`` — y = m ⊙ x with m a binary mask: ``mode=box`` (centre square of side
  ``size``·min(H, W), default 0.5), ``mode=random`` (each pixel kept with prob. ``keep``,
  default 0.2, seeded), ``mode=mask`` (a mask tensor, or a mask image URI: white = kept).
* ``cs`` — SHRED §5 compressed sensing: uniform random pixel subsampling at ``rate``
  (default 0.05), seeded; the same projection as random inpainting.
* ``jpeg`` — JPEG at quality ``q`` (default 15), through PIL. Non-linear: ``is_linear``
  is False and ``A_adjoint`` raises ``MethodError``. Serves InDI and DIIP.
* ``denoise`` — the identity, for pure noise removal (DIIP, InDI).

Task specs may carry parameters: ``"deblur_gauss:sigma=3"``, ``"inpaint:mode=random,keep=0.3"``,
``"jpeg:q=30"``.
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


def sigma_to_model_range(sigma_255: float) -> float:
    """Noise σ on the 0–255 scale → σ in the [-1, 1] model range (×2/255)."""
    return 2.0 * float(sigma_255) / 255.0


def parse_task(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:k=v,k=v"`` → (name, params) with numeric values converted."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty task; accepted: {', '.join(TASKS)}")
    name, _, rest = spec.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"bad task parameter {item!r} in {spec!r}; expected key=value")
        try:
            params[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            params[key.strip()] = value.strip()
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    return name, params


class Operator(torch.nn.Module):
    """Base class: ``A``, ``A_adjoint``, ``degrade`` and the checks every task shares."""

    is_linear = True
    name = "operator"

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        self._lambda_max: float | None = None

    # --- the forward model ------------------------------------------------------------
    def forward_op(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the degradation A (no noise)."""
        self.check_input(x)
        return self.forward_op(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀy as the vector–Jacobian product of A (exact for linear A)."""
        if not self.is_linear:
            raise MethodError(f"task {self.name!r} is non-linear and has no adjoint; "
                              "use a blind method (diip, indi)")
        shape = (y.shape[0],) + self.image_shape
        with torch.enable_grad():
            x = torch.zeros(shape, dtype=y.dtype, device=y.device, requires_grad=True)
            (grad,) = torch.autograd.grad(self.forward_op(x), x, grad_outputs=y)
        return grad

    def degrade(self, x: torch.Tensor, noise_sigma: float = 0.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """y = A(x) + σ·n with σ given on the 0–255 scale, n ~ N(0, I) from ``generator``."""
        y = self.A(x)
        if noise_sigma:
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device="cpu").to(y.device)
            y = y + sigma_to_model_range(noise_sigma) * noise
        return y

    # --- properties used by samplers and metrics ---------------------------------------
    @property
    def output_shape(self) -> tuple[int, int, int]:
        with torch.no_grad():
            return tuple(self.forward_op(torch.zeros((1,) + self.image_shape)).shape[1:])

    def n_measurements(self) -> int:
        """Number of measured values per image (m in ‖Ax − y‖/√m)."""
        c, h, w = self.output_shape
        return c * h * w

    def lambda_max(self, iters: int = 100) -> float:
        """Largest eigenvalue of AᵀA by the power method in float64 (cached)."""
        if self._lambda_max is None:
            ref = next(iter(self.buffers()), None)
            device = ref.device if ref is not None else "cpu"
            g = torch.Generator().manual_seed(0)
            x = torch.randn((1,) + self.image_shape, generator=g, dtype=torch.float64).to(device)
            lam = 0.0
            for _ in range(iters):
                x = x / x.norm()
                z = self.A_adjoint(self.forward_op(x))
                lam = float((x * z).sum())
                x = z
            self._lambda_max = lam
        return self._lambda_max

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise InputError(f"{self.name}: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.image_shape:
            raise InputError(f"{self.name}: image of shape {tuple(x.shape[1:])} does not match the "
                             f"operator's {self.image_shape}")
        if not torch.isfinite(x).all():
            raise InputError(f"{self.name}: input contains NaN or inf values")


class _Conv(Operator):
    """Depthwise convolution with replicate padding, optionally followed by stride-s subsampling."""

    def __init__(self, image_shape, kernel: torch.Tensor, stride: int = 1, pad: tuple[int, int] | None = None):
        super().__init__(image_shape)
        self.register_buffer("kernel", kernel[None, None].to(torch.float32))
        self.stride = stride
        k = kernel.shape[-1]
        self.pad = pad if pad is not None else (k // 2, k - 1 - k // 2)

    def forward_op(self, x):
        c = x.shape[1]
        left, right = self.pad
        xp = F.pad(x, (left, right, left, right), mode="replicate")
        weight = self.kernel.to(x.dtype).expand(c, 1, -1, -1)
        return F.conv2d(xp, weight, stride=self.stride, groups=c)


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def bicubic_antialias_kernel(factor: int) -> tuple[torch.Tensor, int]:
    """Separable 2-D bicubic anti-aliasing kernel (4·s taps) and its left padding.

    Output pixel i is centred at input coordinate s·i + (s−1)/2; taps sit at integer
    offsets d from that centre with |d| < 2s and weights cubic(d/s), normalised to sum 1.
    """
    s = factor
    offsets = np.arange(4 * s) - (2 * s - 0.5) + 0.0  # d = j - centre
    w = _keys_cubic(offsets / s)
    w = w / w.sum()
    k2 = torch.from_numpy(np.outer(w, w))
    # The first tap of output 0 sits at input j = (s-1)/2 - (2s - 0.5), i.e. 1.5s pixels
    # before the image: that many replicated pixels are padded on the left/top, and
    # 4s - 1.5s - s = 1.5s on the right/bottom.
    left = int(round(2 * s - 0.5 - (s - 1) / 2))
    return k2, left


class SuperResolution(_Conv):
    def __init__(self, image_shape, factor: int):
        c, h, w = image_shape
        if h < factor or w < factor:
            raise InputError(f"sr{factor}: image {h}x{w} is smaller than the factor {factor}")
        if h % factor or w % factor:
            raise InputError(f"sr{factor}: image {h}x{w} is not divisible by {factor}; crop it to "
                             f"{h - h % factor}x{w - w % factor} (images.center_crop_to_multiple)")
        kernel, left = bicubic_antialias_kernel(factor)
        right = kernel.shape[-1] - left - factor
        super().__init__(image_shape, kernel, stride=factor, pad=(left, right))
        self.factor = factor
        self.name = f"sr{factor}"


def box_kernel(size: int = 5) -> torch.Tensor:
    return torch.full((size, size), 1.0 / size**2, dtype=torch.float64)


def gaussian_kernel(sigma: float = 2.0) -> torch.Tensor:
    """(2⌈3σ⌉+1)² normalised Gaussian kernel."""
    r = int(math.ceil(3 * sigma))
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return k / k.sum()


class Blur(_Conv):
    def __init__(self, image_shape, kernel: torch.Tensor, name: str):
        h, w = image_shape[1:]
        if h < 2 or w < 2:
            raise InputError(f"{name}: image {h}x{w} is too small")
        super().__init__(image_shape, kernel)
        self.name = name


class Colorize(Operator):
    name = "colorize"

    def __init__(self, image_shape):
        if image_shape[0] != 3:
            raise InputError(f"colorize needs 3-channel images, got {image_shape[0]}")
        super().__init__(image_shape)
        self.register_buffer("weights", torch.full((1, 3, 1, 1), 1.0 / 3.0))

    def forward_op(self, x):
        return (x * self.weights.to(x.dtype)).sum(dim=1, keepdim=True)

    def A_adjoint(self, y):
        return y * self.weights.to(y.dtype)


class Mask(Operator):
    """y = m ⊙ x: inpainting and compressed sensing (pixel subsampling)."""

    def __init__(self, image_shape, mask: torch.Tensor, name: str):
        super().__init__(image_shape)
        self.register_buffer("mask", mask.to(torch.float32).reshape(1, 1, *image_shape[1:]))
        self.name = name

    def forward_op(self, x):
        return x * self.mask.to(x.dtype)

    def A_adjoint(self, y):
        return y * self.mask.to(y.dtype)

    def n_measurements(self) -> int:
        return int(self.mask.sum().item()) * self.image_shape[0]


class Jpeg(Operator):
    is_linear = False

    def __init__(self, image_shape, q: int = 15):
        super().__init__(image_shape)
        if not 1 <= int(q) <= 100:
            raise InputError(f"jpeg quality must be in 1..100, got {q}")
        self.q = int(q)
        self.name = "jpeg"

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

    def lambda_max(self, iters: int = 50) -> float:
        raise MethodError("jpeg is non-linear; λ_max(AᵀA) is undefined")


class Identity(Operator):
    name = "denoise"

    def forward_op(self, x):
        return x * 1.0


def _random_mask(h: int, w: int, keep: float, seed: int) -> torch.Tensor:
    if not 0 < keep <= 1:
        raise InputError(f"keep rate must be in (0, 1], got {keep}")
    g = torch.Generator().manual_seed(int(seed))
    return (torch.rand((h, w), generator=g) < keep).float()


def _inpaint_mask(h: int, w: int, params: dict[str, Any]) -> torch.Tensor:
    mode = params.pop("mode", "box")
    if mode == "box":
        frac = float(params.pop("size", 0.5))
        side = max(1, int(round(frac * min(h, w))))
        m = torch.ones((h, w))
        top, left = (h - side) // 2, (w - side) // 2
        m[top:top + side, left:left + side] = 0
        return m
    if mode == "random":
        return _random_mask(h, w, float(params.pop("keep", 0.2)), int(params.pop("seed", 0)))
    if mode == "mask":
        mask = params.pop("mask", None)
        if isinstance(mask, str):
            from restore_core.images import read_image

            mask = (read_image(mask).mean(dim=1)[0] > 0).float()
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape[-2:]) != (h, w):
            raise InputError(f"inpaint mode=mask needs a mask of size {h}x{w} (tensor or image URI)")
        return (mask.reshape(h, w) > 0.5).float()
    raise InputError(f"unknown inpaint mode {mode!r}; accepted: box, random, mask")


def build_operator(task: str, image_shape: tuple[int, int, int], **params) -> Operator:
    """The operator for ``task`` (``"sr4"``, ``"deblur_gauss:sigma=3"``, …) on images of
    shape (C, H, W). Keyword ``params`` override those in the spec."""
    name, spec_params = parse_task(task)
    spec_params.update(params)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise InputError(f"image_shape must be (C, H, W), got {image_shape}")
    c, h, w = (int(v) for v in image_shape)
    shape = (c, h, w)
    if name.startswith("sr"):
        op: Operator = SuperResolution(shape, int(name[2:]))
    elif name == "deblur_box5":
        op = Blur(shape, box_kernel(5), name)
    elif name == "deblur_gauss":
        sigma = float(spec_params.pop("sigma", 2.0))
        if sigma <= 0:
            raise InputError(f"deblur_gauss sigma must be > 0, got {sigma}")
        op = Blur(shape, gaussian_kernel(sigma), name)
    elif name == "colorize":
        op = Colorize(shape)
    elif name == "inpaint":
        op = Mask(shape, _inpaint_mask(h, w, spec_params), "inpaint")
    elif name == "cs":
        rate = float(spec_params.pop("rate", 0.05))
        op = Mask(shape, _random_mask(h, w, rate, int(spec_params.pop("seed", 0))), "cs")
    elif name == "jpeg":
        op = Jpeg(shape, int(spec_params.pop("q", 15)))
    else:
        op = Identity(shape)
    if spec_params:
        raise InputError(f"unknown parameter(s) {', '.join(sorted(spec_params))} for task {name!r}")
    op.task = task
    return op
