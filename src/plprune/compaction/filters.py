"""Compacting conv filters: a pruned channel's filters go, and so does everything coupled to that channel.

Torch-Pruning's dependency graph says what is coupled (:func:`plprune.sites.filter_discovery.
build_dependency_graph`, traced as discovery traces it): for a :class:`~plprune.sites.filters.FilterSite`
the group of its first conv's output channels (``get_pruning_group(conv, prune_conv_out_channels, ...)``)
holds the output channels of every member conv (several for a residual site), the channels of the norm after
each, and the input channels of every layer that reads them: convs (weight dim 1, ``in_channels``) and
Linear layers (weight dim 1, ``in_features``), with the graph's index mapping through flatten
(``c·HW … (c+1)·HW − 1``), global pooling, concatenation and split. Each coupled layer becomes one edit (an
:class:`~plprune.compaction.ops.Op`) naming the layer by its name in ``model.named_modules()``:

* conv output channels, ``nn.BatchNorm1d/2d`` channels (weight, bias, running statistics, ``num_features``),
  conv and Linear input channels: ``CallOnModule(name, ...)`` running Torch-Pruning's own pruning function
  (``prune_conv_out_channels``, ``prune_batchnorm_out_channels``, ``prune_conv_in_channels``,
  ``prune_linear_in_channels``) on the module it is handed. Those functions keep the parameters' dtype
  (``index_select``), so they replay on compaction's float64 index twin; ``requires_grad`` is kept as it was
  (Torch-Pruning would make every new parameter trainable).
* plprune's own :class:`~plprune.models.layers.BatchNorm` (which Torch-Pruning does not know how to cut):
  :class:`~plprune.compaction.ops.KeepSlices` of its weight, bias and running statistics, and
  ``num_features``.

Anything else coupled to the channels (a Linear or LayerNorm writing them, a free parameter, a grouped conv,
the model output, a conv or norm that is not a member of the site) is refused with a
:class:`~plprune.errors.PlpruneError`: removing it would not be what the mask did.

**Several sites, one list of edits.** :func:`~plprune.compaction.core.plan` plans every site before any edit
is applied, so all sites are planned on the unedited model, from one dependency graph (built once per model
state and input shapes; the couplings of every conv are kept as plain data: names and indices, no module
references, so the edits replay on any copy). A site's edits name *original* channel indices. Output
channels of a conv or norm belong to exactly one site, and an edit of a weight's dim 0 does not move its
dim 1, so two consecutive pruned convs (the first cuts the second's inputs, the second its own outputs)
compose in either order. Input channels are the one dimension several sites can cut (a conv reading the
concatenation of two sites' channels): an input cut records on the module (weakly, outside its state) which
original indices it removed, and a later cut of the same dimension in the same compaction maps its
original indices onto the current ones (``i − #{removed < i}``).

**Assumption** (as for the masked model's exactness under Torch-Pruning's reading of functional ops): the
operations between a site's norms and the layers reading the channels map a zero channel to zero (ReLU,
pooling, residual sums of zeroed channels, ...), so a removed input channel read as exactly 0.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from plprune.compaction.core import register_planner
from plprune.compaction.ops import CallOnModule, KeepSlices, Op, SetAttribute
from plprune.errors import PlpruneError
from plprune.models.layers import BatchNorm
from plprune.sites.filter_discovery import _tensors, build_dependency_graph
from plprune.sites.filters import FilterSite

__all__ = ["InputCut", "plan_filters"]

_CONVS = (nn.Conv1d, nn.Conv2d)

_NEEDS_INPUTS = (
    "compacting conv filters needs example_inputs (a batch the model accepts, as for finding them): the "
    "layers coupled to the pruned channels are found by tracing the model once; give GroupSet(..., "
    "example_inputs=x) or compact(groups, example_inputs=x)"
)

# a coupled layer's edit (``_Coupled.action``): these write the channels, "conv_in"/"linear_in" read them;
# "" marks a coupling compaction refuses (``_Coupled.problem`` says why)
_WRITERS = ("conv_out", "batchnorm", "plprune_batchnorm")


@dataclass(frozen=True)
class _Coupled:
    """One layer coupled to a root conv's output channels: entry ``idxs[j]`` of its dimension ``size`` comes
    from the root's channel ``roots[j]`` (Torch-Pruning's group for all the root's channels)."""

    name: str
    action: str
    size: int
    idxs: tuple[int, ...]
    roots: tuple[int, ...]
    problem: str | None = None


