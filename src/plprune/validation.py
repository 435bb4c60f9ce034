"""Input checks shared by public entry points; each raises :class:`PlpruneError` with a clear message."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from plprune.errors import PlpruneError


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int > 0, else raise ``PlpruneError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlpruneError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_non_negative_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 0, else raise ``PlpruneError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlpruneError(f"{name} must be an integer >= 0, got {value!r}")
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
