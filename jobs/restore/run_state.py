"""What a restore run *is* (its settings, fingerprinted in ``job.json``) and who runs it (the lease).

**Settings.** ``run_settings(job)`` lists everything outside a row's own manifest columns
that decides its result: every ``RestoreConfig`` key, the device, and the identity of the
prior, the index and the embedder (``artifact_identity``: a content digest of a folder, the
spec itself for a hub id). ``job.json`` records them; a rerun into the same output with
other settings is refused before any work (``SettingsChanged``, exit 2, naming each key
that differs) unless ``--overwrite`` redoes every row. Workers, CPUs and GPUs are not
settings: outputs do not depend on them. ``row_key(row, settings)`` digests a row's own
columns with the settings; a result record carries it, so a row whose manifest entry
changed (same id, another task or method) is redone, never reused. ``row_keys`` computes
the same keys for a whole manifest table at once.

**Lease.** One driver per output: ``Lease`` is the object ``<output>/lease.json`` (owner,
host, pid, heartbeat, expiry), written atomically through ``restore_core.storage`` so it
works on object stores as on local disks. A driver takes it when it is absent, released or
expired, then reads it back after a short settle time: of two drivers that raced, only the
one whose owner id is in the object goes on (object stores have no compare-and-swap that
fsspec exposes everywhere; the read-back closes the window to the settle time). A thread
renews the heartbeat every ``ttl/3`` seconds; a driver that died leaves a lease that
expires after ``ttl`` seconds and the next driver takes it over, saying so.

Imports no Ray and no torch (pyarrow for ``row_keys``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc

from restore_core import storage
from restore_core.errors import AdirError, ConfigError

LEASE_NAME = "lease.json"
JOB_NAME = "job.json"
ROW_KEY_COLUMNS = ("input_uri", "task", "gt_uri", "degrade", "noise_sigma", "method", "seed", "k", "steps",
                   "prompt", "mask_uri")
FULL_HASH_BYTES = 64 << 20  # files up to this size are hashed whole; larger ones by size, head and tail
_EDGE = 1 << 20
_ACTIVE: set[str] = set()  # owners of the leases this process holds now


class SettingsChanged(ConfigError):
    """A rerun into an output made with other settings."""


class LeaseHeld(AdirError):
    """Another live driver holds the output's lease."""


def _file_digest(fs, path: str, size: int, h) -> None:
    with fs.open(path, "rb") as fh:
        if size <= FULL_HASH_BYTES:
            h.update(fh.read())
        else:
            h.update(fh.read(_EDGE))
            fh.seek(size - _EDGE)
            h.update(fh.read(_EDGE))


def artifact_identity(spec: str | None) -> str | None:
    """A model or index identity: ``sha256:<digest>`` of a folder's (or file's) relative
    names, sizes and contents, or ``spec`` itself when it names no file (a hub id)."""
    if spec is None:
        return None
    try:
        fs, path = storage.filesystem(spec)
        if not fs.exists(path):
            return spec
        entries = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    except AdirError:
        return spec
    h = hashlib.sha256()
    for name in sorted(entries):
        rel = os.path.relpath(name, path) if name != path else os.path.basename(name)
        if os.path.basename(rel).startswith(storage.TMP_PREFIX):
            continue
        size = int(entries[name].get("size") or 0)
        h.update(f"{rel}\0{size}\0".encode())
        _file_digest(fs, name, size, h)
    return "sha256:" + h.hexdigest()[:32]


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def run_settings(job) -> dict:
    """The flat settings that decide every row's result (module docstring)."""
    from restore_core.models.pixel_unet import DEFAULT_PRIOR_DIR

    settings = {f"restore.{k}": v for k, v in _flat(job.restore.to_dict()).items()}
    settings.update({"model": artifact_identity(job.model or str(DEFAULT_PRIOR_DIR)),
                     "index": artifact_identity(job.index), "embedder": json.dumps(job.embedder, sort_keys=True),
                     "device": job.torch_device})
    return settings


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def row_key(row: dict, settings_digest: str) -> str:
    """Digest of a row's own columns and the run's settings: its record is reusable only
    by a row with the same key."""
    text = "\x1f".join([settings_digest] + [repr(row.get(c)) for c in ROW_KEY_COLUMNS])
    return hashlib.sha1(text.encode()).hexdigest()[:24]


_PLAIN_TEXT = r"^[ !#-\[\]-~]*$"  # printable ASCII without ' and \: repr(s) is s in single quotes


