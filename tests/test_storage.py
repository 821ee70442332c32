"""restore_core.storage on local paths, file:// URIs and fsspec's in-memory object store
(S3 itself is exercised by the jobs tests through moto)."""

from __future__ import annotations

import os
import stat
import uuid

import pytest

from restore_core import storage
from restore_core.errors import InputError


def test_atomic_write_read_exists_local_and_file_uri(tmp_path):
    target = str(tmp_path / "a" / "b" / "x.bin")
    storage.atomic_write_bytes(target, b"first")
    assert storage.read_bytes(target) == b"first"
    storage.atomic_write_bytes("file://" + target, b"second")  # replaces in one rename
    assert storage.read_bytes("file://" + target) == b"second"
    assert storage.exists(target) and storage.exists("file://" + target)
    assert not storage.exists(str(tmp_path / "missing"))
    assert os.listdir(tmp_path / "a" / "b") == ["x.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = str(tmp_path / "x.bin")
    storage.atomic_write_bytes(target, b"good")
    with pytest.raises(TypeError):
        storage.atomic_write_bytes(target, "not bytes")  # fails while writing the temporary
    assert storage.read_bytes(target) == b"good"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_listdir_join_makedirs(tmp_path):
    root = str(tmp_path / "out")
    storage.makedirs(storage.join(root, "sub"))
    for name in ("b.png", "a.png", "c.parquet"):
        storage.atomic_write_bytes(storage.join(root, name), b"1")
    (tmp_path / "out" / ".tmp-leftover").write_bytes(b"")
    assert storage.listdir(root) == [storage.join(root, n) for n in ("a.png", "b.png", "c.parquet")]
    assert storage.listdir("file://" + root, suffix=".png") == [storage.join(root, n) for n in ("a.png", "b.png")]
    assert storage.listdir(str(tmp_path / "nothing")) == []
    assert storage.join("s3://bucket/", "/out/", "gt", "x.png") == "s3://bucket/out/gt/x.png"
    assert storage.join("file:///", "tmp") == "file:///tmp"
    assert storage.to_local_path_if_file("file:///tmp/a") == "/tmp/a"
    assert storage.to_local_path_if_file("s3://b/a") is None


def test_listdir_follows_symlinked_files_and_refuses_broken_links(tmp_path):
    """Shards symlinked into a folder are listed like files (a link to a folder is not);
    a dangling link is an error naming it, not a shard silently left out."""
    real, links = tmp_path / "real", tmp_path / "links"
    real.mkdir()
    (real / "sub").mkdir()
    links.mkdir()
    for name in ("part-0.parquet", "part-1.parquet"):
        (real / name).write_bytes(b"1")
        (links / name).symlink_to(real / name)
    (links / "part-2.parquet").write_bytes(b"1")
    (links / "dir.parquet").symlink_to(real / "sub")
    assert storage.listdir(str(links), suffix=".parquet") == [
        str(links / n) for n in ("part-0.parquet", "part-1.parquet", "part-2.parquet")]
    (links / "part-3.parquet").symlink_to(real / "gone.parquet")
    with pytest.raises(InputError, match="broken symbolic link .*part-3.parquet"):
        storage.listdir(str(links))


def test_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError) as err:
        storage.read_bytes("xyz://bucket/key")
    assert "unknown URI scheme 'xyz' in 'xyz://bucket/key'; accepted: " in str(err.value)
    assert "s3" in str(err.value) and "file" in str(err.value)
    with pytest.raises(InputError, match="unknown URI scheme 'nope'"):
        storage.exists("simplecache::nope://a/b")
    with pytest.raises(InputError, match=r"not found: .*missing\.png"):
        storage.read_bytes(str(tmp_path / "missing.png"))
    with pytest.raises(InputError, match="not found: memory://"):
        storage.fetch_to_local(f"memory://{uuid.uuid4().hex}/none", str(tmp_path))


def test_remote_store_write_list_and_fetch_to_local(tmp_path):
    """fsspec's memory:// file system stands for an object store (same code path as s3)."""
    root = f"memory://{uuid.uuid4().hex}/model"
    storage.atomic_write_bytes(storage.join(root, "unet", "config.json"), b"{}")
    storage.atomic_write_bytes(storage.join(root, "unet", "w.safetensors"), b"weights")
    storage.atomic_write_bytes(storage.join(root, "scheduler", "scheduler_config.json"), b"{}")
    listed = storage.listdir(storage.join(root, "unet"))
    assert [u.rsplit("/", 1)[1] for u in listed] == ["config.json", "w.safetensors"]
    assert storage.read_bytes(listed[1]) == b"weights"  # listed URIs read back

    cache = str(tmp_path / "cache")
    local = storage.fetch_to_local(root, cache)
    with open(os.path.join(local, "unet", "w.safetensors"), "rb") as fh:
        assert fh.read() == b"weights"
    assert os.path.exists(os.path.join(local, "scheduler", "scheduler_config.json"))
    assert storage.fetch_to_local(root, cache) == local  # cached, not copied again
    assert [n for n in os.listdir(cache) if n.startswith(".")] == []  # temporary folder gone
    single = storage.fetch_to_local(storage.join(root, "unet", "config.json"), cache)
    with open(single, "rb") as fh:
        assert fh.read() == b"{}"
    assert storage.fetch_to_local("file://" + local) == local  # local URIs are returned as they are
