"""Storage through fsspec: every input and output is a URI (local path, file://, s3://, gs://…).

Owns URI parsing, whole-object reads, atomic writes and the local cache of remote model and
index folders. Imports only fsspec and ``restore_core.errors``.

Outputs are written atomically, so a reader (or a resumed job) never sees a partial file:

* local files: the bytes go to a temporary name in the destination directory, are flushed
  to disk, and ``os.replace`` renames them onto the final name (atomic on POSIX within one
  file system);
* object stores (s3, gs, az, memory…): one ``pipe_file`` of the complete bytes to the final
  key; an object becomes visible only when its single upload commits, never partially.

Remote models and indexes are fetched to a local cache (:func:`fetch_to_local`) before the
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
TMP_PREFIX = ".tmp-"  # temporary files of atomic writes; listdir hides them


def _schemes(uri: str) -> list[str]:
    """Protocols named by ``uri`` ("simplecache::s3://b/k" names two); none means local."""
    if "://" not in uri:
        return ["file"]
    return [part.split("://", 1)[0] for part in uri.split("::") if part]


def filesystem(uri: str):
    """(fs, path) for ``uri``; an unknown scheme or a missing driver is an ``InputError``."""
    if not isinstance(uri, (str, os.PathLike)) or not str(uri):
        raise InputError(f"expected a path or URI string, got {uri!r}")
    uri = str(uri)
    known = fsspec.available_protocols()
    for scheme in _schemes(uri):
        if scheme not in known:
            raise InputError(f"unknown URI scheme {scheme!r} in {uri!r}; accepted: {', '.join(sorted(known))}")
    try:
        return url_to_fs(uri)
    except ImportError as exc:
        raise InputError(f"URI {uri!r} needs a driver that is not installed: {exc}") from None


def is_local(uri: str) -> bool:
    """True for plain paths and file:// URIs."""
    uri = str(uri)
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The file-system path of a local path or file:// URI."""
    uri = str(uri)
    return uri.removeprefix("file://")


def to_local_path_if_file(uri: str) -> str | None:
    """The local path for a plain path or file:// URI, None for a remote URI."""
    return local_path(uri) if is_local(uri) else None


def join(uri: str, *parts: str) -> str:
    """Append path parts with '/' (``join("s3://b/out", "gt", "x.png")``)."""
    out = str(uri)
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = out + part if out.endswith("/") else f"{out}/{part}"
    return out


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    """Create a folder (and parents); object stores have no folders, so little happens there."""
    fs, path = filesystem(uri)
    fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    """The whole object as bytes; missing objects and folders are ``InputError``s naming the URI."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputError(f"not found: {uri}") from None
    except IsADirectoryError:
        raise InputError(f"is a directory, not a file: {uri}") from None
    except PermissionError:
        raise InputError(f"permission denied reading {uri}") from None


def atomic_write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see either the old state or the whole new
    object, never a partial one (module docstring)."""
    fs, path = filesystem(uri)
    if not is_local(uri):
        fs.pipe_file(path, data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def listdir(uri: str, suffix: str | None = None) -> list[str]:
    """Sorted URIs of the *files* directly under ``uri`` whose names end with ``suffix``
    (empty if the folder does not exist; temporary files of atomic writes are hidden).
    Symbolic links to files count as files (fsspec lists them as type "other"); a link
    whose target is missing is an ``InputError`` rather than a shard silently left out.
    Remote results keep the scheme (``s3://b/k``); local ones are plain paths."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)  # s3fs caches listings per process; results change under us
    if not fs.exists(path):
        return []
    names = []
    for e in fs.ls(path, detail=True):
        if os.path.basename(e["name"].rstrip("/")).startswith(TMP_PREFIX):
            continue
        if e.get("islink") and not os.path.exists(e["name"]):
            raise InputError(f"broken symbolic link {e['name']} -> {e.get('destination')}")
        if e.get("type") == "file" or (e.get("islink") and os.path.isfile(e["name"])):
            names.append(e["name"])
    if suffix:
        names = [n for n in names if n.endswith(suffix)]
    if is_local(uri):
        return sorted(names)
    return sorted(n if "://" in n else fs.unstrip_protocol(n) for n in names)


def fetch_to_local(uri: str, cache_dir: str | None = None) -> str:
    """A local path for ``uri``. Local paths and file:// URIs are returned as they are; a
    remote file or folder is copied once into ``cache_dir`` (default ``$ADIR_CACHE`` or
    ~/.cache/adir) under a name keyed by a hash of the URI. The copy lands in a temporary
    folder first and is renamed into place, so a cache entry that exists is complete and
    later calls reuse it; two processes racing keep the first complete copy."""
    if is_local(uri):
        return local_path(uri)
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise InputError(f"not found: {uri}")
    cache = Path(cache_dir or DEFAULT_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(uri).encode()).hexdigest()[:16]
    target = cache / f"{key}-{os.path.basename(path.rstrip('/')) or 'root'}"
    if target.exists():
        return str(target)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        dest = tmp / "item"
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(dest) + "/", recursive=True)
        else:
            fs.get(path, str(dest))
        try:
            os.replace(dest, target)
        except OSError:
            if not target.exists():  # a racing process that finished first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
