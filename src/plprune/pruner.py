"""The public pruning driver: prune any model in any training loop.

::

    pruner = plprune.Pruner(model, plprune.scorers.PL(), plprune.OneShot(800, 0.75),
                            kinds=("head",), loss_fn=loss_fn, batches=batches)
    pruner.attach(optimizer)        # hooks keep pruned groups at exactly zero
    for step, batch in enumerate(loader):
        pruner.step(step)           # prunes only at the schedule's events
        ...                         # the user's loop, unchanged

At each event (Alg. 2 lines 4-9): optional curvature diagnostics before, the scorer's scores, the keep rule
(:mod:`plprune.keep`: protected TopK, global or per layer), the hard mask, diagnostics after; one record per
event (scores, mask, timings, the scorer's details), also appended to ``log_path`` as JSON lines.

:meth:`Pruner.attach` registers two hooks on the optimizer: before each ``optimizer.step()`` the gradients
of pruned groups are zeroed, after it their weights are re-zeroed (AdamW's moments would otherwise move a
zero weight again). Scorers that need more than a mask (IMP's weight rewinding, DPFPS's ℓ1 regulariser)
bring :class:`PrunerPlugin` objects, driven by the same calls. ``state_dict``/``load_state_dict`` resume
exactly: mask, schedule position, scorer and plugin state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

import plprune.distributed as dist
from plprune.errors import PlpruneError
from plprune.faults import kill_point
from plprune.gates import GroupSet
from plprune.groups import check_kinds
from plprune.keep import ALLOCATIONS, select_mask
from plprune.pruners.base import Diagnostics, GroupScorer, PruneContext, PrunerPlugin
from plprune.schedules import PruneEvent, Schedule
from plprune.sites import kinds_need_inputs
from plprune.task import FunctionTask, LossFn, Task
from plprune.validation import check_choice, check_non_negative_int, check_probability


class Pruner:
    """Prune the groups of ``model`` by ``scorer`` on ``schedule``, in the caller's training loop.

    Args:
        model: any ``nn.Module``; its heads, experts or filters are found by :mod:`plprune.sites`.
        scorer: a :class:`~plprune.pruners.base.GroupScorer` (``plprune.scorers.PL()``, ``Random()``, ...).
        schedule: when and how much (``OneShot``, ``AtInit``, ``Linear``, ``Iterative``).
        kinds: group kinds to prune (``"head"``, ``"expert"``, ``"filter"``); ``None``: every kind found.
        loss_fn, batches: the training objective as ``loss_fn(model, batch) -> scalar`` and the batches
            scorers may draw (``batches(step)``, a sequence, or an iterable; see
            :class:`~plprune.task.FunctionTask`). Give these, or ``task``; scorers that look at data
            (PL, grad-score, SNIP, GraSP, CHIP) and diagnostics need one, magnitude/random/FPGM do not.
        task: a :class:`~plprune.task.Task` instead of ``loss_fn``/``batches`` (plprune's own tasks).
        example_inputs: what ``model(...)`` accepts, to trace conv filters (default: from the first batch).
        kind_ratios: final ratio per kind (``{"head": 0.5, "expert": 0.25}``); each event prunes every kind in
            proportion ``event.ratio / final schedule ratio``. Default: every kind follows the schedule.
        allocation: ``"global"`` or ``"per_layer"`` (default: the scorer's own).
        seed: seeds the scorer's randomness per event (gating-network initialisation, probes).
        diagnostics: a :class:`~plprune.pruners.base.Diagnostics` to measure curvature around each event.
        log_path: a JSON-lines file that receives one record per event.
        groups: an existing :class:`~plprune.gates.GroupSet` of ``model`` (instead of discovery).
        distributed: score as one of several data-parallel ranks (docs/distributed.md): ``batches`` then
            give each rank its own shard (rows ``rank::world`` of the global batch, as
            ``DistributedSampler`` does); PL's kernel features use every rank's samples and its gating
            network averages gradients over ranks; rank 0's scores and mask are broadcast, so masks are
            bit-identical on every rank; only rank 0 writes ``log_path``. ``None`` (default): on when a
            ``torch.distributed`` process group of more than one rank is initialised.

    Under ``DistributedDataParallel`` pass the wrapper or ``wrapper.module``: the pruner works on the inner
    module either way (its hooks, masks and ``pruner.model`` are the inner module's; scorers call the inner
    module, so scoring never goes through DDP's gradient reducer).
    """

    def __init__(
        self,
        model: nn.Module,
        scorer: GroupScorer,
        schedule: Schedule,
        *,
        kinds: Sequence[str] | str | None = None,
        loss_fn: LossFn | None = None,
        batches: Callable[[int], Any] | Sequence[Any] | Iterable[Any] | None = None,
        task: Task | None = None,
        example_inputs: Any = None,
        kind_ratios: Mapping[str, float] | None = None,
        allocation: str | None = None,
        seed: int = 0,
        diagnostics: Diagnostics | None = None,
        log_path: str | Path | None = None,
        groups: GroupSet | None = None,
        distributed: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise PlpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model = dist.unwrap(model)  # DDP: hooks and masks belong on the inner module
        if distributed is None:
            distributed = dist.active()
        elif distributed and not dist.active():
            raise PlpruneError(
                "distributed=True needs an initialised torch.distributed process group of more than one "
                "rank (launch with torchrun and call torch.distributed.init_process_group first)"
            )
        self.distributed = bool(distributed)
        if not isinstance(scorer, GroupScorer):
            raise PlpruneError(
                f"scorer must be a GroupScorer such as plprune.scorers.PL() or plprune.scorers.Random(), "
                f"got {type(scorer).__name__}"
            )
        if not isinstance(schedule, Schedule):
            raise PlpruneError(
                "schedule must be a plprune schedule (OneShot, AtInit, Linear, Iterative), "
                f"got {type(schedule).__name__}"
            )
        self.task = self._build_task(task, loss_fn, batches)
        if self.task is None and (scorer.needs_data or diagnostics is not None):
            raise PlpruneError(
                f"scorer {scorer.name!r}{' and diagnostics' if diagnostics is not None else ''} look at "
                "training data: pass loss_fn(model, batch) -> scalar loss and batches (a callable "
                "batches(step), a sequence of batches or an iterable such as a DataLoader), or task"
            )
        check_non_negative_int("seed", seed)
        if kinds is not None:
            kinds = check_kinds((kinds,) if isinstance(kinds, str) else tuple(kinds))
        if groups is None:
            if kinds_need_inputs(kinds) and example_inputs is None and isinstance(self.task, FunctionTask):
                example_inputs = self.task.model_inputs(0)
            groups = GroupSet(model, kinds, example_inputs=example_inputs)
        elif groups.model is not model:
            raise PlpruneError("groups belong to another model than the one given to the Pruner")
        self.model = model
        self.groups = groups
        self.scorer = scorer
        self.schedule = schedule
        self.seed = seed
        self.diagnostics = diagnostics
        self.log_path = Path(log_path) if log_path is not None else None
        self.allocation = check_choice("allocation", allocation or scorer.allocation, ALLOCATIONS)
        self.kind_ratios = self._check_kind_ratios(kind_ratios)
        for event in schedule.events():
            for kind, value in self.event_ratios(event).items():
                groups.check_ratio(value, kinds=(kind,))
        supported = getattr(scorer, "kinds", None)
        if supported is not None and any(k not in supported for k in groups.kinds):
            raise PlpruneError(
                f"scorer {scorer.name!r} scores {'/'.join(supported)} groups only, not "
                f"{'/'.join(k for k in groups.kinds if k not in supported)}"
            )
        self.events_done = 0
        self.last_step: int | None = None
        self.prune_seconds = 0.0
        self.diagnostics_seconds = 0.0
        self.records: list[dict[str, Any]] = []
        self.compacted = False
        self.optimizer: torch.optim.Optimizer | None = None
        self._optimizer_hooks: list[RemovableHandle] = []
        self.plugins: list[PrunerPlugin] = list(scorer.plugins())
        for plugin in self.plugins:
            plugin.bind(self)

    # -- set-up ------------------------------------------------------------------------------------
    @staticmethod
    def _build_task(task: Task | None, loss_fn: LossFn | None, batches: Any) -> Task | None:
        if task is not None:
            if loss_fn is not None or batches is not None:
                raise PlpruneError("give either task or loss_fn and batches, not both")
            return Pruner._check_task(task)
        if (loss_fn is None) != (batches is None):
            given, missing = ("loss_fn", "batches") if batches is None else ("batches", "loss_fn")
            raise PlpruneError(f"{given} was given without {missing}; scorers need both to look at data")
        return None if loss_fn is None else FunctionTask(loss_fn, batches)

    @staticmethod
    def _check_task(task: Task) -> Task:
        missing = [m for m in ("train_batch", "loss", "per_sample_output") if not hasattr(task, m)]
        if missing:
            raise PlpruneError(f"task lacks {missing}; a Task has train_batch, loss and per_sample_output")
        return task

    def use_task(self, task: Task) -> None:
        """Let scorers draw data from ``task`` from now on (the built-in trainer passes its own)."""
        self.task = self._check_task(task)

    def _check_kind_ratios(self, kind_ratios: Mapping[str, float] | None) -> dict[str, float] | None:
        if kind_ratios is None:
            return None
        unknown = set(kind_ratios) - set(self.groups.kinds)
        if unknown:
            raise PlpruneError(
                f"ratios given for kinds {sorted(unknown)} the model does not have ({self.groups.kinds})"
            )
        for kind, value in kind_ratios.items():
            check_probability(f"{kind} prune ratio", value)
        return dict(kind_ratios)

    def event_ratios(self, event: PruneEvent) -> dict[str, float]:
        """The pruned ratio of each kind after ``event``."""
        if self.kind_ratios is None:
            return {kind: event.ratio for kind in self.groups.kinds}
        final = self.schedule.events()[-1].ratio
        progress = event.ratio / final if final > 0 else 1.0
        return {kind: self.kind_ratios.get(kind, 0.0) * progress for kind in self.groups.kinds}

    # -- the optimizer -----------------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> Pruner:
        """Keep pruned groups at exactly zero under ``optimizer``: zero their gradients before each
        ``optimizer.step()`` and their weights after it. One optimizer per pruner."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PlpruneError(f"attach takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self.optimizer is optimizer:
            raise PlpruneError("this optimizer is already attached; attach it once")
        if self.optimizer is not None:
            raise PlpruneError(
                "the pruner is already attached to another optimizer; call detach() first (one optimizer "
                "per pruner: its hooks keep that optimizer's updates off pruned weights)"
            )
        self.optimizer = optimizer
        self._optimizer_hooks = [
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_update()),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_update()),
        ]
        return self

    def detach(self) -> None:
        """Remove the optimizer hooks (the gate hooks stay; :meth:`remove` takes everything off)."""
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        self.optimizer = None

    def remove(self) -> None:
        """Detach from the optimizer and take every gate hook off the model (pruned weights stay 0)."""
        self.detach()
        self.groups.remove_hooks()

    def before_update(self) -> None:
        """Gradients are ready: zero pruned groups' gradients, then the plugins (e.g. DPFPS's penalty)."""
        if self.compacted:
            return  # nothing pruned is left in the model
        self.groups.mask_gradients()
        for plugin in self.plugins:
            plugin.before_update(self, self.last_step or 0)

    def after_update(self) -> None:
        """The optimizer has stepped: re-zero pruned weights, then the plugins."""
        if self.compacted:
            return
        self.groups.enforce()
        for plugin in self.plugins:
            plugin.after_update(self, self.last_step or 0)

    # -- pruning -----------------------------------------------------------------------------------
    def step(self, step: int) -> list[dict[str, Any]]:
        """Call once per training step, before its forward pass; ``step`` counts optimizer steps done.
        Runs every pruning event due by ``step`` and returns their records (usually none)."""
        check_non_negative_int("step", step)
        if self.last_step is not None and step < self.last_step:
            raise PlpruneError(
                f"step went backwards: {step} after {self.last_step}; steps must not decrease (to go back, "
                "load a checkpoint with load_state_dict)"
            )
        self.last_step = step
        events = self.schedule.events()
        records = []
        while self.events_done < len(events) and events[self.events_done].step <= step:
            records.append(self.prune(events[self.events_done], step))
        for plugin in self.plugins:
            plugin.on_step_start(self, step)
        return records

    def prune(self, event: PruneEvent, step: int) -> dict[str, Any]:
        """Run one pruning event now; returns its record."""
        kill_point("prune-start")  # tests only (PLPRUNE_TEST_KILL_AT)
        if self.task is None and (self.scorer.needs_data or self.diagnostics is not None):
            raise PlpruneError(f"scorer {self.scorer.name!r} needs training data; none was given")
        started = time.perf_counter()
        record: dict[str, Any] = {
            "event": self.events_done,
            "step": step,
            "ratio": event.ratio,
            "kind_ratios": self.event_ratios(event),
            "method": self.scorer.name,
            "allocation": self.allocation,
        }
        if self.diagnostics:
            probe_batch = self.task.train_batch(step)
            record["before"] = self.diagnostics.measure(self.groups, self.task, probe_batch, self.seed)
        diag_seconds = time.perf_counter() - started
        scoring_started = time.perf_counter()
        context = PruneContext(self.groups, self.task, step, event.ratio, self.events_done, self.seed)
        context.distributed = self.distributed
        scores = self.scorer.scores(context).detach().cpu()  # per-group bookkeeping lives on the CPU
        mask = select_mask(self.groups, scores, self.event_ratios(event), self.allocation)
        if self.distributed:  # rank 0 decides: every rank gets its scores and mask, bit for bit
            scores = dist.broadcast(scores)
            mask = dist.broadcast(mask)
        self.scorer.before_mask(context, mask)  # e.g. FLAP's bias compensation, before the weights go
        self.groups.apply_mask(mask)
        scoring_seconds = time.perf_counter() - scoring_started
        after_started = time.perf_counter()
        if self.diagnostics:
            record["after"] = self.diagnostics.measure(self.groups, self.task, probe_batch, self.seed)
        diag_seconds += time.perf_counter() - after_started
        record.update(
            groups=self.groups.names,
            scores=[float(s) for s in scores],
            mask=[bool(m) for m in self.groups.mask],
            pruned_ratio={kind: self.groups.pruned_ratio(kind) for kind in self.groups.kinds},
            scoring_seconds=scoring_seconds,
            diagnostics_seconds=diag_seconds,
            **context.log,
        )
        self.prune_seconds += scoring_seconds
        self.diagnostics_seconds += diag_seconds
        self.events_done += 1
        self.records.append(record)
        if self.log_path is not None and dist.is_main():
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        kill_point("prune-logged")
        return record

    # -- compaction --------------------------------------------------------------------------------
    def compact(self) -> Any:
        """Remove the pruned groups from the model, in place, once the schedule has run its last event;
        the attached optimizer follows (its state carried over to the surviving slices, so training goes on
        exactly as with the masked model, only faster). Returns the
        :class:`~plprune.compaction.CompactionReport`. The pruner then has nothing left to mask."""
        from plprune.compaction import compact

        if self.compacted:
            raise PlpruneError("the model is already compacted")
        if not self.finished:
            remaining = [e.step for e in self.schedule.events()[self.events_done :]]
            raise PlpruneError(
                f"compact after the schedule's last event: events remain at steps {remaining} (pruning a "
                "compacted model further is not supported yet)"
            )
        example = None  # compaction falls back to the GroupSet's own example inputs
        if self.groups.example_inputs is None and isinstance(self.task, FunctionTask):
            example = self.task.model_inputs(0)
        _, report = compact(self.groups, inplace=True, optimizer=self.optimizer, example_inputs=example)
        self.compacted = True
        return report

    # -- reading -----------------------------------------------------------------------------------
    @property
    def mask(self) -> torch.Tensor:
        """The hard mask (``True`` = kept), one entry per group in ``groups.names`` order."""
        return self.groups.mask.clone()

    @property
    def finished(self) -> bool:
        """Every event of the schedule has run."""
        return self.events_done >= len(self.schedule.events())

    def pruned_ratio(self, kind: str | None = None) -> float:
        return self.groups.pruned_ratio(kind)

    def metrics(self) -> dict[str, Any]:
        """Pruned ratio per kind, seconds spent scoring and measuring, and the plugins' values."""
        out: dict[str, Any] = {f"pruned_{kind}_ratio": self.pruned_ratio(kind) for kind in self.groups.kinds}
        out["prune_seconds"] = self.prune_seconds
        out["diagnostics_seconds"] = self.diagnostics_seconds
        for plugin in self.plugins:
            out.update(plugin.metrics())
        return out

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (tensors and plain containers; ``torch.save`` it with the
        model and optimizer)."""
        return {
            "groups": self.groups.state_dict(),
            "events_done": self.events_done,
            "last_step": self.last_step,
            "prune_seconds": self.prune_seconds,
            "diagnostics_seconds": self.diagnostics_seconds,
            "scorer": self.scorer.state_dict(),
            "plugins": [plugin.state_dict() for plugin in self.plugins],
            "compacted": self.compacted,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (after loading the model's and optimizer's own state). A compacted
        pruner's state compacts the model again (and the attached optimizer's parameter lists): load it
        *before* the model's and optimizer's state, whose shapes are the compacted ones."""
        required = {"groups", "events_done", "prune_seconds", "diagnostics_seconds", "scorer"}
        if not isinstance(state, Mapping) or required - set(state):
            raise PlpruneError(f"not a Pruner state: expected the keys {sorted(required)}")
        if int(state["events_done"]) > len(self.schedule.events()):
            raise PlpruneError(
                f"the saved pruner ran {state['events_done']} events; this schedule has only "
                f"{len(self.schedule.events())}"
            )
        self.groups.load_state_dict(state["groups"])
        self.events_done = int(state["events_done"])
        last = state.get("last_step")
        self.last_step = None if last is None else int(last)
        self.prune_seconds = float(state["prune_seconds"])
        self.diagnostics_seconds = float(state["diagnostics_seconds"])
        self.scorer.load_state_dict(state["scorer"])
        plugin_states = list(state.get("plugins", []))
        if len(plugin_states) != len(self.plugins):
            raise PlpruneError(
                f"the saved pruner had {len(plugin_states)} plugins, this one has {len(self.plugins)}"
            )
        for plugin, plugin_state in zip(self.plugins, plugin_states, strict=True):
            plugin.load_state_dict(plugin_state)
        if state.get("compacted") and not self.compacted:
            self.compact()
