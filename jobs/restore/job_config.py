"""Job-level configuration of ``adir restore``: what runs where, around one ``RestoreConfig``.

Keys (YAML file given with ``--config``, or ``--set key=value``):

==================  =============================================================
model               diffusion prior spec (hub id, folder, fsspec URI); null = shipped
index               retrieval index URI (needed by methods that use neighbours)
embedder            embedder spec overriding the one recorded in the index; null = index's
workers             number of Ray actors (default 2)
gpus_per_worker     GPUs per actor (default 0; > 0 runs the model on CUDA)
cpus_per_worker     CPUs per actor; null = spread the cluster's CPUs over the workers
index_servers       0 = every actor loads the index; N > 0 = N shard actors hold a parts-layout
                    index and the restore actors query them (fan-out, exact top-K merge)
index_mmap          true = the actors of a node memory-map one node-local copy of the index
                    (``index_builder.node_copy``; written once per node under $ADIR_CACHE),
                    sharing it through the page cache; not with index_servers
device              auto (cuda when gpus_per_worker > 0) | cpu | cuda
preset              fast | paper | null: the base RestoreConfig before overrides
restore             a section of ``RestoreConfig`` keys (k, steps, adapt_iters, shred.iters…)
==================  =============================================================

Precedence, lowest first: preset, the file's ``restore`` section, ``--set`` overrides,
then the explicit CLI flags (``--workers``, ``--gpus-per-worker``, ``--preset``). A
``--set`` key that is not a job key is a restore key (``--set steps=5`` equals
``--set restore.steps=5``); ``--set`` strings are read by ``restore_core.config.parse_overrides``.
Unknown keys and bad values raise ``ConfigError``. The driver builds the config once and
sends the validated ``JobConfig`` itself to the workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from restore_core import storage
from restore_core.config import RestoreConfig, parse_overrides, preset_values
from restore_core.errors import ConfigError, InputError

DEVICES = ("auto", "cpu", "cuda")
JOB_KEYS = ("model", "index", "embedder", "workers", "gpus_per_worker", "cpus_per_worker", "index_servers",
            "index_mmap", "device", "preset")


@dataclass
class JobConfig:
    model: str | None = None
    index: str | None = None
    embedder: Any = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    index_servers: int = 0
    index_mmap: bool = False
    device: str = "auto"
    preset: str | None = None
    restore: RestoreConfig = field(default_factory=RestoreConfig)

    @property
    def torch_device(self) -> str:
        if self.device == "auto":
            return "cuda" if self.gpus_per_worker > 0 else "cpu"
        return self.device

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in JOB_KEYS}
        out["restore"] = self.restore.to_dict()
        return out

    def validate(self) -> None:
        for key, low in (("workers", 1), ("index_servers", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"bad value for {key}: {value!r}; must be an integer >= {low}")
        for key in ("gpus_per_worker", "cpus_per_worker"):
            value = getattr(self, key)
            if value is None and key == "cpus_per_worker":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                    or (key == "cpus_per_worker" and value == 0):
                raise ConfigError(f"bad value for {key}: {value!r}; must be a number "
                                  f"{'> 0' if key == 'cpus_per_worker' else '>= 0'}")
        if not isinstance(self.index_mmap, bool):
            raise ConfigError(f"bad value for index_mmap: {self.index_mmap!r}; must be true or false")
        if self.index_mmap and self.index_servers:
            raise ConfigError("index_mmap and index_servers are two ways to serve the index; set one of them")
        if self.index_mmap and not storage.is_local(storage.DEFAULT_CACHE):
            raise ConfigError(f"index_mmap maps a node-local copy of the index under $ADIR_CACHE, which must be a "
                              f"local folder; got {storage.DEFAULT_CACHE}")
        if self.device not in DEVICES:
            raise ConfigError(f"bad value for device: {self.device!r}; accepted: {', '.join(DEVICES)}")
        for key in ("model", "index"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"bad value for {key}: {value!r}; expected a path or URI")


def _coerce_job(key: str, value: Any) -> Any:
    if key in ("gpus_per_worker", "cpus_per_worker") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key in ("workers", "index_servers") and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_config_file(uri: str) -> dict[str, Any]:
    """The YAML mapping in ``uri``; unreadable or non-mapping files are ``ConfigError``."""
    try:
        text = storage.read_bytes(uri).decode()
    except InputError as exc:
        raise ConfigError(f"config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {uri} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {uri} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def build_job_config(file_data: dict[str, Any] | None = None, overrides: Iterable[str] = (),
                     **flags: Any) -> JobConfig:
    """Merge file data, ``--set`` overrides and CLI ``flags`` (None = not given) into a
    validated JobConfig: the one place the job's configuration is built."""
    data = dict(file_data or {})
    unknown = sorted(set(data) - set(JOB_KEYS) - {"restore"})
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(str, unknown))}; "
                          f"job keys: {', '.join(JOB_KEYS)}, plus a 'restore' section")
    restore_data = data.pop("restore", None) or {}
    if not isinstance(restore_data, dict):
        raise ConfigError("config key 'restore' must be a mapping of RestoreConfig keys")
    job_values = {k: _coerce_job(k, v) for k, v in data.items()}
    restore_overrides: dict[str, Any] = {}
    for key, value in parse_overrides(overrides).items():
        if key in JOB_KEYS:
            job_values[key] = _coerce_job(key, value)
        elif key == "restore" and isinstance(value, dict):
            restore_overrides.update(value)
        else:
            restore_overrides[key] = value
    for key, value in flags.items():
        if value is not None:
            job_values[key] = _coerce_job(key, value)
    preset = job_values.get("preset")
    base = preset_values(preset) if preset is not None else {}
    restore = RestoreConfig.from_dict({**base, **restore_data}).updated(restore_overrides)
    job = dataclasses.replace(JobConfig(), **job_values, restore=restore)
    job.validate()
    return job
