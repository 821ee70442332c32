r"""The operator base classes and the task grammar: :math:`y = A(x) + e`.

Owns ``TaskSpec`` / ``parse_task`` (the one parser of a task string and the one check of
its parameters), ``Operator`` (any forward model, possibly non-linear), ``LinearOperator``
(adds :math:`A^\top`, :math:`\lambda_{max}(A^\top A)` and the baseline inverse
:math:`A^+`) and ``Identity``. Imports only torch and ``restore_core.errors``.

Tensors are (B, C, H, W) in the model range [-1, 1]. Additive white Gaussian noise given as
σ on the 0–255 scale (ADIR's and SHRED's σ = 10) becomes :math:`\sigma_{model} = 2\sigma/255`,
because the affine map :math:`u \mapsto 2u/255 - 1` scales every difference by 2/255
(σ = 10 → 0.0784); see :func:`sigma_to_model_range` and :meth:`Operator.degrade`.

Every operator is a small ``torch.nn.Module`` whose tensor parameters (kernels, masks,
boundary weights) are registered buffers, so ``.to(device)``, ``.to(dtype)`` and
``state_dict`` work (the deepinv pattern, ``shared/STYLE.md``).

>>> spec = parse_task("inpaint:mode=random,keep=0.3")
>>> spec.name, spec.params, spec.sr_factor
('inpaint', {'mode': 'random', 'keep': 0.3}, 1)
>>> parse_task("sr4").sr_factor
4
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from restore_core.errors import InputError, MethodError

#: Parameters each task accepts in its spec string or as keyword arguments (the grammar;
#: ``registry.BUILDERS`` holds how each task is built, with the same keys).
TASK_PARAMS: dict[str, tuple[str, ...]] = {
    "sr2": (), "sr4": (), "sr8": (), "deblur_box5": (), "deblur_gauss": ("sigma",),
    "colorize": (), "inpaint": ("mode", "size", "keep", "seed", "mask"), "cs": ("rate", "seed"),
    "jpeg": ("q",), "denoise": (), "edit": ("mask", "size"),
}
TASKS: tuple[str, ...] = tuple(TASK_PARAMS)
SR_FACTORS: dict[str, int] = {"sr2": 2, "sr4": 4, "sr8": 8}

#: Channel counts an image may have (greyscale or RGB).
ACCEPTED_CHANNELS = (1, 3)


def sigma_to_model_range(sigma_255: float) -> float:
    """Noise σ on the 0–255 scale → σ in the [-1, 1] model range (× 2/255)."""
    return 2.0 * float(sigma_255) / 255.0


class TaskSpec(NamedTuple):
    """A parsed, checked task: its name and parameters (read-only by convention).

    A tuple, so ``name, params = parse_task(s)`` unpacks it; ``sr_factor`` is the SR
    stride (1 for every same-size task). Build one with :func:`parse_task` or
    :meth:`with_params`, which both run :func:`check_params`.
    """

    name: str
    params: dict[str, Any]

    @property
    def sr_factor(self) -> int:
        return SR_FACTORS.get(self.name, 1)

    def with_params(self, **params: Any) -> TaskSpec:
        """This spec with ``params`` added or replaced, checked again."""
        merged = {**self.params, **params}
        check_params(self.name, merged)
        return TaskSpec(self.name, merged)

    def __str__(self) -> str:
        shown = [f"{k}={v}" for k, v in self.params.items() if not isinstance(v, torch.Tensor)]
        return self.name + (":" + ",".join(shown) if shown else "")


def check_params(name: str, params: dict[str, Any]) -> None:
    """``InputError`` unless every key of ``params`` is a parameter of task ``name``."""
    unknown = sorted(set(params) - set(TASK_PARAMS[name]))
    if unknown:
        accepted = ", ".join(TASK_PARAMS[name]) or "none"
        raise InputError(f"unknown parameter(s) {', '.join(unknown)} for task {name!r}; accepted: {accepted}")


def _parse_value(value: str) -> Any:
    value = value.strip()
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def parse_task(spec: str | TaskSpec) -> TaskSpec:
    """``"name:k=v,k=v"`` → ``TaskSpec``; numbers become int or float, the rest stay str.

    Raises ``InputError`` for an empty or unknown name, an item without ``=`` and a
    parameter the task does not accept. A ``TaskSpec`` is returned as it is.

    >>> parse_task(" jpeg:q=30 ")
    TaskSpec(name='jpeg', params={'q': 30})
    """
    if isinstance(spec, TaskSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty task name; accepted: {', '.join(TASKS)}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in TASK_PARAMS:
        raise InputError(f"unknown task {name!r}; accepted: {', '.join(TASKS)}")
    params: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"bad task parameter {item!r} in {spec!r}; expected key=value")
        params[key.strip()] = _parse_value(value)
    check_params(name, params)
    return TaskSpec(name, params)


class Operator(torch.nn.Module):
    r"""A forward model :math:`A` on images of shape ``image_shape`` (C, H, W), maybe non-linear.

    Subclasses define ``forward_op`` and set ``_output_shape``. ``A`` validates its
    argument first, so bad input fails with a one-line ``InputError`` instead of a
    traceback from inside torch. Only ``LinearOperator`` has an adjoint.
    """

    is_linear = False
    #: y has the image's shape, so a blind method (DIIP, InDI) can map y to x̂ without A.
    blind_ok = True
    name = "operator"

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        self._output_shape = self.image_shape
        self.task = self.name

    def forward_op(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the degradation A (no noise) to x of shape (B, *image_shape)."""
        self.check_input(x)
        return self.forward_op(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

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

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """Shape (C, h, w) of one measurement y."""
        return self._output_shape

    def n_measurements(self) -> int:
        """Number of measured values per image (m in the consistency ‖Ax − y‖/√m)."""
        return math.prod(self.output_shape)

    def lambda_max(self) -> float:
        """Undefined for a non-linear operator: ``MethodError`` (``LinearOperator`` overrides)."""
        raise MethodError(f"task {self.name!r} is non-linear; λ_max(AᵀA) is undefined")

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


class LinearOperator(Operator):
    r"""A linear :math:`A` with an explicit adjoint :math:`A^\top` and a baseline inverse.

    Subclasses define ``adjoint_op`` (exact: ``tests/test_operators.py`` checks
    :math:`\langle Ax, y\rangle = \langle x, A^\top y\rangle` for every linear task) and
    ``pinv_op``, the measurement's own estimate of x: the Moore–Penrose :math:`A^+ y`
    where it is also the field's baseline (masks, colorize, identity), the documented
    baseline where the exact :math:`A^+` amplifies noise (bicubic upsampling for SR, y for
    blur; see each class). ``method=pinv`` returns it.
    """

    is_linear = True

    def __init__(self, image_shape: tuple[int, int, int]):
        super().__init__(image_shape)
        self._lambda_max: float | None = None

    def adjoint_op(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pinv_op(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply Aᵀ to y of shape (B, *output_shape)."""
        self._check(y, self.output_shape, "measurement")
        return self.adjoint_op(y)

    def A_pinv(self, y: torch.Tensor) -> torch.Tensor:
        """The baseline inverse A⁺y (B, *image_shape) of a measurement y (B, *output_shape)."""
        self._check(y, self.output_shape, "measurement")
        return self.pinv_op(y)

    def lambda_max(self) -> float:
        r"""Largest eigenvalue of :math:`A^\top A` (= ‖A‖₂²), by the power method, cached.

        Samplers divide the guidance step by it (ADIR eq. 17 with a normalised scale).
        """
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


class Identity(LinearOperator):
    """``denoise``: A = I (noise is the only degradation); Aᵀ = A⁺ = I."""

    name = "denoise"

    def forward_op(self, x):
        return x.clone()

    def adjoint_op(self, y):
        return y.clone()

    def pinv_op(self, y):
        return y.clone()
