"""Content-addressed file store: the name of a file is the sha256 of its bytes."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import tempfile
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
                out.flush()
                os.fsync(out.fileno())
            target = self.path_for(sha)
            try:
                target.parent.mkdir()
                _fsync_directory(self.root)  # the new subdirectory's own entry
            except FileExistsError:
                pass
            os.replace(tmp, target)
            _fsync_directory(target.parent)
            return sha, size
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
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


def detect_content_type(path: Path, *, filename: str, declared: str | None) -> str:
    """What the bytes are, not what the sender said: a known signature wins (a file named
    .pdf that is an executable is stored as one); otherwise the file name's extension,
    then plain text when the start decodes as UTF-8, then the declared type."""
    with path.open("rb") as f:
        head = f.read(8192)
    kind = filetype.guess(head)
    if kind is not None:
        return kind.mime
    guessed, _ = mimetypes.guess_type(filename)
    if guessed:
        return guessed
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "text/plain"
        except UnicodeDecodeError:
            pass
    return declared or "application/octet-stream"
