"""The forms of one model ``plprune bench-latency`` compares: dense, masked, compacted and Torch-Pruning's.

The mask is random (:func:`plprune.keep.select_mask` on seeded uniform scores, protected: no layer is
emptied): which groups are pruned does not matter for speed, only how many per layer. Heads and experts are
ranked globally per kind (layers may keep different numbers), filters per layer (every conv keeps the same
fraction). Every form is a deterministic function of the spec and the mask (:func:`rebuild`), so a fresh
process can rebuild one and load its weights from a state dict instead of unpickling a module.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from plprune.bench.latency.families import Family, build_family
from plprune.bench.latency.spec import ALLOCATION, KIND, LatencySpec
from plprune.bench.latency.torch_pruning_ref import torch_pruning_copy
from plprune.errors import PlpruneError

__all__ = ["Variants", "build_variants", "group_parameter_count", "random_mask", "rebuild"]

TORCH_VARIANTS = ("dense", "masked", "compacted", "torch-pruning")


def random_mask(groups: Any, ratio: float, seed: int) -> Tensor:
    """A protected keep-mask at ``ratio`` from seeded random scores (global per kind; filters per layer)."""
    from plprune.keep import select_mask

    scores = torch.rand(len(groups), generator=torch.Generator().manual_seed(seed))
    return select_mask(groups, scores, ratio, ALLOCATION[groups.kinds[0]])


def group_parameter_count(groups: Any) -> int:
    """Parameters in the prunable groups (each group's slices; a parameter element counted once)."""
    total = 0
    for group in groups.groups:
        for piece in group.slices:
            shape = list(groups._params[piece.param_name].shape)
            shape[piece.dim] = piece.stop - piece.start
            total += math.prod(shape)
    return total


def _gate(family: Family, kind: str) -> Any:
    """A :class:`~plprune.gates.GroupSet` of ``kind`` on the family's model (filters: traced on 2 inputs)."""
    from plprune.gates import GroupSet

    example = family.example(2) if kind == "filter" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GroupSet(family.model, kinds=(kind,), example_inputs=example)


def _compact(groups: Any) -> nn.Module:
    from plprune.compaction import compact

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compacted, _ = compact(groups)
    return compacted.eval()


@dataclass
class Variants:
    """The unwrapped models of every form that could be built (``None``: see ``unavailable``)."""

    family: Family
    groups: Any  # the GroupSet on the masked model
    mask: Tensor
    dense: nn.Module
    masked: nn.Module
    compacted: nn.Module | None = None
    torch_pruning: nn.Module | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    def models(self) -> dict[str, nn.Module]:
        """The built forms by name, in the report's order."""
        found = {
            "dense": self.dense,
            "masked": self.masked,
            "compacted": self.compacted,
            "torch-pruning": self.torch_pruning,
        }
        return {name: model for name, model in found.items() if model is not None}


def build_variants(spec: LatencySpec) -> Variants:
    """The family of ``spec`` and its forms: a dense copy, the model gated with the random mask applied,
    the compacted model and (filters) Torch-Pruning's copy. A form that cannot be built is named in
    ``unavailable`` with the reason, and the others are still measured."""
    family = build_family(spec)
    kind = KIND[spec.model]
    dense = copy.deepcopy(family.model)
    groups = _gate(family, kind)
    groups.check_ratio(spec.ratio)
    mask = random_mask(groups, spec.ratio, spec.seed)
    groups.apply_mask(mask)
    variants = Variants(family, groups, mask, dense, family.model)
    try:
        variants.compacted = _compact(groups)
    except PlpruneError as error:
        variants.unavailable["compacted"] = variants.unavailable["compacted+ort"] = str(error)
    if kind == "filter":
        try:
            variants.torch_pruning = torch_pruning_copy(dense, groups, mask, family.example(2))
        except Exception as error:  # Torch-Pruning's own failure: reported, not fatal
            variants.unavailable["torch-pruning"] = f"{type(error).__name__}: {error}"
    return variants


def rebuild(spec: LatencySpec, name: str, mask: Tensor) -> nn.Module:
    """The (unwrapped, freshly initialised) model of form ``name``, built as :func:`build_variants` builds
    it: the same family, the same mask, the same compaction; its weights are for the caller to load. For
    conv filters every form, the dense one included, passes through the same filter discovery (one traced
    forward pass), so that the forms of one run have done the same work before they are measured."""
    if name not in TORCH_VARIANTS:
        raise PlpruneError(f"no PyTorch form {name!r}; valid: {', '.join(TORCH_VARIANTS)}")
    family = build_family(spec)
    kind = KIND[spec.model]
    if name == "dense" and kind != "filter":
        return family.model
    dense = copy.deepcopy(family.model) if name == "torch-pruning" else None
    groups = _gate(family, kind)  # filters: a traced forward pass for every form alike, dense included
    if name == "dense":
        groups.remove_hooks()
        return family.model
    groups.apply_mask(mask)
    if name == "masked":
        return family.model
    if name == "compacted":
        return _compact(groups)
    return torch_pruning_copy(dense, groups, mask, family.example(2))
