"""Ray start-up for every ``adir`` command, the environment its workers get, and a quiet console.

``init_ray(address)`` connects to a cluster (``address``) or reuses / starts a local Ray,
forwarding the environment that decides where data and models live (``forwarded_env``):
Ray workers are started by the raylet and do not see changes the driver made to its own
environment (a test's moto endpoint, a user's ``AWS_PROFILE`` exported after the raylet
started).

``quiet_library_noise()`` silences, at its source, library messages that look like errors
to a user but are not: bitsandbytes (imported by peft when LoRA is attached) logs "Failed
to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'" from its
CPU backend in every process that imports it; we never use its 4-bit kernels. The ``adir``
entry point (``jobs.cli``) and every Ray actor call it first thing.
"""

from __future__ import annotations

import logging
import os

#: Environment forwarded to the workers (storage endpoints and credentials, hub/cache
#: settings, this project's own switches).
FORWARDED_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "AZURE_", "HF_", "TRANSFORMERS_", "ADIR_", "TORCH_HOME")

#: Loggers whose warnings are noise for our use of the library (see the module docstring).
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def forwarded_env() -> dict[str, str]:
    """The variables of this process's environment the Ray workers must see."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def quiet_library_noise() -> None:
    """Keep only errors from the loggers in ``QUIET_LOGGERS`` (idempotent, cheap)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def init_ray(address: str | None = None):
    """Connect to ``address`` or reuse/start a local Ray; returns (ray, started_here).

    The caller shuts Ray down only when ``started_here`` (a Ray someone else started, a
    test's cluster or the demo's, stays up).
    """
    import ray

    quiet_library_noise()
    if ray.is_initialized():
        return ray, False
    ray.init(address=address, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": forwarded_env()})
    return ray, True
