"""Faults the chaos scenarios inject besides a Redis outage (the private
``redis-server`` of :mod:`tests.redis_server`): a full disk under the image store."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path


class FullDisk:
    """Makes the image store's writes fail with ``OSError`` while a job runs.

    Preferred: a private 1 MiB tmpfs mounted on the data directory's ``images`` before
    the run, filled to the last byte once the job has started (``ENOSPC``, what a full
    disk gives). Where mounting is refused (no root, no CAP_SYS_ADMIN in a container):
    ``images`` is replaced by a plain file once the job has started, so every write under
    it fails with ``NotADirectoryError``. :attr:`how` says which one ran.
    """

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self.how = "file"
        self._mounted = False

    def prepare(self) -> None:
        """Before the run: mount the tmpfs if this machine allows it."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(self.images_dir)],
            capture_output=True,
            check=False,
        )
        if mounted.returncode == 0:
            self._mounted = True
            self.how = "tmpfs"

    def fill(self) -> None:
        """Once the job runs: leave no byte free (or no directory) for the image store."""
        if self._mounted:
            with (self.images_dir / ".filler").open("wb") as filler:
                _write_until_full(filler.fileno())
            return
        aside = self.images_dir.with_name(f"{self.images_dir.name}.aside")
        if self.images_dir.exists():
            self.images_dir.rename(aside)
        self.images_dir.write_bytes(b"not a directory")

    def close(self) -> None:
        """Unmount the tmpfs (the harness's cleanup)."""
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.images_dir)], capture_output=True, check=False)
            self._mounted = False


def _write_until_full(fd: int) -> None:
    chunk = b"\0" * 4096
    while True:
        try:
            os.write(fd, chunk)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return
            raise