# model -> (signature of its structure and of the input shapes, {root conv name: couplings | why none})
_COUPLINGS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict[str, list[_Coupled] | str]]]
_COUPLINGS = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, example_inputs: Any) -> tuple:
    """Changes when the model's modules, parameter/buffer shapes or the example input shapes change."""
    modules = tuple((name, id(module)) for name, module in model.named_modules())
    tensors = tuple(
        (name, tuple(t.shape))
        for name, t in (*model.named_parameters(), *model.named_buffers())
        if t is not None
    )
    inputs = tuple((tuple(t.shape), t.dtype) for t in _tensors(example_inputs))
    return modules, tensors, inputs


def _couplings(model: nn.Module, example_inputs: Any) -> dict[str, list[_Coupled] | str]:
    """For every Conv1d/Conv2d (``groups=1``) the graph reaches, the layers coupled to its output channels
    (or why they cannot be read); one dependency graph per model state, cached as plain data."""
    import torch_pruning as tp

    key = _signature(model, example_inputs)
    cached = _COUPLINGS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    graph = build_dependency_graph(model, example_inputs)
    names = {module: name for name, module in model.named_modules()}
    result: dict[str, list[_Coupled] | str] = {}
    for module, name in names.items():
        if not isinstance(module, _CONVS) or module.groups != 1 or module not in graph.module2node:
            continue
        try:
            group = graph.get_pruning_group(
                module, tp.prune_conv_out_channels, list(range(module.out_channels))
            )
        except Exception as error:  # the graph cannot map these channels
            result[name] = f"Torch-Pruning cannot group them ({type(error).__name__}: {error})"
            continue
        coupled = [_describe(item, graph, names) for item in group.items]
        result[name] = [c for c in coupled if c is not None]
    _COUPLINGS[model] = (key, result)
    return result


def _describe(item: Any, graph: Any, names: dict[nn.Module, str]) -> _Coupled | None:
    """One group item as data; ``None`` for a functional op the channels merely pass through."""
    import torch_pruning as tp

    module, handler = item.dep.target.module, item.dep.handler
    idxs, roots = tuple(int(i) for i in item.idxs), tuple(int(r) for r in item.root_idxs)
    ops = tp.ops
    passing = (ops._ElementWiseOp, ops._ReshapeOp, ops._SliceOp, ops._ConcatOp, ops._SplitOp, ops._UnbindOp,
               ops._ExpandOp)  # fmt: skip
    if isinstance(module, passing):
        return None
    if isinstance(module, ops._OutputOp):
        return _Coupled("", "", 0, idxs, roots, "the channels are (part of) the model output")
    name = names.get(module) if isinstance(module, nn.Module) else None
    if name is None:
        what = "a free nn.Parameter" if isinstance(module, nn.Parameter) else type(module).__name__
        return _Coupled("", "", 0, idxs, roots, f"{what} is coupled to the channels")
    pruner = graph.get_pruner_of_module(module)
    writes = pruner is not None and handler == pruner.prune_out_channels
    label = f"{type(module).__name__} {name}"
    if isinstance(module, nn.modules.conv._ConvNd):
        if not isinstance(module, _CONVS):
            problem = f"{label} is coupled (only Conv1d/Conv2d are compacted)"
            return _Coupled(name, "", 0, idxs, roots, problem)
        if module.groups != 1:
            return _Coupled(name, "", 0, idxs, roots, f"grouped/depthwise conv {label} uses the channels")
        if writes:
            return _Coupled(name, "conv_out", int(module.out_channels), idxs, roots)
        return _Coupled(name, "conv_in", int(module.in_channels), idxs, roots)
    if isinstance(module, nn.Linear) and not writes:
        return _Coupled(name, "linear_in", int(module.in_features), idxs, roots)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _Coupled(name, "batchnorm", int(module.num_features), idxs, roots)
    if isinstance(module, BatchNorm):
        return _Coupled(name, "plprune_batchnorm", int(module.num_features), idxs, roots)
    return _Coupled(
        name, "", 0, idxs, roots,
        f"{label} {'writes' if writes else 'reads'} the channels (compaction cuts convs, BatchNorms and the "
        "inputs of Linear layers)",
    )  # fmt: skip


