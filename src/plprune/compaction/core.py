"""Compaction: turn a hard mask into a physically smaller model, and carry optimizer state over.

:func:`compact` asks one *planner* per gate-site type (:func:`register_planner`; heads and experts in
:mod:`plprune.compaction.heads`/``experts``, conv filters in ``filters``) for the structural edits
(:mod:`plprune.compaction.ops`) that remove the pruned groups of a site, then applies them. The pruned groups
are exactly zero and gated to zero in the masked model, so the compacted model computes the same function
(tests compare outputs to 1e-5).

Optimizer state: the same edits are applied to an *index twin* of the model, a copy whose every parameter
holds ``origin · 2^32 + element number`` (float64, exact below 2^53). After the edits, each surviving twin
parameter tells which parameter of the old model and which of its elements each new element comes from;
every per-element state tensor of the optimizer (AdamW's moments, SGD's momentum) is gathered the same way
and the optimizer's parameter lists are updated in place, so an LR scheduler bound to the optimizer keeps
working.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from plprune.compaction.hf_config import ConfigSync, sync_hf_configs
from plprune.compaction.ops import Op
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.groups import GateSite

Planner = Callable[[GateSite, Tensor, nn.Module, Any], list[Op]]
_PLANNERS: dict[type, Planner] = {}

_ORIGIN = 2**32  # element numbers below this; origins (parameter numbers) above


def register_planner(site_type: type) -> Callable[[Planner], Planner]:
    """Decorator: ``planner(site, keep, model, example_inputs) -> ops`` removes the groups of ``site`` where
    ``keep`` (bool, one per group) is False."""

    def decorator(planner: Planner) -> Planner:
        _PLANNERS[site_type] = planner
        return planner

    return decorator


PlanCheck = Callable[[GroupSet], None]
_PLAN_CHECKS: list[PlanCheck] = []


def register_plan_check(check: PlanCheck) -> PlanCheck:
    """Decorator: ``check(groups)`` runs before any planner and raises if the mask, taken as a whole, cannot
    be compacted (constraints across sites, e.g. layers sharing one per-head table)."""
    _PLAN_CHECKS.append(check)
    return check


def _planner_for(site: GateSite) -> Planner:
    for klass in type(site).__mro__:
        if klass in _PLANNERS:
            return _PLANNERS[klass]
    raise PlpruneError(
        f"no compaction for {type(site).__name__} sites ({site.kind}s of {site.module_name or 'the model'}); "
        f"compactable: {', '.join(sorted(k.__name__ for k in _PLANNERS))}"
    )


@dataclass
class CompactionReport:
    """What a compaction removed. ``groups_before``/``groups_after`` count groups per kind; ``index_maps``
    maps each new parameter name to ``(old parameter name, flat element indices into it)``. ``config_syncs``:
    for each Hugging Face model in the compacted model (``""``: the model itself), how its ``config`` was
    rewritten to the new counts, or why it cannot be (:mod:`plprune.compaction.hf_config`)."""

    parameters_before: int
    parameters_after: int
    groups_before: dict[str, int]
    groups_after: dict[str, int]
    ops: list[Op] = field(default_factory=list)
    index_maps: dict[str, tuple[str, Tensor]] = field(default_factory=dict)
    config_syncs: dict[str, ConfigSync] = field(default_factory=dict)

    @property
    def parameter_ratio(self) -> float:
        return self.parameters_after / self.parameters_before


def _belongs_to_a_site(fn: Any) -> bool:
    """A gate site's hook: one of its bound methods, or a closure over it (the per-expert hooks)."""
    if isinstance(getattr(fn, "__self__", None), GateSite):
        return True
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            if isinstance(cell.cell_contents, GateSite):
                return True
        except ValueError:  # an empty cell
            continue
    return False


def strip_gate_hooks(model: nn.Module) -> None:
    """Remove every forward (pre-)hook that belongs to a plprune gate site (e.g. in a deep copy, whose
    copied hooks would still gate through the original's sites)."""
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, fn in hooks.items() if _belongs_to_a_site(fn)]:
                del hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_pre_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)


def removed_modules(groups: GroupSet) -> list[str]:
    """Full names of the modules the mask of ``groups`` deletes whole (:meth:`GateSite.removed_modules`: the
    blocks of removed layers)."""
    out: list[str] = []
    for site, start, stop in groups.site_ranges():
        out.extend(site.removed_modules(groups.mask[start:stop]))
    return out


def _inside(name: str, modules: list[str]) -> bool:
    return any(name == outer or name.startswith(f"{outer}.") for outer in modules)


def plan(groups: GroupSet, example_inputs: Any = None) -> list[Op]:
    """The edits that remove every pruned group of ``groups`` from its model (nothing is applied).

    A site inside a module that another site deletes whole (the heads and neurons of a removed layer) needs
    no plan: it goes with the module. The edits of sites that delete whole modules come last: they renumber
    their container (``layers.3`` becomes ``layers.2``), and every other edit names modules by the old
    numbers."""
    for check in _PLAN_CHECKS:
        check(groups)
    gone = removed_modules(groups)
    ops: list[Op] = []
    last: list[Op] = []
    for site, start, stop in groups.site_ranges():
        keep = groups.mask[start:stop]
        if not bool(keep.any()):
            raise PlpruneError(
                f"the mask removes every {site.kind} of {site.module_name or 'the model'}: a layer cannot be "
                "emptied (at least one group per layer is protected)"
            )
        if bool(keep.all()) or _inside(site.module_name, gone):
            continue
        planned = _planner_for(site)(site, keep, groups.model, example_inputs)
        (last if site.removed_modules(keep) else ops).extend(planned)
    return ops + last


