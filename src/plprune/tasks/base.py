"""The task interface (defined in :mod:`plprune.task`, re-exported here for plprune's own tasks)."""

from plprune.task import Task

__all__ = ["Task"]
