"""Registering a pruning method: ``@register_method`` on its scorer class (or a build function).

A method is a name, a description, the group kinds it scores, its settings (a small dataclass next to the
scorer, whose fields become ``[prune.METHOD]`` config keys and, where a field has ``metadata={"help": ...}``,
CLI flags), the paper's schedule for it (``paper_schedule``: prune-table overrides that ``plprune compare``
applies) and how to build the scorer from the settings. This module imports no scorer; the scorer modules
import it. :mod:`plprune.pruners.registry` imports every scorer module and answers look-ups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plprune.errors import PlpruneError
from plprune.groups import GROUP_KINDS
from plprune.validation import check_field_types

ALL_KINDS = GROUP_KINDS


@dataclass(frozen=True)
class BuildInfo:
    """What a method may need to build its scorer beyond its settings: the run's length."""

    total_steps: int
    steps_per_epoch: int


@dataclass(frozen=True)
class MethodSpec:
    """One pruning method. ``build(settings, info)`` makes its scorer (``None``: the dense reference)."""

    name: str
    description: str
    kinds: tuple[str, ...]
    build: Callable[[Any, BuildInfo], Any] | None
    config: type | None = None
    paper_schedule: dict[str, Any] = field(default_factory=dict)
    # acts over a training run (a regulariser, rewinding): nothing to say about a finished model in one event
    training_time: bool = False

    def default_settings(self) -> Any:
        return self.config() if self.config is not None else None

    def settings(self, values: dict[str, Any] | None) -> Any:
        """The method's settings dataclass from ``values`` (unknown keys are errors)."""
        if self.config is None:
            if values:
                raise PlpruneError(f"method {self.name!r} has no settings, got {sorted(values)}")
            return None
        allowed = {f.name for f in dataclasses.fields(self.config)}
        unknown = set(values or {}) - allowed
        if unknown:
            raise PlpruneError(
                f"unknown settings for method {self.name!r}: {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        check_field_types(f"prune.{self.name}", self.config, values or {})
        try:
            return self.config(**(values or {}))
        except TypeError as error:
            raise PlpruneError(f"invalid settings for method {self.name!r}: {error}") from error
        except PlpruneError as error:  # name the settings given: the check may call them differently
            given = ", ".join(f"{k}={v!r}" for k, v in sorted((values or {}).items()))
            raise PlpruneError(f"invalid settings for method {self.name!r} ({given}): {error}") from error


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    description: str,
    kinds: tuple[str, ...] = ALL_KINDS,
    config: type | None = None,
    paper_schedule: dict[str, Any] | None = None,
    training_time: bool = False,
) -> Callable[[Any], Any]:
    """Class (or function) decorator that registers a pruning method under ``name``.

    ``training_time``: the method acts over a training run (a regulariser, weight rewinding), so it cannot
    score a finished model from calibration batches in one event (``plprune compress`` refuses it).

    On a :class:`~plprune.pruners.base.GroupScorer` subclass the scorer is built with
    ``cls.from_config(settings, info)``; on a function, the function is called with ``(settings, info)``.
    """
    if config is not None and not dataclasses.is_dataclass(config):
        raise PlpruneError(f"method {name!r}: config must be a dataclass, got {config!r}")

    def decorator(target: Any) -> Any:
        if name in METHODS:
            raise PlpruneError(f"a pruning method named {name!r} is already registered")
        build = target.from_config if isinstance(target, type) else target
        METHODS[name] = MethodSpec(
            name, description, tuple(kinds), build, config, dict(paper_schedule or {}), training_time
        )
        return target

    return decorator


def register_reference(name: str, description: str) -> None:
    """A method that builds no scorer (the dense reference run)."""
    METHODS[name] = MethodSpec(name, description, (*ALL_KINDS, "weight"), None)