def _index_twin(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy whose parameter i holds ``i · 2^32 + flat element number`` (float64)."""
    twin = copy.deepcopy(model)
    strip_gate_hooks(twin)
    names = []
    with torch.no_grad():
        for i, (name, param) in enumerate(twin.named_parameters()):  # a tied weight once, by its first name
            if param.numel() >= _ORIGIN:
                raise PlpruneError(f"parameter {name} has {param.numel()} elements, too many to track")
            numbers = torch.arange(param.numel(), dtype=torch.float64).view(param.shape) + float(i * _ORIGIN)
            param.data = numbers
            names.append(name)
    return twin, names


def _index_maps(twin: nn.Module, origins: list[str]) -> dict[str, tuple[str, Tensor]]:
    maps = {}
    for name, param in twin.named_parameters():
        values = param.detach().reshape(-1).to(torch.int64)
        origin = int(values[0] // _ORIGIN) if values.numel() else 0
        if values.numel() and bool(((values // _ORIGIN) != origin).any()):
            raise PlpruneError(f"compaction mixed elements of several parameters into {name}")
        maps[name] = (origins[origin], values % _ORIGIN)
    return maps


def transplant_optimizer(
    optimizer: torch.optim.Optimizer,
    old: dict[str, nn.Parameter],
    new: dict[str, nn.Parameter],
    maps: dict[str, tuple[str, Tensor]],
) -> None:
    """Point ``optimizer`` at the new parameters, in place: each new parameter takes the place of the old one
    it came from, its per-element state (tensors shaped like the old parameter) gathered by ``maps``; other
    state (e.g. ``step``) copied; old parameters that no longer exist leave the optimizer."""
    successor: dict[int, tuple[nn.Parameter, Tensor]] = {}
    for name, param in new.items():
        origin, index = maps[name]
        successor.setdefault(id(old[origin]), (param, index))
    state = optimizer.state
    for group in optimizer.param_groups:
        updated = []
        for param in group["params"]:
            if id(param) not in successor:
                state.pop(param, None)  # removed entirely (e.g. a pruned expert's weights)
                continue
            new_param, index = successor[id(param)]
            if new_param is not param and param in state:
                moved = {}
                for key, value in state.pop(param).items():
                    if isinstance(value, Tensor) and value.shape == param.shape and value.dim() > 0:
                        value = value.reshape(-1)[index.to(value.device)].view(new_param.shape).clone()
                    moved[key] = value
                state[new_param] = moved
            updated.append(new_param)
        group["params"] = updated


def compact(
    groups: GroupSet,
    *,
    inplace: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
    example_inputs: Any = None,
) -> tuple[nn.Module, CompactionReport]:
    """Remove the pruned groups of ``groups`` from its model; returns ``(model, report)``.

    ``inplace=False`` (default) returns a compacted deep copy and leaves the model as it was. With
    ``inplace=True`` the model itself shrinks (its gate hooks are removed: ``groups`` is spent), and
    ``optimizer`` (if given) is updated in place to the new parameters with its state carried over.
    ``example_inputs`` (default: the GroupSet's own) are needed to compact conv filters. With nothing pruned,
    an equal copy (or the untouched model) comes back, with a warning saying so. A Hugging Face model's
    ``config`` is rewritten to the compacted counts where it can describe them, else it gets a
    ``plprune_note`` saying why (``report.config_syncs``; :mod:`plprune.compaction.hf_config`).
    """
    if not isinstance(groups, GroupSet):
        raise PlpruneError(f"compact takes a GroupSet (or use Pruner.compact()), got {type(groups).__name__}")
    if optimizer is not None and not inplace:
        raise PlpruneError("an optimizer can only follow an in-place compaction: pass inplace=True")
    model = groups.model
    example_inputs = example_inputs if example_inputs is not None else groups.example_inputs
    counts = {kind: len(groups.kind_index(kind)) for kind in groups.kinds}
    before = sum(p.numel() for p in model.parameters())
    ops = plan(groups, example_inputs)
    gone = removed_modules(groups)
    survives = torch.tensor(
        [not _inside(site.module_name, gone) for site, a, b in groups.site_ranges() for _ in range(a, b)]
    )  # a group inside a removed layer goes with it
    after_counts = {
        kind: int((groups.mask & survives)[groups.kind_index(kind)].sum()) for kind in groups.kinds
    }
    if not ops:
        warnings.warn(
            "nothing is pruned: compaction leaves the model as it is"
            + ("" if inplace else " (an equal copy is returned)"),
            UserWarning,
            stacklevel=2,
        )
    maps: dict[str, tuple[str, Tensor]] = {}
    if optimizer is not None and ops:
        twin, origins = _index_twin(model)
        for op in ops:
            op.apply(twin)
        maps = _index_maps(twin, origins)
    if inplace:
        target = model
        old_params = dict(model.named_parameters())
        groups.remove_hooks()
    else:
        target = copy.deepcopy(model)
        strip_gate_hooks(target)
    for op in ops:
        op.apply(target)
    if optimizer is not None and ops:
        transplant_optimizer(optimizer, old_params, dict(target.named_parameters()), maps)
    report = CompactionReport(
        before, sum(p.numel() for p in target.parameters()), counts, after_counts, ops, maps
    )
    # a Hugging Face model's config follows the new counts, so its own save_pretrained/from_pretrained work
    report.config_syncs = sync_hf_configs(target) if ops else {}
    return target, report
