"""Errors raised by plprune's public entry points.

Every user-facing failure is a :class:`PlpruneError` (a ``ValueError``) whose message says what was
wrong and what is allowed. The CLI prints the message and exits non-zero instead of a traceback.
"""

from __future__ import annotations


class PlpruneError(ValueError):
    """Invalid input to a public plprune entry point; the message says what is allowed."""


class DataError(PlpruneError):
    """A data directory, file or corpus that cannot be used."""


class RunDirError(PlpruneError):
    """A run/output directory that cannot be used (exists without --resume, not writable, ...)."""


class TrainingDivergedError(PlpruneError):
    """The loss became NaN or infinite."""
