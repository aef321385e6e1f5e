"""Content-addressed file store: the name of a file is the sha256 of its bytes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


class FileTooLarge(Exception):
    pass


class ContentStore:
    def __init__(self, root: Path):
        self.root = root

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 digest")
        return self.root / sha256[:2] / sha256

    def put(self, stream: BinaryIO, *, max_bytes: int) -> tuple[str, int]:
        """Streams to a temporary file, hashing as it goes; the name is the digest, so
        the same bytes are stored once and a half-written file is never visible."""
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
            target = self.path_for(sha)
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)
            return sha, size
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
