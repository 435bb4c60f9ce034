"""Crash-safe checkpoints: atomic writes, a sha256 checksum per file, the last two kept.

Layout of a run directory's checkpoints::

    checkpoint.pt            the latest checkpoint (torch.save of tensors and plain containers)
    checkpoint.pt.sha256     its checksum, "<hex>  checkpoint.pt" (``sha256sum -c`` reads it)
    checkpoint.prev.pt       the checkpoint before it
    checkpoint.prev.pt.sha256

Every file is written to a temp file beside it, flushed and fsynced, renamed over its name (``os.replace``,
atomic on POSIX) and the directory fsynced, so a crash leaves either the old or the new file, never half of
one. :func:`save_checkpoint` (``keep_previous=True``) orders its steps so that at every instant at least one
checkpoint is complete *and* matches its checksum:

1. write the new checkpoint to a temp file (fsync);
2. drop ``checkpoint.prev.pt.sha256``; hard-link ``checkpoint.pt`` as ``checkpoint.prev.pt``; write its
   checksum; drop ``checkpoint.pt.sha256`` (the latest is now unverified; the previous one is verified);
3. rename the temp file to ``checkpoint.pt``;
4. write ``checkpoint.pt.sha256``.

:func:`load_latest_checkpoint` takes the newest file that matches its checksum and says why it skipped any
other (truncated, tampered, checksum missing because the writer was killed between steps 3 and 4). Loading
is always ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from plprune.errors import RunDirError
from plprune.faults import kill_point

DIGEST_SUFFIX = ".sha256"
TEMP_SUFFIX = ".tmp"


def fsync_directory(directory: Path) -> None:
    """fsync a directory, making the renames and unlinks in it durable (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, writer: Callable[[IO[bytes]], Any]) -> None:
    """Call ``writer(file_object)`` on a temp file beside ``path``, fsync it, ``os.replace`` it onto ``path``
    and fsync the directory. On any error the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
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
    fsync_directory(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


def digest_path(path: Path) -> Path:
    """``checkpoint.pt`` → ``checkpoint.pt.sha256``."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def previous_path(path: Path) -> Path:
    """``checkpoint.pt`` → ``checkpoint.prev.pt``: where the checkpoint before the latest is kept."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _write_digest(path: Path, hexdigest: str) -> None:
    atomic_write_text(digest_path(path), f"{hexdigest}  {path.name}\n")


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _serialise(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, state: dict[str, Any], *, keep_previous: bool = False) -> None:
    """``torch.save`` ``state`` to ``path`` atomically and write its sha256 beside it (``path.sha256``).

    ``keep_previous``: the checkpoint ``path`` held until now becomes :func:`previous_path` (with its
    checksum), in the crash-safe order of the module docstring. Raises ``OSError`` (e.g. ``ENOSPC``) with
    every earlier checkpoint intact.
    """
    path = Path(path)
    data = _serialise(state)  # a state that cannot be serialised fails here, before any file is touched
    hexdigest = hashlib.sha256(data).hexdigest()

    def write(handle: IO[bytes]) -> None:
        half = len(data) // 2
        handle.write(data[:half])
        handle.flush()
        os.fsync(handle.fileno())
        kill_point("checkpoint-write")  # tests: die with half a checkpoint on disk
        handle.write(data[half:])

    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            _rotate(path)
        kill_point("checkpoint-rotate")
        os.replace(tmp, path)
        fsync_directory(directory)
    except BaseException:
        _unlink(tmp)
        raise
    kill_point("checkpoint-digest")
    _write_digest(path, hexdigest)
    kill_point("checkpoint-done")


def _rotate(path: Path) -> None:
    """Make the current ``path`` the previous checkpoint (step 2 of the module docstring)."""
    previous = previous_path(path)
    current_digest = _read_digest(path)
    if current_digest is None or _file_sha256(path) != current_digest:
        # the current file is not a verified checkpoint (killed before its checksum was written, or damaged):
        # keep the verified previous one rather than replacing it with this
        _unlink(path)
        return
    _unlink(digest_path(previous))
    fsync_directory(path.parent)
    link = previous.with_name(f".{previous.name}.link{TEMP_SUFFIX}")
    _unlink(link)
    try:
        os.link(path, link)
    except OSError:  # no hard links on this filesystem: copy
        atomic_write_bytes(link, lambda handle: handle.write(path.read_bytes()))
    os.replace(link, previous)
    fsync_directory(path.parent)
    _write_digest(previous, current_digest)
    _unlink(digest_path(path))
    fsync_directory(path.parent)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_digest(path: Path) -> str | None:
    """The hex digest recorded for ``path``, or None if there is no (readable) checksum file."""
    try:
        text = digest_path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    fields = text.split()
    return fields[0].lower() if fields and len(fields[0]) == 64 else None


def _load_bytes(path: Path, data: bytes) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated/corrupt file: say which file, do not show torch internals
        raise RunDirError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error})") from error


def verify_checkpoint(path: Path) -> tuple[bytes, bool]:
    """The bytes of ``path`` and whether a checksum file vouches for them; raises :class:`RunDirError` if
    the file is missing or does not match its checksum (truncated, damaged or edited after it was
    written)."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"no checkpoint at {path}; nothing to resume from")
    data = path.read_bytes()
    expected = _read_digest(path)
    if expected is None:
        return data, False
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RunDirError(
            f"checkpoint {path} does not match its checksum {digest_path(path).name} (sha256 {actual[:12]}… "
            f"instead of {expected[:12]}…, {len(data)} bytes): it was truncated, damaged or edited after it "
            "was written"
        )
    return data, True


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint written by :func:`save_checkpoint`, checking its sha256 when the checksum file is
    there (tensors and plain containers only: ``weights_only=True``)."""
    path = Path(path)
    data, _ = verify_checkpoint(path)
    return _load_bytes(path, data)


def load_latest_checkpoint(path: Path) -> tuple[dict[str, Any], Path, list[str]]:
    """The newest good checkpoint among ``path`` and :func:`previous_path`: ``(state, file, notes)``.

    A file is good when it matches its checksum and loads. A file without a checksum is used only when no
    checkpoint of the run has one (runs written before checksums existed). ``notes`` says, one line per
    skipped file, why it was skipped and which file is used instead. Raises :class:`RunDirError` naming every
    problem when no checkpoint is good.
    """
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.is_file()]
    if not candidates:
        raise RunDirError(f"no checkpoint at {path}; nothing to resume from")
    any_digest = any(digest_path(p).is_file() for p in candidates)
    problems: list[str] = []
    for candidate in candidates:
        try:
            data, verified = verify_checkpoint(candidate)
            if not verified and any_digest:
                raise RunDirError(
                    f"checkpoint {candidate} has no checksum file {digest_path(candidate).name} (the writer "
                    "was stopped before writing it)"
                )
            state = _load_bytes(candidate, data)
        except RunDirError as error:
            problems.append(str(error))
            continue
        notes = [f"{problem}; resuming from the previous good checkpoint {candidate}" for problem in problems]
        return state, candidate, notes
    raise RunDirError("no usable checkpoint: " + "; ".join(problems))


def checkpoint_exists(path: Path) -> bool:
    """Whether ``path`` or its previous checkpoint exists (a run that can be resumed)."""
    path = Path(path)
    return path.is_file() or previous_path(path).is_file()


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete the temp files (``.NAME.*.tmp``) a killed writer left in ``directory``; returns them. Call it
    only while holding the run's lock (another live writer's temp files would go too)."""
    removed = []
    for candidate in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        if candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed
