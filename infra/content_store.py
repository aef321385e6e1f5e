"""Content-addressed file store: the name of a file is the sha256 of its bytes."""

from __future__ import annotations

import codecs
import hashlib
import mimetypes
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import filetype

CHUNK = 1024 * 1024


class FileTooLarge(Exception):
    pass


class Refused(Exception):
    """Received bytes that are not kept: an empty file, or not the declared hash."""


class CorruptContent(Exception):
    """The stored bytes no longer hash to their name."""


class ContentStore:
    def __init__(self, root: Path):
        self.root = root

    def verified_path(self, sha256: str) -> Path:
        """The file, after checking its bytes still hash to sha256 (read before serving)."""
        path = self.path_for(sha256)
        if not path.exists():
            raise FileNotFoundError(f"content {sha256} is missing from the store")
        actual = sha256_of_file(path)
        if actual != sha256:
            raise CorruptContent(f"stored content {sha256} now hashes to {actual}")
        return path

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 digest")
        return self.root / sha256[:2] / sha256

    def put(self, stream: BinaryIO, *, max_bytes: int, expected_sha256: str | None = None,
            allow_empty: bool = True) -> tuple[str, int]:
        """Streams to a temporary file, hashing as it goes; the name is the digest, so
        the same bytes are stored once and a half-written file is never visible. Bytes
        that are refused (over the limit, empty, another hash than declared) never
        reach the store. Durable when it returns: the bytes are flushed to disk before the
        rename and the rename before the return (fsync of the file, then of its
        directory), so a row committed afterwards never names a file that a power loss
        could leave empty or missing (ext4's delayed allocation does exactly that to a
        new file renamed into place without an fsync)."""
        staged = self.stage(stream, max_bytes=max_bytes, expected_sha256=expected_sha256, allow_empty=allow_empty)
        self.commit([staged])
        return staged.sha256, staged.size

    def stage(self, stream: BinaryIO, *, max_bytes: int, expected_sha256: str | None = None,
              allow_empty: bool = True) -> Staged:
        """The first half of `put`: the bytes in a temporary file of the store, hashed and
        checked, neither synced nor visible. Raises FileTooLarge or Refused (leaving
        nothing behind). `commit` makes it durable and visible; `discard` drops it."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLarge(f"file exceeds {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            if size == 0 and not allow_empty:
                raise Refused("the file is empty")
            if expected_sha256 and expected_sha256 != sha:
                raise Refused(f"declared sha256 {expected_sha256} does not match the received content ({sha})")
            return Staged(Path(tmp), sha, size)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def commit(self, staged: list[Staged]) -> None:
        """Staged files made durable and visible under their digests, as `put` does for
        one: every file's bytes synced before its rename, every directory a rename
        touched synced after it, before this returns. Several files' syncs run at once
        (`_SYNCS` threads), so the disk's journal commits them together instead of one
        flush per file and per directory in a row (bench/RESULTS.md, 2026-12-06)."""
        if not staged:
            return
        try:
            _fsync_all([s.path for s in staged])
            touched: set[Path] = set()
            for s in staged:
                target = self.path_for(s.sha256)
                try:
                    target.parent.mkdir()
                    touched.add(self.root)  # the new subdirectory's own entry
                except FileExistsError:
                    pass
                os.replace(s.path, target)
                touched.add(target.parent)
            _fsync_all(sorted(touched), os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            self.discard(staged)
            raise

    @staticmethod
    def discard(staged: list[Staged]) -> None:
        for s in staged:
            s.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Staged:
    path: Path  # the temporary file, inside the store's root
    sha256: str
    size: int


# Syncs of one commit run on these threads; one sync alone runs on the caller's.
_SYNCS = 8
_sync_pool = ThreadPoolExecutor(max_workers=_SYNCS, thread_name_prefix="content-sync")


def _fsync_all(paths: list[Path], flags: int = os.O_RDONLY) -> None:
    """fsync of every path (opened with `flags`), at once; raises the first failure after
    all have ended (so none is still running when the caller cleans up)."""
    if len(paths) == 1:
        _fsync(paths[0], flags)
        return
    running = [_sync_pool.submit(_fsync, path, flags) for path in paths]
    wait(running)
    for done in running:
        done.result()


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


TYPE_PROBE_BYTES = 8192


def detect_content_type(path: Path, *, filename: str, declared: str | None) -> str:
    """What the bytes are, not what the sender said: a known signature wins (a file named
    .pdf that is an executable is stored as one); otherwise the file name's extension,
    then plain text when the start decodes as UTF-8, then the declared type."""
    with path.open("rb") as f:
        head = f.read(TYPE_PROBE_BYTES)
        whole = not f.read(1)
    kind = filetype.guess(head)
    if kind is not None:
        return kind.mime
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    if head and b"\x00" not in head:
        try:  # incrementally: the 8 KiB read may end inside a multi-byte character
            codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
            return "text/plain"
        except UnicodeDecodeError:
            pass
    return declared or "application/octet-stream"
