"""The interface every restoration method implements, and the registry by name.

Owns ``Method``, ``METHODS``, ``PROVIDERS``, ``get_method``, ``register``; imports no
method module at import time. A method turns one batch of measurements y into images::

    x_hat, info = method.restore(y, operator, model, cfg, neighbours=..., generator=...)

* ``operator`` is None for blind use; a method that needs one raises ``MethodError``
  (``require_linear_operator``).
* ``x_hat`` is (B, C, H, W) in [−1, 1]; the same ``generator`` state gives the same output.
* ``info`` always carries ``steps``, ``iterations``, ``stop_reason``, ``warnings`` (list of
  str) and the seconds per stage (``seconds_adapt``, ``seconds_sample``, …); start from
  ``base_info()``.
* ``tasks``: the operator names the method accepts (``restore_one`` checks it); the first
  is the one the registry-wide interface test uses.

Each method module calls ``register(...)`` when imported. ``PROVIDERS`` maps every method
name to its module, and ``get_method`` imports that module on first use, so a method
whose module is missing fails only when it is asked for. ``PROVIDERS`` is *the* list of
method names: ``restore_core.config.CHOICES["method"]`` and the manifest check derive
from it. This module imports no torch at run time, so the config can read it cheaply.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Protocol

from restore_core.errors import ConfigError, MethodError

if TYPE_CHECKING:
    import torch

METHODS: dict[str, Method] = {}
PROVIDERS: dict[str, str] = {
    "adir": "restore_core.methods.adir",
    "ia_y": "restore_core.methods.adir",
    "gd": "restore_core.methods.adir",
    "shred": "restore_core.methods.shred",
    "shred_blind": "restore_core.methods.shred",
    "diip": "restore_core.methods.diip",
    "indi": "restore_core.methods.indi",
    "adir_sd": "restore_core.methods.stable_diffusion",
    "sd": "restore_core.methods.stable_diffusion",
    "adir_edit": "restore_core.methods.stable_diffusion",
    "sd_edit": "restore_core.methods.stable_diffusion",
    "pinv": "restore_core.methods.pinv",
}
#: Every method name, in registry order (what ``--set method=`` accepts).
METHOD_NAMES: tuple[str, ...] = tuple(PROVIDERS)
INFO_KEYS = ("steps", "iterations", "stop_reason", "warnings", "seconds_adapt", "seconds_sample")


class Method(Protocol):
    name: str
    needs_operator: bool
    uses_neighbours: bool
    tasks: tuple[str, ...]

    def restore(self, y: torch.Tensor, operator, model, cfg, *, neighbours: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]: ...


def register(method: Method) -> Method:
    """Add ``method`` to ``METHODS`` under ``method.name`` (called by method modules)."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The method registered as ``name``, importing its module on first use."""
    if name not in METHODS:
        module = PROVIDERS.get(name)
        if module is None:
            raise ConfigError(f"unknown method {name!r}; accepted: {', '.join(PROVIDERS)}")
        if importlib.util.find_spec(module) is None:
            raise MethodError(f"method {name!r} is not available: its module {module} is not installed")
        importlib.import_module(module)
        if name not in METHODS:
            raise MethodError(f"module {module} did not register method {name!r}")
    return METHODS[name]


def available_methods() -> list[str]:
    """Names in ``PROVIDERS`` whose module exists (imported and registered)."""
    return [name for name, module in PROVIDERS.items() if importlib.util.find_spec(module) is not None
            and get_method(name) is not None]


def require_linear_operator(method: str, operator) -> None:
    """MethodError unless ``operator`` is a known linear degradation."""
    if operator is None:
        raise MethodError(f"method {method!r} needs a known degradation operator; the task is blind "
                          "(use diip or shred_blind)")
    if not operator.is_linear:
        raise MethodError(f"method {method!r} needs a linear operator; task {operator.name!r} is non-linear "
                          "(use diip or indi)")


def base_info(**extra) -> dict:
    """The ``info`` fields every method reports, with neutral values."""
    info = {"steps": 0, "iterations": 0, "stop_reason": "", "warnings": [], "seconds_adapt": 0.0,
            "seconds_sample": 0.0}
    info.update(extra)
    return info
