"""Input checks shared by public entry points; each raises :class:`PlpruneError` with a clear message."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Union

from plprune.errors import PlpruneError

INT64_MAX = 2**63 - 1
"""Largest integer setting accepted: counts, sizes and seeds end up in int64 tensors and generators."""


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int > 0, else raise ``PlpruneError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= INT64_MAX:
        raise PlpruneError(f"{name} must be a positive integer (at most 2**63 - 1), got {value!r}")
    return value


def check_non_negative_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 0, else raise ``PlpruneError``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise PlpruneError(f"{name} must be an integer >= 0 (at most 2**63 - 1), got {value!r}")
    return value


def check_positive_float(name: str, value: Any) -> float:
    """Return ``value`` as float if it is finite and > 0, else raise ``PlpruneError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise PlpruneError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative_float(name: str, value: Any) -> float:
    """Return ``value`` as float if it is finite and >= 0, else raise ``PlpruneError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise PlpruneError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_probability(name: str, value: Any, *, inclusive_high: bool = False) -> float:
    """Return ``value`` if it lies in [0, 1) (or [0, 1] with ``inclusive_high``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    high_ok = ok and (value <= 1 if inclusive_high else value < 1)
    if not ok or value < 0 or not high_ok:
        interval = "[0, 1]" if inclusive_high else "[0, 1)"
        raise PlpruneError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise listing the valid names."""
    allowed = list(allowed)
    if value not in allowed:
        raise PlpruneError(f"unknown {name} {value!r}; valid: {', '.join(allowed)}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise PlpruneError(f"{name} must be true or false, got {value!r}")
    return value


def check_text(name: str, value: Any) -> str:
    """Return ``value`` if it is a non-empty string without NUL characters (a file or directory name)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise PlpruneError(f"{name} must be a non-empty path without NUL characters, got {value!r}")
    return value


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from TOML or JSON) has the annotated type ``hint``; unknown hints match."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, option) for option in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list)) and all(_matches(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    return True  # Any and other hints: the class's own checks decide


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in args if option is not type(None))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return f"a table of {_describe(args[1]).removeprefix('a ').removeprefix('an ')}s by name"
    return str(hint)


def check_field_types(section: str, cls: type, values: dict[str, Any]) -> None:
    """Raise if a value of ``values`` (keys: fields of dataclass ``cls``) has the wrong type for its field,
    e.g. a string where ``[train] steps`` needs an integer (a TOML file can hold any type anywhere)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        hint = hints.get(name, Any)
        if not _matches(value, hint):
            raise PlpruneError(
                f"[{section}] {name} must be {_describe(hint)}, got {value!r} ({type(value).__name__})"
            )
