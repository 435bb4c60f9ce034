"""Tasks: what a run trains on and how it is evaluated."""

from plprune.tasks.base import Task
from plprune.tasks.classification import ClassificationTask
from plprune.tasks.mlm import MlmTask

__all__ = ["ClassificationTask", "MlmTask", "Task"]
