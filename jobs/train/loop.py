"""The one training loop of ``adir train-prior``, ``train-embedder`` and ``train-indi``.

Every trainer has the same skeleton: draw batches from a seeded pool of crops that is
refreshed when used up, take an optimiser step, update an exponential moving average of
the weights, evaluate on a fixed held-out batch every few steps, checkpoint, export, and
stop at a step count or a wall-clock budget. Resuming reloads the checkpoint and
continues exactly where the run stopped: same weights, optimiser, data position and RNG
states, so a resumed run equals an uninterrupted one.

* :class:`Pool` — batches from ``make(seed)`` pools (optionally shuffled with a generator);
  its position and seed live in the JSON run state.
* :class:`Ema` — the EMA copy of a module, decay min(decay, (1 + n)/(10 + n)) after n
  updates (a warm-up, so the average is not dominated by the random initialisation).
* :class:`Checkpoint` — ``<run-dir>/checkpoint.pt``: the ``state_dict`` of named objects,
  the JSON run state and the global torch RNG, written atomically.
* :func:`run` — the loop itself; the trainer gives the per-step work and the hooks.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("adir.train")


def new_state(seed: int) -> dict:
    """A fresh JSON run state: step, pool seed and position, wall seconds, history."""
    return {"step": 0, "pool_seed": seed, "pos": 0, "seconds": 0.0, "history": []}


class Pool:
    """Training examples in pools of tuples of tensors from ``make(seed)``; when the next
    batch would run past the end, the pool seed is incremented and a new pool drawn.

    With ``shuffle`` (a torch generator), each pool is visited in a random permutation
    drawn from it; otherwise in order."""

    def __init__(self, make: Callable[[int], tuple], batch: int, state: dict,
                 shuffle: torch.Generator | None = None):
        self.make, self.batch, self.state, self.shuffle = make, batch, state, shuffle
        self._draw()

    def _draw(self) -> None:
        self.data = self.make(self.state["pool_seed"])
        n = len(self.data[0])
        self.order = torch.randperm(n, generator=self.shuffle) if self.shuffle is not None else None

    def next(self) -> tuple:
        pos = self.state.get("pos", 0)
        if pos + self.batch > len(self.data[0]):
            self.state["pool_seed"] += 1
            self._draw()
            pos = 0
        idx = self.order[pos:pos + self.batch] if self.order is not None else slice(pos, pos + self.batch)
        self.state["pos"] = pos + self.batch
        return tuple(d[idx] for d in self.data)


class Ema:
    """An exponential moving average of ``module``'s parameters, kept in a copy of it
    (``self.module``: evaluate or export it directly)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for pe, p in zip(self.module.parameters(), module.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, sd: dict) -> None:
        self.module.load_state_dict(sd["module"])
        self.updates = int(sd["updates"])


class NumpyRng:
    """A numpy Generator as a checkpointable object."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, sd: dict) -> None:
        self.rng.bit_generator.state = sd


class TorchGenerator:
    """A torch Generator as a checkpointable object."""

    def __init__(self, gen: torch.Generator):
        self.gen = gen

    def state_dict(self) -> torch.Tensor:
        return self.gen.get_state()

    def load_state_dict(self, sd: torch.Tensor) -> None:
        self.gen.set_state(sd)


class Checkpoint:
    """``<run_dir>/checkpoint.pt`` holding the ``state_dict`` of each named object, the
    JSON run state and the global torch RNG state (no pickled code: ``weights_only``)."""

    def __init__(self, run_dir: str | Path, objects: dict):
        self.path = Path(run_dir) / "checkpoint.pt"
        self.objects = objects

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        """Restore every object and the torch RNG; returns the run state."""
        ckpt = torch.load(self.path, weights_only=True)
        for name, obj in self.objects.items():
            obj.load_state_dict(ckpt[name])
        torch.set_rng_state(ckpt["rng"])
        state = json.loads(ckpt["state"])
        log.info("resumed from %s at step %d", self.path, state["step"])
        return state

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = {name: obj.state_dict() for name, obj in self.objects.items()}
        torch.save({**payload, "state": json.dumps(state), "rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, self.path)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def run(state: dict, *, steps: int, minutes: float, pool: Pool, train_step: Callable[[tuple, int], float],
        eval_every: int, on_eval: Callable[[dict], None] | None = None, checkpoint: Checkpoint | None = None,
        export: Callable[[dict], None] | None = None, export_every: int = 0) -> dict:
    """Train until ``state["step"]`` reaches ``steps`` or the wall budget ends.

    ``train_step(batch, step)`` does one optimiser step (and the EMA update) and returns
    the loss; ``state["loss"]`` keeps its running average (0.98). Every ``eval_every``
    steps: ``on_eval(state)``, then a checkpoint; every ``export_every`` steps,
    ``export(state)``. The budget, ``minutes`` (0: none), counts wall seconds since
    ``state["phase_start_seconds"]`` (0 for a run from scratch, so resumes share one
    budget). The final checkpoint is written on exit; the trainer does its own last
    evaluation and export. Returns ``state``.
    """
    start = time.time() - state["seconds"]
    while state["step"] < steps:
        if minutes and time.time() - start - state.get("phase_start_seconds", 0.0) > minutes * 60:
            log.info("time budget reached")
            break
        loss = train_step(pool.next(), state["step"])
        state["step"] += 1
        state["loss"] = loss if "loss" not in state else 0.98 * state["loss"] + 0.02 * loss
        state["seconds"] = time.time() - start
        if state["step"] % eval_every == 0:
            if on_eval is not None:
                on_eval(state)
            if checkpoint is not None:
                checkpoint.save(state)
        if export is not None and export_every and state["step"] % export_every == 0:
            export(state)
    if checkpoint is not None:
        checkpoint.save(state)
    return state


def phase_seconds(state: dict) -> float:
    """Wall seconds of the current training phase (since ``phase_start_seconds``)."""
    return state["seconds"] - state.get("phase_start_seconds", 0.0)
