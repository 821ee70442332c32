"""Storage through fsspec: every input and output is a URI (local path, file://, s3://, gs://…).

Outputs are written atomically so a reader never sees a partial object:

* local files: write to a temporary name in the same directory, then ``os.replace``;
* object stores (s3, gs, …): one ``pipe`` of the complete bytes — the object appears only
  when the upload commits, never partially.

Remote models and indexes are fetched to a local cache (``fetch_to_local``) before the
libraries that need file paths (diffusers, faiss, open_clip) load them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from restore_core.errors import InputError

DEFAULT_CACHE = os.environ.get("ADIR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "adir"))


def filesystem(uri: str):
    """(fs, path) for ``uri``; an unknown scheme is an ``InputError``."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    if scheme not in fsspec.available_protocols():
        raise InputError(f"unknown URI scheme {scheme!r} in {uri!r}; accepted: file, s3, gs, gcs, "
                         "az, http(s), memory and the other fsspec protocols")
    try:
        return url_to_fs(uri)
    except ImportError as exc:
        raise InputError(f"URI scheme {scheme!r} needs an extra package: {exc}") from None


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if is_local(uri):
        os.makedirs(path, exist_ok=True)
    else:
        fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    """Whole object as bytes; a missing object is an ``InputError`` naming the URI."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError(f"not found: {uri}") from None
    except IsADirectoryError:
        raise InputError(f"is a directory, not a file: {uri}") from None


def atomic_write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see either nothing or the whole object."""
    fs, path = filesystem(uri)
    if is_local(uri):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def listdir(uri: str, suffix: str | None = None) -> list[str]:
    """Full URIs of the files directly under ``uri`` (empty if it does not exist)."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    names = [p for p in fs.ls(path, detail=False) if not os.path.basename(p).startswith(".tmp-")]
    if suffix:
        names = [p for p in names if p.endswith(suffix)]
    prefix = uri.split("://", 1)[0] + "://" if "://" in uri and not uri.startswith("file://") else ""
    return sorted(n if n.startswith(prefix) else prefix + n for n in names)


def fetch_to_local(uri: str, cache_dir: str | None = None) -> str:
    """A local path for ``uri``: local paths are returned as they are; a remote file or
    folder is copied once into ``cache_dir`` (keyed by a hash of the URI), atomically via
    a temporary folder and a rename."""
    if is_local(uri):
        return local_path(uri)
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise InputError(f"not found: {uri}")
    cache = Path(cache_dir or DEFAULT_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache / f"{key}-{os.path.basename(path.rstrip('/'))}"
    if target.exists():
        return str(target)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        dest = tmp / "item"
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(dest), recursive=True)
        else:
            fs.get(path, str(dest))
        os.replace(dest, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
