"""The one way plprune's Hugging Face model wrappers import ``transformers``: lazily, with a clear error."""

from __future__ import annotations

from typing import Any

from plprune.errors import PlpruneError


def require_transformers() -> Any:
    """The ``transformers`` module, or a :class:`PlpruneError` saying how to install it."""
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise PlpruneError(
            "Hugging Face models need the transformers package: pip install 'plprune[hf]'"
        ) from error
    return transformers