@register_planner(FilterSite)
def plan_filters(site: FilterSite, keep: Tensor, model: nn.Module, example_inputs: Any = None) -> list[Op]:
    """The edits removing the channels of ``site`` where ``keep`` is False, and every coupled slice."""
    if example_inputs is None:
        raise PlpruneError(_NEEDS_INPUTS)
    where = f"conv filters of {site.module_name or 'the model'}"
    names = {module: name for name, module in model.named_modules()}
    root = names.get(site.members[0].conv)
    if root is None:
        raise PlpruneError(f"{where}: the site's conv is not a module of the model")
    entry = _couplings(model, example_inputs).get(root)
    if entry is None:
        raise PlpruneError(
            f"{where}: the forward pass on example_inputs does not reach conv {root} (or it is not a "
            "Conv1d/Conv2d with groups=1)"
        )
    if isinstance(entry, str):
        raise PlpruneError(f"cannot compact the {where}: {entry}")
    for coupled in entry:
        if coupled.problem is not None:
            raise PlpruneError(f"cannot compact the {where}: {coupled.problem}")
    members = {names.get(m.conv) for m in site.members} | {
        names.get(m.norm) for m in site.members if m.norm is not None
    }
    writers = {c.name for c in entry if c.action in _WRITERS}
    if writers != members:
        raise PlpruneError(
            f"cannot compact the {where}: Torch-Pruning couples {sorted(writers)} to its output channels, "
            f"but the site's convs and norms are {sorted(str(n) for n in members)}"
        )
    for coupled in entry:
        if coupled.action in _WRITERS and (coupled.idxs != coupled.roots or coupled.size != site.num_groups):
            raise PlpruneError(
                f"cannot compact the {where}: {coupled.name} is coupled with a channel mapping other than "
                "the identity"
            )
    pruned = set((~keep).nonzero().flatten().tolist())
    ops: list[Op] = []
    for coupled in entry:
        idxs = tuple(sorted({i for i, r in zip(coupled.idxs, coupled.roots, strict=True) if r in pruned}))
        if not idxs:
            continue
        if coupled.action in ("conv_out", "batchnorm"):
            ops.append(CallOnModule(coupled.name, _prune_with_tp, (coupled.action, idxs)))
        elif coupled.action == "plprune_batchnorm":
            ops.extend(_plan_plprune_batchnorm(model, coupled.name, coupled.size, idxs))
        else:
            ops.append(CallOnModule(coupled.name, _cut_inputs, InputCut(coupled.action, coupled.size, idxs)))
    return ops


def _plan_plprune_batchnorm(model: nn.Module, name: str, size: int, idxs: tuple[int, ...]) -> list[Op]:
    norm = model.get_submodule(name)
    removed = set(idxs)
    kept = tuple(i for i in range(size) if i not in removed)
    ops: list[Op] = [
        KeepSlices(f"{name}.{attr}", 0, kept)
        for attr in ("weight", "bias", "running_mean", "running_var")
        if isinstance(getattr(norm, attr, None), Tensor)
    ]
    ops.append(SetAttribute(name, "num_features", len(kept)))
    return ops


def _tp_function(action: str) -> Any:
    import torch_pruning as tp

    return {
        "conv_out": tp.prune_conv_out_channels,
        "batchnorm": tp.prune_batchnorm_out_channels,
        "conv_in": tp.prune_conv_in_channels,
        "linear_in": tp.prune_linear_in_channels,
    }[action]


def _prune_with_tp(module: nn.Module, action_idxs: tuple[str, tuple[int, ...]]) -> None:
    """Torch-Pruning's pruning function for ``action`` removes ``idxs`` (sorted) from ``module``."""
    action, idxs = action_idxs
    trainable = {name: p.requires_grad for name, p in module.named_parameters(recurse=False)}
    for p in module.parameters(recurse=False):
        if p.grad is not None and (p.grad.dtype != p.dtype or p.grad.shape != p.shape):
            p.grad = None  # e.g. the float64 index twin: Torch-Pruning would cut and reattach the grad
    _tp_function(action)(module, list(idxs))
    for name, p in module.named_parameters(recurse=False):
        p.requires_grad_(trainable.get(name, p.requires_grad))


@dataclass(frozen=True)
class InputCut:
    """Remove the input channels ``idxs`` (numbered as in the unedited layer of ``size`` inputs) of a conv
    (``action="conv_in"``) or Linear (``"linear_in"``)."""

    action: str
    size: int
    idxs: tuple[int, ...]


# module -> (its input size before this compaction, the original input indices cut so far)
_INPUT_CUTS: weakref.WeakKeyDictionary[nn.Module, tuple[int, frozenset[int]]] = weakref.WeakKeyDictionary()


def _cut_inputs(module: nn.Module, cut: InputCut) -> None:
    """Cut ``cut.idxs`` from the module's inputs, after whatever other sites of the same compaction cut."""
    current = int(module.in_channels if cut.action == "conv_in" else module.in_features)
    record = _INPUT_CUTS.get(module)
    removed = record[1] if record is not None and record[0] == cut.size else frozenset()
    if current != cut.size - len(removed) or removed.intersection(cut.idxs):
        raise PlpruneError(
            f"compaction: {type(module).__name__} has {current} inputs, the edit expects {cut.size} less "
            f"{len(removed)} cut before (was the plan made for another model state?)"
        )
    ordered = sorted(removed)
    _prune_with_tp(module, (cut.action, tuple(i - bisect_left(ordered, i) for i in cut.idxs)))
    _INPUT_CUTS[module] = (cut.size, removed | frozenset(cut.idxs))
