"""Typed, validated configuration of one restoration (per row).

Defaults follow ADIR Table 1 (paper 000: 400 adaptation iterations, lr 1e-4, K = 20
neighbours, 1000 diffusion steps, guidance scale 10) and the appendices of SHRED (002),
DIIP (004) and InDI (003); every deviation is documented on its field. Unknown keys and
bad values raise ``ConfigError`` before any work starts.

Owns: ``RestoreConfig`` and the per-method sub-configs. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Iterable

import yaml

from restore_core.errors import ConfigError


@dataclass
class ShredConfig:
    """SHRED (paper 002, Algorithm 1, appendix A)."""

    skip: int = 100  # δt: DDIM skip step, so T/δt = 10 DDIM steps
    iters: int = 100  # N, Adam iterations on x_T (paper: 50-200)
    lr: float | None = None  # None: 0.003 for SR / deblur, 0.01 for inpaint and cs
    grad: str = "full"  # "full" (through the UNet, as the paper) | "skip-unet" (BIRD code)
    sphere: bool = False  # project x_T onto the sphere of radius sqrt(C*H*W) (measured: no gain, see shred.py)
    loss_eps: float = 0.0  # stop when L_IR < loss_eps (0 disables)
    kernel_size: int = 15  # blind deconvolution: kernel estimate size
    kernel_lr: float = 0.01  # blind deconvolution: Adam lr for the kernel


@dataclass
class DiipConfig:
    """DIIP (paper 004): blind optimisation of x_T with self-supervised early stopping."""

    skip: int = 100  # DDIM skip step of the frozen generator g
    iters: int = 200  # iteration cap
    lr: float = 0.01
    rule: str = "auto"  # auto | slope | laplacian | both
    slope_eps: float = 0.01  # stop when the normalised loss slope Δ_k < slope_eps
    slope_window: int = 5
    k_min: int = 10  # the Laplacian-variance peak only counts after k_min
    patience: int = 5  # iterations past the peak before declaring it
    grad: str = "full"  # full | skip-unet, as SHRED's


@dataclass
class IndiConfig:
    """InDI (paper 003, Algorithm 1 / eq. 10)."""

    model: str = ""  # spec of the trained restorer; "" -> models/indi-<task> shipped default
    steps: int = 10  # N, with δ = 1/N
    sampler: str = "indi"  # indi (eq. 5/10) | naive (eq. 11) | cold (eq. 15)
    eps: float = -1.0  # ε of the noise schedule; < 0: the ε the model was trained with
    noise_schedule: str = "trained"  # trained (the model's) | constant ε_t = ε | inv_sqrt ε_t = ε/√t


CHOICES: dict[str, tuple[str, ...]] = {
    "method": ("adir", "ia_y", "gd", "shred", "shred_blind", "diip", "indi"),
    "retrieval": ("clip", "random", "mse"),
    "guidance_mode": ("normalized", "paper"),
    "shred.grad": ("full", "skip-unet"),
    "diip.rule": ("auto", "slope", "laplacian", "both"),
    "diip.grad": ("full", "skip-unet"),
    "indi.sampler": ("indi", "naive", "cold"),
    "indi.noise_schedule": ("trained", "constant", "inv_sqrt"),
}

POSITIVE: tuple[str, ...] = (
    "k", "adapt_iters", "adapt_lr", "adapt_batch", "lora_rank", "lora_alpha", "steps",
    "max_pixels", "shred.skip", "shred.iters", "shred.kernel_size", "shred.kernel_lr",
    "diip.skip", "diip.iters", "diip.lr", "indi.steps",
)


@dataclass
class RestoreConfig:
    """Everything one row's restoration needs besides its data.

    ``guidance_scale=None`` means the per-task default of
    ``restore_core.sampling.alg1``; ``guidance_mode="paper"`` uses s exactly as in
    Algorithm 1, ``"normalized"`` divides s by λ_max(AᵀA) so one value works across
    operators (see guided_sampling's docstring for the measurements).
    """

    method: str = "adir"
    k: int = 20  # K retrieved neighbours (Table 1)
    retrieval: str = "clip"  # clip (eq. 19) | random | mse (ablation, Table 6)
    adapt_iters: int = 400  # Table 1
    adapt_lr: float = 1e-4  # Table 1
    adapt_batch: int = 6  # crops per adaptation batch
    adapt_crop: int | None = None  # None: the model's sample size
    lora_rank: int = 16  # paper 001
    lora_alpha: int = 8  # paper 001
    steps: int = 1000  # diffusion steps (respaced when < T)
    guidance_scale: float | None = None
    guidance_mode: str = "normalized"
    metrics: tuple[str, ...] = ()  # () -> restore_core.metrics defaults
    metrics_weights_dir: str | None = None
    max_pixels: int = 40_000_000  # decompression-bomb cap on input pixels
    shred: ShredConfig = field(default_factory=ShredConfig)
    diip: DiipConfig = field(default_factory=DiipConfig)
    indi: IndiConfig = field(default_factory=IndiConfig)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RestoreConfig":
        """Build from a (possibly nested) dict; dotted keys ``shred.lr`` also accepted."""
        cfg = cls()
        for key, value in _flatten(data or {}).items():
            cfg = cfg._set(key, value)
        cfg.validate()
        return cfg

    @classmethod
    def preset(cls, name: str) -> "RestoreConfig":
        """``paper``: Table 1 (1000 steps, 400 iterations). ``fast``: see PRESETS."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
        return cls.from_dict(PRESETS[name])

    def with_overrides(self, assignments: Iterable[str]) -> "RestoreConfig":
        """Apply ``key=value`` strings (values parsed as YAML scalars/lists)."""
        cfg = self
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"bad override {item!r}; expected key=value")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                raise ConfigError(f"bad value for {key}: {raw!r} ({exc})") from None
            cfg = cfg._set(key.strip(), value)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- validation ---------------------------------------------------------------
    def validate(self) -> None:
        flat = _flatten(self.to_dict())
        for key, accepted in CHOICES.items():
            if flat[key] not in accepted:
                raise ConfigError(
                    f"bad value for {key}: {flat[key]!r}; accepted: {', '.join(accepted)}")
        for key in POSITIVE:
            value = flat[key]
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"bad value for {key}: {value!r}; must be a number > 0")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ConfigError(f"bad value for guidance_scale: {self.guidance_scale}; must be >= 0")

    def _set(self, key: str, value: Any) -> "RestoreConfig":
        head, _, rest = key.partition(".")
        names = {f.name: f for f in fields(self)}
        if head not in names:
            raise ConfigError(f"unknown config key {key!r}; known: {', '.join(sorted(_flatten(self.to_dict())))}")
        current = getattr(self, head)
        if is_dataclass(current):
            if not rest:
                if not isinstance(value, dict):
                    raise ConfigError(f"{key} is a section; set {key}.<name>=value")
                sub = current
                for k, v in _flatten(value).items():
                    sub = _replace_field(sub, k, v, f"{head}.{k}")
                return dataclasses.replace(self, **{head: sub})
            return dataclasses.replace(self, **{head: _replace_field(current, rest, value, key)})
        if rest:
            raise ConfigError(f"unknown config key {key!r}")
        return _replace_field(self, head, value, key)


