"""Content-addressed image files under the data directory, written atomically."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A file in the store: where it is, its SHA-256 (hex) and its size."""

    path: Path
    sha256: str
    size_bytes: int


class ImageStore:
    """Files named by their SHA-256 under ``root/<first two hex digits>/``.

    Equal bytes share one file, so a file is never rewritten once it exists; a new one
    appears whole or not at all (temporary file in the same directory, then rename).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str, suffix: str = ".png") -> Path:
        """Where the file with this hash and suffix lives (whether or not it exists)."""
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, not {sha256!r}")
        _check_suffix(suffix)
        return self.root / sha256[:2] / f"{sha256}{suffix}"

    def write(self, data: bytes, suffix: str = ".png") -> StoredImage:
        """Store ``data``; blocking, so from the event loop use ``write_async``."""
        _check_suffix(suffix)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha256, suffix)
        stored = StoredImage(path, sha256, len(data))
        if path.exists():
            return stored
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                # On disk before the rename, or a crash could leave a named but empty file.
                os.fsync(file.fileno())
            # mkstemp makes 0600 files; images are meant to be read by other processes.
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        return stored

    async def write_async(self, data: bytes, suffix: str = ".png") -> StoredImage:
        """``write`` in a worker thread, keeping the event loop free."""
        return await asyncio.to_thread(self.write, data, suffix)


def _check_suffix(suffix: str) -> None:
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"suffix must be '.' and 1-5 lowercase letters or digits, not {suffix!r}")
