"""The interface every restoration method implements, and the registry by name.

A method turns one batch of measurements y into restored images::

    x_hat, info = method.restore(y, operator, model, cfg, neighbours=..., generator=...)

``operator`` is None for blind use; methods that need one raise ``MethodError``.
``info`` always carries ``steps``, ``iterations``, ``stop_reason``, ``warnings`` and the
seconds spent per stage (``seconds_adapt``, ``seconds_sample``, …) so the jobs can report
where the time went. Methods register themselves in ``METHODS`` when their module is
imported; ``get_method`` imports the module that provides a name on first use.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import torch

from restore_core.errors import ConfigError, MethodError

METHODS: dict[str, "Method"] = {}
PROVIDERS: dict[str, str] = {
    "adir": "restore_core.methods.adir", "ia_y": "restore_core.methods.adir", "gd": "restore_core.methods.adir",
}


class Method(Protocol):
    name: str
    needs_operator: bool
    uses_neighbours: bool

    def restore(self, y: torch.Tensor, operator, model, cfg, *, neighbours: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]: ...


def register(method: "Method") -> "Method":
    METHODS[method.name] = method
    return method


def get_method(name: str) -> "Method":
    if name not in METHODS:
        module = PROVIDERS.get(name)
        if module is None:
            raise ConfigError(f"unknown method {name!r}; accepted: {', '.join(PROVIDERS)}")
        importlib.import_module(module)
    return METHODS[name]


def require_linear_operator(method: str, operator) -> None:
    if operator is None:
        raise MethodError(f"method {method!r} needs a known degradation operator; the task is blind")
    if not operator.is_linear:
        raise MethodError(f"method {method!r} needs a linear operator; task {operator.name!r} is non-linear "
                          "(use diip or indi)")


def base_info(**extra) -> dict:
    info = {"steps": 0, "iterations": 0, "stop_reason": "", "warnings": [], "seconds_adapt": 0.0,
            "seconds_sample": 0.0}
    info.update(extra)
    return info
