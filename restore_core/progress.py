"""Progress inside a row: which stage it is in and how far (adapting 12/40, sampling 60/100).

The loops of ``restore_core`` call ``report(stage, step, total)``, ``step`` being the units
done so far (0 when the stage starts, ``total`` when it ends). Outside a tracked row that
is a no-op, so tests, benches and notebooks run the loops unchanged. The job layer wraps a
row in ``tracking(RowProgress(...))``: a context variable points the row's code at its
``RowProgress``, and another thread (the restore actor answering the driver while the row
runs) reads that object with ``snapshot()``, a copy taken under its lock.

Stages and their units (``STAGES``):

* ``adapting``: Adam iterations of the image-adaptive LoRA (``adaptation.adapt_lora``,
  ``latent_adaptation.train_adapter``);
* ``sampling``: sampler steps (Algorithm 1's steps, the deepinv peers' denoiser calls,
  the Stable Diffusion pipelines' steps); with ``cfg.samples`` = n draws, ``repeat(n)``
  maps draw k's step j of M to k·M + j of n·M, so the stage counts samples × steps;
* ``fitting``: Adam iterations on SHRED's / DIIP's initial noise (each a whole DDIM).

A stage's ``seconds`` run from its step-0 report to its latest one, so ``seconds / step``
is the row's own rate for that stage (the driver's ETA, ``jobs.restore.pool.Progress``).

``RowProgress.adapter_uri`` is where the row's adapter is saved once adapted and loaded
from on a rerun (``adaptation.adapt_or_resume``; None: no saving); ``adapter`` says which
happened ("saved" | "resumed"). Imports only the standard library.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator

STAGES = ("adapting", "sampling", "fitting")

_CURRENT: contextvars.ContextVar[RowProgress | None] = contextvars.ContextVar("adir_row_progress", default=None)


class RowProgress:
    """The live progress of one row; updated by its loops, read from any thread."""

    def __init__(self, image_id: str, adapter_uri: str | None = None):
        self.image_id, self.adapter_uri = image_id, adapter_uri
        self.adapter: str | None = None  # "saved" | "resumed", by adaptation.adapt_or_resume
        self._stage: str | None = None
        self._stages: dict[str, list] = {}  # stage -> [step, total, first report, latest report]
        self._draw = (0, 1)  # (k, n) inside repeat(n)
        self._lock = threading.Lock()

    def update(self, stage: str, step: int, total: int) -> None:
        k, n = self._draw
        step, total, now = k * total + step, n * total, time.perf_counter()
        with self._lock:
            entry = self._stages.setdefault(stage, [0, total, now, now])
            entry[0], entry[1], entry[3] = step, total, now
            self._stage = stage

    def snapshot(self) -> dict:
        """``{"image_id", "stage", "adapter", "stages": {stage: {"step", "total", "seconds"}}}``."""
        with self._lock:
            return {"image_id": self.image_id, "stage": self._stage, "adapter": self.adapter,
                    "stages": {s: {"step": e[0], "total": e[1], "seconds": e[3] - e[2]}
                               for s, e in self._stages.items()}}


def current() -> RowProgress | None:
    """The tracked row of the calling code, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def tracking(row: RowProgress) -> Iterator[RowProgress]:
    """Make ``row`` the target of ``report`` for the code inside."""
    token = _CURRENT.set(row)
    try:
        yield row
    finally:
        _CURRENT.reset(token)


def report(stage: str, step: int, total: int) -> None:
    """``step`` of ``total`` units of ``stage`` done (module docstring); no-op outside a row."""
    row = _CURRENT.get()
    if row is not None:
        row.update(stage, step, total)


def repeat(n: int) -> Iterator[int]:
    """``range(n)`` over repeated draws whose steps report as one stage of n × their steps."""
    row = _CURRENT.get()
    try:
        for k in range(n):
            if row is not None:
                row._draw = (k, n)
            yield k
    finally:
        if row is not None:
            row._draw = (0, 1)
