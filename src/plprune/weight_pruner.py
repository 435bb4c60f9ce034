"""Unstructured (weight-level) pruning in any training loop, driven by a sparsity method.

::

    method = plprune.sparsity.prox.ProximalMethod("l1", strength=1e-3)
    pruner = plprune.WeightPruner(model, method, plprune.Linear(100, 600, 100, 0.9))
    pruner.attach(optimizer)
    for step, batch in enumerate(loader):
        pruner.step(step)           # pruning events of the schedule; the method's pre-forward hook
        ...                         # the user's loop, unchanged

The counterpart of :class:`plprune.pruner.Pruner` for single weights (:class:`~plprune.sparsity.weights.
WeightUnits`: the weights of every Linear and Conv layer). Around each ``optimizer.step()`` the attached
hooks zero removed weights' gradients and call the method (e.g. GSM's top-Q gradient mask) before, and
re-zero removed weights and call the method (e.g. the proximal step) after. At each event of the schedule
the method's scores decide which weights stay: the global top ``(1 − ratio)·n`` among all prunable weights,
every tensor keeping at least one (:func:`plprune.keep.protected_top_k`), so every method reaches exactly
the schedule's sparsity. After the last event the method's :meth:`~plprune.sparsity.base.SparsityMethod.
finish` ends its regularisation and the mask alone stays in force (fine-tuning).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError
from plprune.keep import protected_top_k, prune_count
from plprune.schedules import PruneEvent, Schedule
from plprune.sparsity.base import SparsityMethod
from plprune.sparsity.weights import WeightUnits
from plprune.validation import check_non_negative_int


class WeightPruner:
    """Make the Linear/Conv weights of ``model`` sparse with ``method`` on ``schedule``.

    Args:
        model: any ``nn.Module``.
        method: a :class:`~plprune.sparsity.base.SparsityMethod` (the base class itself: magnitude pruning).
        schedule: when and how much (``OneShot``, ``Linear``, ``Iterative``, ``AtInit``); its final ratio is
            the target fraction of prunable weights removed.
        names: the parameters to make sparse (default: the ``weight`` of every Linear and Conv layer).
        log_path: a JSON-lines file that receives one record per event.
    """

    def __init__(
        self,
        model: nn.Module,
        method: SparsityMethod,
        schedule: Schedule,
        *,
        names: Sequence[str] | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        if not isinstance(method, SparsityMethod):
            raise PlpruneError(
                "method must be a plprune.sparsity SparsityMethod (e.g. ProximalMethod('l1')), "
                f"got {type(method).__name__}"
            )
        if not isinstance(schedule, Schedule):
            raise PlpruneError(
                "schedule must be a plprune schedule (OneShot, AtInit, Linear, Iterative), "
                f"got {type(schedule).__name__}"
            )
        self.units = WeightUnits(model, names)
        self.model = model
        self.method = method
        self.schedule = schedule
        self.log_path = Path(log_path) if log_path is not None else None
        self.events_done = 0
        self.last_step: int | None = None
        self.method_finished = False
        self.prune_seconds = 0.0
        self.records: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._optimizer_hooks: list[RemovableHandle] = []
        method.bind(self.units, schedule)

    # -- the optimizer -----------------------------------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> WeightPruner:
        """Hook ``optimizer``: before each step zero removed weights' gradients and run the method's
        ``before_update``; after it run the method's ``after_update`` (η = the step's learning rate) and
        re-zero removed weights."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PlpruneError(f"attach takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if self.optimizer is not None:
            raise PlpruneError("the pruner is already attached to an optimizer; call detach() first")
        self.optimizer = optimizer
        self._optimizer_hooks = [
            optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.before_update()),
            optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_update()),
        ]
        return self

    def detach(self) -> None:
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        self.optimizer = None

    def remove(self) -> None:
        """Detach and take any gates off the model (removed weights stay 0)."""
        self.detach()
        self.units.set_gates(None)

    def before_update(self) -> None:
        self.units.mask_pruned_gradients()
        if not self.method_finished:
            self.method.before_update(self.last_step or 0)

    def after_update(self) -> None:
        self.units.enforce()
        if not self.method_finished:
            lr = float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else 0.0
            self.method.after_update(self.last_step or 0, lr)
            self.units.enforce()

    # -- pruning -----------------------------------------------------------------------------------
    def step(self, step: int) -> list[dict[str, Any]]:
        """Call once per training step before its forward pass (``step`` = optimizer steps done): runs
        every event due by ``step``, then the method's pre-forward hook (or its ``finish`` after the last
        event). Returns the events' records."""
        check_non_negative_int("step", step)
        if self.last_step is not None and step < self.last_step:
            raise PlpruneError(f"step went backwards: {step} after {self.last_step}")
        self.last_step = step
        events = self.schedule.events()
        records = []
        while self.events_done < len(events) and events[self.events_done].step <= step:
            records.append(self.prune(events[self.events_done], step))
        if self.finished and not self.method_finished:
            self._finish_method()
        elif not self.method_finished:
            self.method.on_step_start(step)
        return records

    def _finish_method(self) -> None:
        self.method.finish()
        self.method_finished = True
        self.units.enforce()

    def prune(self, event: PruneEvent, step: int) -> dict[str, Any]:
        """Run one event: keep the top ``(1 − ratio)·n`` weights by the method's scores."""
        started = time.perf_counter()
        units = self.units
        scores = torch.as_tensor(self.method.scores()).detach().double().cpu()
        if scores.shape != (len(units),) or not bool(torch.isfinite(scores).all()):
            raise PlpruneError(
                f"method {self.method.name!r} gave scores that are not {len(units)} finite numbers"
            )
        keep = len(units) - prune_count(len(units), event.ratio)
        alive = units.alive().cpu()
        mask = protected_top_k(scores, min(keep, int(alive.sum())), units.layer_ids, alive=alive)
        units.apply_mask(mask)
        seconds = time.perf_counter() - started
        self.prune_seconds += seconds
        record = {
            "event": self.events_done,
            "step": step,
            "ratio": event.ratio,
            "method": self.method.name,
            "kind": "weight",
            "sparsity": units.sparsity(),
            "layer_sparsity": units.layer_sparsity(),
            "scoring_seconds": seconds,
        }
        self.events_done += 1
        self.records.append(record)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    # -- reading -----------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.events_done >= len(self.schedule.events())

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pruned_weight_ratio": self.units.sparsity(),
            "prune_seconds": self.prune_seconds,
        }
        if not self.method_finished:
            out.update(self.method.metrics())
        return out

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "units": self.units.state_dict(),
            "events_done": self.events_done,
            "last_step": self.last_step,
            "method_finished": self.method_finished,
            "prune_seconds": self.prune_seconds,
            "method": self.method.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; load it *before* the model's state (a method with gates on single
        weights registers them again, which renames the weights in the model's state dict)."""
        required = {"units", "events_done", "method_finished", "method"}
        if not isinstance(state, Mapping) or required - set(state):
            raise PlpruneError(f"not a WeightPruner state: expected the keys {sorted(required)}")
        if int(state["events_done"]) > len(self.schedule.events()):
            raise PlpruneError(
                f"the saved pruner ran {state['events_done']} events; this schedule has only "
                f"{len(self.schedule.events())}"
            )
        self.units.load_state_dict(state["units"])
        self.events_done = int(state["events_done"])
        last = state.get("last_step")
        self.last_step = None if last is None else int(last)
        self.prune_seconds = float(state.get("prune_seconds", 0.0))
        self.method_finished = bool(state["method_finished"])
        if self.method_finished:
            self.units.set_gates(None)  # the checkpoint's weights already hold what finish() did
        else:
            self.method.load_state_dict(state["method"])
