"""Typed, validated configuration of one restoration (per row), and ``--set`` parsing.

Defaults follow ADIR Table 1 (400 adaptation iterations, lr 1e-4, K = 20 neighbours, 1000
diffusion steps) and the appendices of SHRED, DIIP and InDI; every deviation is
documented on its field (the default guidance is ADIR's Algorithm 1 with a normalised
scale, ``restore_core.sampling.alg1``; ``--preset paper`` is Table 1 as written, s = 10).
Unknown keys and bad values raise ``ConfigError`` before any work starts; code downstream
(``restore_one``, the methods, the samplers) trusts a ``RestoreConfig`` it is given.

Owns ``RestoreConfig`` and the per-method sub-configs, ``PRESETS`` / ``preset_values``
(the one preset check) and ``parse_overrides`` (the one parser of ``key=value`` strings,
used by the job config too). The method names come from the registry
(``restore_core.methods.base.PROVIDERS``). Imports nothing heavy (no torch).

>>> parse_overrides(["steps=50", "shred.lr=3e-3", "metrics=[psnr, ssim]"])
{'steps': 50, 'shred': {'lr': 0.003}, 'metrics': ['psnr', 'ssim']}
>>> RestoreConfig.preset("paper").guidance_mode, RestoreConfig.preset("paper").guidance_scale
('paper', 10.0)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import yaml

from restore_core.errors import ConfigError
from restore_core.methods.base import METHOD_NAMES


@dataclass
class ShredConfig:
    """SHRED (zero-shot restoration by DDIM inversion): Algorithm 1, appendix A."""

    skip: int = 100  # δt: DDIM skip step, so T/δt = 10 DDIM steps
    iters: int = 100  # N, Adam iterations on x_T (paper: 50-200)
    lr: float | None = None  # None: 0.003 for SR / deblur, 0.01 for inpaint and cs
    grad: str = "full"  # "full" (through the UNet, as the paper) | "skip-unet" (BIRD code)
    sphere: bool = False  # project x_T onto the sphere of radius sqrt(C*H*W) (off by default, see shred.py)
    loss_eps: float = 0.0  # stop when L_IR < loss_eps (0 disables)
    init: str = "pinv"  # pinv: DDIM inversion of A⁺y (deviation, see shred.py) | noise: Algorithm 1 line 1
    tau: float = 1.0  # discrepancy stop: first iterate with RMS residual <= tau·σ (<= 0 disables; σ: noise_sigma)
    kernel_size: int = 15  # blind deconvolution: kernel estimate size
    kernel_lr: float = 0.01  # blind deconvolution: Adam lr for the kernel


@dataclass
class DiipConfig:
    """DIIP (Diffusion Image Prior): blind optimisation of x_T with self-supervised early stopping."""

    skip: int = 100  # DDIM skip step of the frozen generator g
    iters: int = 200  # iteration cap
    lr: float = 0.003  # measured on training crops (bench inversion / README): 0.01 bounces
    rule: str = "auto"  # auto | slope | noise | laplacian | both
    slope_eps: float = 0.01  # stop when the normalised loss slope Δ_k < slope_eps
    slope_window: int = 5
    k_min: int = 40  # neither the slope rule nor the Laplacian-variance peak counts before k_min
    patience: int = 5  # iterations past the peak before declaring it
    grad: str = "full"  # full | skip-unet, as SHRED's
    init: str = "denoised"  # start z⁰: denoised (inversion of the prior's Tweedie estimate) | y | noise (the slides')


@dataclass
class IndiConfig:
    """InDI (Inversion by Direct Iteration): Algorithm 1 / eq. 10."""

    model: str = ""  # spec of the trained restorer; "" -> models/indi-<task> shipped default
    steps: int = 10  # N, with δ = 1/N
    sampler: str = "indi"  # indi (eq. 5/10) | naive (eq. 11) | cold (eq. 15)
    eps: float = -1.0  # ε of the noise schedule; < 0: the ε the model was trained with
    noise_schedule: str = "trained"  # trained (the model's) | constant ε_t = ε | inv_sqrt ε_t = ε/√t


@dataclass
class SdConfig:
    """Stable Diffusion methods (ADIR revised version §4.1 SR x4, §4.4 editing; Table 1 row ADIR-SD)."""

    steps: int = 50  # Table 1: 50 diffusion steps for ADIR-SD (the row's ``steps`` is the pixel prior's)
    noise_level: int = 20  # x4 upscaler: noise added to the low-res image, 0..max_noise_level (pipeline default)
    guidance_scale: float | None = None  # classifier-free guidance; None: the pipeline's (9 upscale, 7.5 inpaint)
    prompt: str = ""  # default prompt; a manifest row's ``prompt`` overrides it (edit needs one)
    prompt_drop: float = 0.1  # edit adaptation: P(empty prompt), SD's classifier-free training


CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHOD_NAMES,  # the registry's names (methods.base.PROVIDERS), not a second list
    "retrieval": ("clip", "random", "mse"),
    "guidance_mode": ("normalized", "paper"),
    "sampler": ("alg1", "ddrm", "diffpir", "dps"),  # restore_core.sampling.peers.SAMPLERS
    "shred.grad": ("full", "skip-unet"),
    "shred.init": ("pinv", "noise"),  # restore_core.methods.shred.INITS
    "diip.rule": ("auto", "slope", "noise", "laplacian", "both"),
    "diip.grad": ("full", "skip-unet"),
    "diip.init": ("denoised", "y", "noise"),  # restore_core.methods.diip.INITS
    "indi.sampler": ("indi", "naive", "cold"),
    "indi.noise_schedule": ("trained", "constant", "inv_sqrt"),
}

POSITIVE: tuple[str, ...] = (
    "k", "adapt_iters", "adapt_lr", "adapt_batch", "lora_rank", "lora_alpha", "steps",
    "max_pixels", "shred.skip", "shred.iters", "shred.kernel_size", "shred.kernel_lr",
    "diip.skip", "diip.iters", "diip.lr", "indi.steps", "sd.steps", "samples", "dps_weight",
)


@dataclass
class RestoreConfig:
    """Everything one row's restoration needs besides its data.

    ``guidance_scale=None`` means the per-task default of
    ``restore_core.sampling.alg1``; ``guidance_mode="paper"`` uses s exactly as in ADIR's
    Algorithm 1, ``"normalized"`` divides s by λ_max(AᵀA) so one value works across
    operators (``restore_core.sampling.alg1`` explains why).
    """

    method: str = "adir"
    k: int = 20  # K retrieved neighbours (Table 1)
    retrieval: str = "clip"  # clip (eq. 19) | random | mse (ablation, Table 6)
    adapt_iters: int = 400  # Table 1
    adapt_lr: float = 1e-4  # Table 1
    adapt_batch: int = 6  # crops per adaptation batch (ADIR §4: 6)
    adapt_crop: int | None = None  # None: the model's sample size
    lora_rank: int = 16  # ADIR (revised version) §4: LoRA rank 16
    lora_alpha: int = 8  # ADIR (revised version) §4: scaling 8
    lora_attention: bool = False  # also adapt the attention projections (the paper: convolutions only)
    steps: int = 1000  # diffusion steps (respaced when < T)
    guidance_scale: float | None = None
    guidance_mode: str = "normalized"
    sampler: str = "alg1"  # alg1 (ADIR Algorithm 1) | ddrm | diffpir | dps (deepinv, sampling.peers)
    noise_sigma: float = -1.0  # σ_y (0-255) the peer samplers assume; < 0: estimated from y
    samples: int = 1  # posterior samples averaged into the output (> 1: the fidelity output)
    dps_weight: float = 300.0  # DPS guidance step ("norm" guidance); tuned on training crops (README "Peers")
    metrics: tuple[str, ...] = ()  # () -> restore_core.metrics defaults
    metrics_weights_dir: str | None = None
    max_pixels: int = 40_000_000  # decompression-bomb cap on input pixels
    tile_size: int = 0  # larger outputs sample in overlapping tiles (0: model sample size; sampling.tiled)
    tile_overlap: int = 0  # pixels shared by neighbouring tiles (0: tile_size // 8)
    max_side: int = 2048  # an output side beyond this is refused before any work (0: no limit; sampling.tiled)
    shred: ShredConfig = field(default_factory=ShredConfig)
    diip: DiipConfig = field(default_factory=DiipConfig)
    indi: IndiConfig = field(default_factory=IndiConfig)
    sd_model: str = "stabilityai/stable-diffusion-x4-upscaler"  # adir_sd / sd: hub id | folder | fsspec URI
    sd_inpaint_model: str = "stabilityai/stable-diffusion-2-inpainting"  # adir_edit / sd_edit
    sd: SdConfig = field(default_factory=SdConfig)

    # ---- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RestoreConfig:
        """Build from a (possibly nested) dict; dotted keys ``shred.lr`` also accepted."""
        return cls().updated(data or {})

    @classmethod
    def preset(cls, name: str) -> RestoreConfig:
        """The configuration of preset ``name`` (``PRESETS``; ``paper`` is ADIR Table 1)."""
        return cls.from_dict(preset_values(name))

    def updated(self, data: dict[str, Any]) -> RestoreConfig:
        """A copy with the (nested or dotted) keys of ``data`` set, validated once."""
        cfg = self
        for key, value in _flatten(data).items():
            cfg = cfg._set(key, value)
        cfg.validate()
        return cfg

    def with_overrides(self, assignments: Iterable[str]) -> RestoreConfig:
        """Apply ``key=value`` strings (values read as YAML, ``parse_overrides``)."""
        return self.updated(parse_overrides(assignments))

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
        for key in ("tile_size", "tile_overlap", "max_side"):
            if getattr(self, key) < 0:
                raise ConfigError(f"bad value for {key}: {getattr(self, key)}; must be >= 0 (0: default / no limit)")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ConfigError(f"bad value for guidance_scale: {self.guidance_scale}; must be >= 0")
        if not 0 <= self.sd.prompt_drop <= 1 or self.sd.noise_level < 0:
            raise ConfigError(f"bad value for sd.prompt_drop ({self.sd.prompt_drop}, must be in [0, 1]) "
                              f"or sd.noise_level ({self.sd.noise_level}, must be >= 0)")

    def _set(self, key: str, value: Any) -> RestoreConfig:
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
    if isinstance(default, float) or key in ("guidance_scale", "shred.lr", "sd.guidance_scale"):
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


# YAML 1.1 (PyYAML) reads 1e-3 as a string; it needs a dot (1.0e-3). Read it as a number.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml_value(key: str, raw: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad value for {key}: {raw!r} ({' '.join(str(exc).split())})") from None
    return float(value) if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(raw) else value


def parse_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` → ``{"a": 1, "b": {"c": "x"}}``: the one parser of ``--set``.

    Each value is read as YAML (numbers, also ``1e-3``; booleans, ``null``, ``[lists]``; an
    empty value is None). Dotted keys become nested sections; a later assignment of the same key wins.
    ``ConfigError`` (one line) for an item without ``=``, an empty key, bad YAML, or a key
    set both as a value and as a section (``shred=1`` with ``shred.lr=…``).
    """
    out: dict[str, Any] = {}
    for item in assignments:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"bad override {item!r}; expected key=value")
        key, raw = (part.strip() for part in item.split("=", 1))
        path = key.split(".")
        if not all(path):
            raise ConfigError(f"bad override {item!r}; expected key=value with a non-empty key")
        value = _yaml_value(key, raw)
        node = out
        for depth, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} sets inside {'.'.join(path[:depth + 1])!r}, "
                                  "which is also given a value")
        if isinstance(node.get(path[-1]), dict) and not isinstance(value, dict):
            raise ConfigError(f"override {key!r} gives a value to a section that is also set key by key")
        node[path[-1]] = value
    return out


