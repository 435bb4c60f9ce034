"""Describing a model family as data and rebuilding it: the registry behind ``plprune.export``/``load``.

A deployed model is recorded as its *dense* architecture (``plprune.json``'s ``"architecture"``): a JSON
dictionary ``{"family": NAME, ...}`` from which :func:`build_architecture` builds the dense model again,
freshly initialised (the exported weights and the recorded mask are applied afterwards by
:func:`plprune.load`). Each family says how in its own module, with one call::

    register_architecture(MyModel, "plprune.MyModel", describe=lambda m: {"args": ...},
                          build=lambda d: MyModel(**d["args"]), example_inputs=...)

``describe(model)`` returns the family's fields (JSON-serialisable; ``"family"`` is added here),
``build(description)`` the dense model, and the optional ``example_inputs(description)`` a default input
tuple for ONNX export (``None``: the input shape is unknown). A model matches a family by its exact class
(a subclass is another architecture). Two families need no registration: any Hugging Face
``transformers`` model (``{"family": "transformers", "class": ..., "config": config.to_dict(), ...}``,
rebuilt as ``getattr(transformers, class)(config)``) and ``"custom"`` (any other module: ``load`` then needs
the caller's dense skeleton).

:func:`register_trace_check` adds a check run before a model is traced for ONNX by example (a family
whose forward skips parts the example does not reach, such as MoE routing, refuses an example that would
leave them out of the graph).

plprune's own families (``plprune.models.*``) register themselves when their module is imported;
:func:`build_architecture` imports every module of this package first, so a new family is one module.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError

__all__ = [
    "Architecture",
    "build_architecture",
    "build_hf_model",
    "check_trace_inputs",
    "default_example_inputs",
    "describe_architecture",
    "describe_hf_model",
    "hf_example_inputs",
    "register_architecture",
    "register_trace_check",
    "token_ids",
]

MANIFEST = "plprune.json"
#: families every model has without registration (see the module docstring)
RESERVED_FAMILIES = ("transformers", "custom")

Describe = Callable[[nn.Module], dict[str, Any]]
Build = Callable[[dict[str, Any]], nn.Module]
ExampleInputs = Callable[[dict[str, Any]], "tuple[Tensor, ...] | None"]
TraceCheck = Callable[[nn.Module, "tuple[Tensor, ...]"], None]


@dataclass(frozen=True)
class Architecture:
    """One registered family: its class, name, and how to describe, build and feed it."""

    cls: type[nn.Module]
    family: str
    describe: Describe
    build: Build
    example_inputs: ExampleInputs | None = None


_BY_CLASS: dict[type[nn.Module], Architecture] = {}
_BY_FAMILY: dict[str, Architecture] = {}
_TRACE_CHECKS: list[TraceCheck] = []


def register_architecture(
    cls: type[nn.Module],
    family: str,
    describe: Describe,
    build: Build,
    *,
    example_inputs: ExampleInputs | None = None,
) -> Architecture:
    """Make models of exactly ``cls`` exportable as ``family`` and rebuildable by ``plprune.load``.

    ``family`` must be unique: registering it again replaces the entry only for a class of the same
    qualified name (a reloaded module), otherwise it is refused."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PlpruneError(f"register_architecture needs an nn.Module subclass, got {cls!r}")
    if not isinstance(family, str) or not family.strip():
        raise PlpruneError(f"family must be a non-empty string, got {family!r}")
    if family in RESERVED_FAMILIES:
        raise PlpruneError(f"family {family!r} is reserved; reserved: {', '.join(RESERVED_FAMILIES)}")
    for name, value in (("describe", describe), ("build", build)):
        if not callable(value):
            raise PlpruneError(f"{name} must be callable, got {type(value).__name__}")
    if example_inputs is not None and not callable(example_inputs):
        raise PlpruneError(f"example_inputs must be callable or None, got {type(example_inputs).__name__}")
    previous = _BY_FAMILY.get(family)
    if previous is not None and _qualname(previous.cls) != _qualname(cls):
        raise PlpruneError(
            f"family {family!r} is already registered for {_qualname(previous.cls)}; pick another name for "
            f"{_qualname(cls)}"
        )
    if previous is not None:
        _BY_CLASS.pop(previous.cls, None)
    entry = Architecture(cls, family, describe, build, example_inputs)
    _BY_CLASS[cls] = entry
    _BY_FAMILY[family] = entry
    return entry


def register_trace_check(check: TraceCheck) -> TraceCheck:
    """Run ``check(model, inputs)`` before a model is traced for ONNX by example; it raises a
    :class:`PlpruneError` when the example would leave part of the model out of the traced graph."""
    if not callable(check):
        raise PlpruneError(f"a trace check must be callable, got {type(check).__name__}")
    if check not in _TRACE_CHECKS:
        _TRACE_CHECKS.append(check)
    return check