def _replace_field(obj: Any, name: str, value: Any, full_key: str) -> Any:
    known = {f.name: f for f in fields(obj)}
    if name not in known:
        raise ConfigError(f"unknown config key {full_key!r}; known in this section: {', '.join(known)}")
    default = getattr(type(obj)(), name)
    value = _coerce(value, default, full_key)
    return dataclasses.replace(obj, **{name: value})


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Coerce YAML-parsed values to the field's type, refusing nonsense with ConfigError."""
    if value is None:
        return None
    if isinstance(value, str) and not isinstance(default, (str, tuple, bool)):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value) if any(c in value for c in ".eEn") else int(value)
        except ValueError:
            pass
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for {key}: {value!r}; expected true or false")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"bad value for {key}: {value!r}; expected an integer")
    if isinstance(default, float) or key in ("guidance_scale", "shred.lr"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"bad value for {key}: {value!r}; expected a number")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value for {key}: {value!r}; expected a list")
        return tuple(str(v) for v in value)
    if key == "adapt_crop":
        if isinstance(value, int) and value > 0:
            return value
        raise ConfigError(f"bad value for {key}: {value!r}; expected a positive integer")
    return str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


# The fast preset is chosen by `adir bench cost` (see README, "Cost"): respaced sampling
# and fewer adaptation iterations, measured against the paper preset on the same images.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"steps": 1000, "adapt_iters": 400},
    "fast": {"steps": 100, "adapt_iters": 40, "adapt_lr": 1e-3},
}