# ADIR Table 1, row ADIR-GD, as written: 400 adaptation iterations at lr 1e-4 on K = 20
# neighbours, guidance scale s = 10 used as in Algorithm 1 (no λ_max normalisation), 1000
# diffusion steps; with §4's LoRA rank 16, scaling 8 and batches of 6.
# The fast preset is the one `adir bench cost` selects (README, "Cost"): respaced sampling
# and fewer adaptation iterations, with the default (normalised) guidance.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"steps": 1000, "adapt_iters": 400, "adapt_lr": 1e-4, "k": 20, "guidance_mode": "paper",
              "guidance_scale": 10.0, "lora_rank": 16, "lora_alpha": 8, "adapt_batch": 6},
    "fast": {"steps": 100, "adapt_iters": 40, "adapt_lr": 1e-3},
    # fidelity: the fast preset's cost ×4 for PSNR: the mean of 4 DDRM posterior samples (a
    # posterior-mean estimate; methods.adir); `adir bench peers` row ddrm_fid (method gd)
    "fidelity": {"steps": 100, "adapt_iters": 40, "adapt_lr": 1e-3, "sampler": "ddrm", "samples": 4},
}


def preset_values(name: str) -> dict[str, Any]:
    """A copy of preset ``name``'s keys; ``ConfigError`` naming the presets if unknown (the one check)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; accepted: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
