"""The content store's durability: what it answers is on disk (fsync of the file before
its rename, of the directory after), alone or many files at once, and refused bytes leave
nothing behind."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import time

import pytest

from infra.content_store import ContentStore, Refused, Staged, detect_content_type


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
    assert disk_log[:2] == [("fsync file", file_ino), ("rename", file_ino)]
    # the new subdirectory's entry in the root, and the file's in the subdirectory (at once)
    assert sorted(disk_log[2:]) == sorted([("fsync dir", root_ino), ("fsync dir", dir_ino)])


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


def _staged_many(store: ContentStore, contents: list[bytes]) -> list[Staged]:
    return [store.stage(io.BytesIO(content), max_bytes=1000) for content in contents]


def test_many_files_commit_with_each_sync_in_its_place(tmp_path, disk_log):
    store = ContentStore(tmp_path / "store")
    store.put(io.BytesIO(b"already there"), max_bytes=1000)  # its directory exists before the batch
    contents = [f"contract {i}".encode() for i in range(40)] + [b"contract 0"]  # the same bytes twice
    staged = _staged_many(store, contents)
    disk_log.clear()
    store.commit(staged)

    for content in contents:
        assert store.path_for(hashlib.sha256(content).hexdigest()).read_bytes() == content
    assert not [p for p in store.root.iterdir() if p.name.startswith(".upload-")]
    renames = [i for i, (what, _) in enumerate(disk_log) if what == "rename"]
    synced = {ino: i for i, (what, ino) in enumerate(disk_log) if what == "fsync file"}
    renamed = {ino: i for i, (what, ino) in enumerate(disk_log) if what == "rename"}
    assert renamed.keys() <= synced.keys() and all(synced[ino] < renamed[ino] for ino in renamed)
    directories = {store.path_for(hashlib.sha256(c).hexdigest()).parent for c in contents} | {store.root}
    dir_syncs = [(i, ino) for i, (what, ino) in enumerate(disk_log) if what == "fsync dir"]
    # each directory once (the root for its new subdirectories' entries), after every rename
    assert sorted(ino for _, ino in dir_syncs) == sorted(d.stat().st_ino for d in directories)
    assert min(i for i, _ in dir_syncs) > max(renames)


def test_a_commits_syncs_run_at_once(tmp_path, monkeypatch):
    """The first two file syncs wait for each other: one after the other they never meet."""
    store = ContentStore(tmp_path / "store")
    staged = _staged_many(store, [f"contract {i}".encode() for i in range(10)])
    meet, calls, lock = threading.Barrier(2, timeout=5), [], threading.Lock()
    real_fsync = os.fsync

    def fsync(fd):
        with lock:
            calls.append(fd)
            first_two = len(calls) <= 2
        if first_two:
            meet.wait()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.commit(staged)
    assert all(store.path_for(s.sha256).exists() for s in staged)


def test_a_failed_sync_leaves_nothing_visible_and_nothing_behind(tmp_path, monkeypatch):
    """And the commit raises only once every sync it started has ended."""
    store = ContentStore(tmp_path / "store")
    staged = _staged_many(store, [f"contract {i}".encode() for i in range(10)])
    failing, slow = staged[0].path.stat().st_ino, staged[9].path.stat().st_ino
    slow_ended = threading.Event()
    real_fsync = os.fsync

    def fsync(fd):
        ino = os.fstat(fd).st_ino
        if ino == failing:
            raise OSError(5, "Input/output error")
        if ino == slow:
            time.sleep(0.2)
            slow_ended.set()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        store.commit(staged)
    assert slow_ended.is_set()
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("content, filename, declared, expected", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "contract.txt", "text/plain", "application/pdf"),  # the bytes win
    (b"\x00\x01binary", "scan.docx", None,
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("Договор поставки\n".encode(), "contract", "application/octet-stream", "text/plain"),
    ("Договор поставки\n".encode("cp1251"), "contract", "application/x-custom", "application/x-custom"),
    (b"\x00\x01binary", "contract", None, "application/octet-stream"),
])
def test_the_content_type_comes_from_the_bytes_then_the_name_then_the_text(tmp_path, content, filename, declared,
                                                                          expected):
    path = tmp_path / "blob"
    path.write_bytes(content)
    assert detect_content_type(path, filename=filename, declared=declared) == expected


def test_a_long_utf8_text_whose_probe_ends_inside_a_character_is_text(tmp_path):
    data = ("№" + "Я" * 5000).encode()  # three bytes, then two each: byte 8,192 is half a letter
    path = tmp_path / "memo"
    path.write_bytes(data)
    assert detect_content_type(path, filename="memo", declared=None) == "text/plain"
    path.write_bytes(data[:8192])  # a file that does end inside a character is no text
    assert detect_content_type(path, filename="memo", declared=None) == "application/octet-stream"