def _reprs(column: pa.ChunkedArray) -> pa.Array:
    """``repr`` of every value: integers and plain text in Arrow, other text one by one,
    the rest once per distinct value."""
    arr = column.combine_chunks()
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.string()).fill_null("None")
    if pa.types.is_string(arr.type):
        quoted = pc.binary_join_element_wise("'", arr, "'", "")
        other = pc.and_(arr.is_valid(), pc.invert(pc.match_substring_regex(arr, _PLAIN_TEXT)))
        if pc.any(other).as_py():
            quoted = pc.replace_with_mask(quoted, other, pa.array([repr(v) for v in arr.filter(other).to_pylist()],
                                                                  pa.string()))
        return quoted.fill_null("None")
    encoded = pc.dictionary_encode(arr, null_encoding="encode")
    return pa.array([repr(v) for v in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)


def row_keys(table: pa.Table, settings_digest: str, chunk_rows: int = 65536) -> pa.Array:
    """``row_key`` of every row of a manifest table (``jobs.restore.manifest.Manifest.table``),
    equal to it row by row: ``chunk_rows`` rows at a time, the texts are joined column-wise
    in Arrow, then hashed in a tight loop."""
    sha1 = hashlib.sha1
    keys = [pa.array([], pa.string())]
    for start in range(0, len(table), chunk_rows):
        chunk = table.slice(start, chunk_rows)
        texts = pc.binary_join_element_wise(settings_digest, *[_reprs(chunk.column(c)) for c in ROW_KEY_COLUMNS],
                                            "\x1f").cast(pa.binary())  # UTF-8 bytes, as ``row_key`` hashes
        keys.append(pa.array([sha1(t).hexdigest()[:24] for t in texts.to_pylist()], pa.string()))
    return pa.concat_arrays(keys)


def read_job_json(output: str) -> dict | None:
    uri = storage.join(output, JOB_NAME)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError:
        return None


def check_settings(output: str, settings: dict) -> None:
    """``SettingsChanged`` naming each differing key when ``output`` was made with other
    settings; outputs of an older version (no ``settings`` in job.json) are accepted."""
    previous = (read_job_json(output) or {}).get("settings")
    if previous is None:
        return
    differ = [k for k in sorted(set(previous) | set(settings)) if previous.get(k) != settings.get(k)]
    if differ:
        shown = "; ".join(f"{k.removeprefix('restore.')}: {previous.get(k)!r} -> {settings.get(k)!r}"
                          for k in differ[:5])
        more = f" (and {len(differ) - 5} more)" if len(differ) > 5 else ""
        raise SettingsChanged(f"{output} was made with other settings ({shown}{more}); pass --overwrite to "
                              "redo every row with the new ones, or choose a new --output")


class Lease:
    """The one-driver-per-output lease (module docstring)."""

    def __init__(self, output: str, ttl_s: float = 60.0, settle_s: float = 0.5):
        self.uri = storage.join(output, LEASE_NAME)
        self.ttl_s, self.settle_s = ttl_s, settle_s
        self.owner = uuid.uuid4().hex
        self.info = {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict | None = None

    def read(self) -> dict | None:
        if not storage.exists(self.uri):
            return None
        try:
            return json.loads(storage.read_bytes(self.uri))
        except ValueError:  # a torn local write cannot happen (atomic); treat junk as no lease
            return None

    def _write(self) -> None:
        now = time.time()
        body = {**self.info, "heartbeat": now, "expires": now + self.ttl_s, "ttl_s": self.ttl_s}
        storage.atomic_write_bytes(self.uri, json.dumps(body).encode())

    def _orphan(self, held: dict) -> bool:
        """A lease of this very process that no live ``Lease`` holds (its release failed)."""
        return (held.get("host"), held.get("pid")) == (self.info["host"], self.info["pid"]) \
            and held.get("owner") not in _ACTIVE

    @staticmethod
    def describe(held: dict) -> str:
        age = time.time() - float(held.get("heartbeat", 0))
        return f"{held.get('host')} pid {held.get('pid')} (heartbeat {age:.0f}s ago)"

    def acquire(self, wait: bool = False, poll_s: float = 2.0) -> None:
        """Take the lease; ``LeaseHeld`` if a live driver has it (or wait for it, ``wait``)."""
        while True:
            held = self.read()
            live = held is not None and float(held.get("expires", 0)) > time.time() and not self._orphan(held)
            if not live:
                if held is not None and held.get("owner") != self.owner:
                    self.took_over = held
                self._write()
                time.sleep(self.settle_s)
                held = self.read()
                if held is not None and held.get("owner") == self.owner:
                    break
            if not wait:
                raise LeaseHeld(f"another adir restore is writing {self.uri.rsplit('/', 1)[0]}: "
                                f"{self.describe(held)}; rerun with --wait to wait for it")
            time.sleep(poll_s)
        _ACTIVE.add(self.owner)
        self._thread = threading.Thread(target=self._beat, name="adir-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
            except Exception:
                pass

    def release(self) -> None:
        _ACTIVE.discard(self.owner)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self.read()
            if held is not None and held.get("owner") == self.owner:
                fs, path = storage.filesystem(self.uri)
                fs.rm(path)
        except Exception:
            pass
