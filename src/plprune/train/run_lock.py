"""One writer per run directory: an exclusive ``flock`` on ``DIR/.lock`` held for the run's lifetime.

The kernel drops a ``flock`` when its process dies, however it dies (``SIGKILL`` included), so a lock left by
a killed run never blocks its ``--resume``; the ``.lock`` file itself stays and is reused. A second process
on the same directory fails at once with a message naming the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from plprune.errors import RunDirError

LOCK_NAME = ".lock"


class RunLock:
    """``with RunLock(directory):`` — hold ``directory/.lock`` exclusively, or raise :class:`RunDirError`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunDirError(f"cannot create the lock file {self.path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise RunDirError(
                f"{self.directory} is in use by another plprune process (pid {holder}, holding {self.path}); "
                "wait for it to finish or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