def check_trace_inputs(model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Every registered trace check on ``model`` and its example ``inputs`` (see
    :func:`register_trace_check`)."""
    for check in _TRACE_CHECKS:
        check(model, inputs)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_builtin_families() -> None:
    """Import every module of ``plprune.models`` once: each registers its own family."""
    package = importlib.import_module("plprune.models")
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


# -- Hugging Face models ------------------------------------------------------------------------------
def is_transformers_model(model: nn.Module) -> bool:
    """A model of a ``transformers`` class with a serialisable config."""
    config = getattr(model, "config", None)
    return type(model).__module__.startswith("transformers.") and hasattr(config, "to_dict")


def describe_hf_model(model: nn.Module) -> dict[str, Any]:
    """``{"class", "config", "attn_implementation"}`` of a ``transformers`` model (its full config)."""
    config = model.config
    return {
        "class": type(model).__name__,
        "config": json.loads(config.to_json_string(use_diff=False)),
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }


def build_hf_model(description: dict[str, Any]) -> nn.Module:
    """The ``transformers`` model a :func:`describe_hf_model` dictionary describes (fresh weights)."""
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as error:
        raise PlpruneError(
            "this export holds a Hugging Face model: install transformers (pip install 'plprune[hf]')"
        ) from error
    klass = getattr(transformers, str(description.get("class")), None)
    if klass is None or not hasattr(klass, "config_class"):
        raise PlpruneError(f"{MANIFEST}: transformers has no model class {description.get('class')!r}")
    config = klass.config_class.from_dict(dict(description["config"]))
    if description.get("attn_implementation"):
        config._attn_implementation = description["attn_implementation"]
    return klass(config)


# -- example inputs -----------------------------------------------------------------------------------
def token_ids(vocab: int, max_length: int) -> tuple[Tensor, ...]:
    """A seeded batch of 2 × min(8, max_length) token ids below ``vocab``: a language model's example."""
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, vocab, (2, max(1, min(8, max_length))), generator=generator),)


def hf_example_inputs(description: dict[str, Any]) -> tuple[Tensor, ...] | None:
    """Token ids (a config with ``vocab_size``) or images (``image_size`` and ``num_channels``) for a
    :func:`describe_hf_model` dictionary; ``None`` for other configs."""
    config = description["config"]
    if isinstance(config.get("vocab_size"), int):
        return token_ids(config["vocab_size"], config.get("max_position_embeddings") or 8)
    if isinstance(config.get("image_size"), int) and isinstance(config.get("num_channels"), int):
        size = config["image_size"]
        generator = torch.Generator().manual_seed(0)
        return (torch.randn(2, config["num_channels"], size, size, generator=generator),)
    return None


# -- the registry's answers ---------------------------------------------------------------------------
def describe_architecture(model: nn.Module) -> dict[str, Any]:
    """What :func:`build_architecture` needs to rebuild the dense ``model``: ``{"family": ..., ...}``.

    A registered family (plprune's own models record their constructor arguments) gives its fields;
    Hugging Face ``transformers`` models their class name and ``config.to_dict()``; any other model is
    ``{"family": "custom", "class": ...}`` and needs a dense skeleton at load time."""
    if not isinstance(model, nn.Module):
        raise PlpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    entry = _BY_CLASS.get(type(model))
    if entry is not None:
        return {"family": entry.family, **entry.describe(model)}
    if is_transformers_model(model):
        return {"family": "transformers", **describe_hf_model(model)}
    return {"family": "custom", "class": _qualname(type(model))}


def build_architecture(description: dict[str, Any]) -> nn.Module:
    """The dense model a :func:`describe_architecture` dictionary describes (freshly initialised)."""
    if not isinstance(description, dict):
        raise PlpruneError(f"{MANIFEST}: the architecture must be a table, got {type(description).__name__}")
    family = description.get("family")
    if family == "custom":
        raise PlpruneError(
            f"this export holds a user-defined model ({description.get('class')}): pass its dense, "
            "unpruned skeleton, plprune.load(path, model=MyModel(...))"
        )
    if family != "transformers" and family not in _BY_FAMILY:
        _load_builtin_families()
    entry = _BY_FAMILY.get(family) if isinstance(family, str) else None
    if entry is None and family != "transformers":
        raise PlpruneError(f"{MANIFEST}: unknown model family {family!r}")
    try:
        return build_hf_model(description) if entry is None else entry.build(description)
    except (KeyError, TypeError) as error:
        raise PlpruneError(f"{MANIFEST}: invalid {family} architecture description ({error})") from error


def default_example_inputs(description: dict[str, Any]) -> tuple[Tensor, ...] | None:
    """The family's default example input (token ids for language models); ``None`` where it is unknown."""
    family = description.get("family")
    if family == "transformers":
        return hf_example_inputs(description)
    entry = _BY_FAMILY.get(family) if isinstance(family, str) else None
    if entry is None or entry.example_inputs is None:
        return None
    return entry.example_inputs(description)
