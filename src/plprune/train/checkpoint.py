"""Atomic checkpoints: a crash or a bad argument never leaves a half-written or overwritten file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from plprune.errors import RunDirError


def atomic_write_bytes(path: Path, writer) -> None:
    """Call ``writer(file_object)`` on a temp file beside ``path``, fsync, then ``os.replace`` it."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` to ``path`` atomically (temp file + rename)."""
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"no checkpoint at {path}; nothing to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated/corrupt file: say which file, do not show torch internals
        raise RunDirError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error})") from error
