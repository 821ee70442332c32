"""InDI inference ("Inversion by Direct Iteration", Algorithm 1, eq. 5, 10, 11, 15) as the
``indi`` method.

A trained restorer F_θ(x_t, t) (``restore_core.models.indi_model``) walks from the degraded
image at t = 1 to the estimate at t = 0 in N steps of δ = 1/N, starting from
x₁ = y + ε₁·n. Samplers (``cfg.indi.sampler``):

* ``indi`` (eq. 10; eq. 5 when ε_t is constant)::

      x_{t−δ} = δ/t·F(x_t, t) + (1 − δ/t)·x_t + (t − δ)·√(ε²_{t−δ} − ε²_t)·ζ

  The noise term's variance simplifies to ε²·δ·(t − δ)/t for ε_t = ε/√t and is 0 for
  constant ε_t. With N = 1 (δ = t = 1) it is one direct regression step x₀ = F(x₁, 1).
* ``naive`` (eq. 11): x_{t−δ} = (1 − t + δ)·F(x_t, t) + (t − δ)·x₁.
* ``cold`` (eq. 15, Cold Diffusion's improved sampler): x_{t−δ} = x_t + δ·(F(x_t, t) − x₁).

ε and its schedule default to the ones the model was trained with (``cfg.indi.eps < 0``,
``cfg.indi.noise_schedule = "trained"``). InDI needs no operator, but its model knows one
task: when the row's operator is given and differs from the model's task (name or
parameters, e.g. JPEG q = 30 against a q = 15 model), the row fails with ``MethodError``.
For super-resolution y is upsampled bicubically to the operator's image size first.
The ``model`` argument (the diffusion prior) is not used.
"""

from __future__ import annotations

import functools
import math
import os
import time

import torch

from restore_core import progress
from restore_core.errors import MethodError, ModelLoadError
from restore_core.methods.base import base_info, register
from restore_core.models.indi_model import (
    INDI_TASKS,
    IndiModel,
    default_indi_dir,
    full_size,
    load_indi_model,
)
from restore_core.operators import build_operator, parse_task


@functools.lru_cache(maxsize=4)
def _load_cached(spec: str, device: str) -> IndiModel:
    return load_indi_model(spec, device)


def same_task(operator, trained_task: str) -> bool:
    """Whether ``operator`` is the degradation ``trained_task`` names (name, params, buffers)."""
    try:
        ref = build_operator(trained_task, operator.image_shape)
    except Exception:  # noqa: BLE001 - any failure means "not the same task"
        return False
    if ref.name != operator.name or getattr(ref, "q", None) != getattr(operator, "q", None):
        return False
    mine, theirs = ref.state_dict(), operator.state_dict()
    return mine.keys() == theirs.keys() and all(
        mine[k].shape == theirs[k].shape and torch.allclose(mine[k].float(), theirs[k].float().cpu()) for k in mine)


def indi_sample(model: IndiModel, y: torch.Tensor, steps: int, sampler: str = "indi", eps: float | None = None,
                noise_schedule: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1 from x₁ = y + ε₁·n down to x₀ in ``steps`` steps of δ = 1/N."""
    eps = model.eps if eps is None else eps
    schedule = model.noise_schedule if noise_schedule in (None, "trained") else noise_schedule
    delta = 1.0 / steps

    def noise_like(x):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    x = y + model.eps_at(1.0, eps, schedule) * noise_like(y)
    x1 = x
    progress.report("sampling", 0, steps)
    with torch.no_grad():
        for i in range(steps):
            t = 1.0 - i * delta
            s = max(t - delta, 0.0)
            f = model(x, t)
            if sampler == "indi":
                x = (delta / t) * f + (1 - delta / t) * x
                if schedule == "inv_sqrt" and eps > 0 and s > 0:
                    x = x + eps * math.sqrt(delta * s / t) * noise_like(x)
            elif sampler == "naive":
                x = (1 - s) * f + s * x1
            elif sampler == "cold":
                x = x + delta * (f - x1)
            else:
                raise MethodError(f"unknown InDI sampler {sampler!r}; accepted: indi, naive, cold")
            progress.report("sampling", i + 1, steps)
    return x


class InDI:
    name = "indi"
    needs_operator = False
    uses_neighbours = False
    tasks = INDI_TASKS  # one trained model per task

    def work(self, cfg) -> dict[str, int]:
        """Units per progress stage (``restore_core.progress``): the sampler's steps."""
        return {"sampling": cfg.indi.steps}

    def restore(self, y, operator, model, cfg, *, neighbours=None, generator=None):
        icfg = cfg.indi
        task = getattr(operator, "task", None) if operator is not None else None
        spec = icfg.model or (default_indi_dir(task) if task else "")
        if not spec:
            raise MethodError("method 'indi' on a blind task needs indi.model=<trained InDI model folder>")
        if not icfg.model and not os.path.isdir(spec):
            raise MethodError(f"no InDI model for task {parse_task(task)[0]!r} (looked in {spec}); "
                              "train one with `adir train-indi` or set indi.model")
        device = str(getattr(model, "device", "cpu") if model is not None else "cpu")
        try:
            net = _load_cached(spec, device)
        except ModelLoadError as exc:
            raise MethodError(str(exc)) from None
        if operator is not None and not same_task(operator, net.task):
            raise MethodError(f"InDI model {spec!r} was trained for task {net.task!r}, not "
                              f"{getattr(operator, 'task', operator.name)!r}")
        if operator is not None:
            y = full_size(y, operator.image_shape[-2:])
        start = time.perf_counter()
        eps = None if icfg.eps < 0 else icfg.eps
        x = indi_sample(net, y.to(device), icfg.steps, icfg.sampler, eps, icfg.noise_schedule, generator)
        info = base_info(steps=icfg.steps, iterations=icfg.steps, stop_reason="steps", sampler=icfg.sampler,
                         indi_model=spec)
        info["seconds_sample"] = time.perf_counter() - start
        return x.clamp(-1, 1), info


register(InDI())
