"""Linear projections as attention heads and feed-forward neurons see them: ``nn.Linear`` or HF ``Conv1D``.

An ``nn.Linear`` (and any subclass, e.g. Falcon's ``FalconLinear``) stores its weight ``[out, in]``; Hugging
Face's GPT-2 ``Conv1D`` stores it ``[in, out]`` and keeps its output count in ``nf``. Head and neuron sites
slice projections along "the output dimension" or "the input dimension"; these helpers say which weight
dimension that is, recognising ``Conv1D`` by structure (no ``transformers`` import).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from plprune.errors import PlpruneError


def is_conv1d(module: Any) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2), by structure: a 2-d ``[in, out]`` weight and ``nf`` outputs."""
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, nn.Module)
        and type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and isinstance(weight, Tensor)
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def is_projection(module: Any) -> bool:
    """An ``nn.Linear`` (any subclass) or a Hugging Face ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def out_dim(module: nn.Module) -> int:
    """The weight dimension indexed by the projection's outputs (0 for ``nn.Linear``, 1 for ``Conv1D``)."""
    return 1 if is_conv1d(module) else 0


def in_dim(module: nn.Module) -> int:
    """The weight dimension indexed by the projection's inputs (1 for ``nn.Linear``, 0 for ``Conv1D``)."""
    return 1 - out_dim(module)


def out_features(module: nn.Module) -> int:
    return int(module.weight.shape[out_dim(module)])


def in_features(module: nn.Module) -> int:
    return int(module.weight.shape[in_dim(module)])


def projection_at(module: nn.Module, path: str, adapter: str, module_name: str) -> nn.Module:
    """The projection at ``path`` inside ``module`` (named ``module_name`` in the model), or one clear error
    naming the adapter (e.g. ``"attention adapter 'hf-gpt2'"``) that asked for it."""
    try:
        found = module.get_submodule(path)
    except AttributeError as error:
        raise PlpruneError(
            f"{adapter} names submodule {path!r}, which {module_name or 'the model'} "
            f"({type(module).__name__}) does not have"
        ) from error
    if not is_projection(found):
        raise PlpruneError(
            f"{adapter}: {module_name}.{path} must be an nn.Linear (or a Hugging Face Conv1D), "
            f"got {type(found).__name__}"
        )
    return found
