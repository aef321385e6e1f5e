"""The content store's durability: what it answers is on disk (fsync of the file before
its rename, of the directory after), and refused bytes leave nothing behind."""

from __future__ import annotations

import hashlib
import io
import os
import stat

import pytest

from infra.content_store import ContentStore, Refused


@pytest.fixture
def disk_log(monkeypatch):
    """Every fsync (of a file or of a directory, and which) and every rename, in order."""
    log = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        log.append(("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        log.append(("rename", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def test_put_syncs_the_bytes_before_the_rename_and_the_directory_after(tmp_path, disk_log):
    store = ContentStore(tmp_path / "store")
    content = b"signed contract"
    sha, size = store.put(io.BytesIO(content), max_bytes=1000)

    path = store.path_for(sha)
    assert (sha, size, path.read_bytes()) == (hashlib.sha256(content).hexdigest(), len(content), content)
    file_ino, dir_ino, root_ino = path.stat().st_ino, path.parent.stat().st_ino, store.root.stat().st_ino
    assert disk_log == [("fsync file", file_ino), ("fsync dir", root_ino), ("rename", file_ino),
                        ("fsync dir", dir_ino)]


def test_a_second_file_in_an_existing_directory_syncs_only_that_directory(tmp_path, disk_log):
    store = ContentStore(tmp_path / "store")
    first, _ = store.put(io.BytesIO(b"first"), max_bytes=1000)
    # another content whose digest shares the first one's two-character directory
    second = next(c for i in range(10_000) if hashlib.sha256(c := f"other {i}".encode()).hexdigest()[:2] == first[:2])
    disk_log.clear()
    sha, _ = store.put(io.BytesIO(second), max_bytes=1000)

    path = store.path_for(sha)
    assert path.parent == store.path_for(first).parent
    assert disk_log == [("fsync file", path.stat().st_ino), ("rename", path.stat().st_ino),
                        ("fsync dir", path.parent.stat().st_ino)]


def test_refused_bytes_are_neither_synced_nor_renamed_nor_left_behind(tmp_path, disk_log):
    store = ContentStore(tmp_path / "store")
    with pytest.raises(Refused):
        store.put(io.BytesIO(b"tampered"), max_bytes=1000, expected_sha256="0" * 64)
    with pytest.raises(Refused):
        store.put(io.BytesIO(b""), max_bytes=1000, allow_empty=False)
    assert disk_log == []  # neither synced nor renamed
    assert list(store.root.iterdir()) == []
