"""Every pruning method by name, collected from the ``@register_method`` decorators of the scorer modules.

Importing this module imports every module of :mod:`plprune.pruners` once (so a new criterion is one new
module with a decorated scorer: nothing else to edit), then answers look-ups: :func:`get_method`,
:data:`METHOD_NAMES`, :func:`check_method_kinds`, and the CLI flags derived from the methods' settings
(:func:`setting_flags`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

import plprune.pruners as _package
from plprune.errors import PlpruneError
from plprune.pruners.registration import ALL_KINDS, METHODS, BuildInfo, MethodSpec, register_reference

__all__ = [
    "ALL_KINDS",
    "METHODS",
    "METHOD_NAMES",
    "BuildInfo",
    "MethodSpec",
    "SettingFlag",
    "check_method_kinds",
    "get_method",
    "setting_flags",
]

_INFRASTRUCTURE = {"base", "registration", "registry", "structured"}

register_reference("dense", "no pruning (the reference)")
for _module in pkgutil.iter_modules(_package.__path__):
    if _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{_package.__name__}.{_module.name}")

# display order (reports, help): the reference, the paper's method, then the baselines; new methods follow
_PREFERRED = (
    *("dense", "pl", "pl+", "random", "imp", "magnitude", "grad-score", "snip", "grasp", "fpgm", "chip"),
    "dpfps",
)
METHOD_NAMES: tuple[str, ...] = tuple(
    sorted(METHODS, key=lambda m: _PREFERRED.index(m) if m in _PREFERRED else len(_PREFERRED))
)


def get_method(name: str) -> MethodSpec:
    """The method called ``name``; unknown names list the valid ones."""
    if name not in METHODS:
        raise PlpruneError(f"unknown method {name!r}; valid: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def check_method_kinds(name: str, kinds: tuple[str, ...]) -> None:
    """Raise unless method ``name`` can score every kind in ``kinds``, naming the methods that can."""
    spec = get_method(name)
    unsupported = [k for k in kinds if k not in spec.kinds]
    if unsupported:
        able = [m for m, s in METHODS.items() if all(k in s.kinds for k in kinds) and m != "dense"]
        raise PlpruneError(
            f"method {name!r} prunes {'/'.join(spec.kinds)} groups only, not {'/'.join(unsupported)}; "
            f"methods for {'/'.join(kinds)}: {', '.join(able)}"
        )


@dataclass(frozen=True)
class SettingFlag:
    """A CLI flag ``--FIELD`` derived from the methods' settings: it sets ``field`` of every method whose
    settings have it (e.g. ``--score-batches`` for grad-score, SNIP, GraSP and CHIP)."""

    flag: str
    field: str
    type: Any
    help: str
    methods: tuple[str, ...]


def setting_flags() -> list[SettingFlag]:
    """One flag per settings field that has ``metadata={"help": ...}``, across all methods."""
    found: dict[str, SettingFlag] = {}
    for spec in METHODS.values():
        if spec.config is None:
            continue
        for f in dataclasses.fields(spec.config):
            text = f.metadata.get("help")
            if not text:
                continue
            kind = f.metadata.get("type", _scalar_type(f.default))
            previous = found.get(f.name)
            if previous is not None and previous.type is not kind:
                raise PlpruneError(f"settings field {f.name!r} has different types in different methods")
            methods = (*previous.methods, spec.name) if previous else (spec.name,)
            help_text = previous.help if previous else text
            found[f.name] = SettingFlag(f"--{f.name.replace('_', '-')}", f.name, kind, help_text, methods)
    return [
        dataclasses.replace(flag, help=f"{', '.join(flag.methods)}: {flag.help}") for flag in found.values()
    ]


def _scalar_type(default: Any) -> Any:
    if isinstance(default, bool):
        raise PlpruneError("boolean settings need metadata={'type': ...} to become a flag")
    return type(default) if isinstance(default, (int, float, str)) else str


def build_scorer(name: str, settings: Any, info: BuildInfo) -> Any:
    """The scorer of method ``name`` (``None`` for dense)."""
    spec = get_method(name)
    return None if spec.build is None else spec.build(settings, info)


def method_settings(raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{method: settings dataclass}`` for every method that has settings, from ``{method: {field: value}}``
    tables (missing tables: the defaults)."""
    raw = raw or {}
    return {name: spec.settings(raw.get(name)) for name, spec in METHODS.items() if spec.config is not None}
