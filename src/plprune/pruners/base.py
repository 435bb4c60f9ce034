"""The shared pruning machinery: a scorer ranks groups; a callback applies a schedule during training.

Data flow (docs/architecture.md): model → GroupSet → scorer.scores(context) → protected TopK → hard mask
→ training continues with the mask enforced. Every method (PL, magnitude, Taylor, SNIP, ...) is a
:class:`GroupScorer`; the :class:`PruningCallback` is the same for all of them.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.keep import ALLOCATIONS, select_mask
from plprune.schedules import PruneEvent, Schedule
from plprune.train.callbacks import Callback
from plprune.validation import check_choice, check_probability

__all__ = ["ALLOCATIONS", "Diagnostics", "GroupScorer", "PruneContext", "PruningCallback", "select_mask"]

if TYPE_CHECKING:
    from plprune.tasks.base import Task
    from plprune.train.loop import Trainer

PRUNING_LOG = "pruning.jsonl"


@dataclass
class PruneContext:
    """What a scorer may use at a pruning event. ``log`` collects method-specific details to record."""

    groups: GroupSet
    task: Task
    step: int
    ratio: float
    event_index: int
    seed: int
    log: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.groups.model


class GroupScorer(ABC):
    """Scores for groups: higher = more worth keeping. One subclass per pruning criterion.

    ``allocation`` says how scores are compared: ``"global"`` (default) ranks all groups of a kind together
    (layer sparsity emerges from the scores, as in PL, IMP, SNIP); ``"per_layer"`` removes the same
    fraction from every layer, ranking only within a layer (FPGM and CHIP, whose scores are not
    comparable across layers).
    """

    name: str = "scorer"
    allocation: str = "global"

    @abstractmethod
    def scores(self, context: PruneContext) -> Tensor:
        """A finite ``(p,)`` tensor of scores for ``context.groups``."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class Diagnostics:
    """Model-level curvature measured around each pruning event: NTK condition number (App. D) over the
    group weights, and the Hutchinson trace of the training-loss Hessian w.r.t. the same weights."""

    def __init__(self, samples: int = 16, probes: int = 8, chunk_size: int | None = 1) -> None:
        self.samples = samples
        self.probes = probes
        self.chunk_size = chunk_size

    def measure(self, groups: GroupSet, task: Task, batch: tuple[Tensor, ...], seed: int) -> dict[str, float]:
        from plprune.curvature import model_condition_number, model_hessian_trace
        from plprune.seeding import generator

        small = tuple(t[: self.samples] for t in batch)
        condition = model_condition_number(
            groups.model, task.per_sample_output, small, params=groups.param_names, chunk_size=self.chunk_size
        )
        trace = model_hessian_trace(
            groups.model,
            task.loss,
            small,
            params=groups.param_names,
            num_probes=self.probes,
            generator=generator(seed, "diagnostic-probes"),
        )
        return {
            "ntk_condition_number": condition,
            "hessian_trace": float(trace.mean),
            "hessian_trace_se": float(trace.standard_error),
        }


class PruningCallback(Callback):
    """Prune ``groups`` by ``scorer`` on ``schedule`` during training; keep pruned weights at zero.

    At each event: optional diagnostics before, scores, protected TopK, hard mask, diagnostics after;
    one JSON record per event in ``RUN_DIR/pruning.jsonl`` (scores, mask, timing, scorer details).
    """

    def __init__(
        self,
        groups: GroupSet,
        scorer: GroupScorer,
        schedule: Schedule,
        *,
        seed: int = 0,
        diagnostics: Diagnostics | None = None,
        log_path: Path | None = None,
        kind_ratios: Mapping[str, float] | None = None,
        allocation: str | None = None,
    ) -> None:
        """``kind_ratios`` (e.g. ``{"head": 0.5, "expert": 0.25}``) sets each kind's final ratio; each
        event then prunes every kind in proportion ``event.ratio / final schedule ratio``. Without it,
        every kind follows the schedule's ratios."""
        self.groups = groups
        self.scorer = scorer
        self.schedule = schedule
        self.seed = seed
        self.diagnostics = diagnostics
        self.log_path = Path(log_path) if log_path else None
        self.events_done = 0
        self.prune_seconds = 0.0
        self.diagnostics_seconds = 0.0
        self.records: list[dict[str, Any]] = []
        self.kind_ratios = dict(kind_ratios) if kind_ratios else None
        self.allocation = check_choice("allocation", allocation or scorer.allocation, ALLOCATIONS)
        if self.kind_ratios is not None:
            unknown = set(self.kind_ratios) - set(groups.kinds)
            if unknown:
                raise PlpruneError(
                    f"ratios given for kinds {sorted(unknown)} the model does not have ({groups.kinds})"
                )
            for kind, value in self.kind_ratios.items():
                check_probability(f"{kind} prune ratio", value)
        for event in schedule.events():
            for kind, value in self.event_ratios(event).items():
                groups.check_ratio(value, kinds=(kind,))

    def event_ratios(self, event: PruneEvent) -> dict[str, float]:
        """The pruned ratio of each kind after ``event``."""
        if self.kind_ratios is None:
            return {kind: event.ratio for kind in self.groups.kinds}
        final = self.schedule.events()[-1].ratio
        progress = event.ratio / final if final > 0 else 1.0
        return {kind: self.kind_ratios.get(kind, 0.0) * progress for kind in self.groups.kinds}

    def on_train_start(self, trainer: Trainer) -> None:
        self.schedule.validate(trainer.config.steps)
        if self.log_path is None:
            self.log_path = trainer.run_dir / PRUNING_LOG
        if self.log_path.exists():  # resumed: keep only the events the checkpoint has seen
            from plprune.train.checkpoint import atomic_write_text

            lines = self.log_path.read_text(encoding="utf-8").splitlines(keepends=True)
            atomic_write_text(self.log_path, "".join(lines[: self.events_done]))

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        events = self.schedule.events()
        while self.events_done < len(events) and events[self.events_done].step <= step:
            self.prune(trainer.task, events[self.events_done], step)

    def prune(self, task: Task, event: PruneEvent, step: int) -> dict[str, Any]:
        """Run one pruning event now; returns its log record."""
        started = time.perf_counter()
        record: dict[str, Any] = {
            "event": self.events_done,
            "step": step,
            "ratio": event.ratio,
            "kind_ratios": self.event_ratios(event),
            "method": self.scorer.name,
            "allocation": self.allocation,
        }
        probe_batch = task.train_batch(step)
        if self.diagnostics:
            record["before"] = self.diagnostics.measure(self.groups, task, probe_batch, self.seed)
        diag_seconds = time.perf_counter() - started
        scoring_started = time.perf_counter()
        context = PruneContext(self.groups, task, step, event.ratio, self.events_done, self.seed)
        scores = self.scorer.scores(context)
        mask = select_mask(self.groups, scores, self.event_ratios(event), self.allocation)
        self.groups.apply_mask(mask)
        scoring_seconds = time.perf_counter() - scoring_started
        after_started = time.perf_counter()
        if self.diagnostics:
            record["after"] = self.diagnostics.measure(self.groups, task, probe_batch, self.seed)
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
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        return record

    def on_after_backward(self, trainer: Trainer, step: int) -> None:
        self.groups.mask_gradients()

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.groups.enforce()

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for kind in self.groups.kinds:
            record[f"pruned_{kind}_ratio"] = self.groups.pruned_ratio(kind)
        record["prune_seconds"] = self.prune_seconds
        record["diagnostics_seconds"] = self.diagnostics_seconds

    def state_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups.state_dict(),
            "events_done": self.events_done,
            "prune_seconds": self.prune_seconds,
            "diagnostics_seconds": self.diagnostics_seconds,
            "scorer": self.scorer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups.load_state_dict(state["groups"])
        self.events_done = int(state["events_done"])
        self.prune_seconds = float(state["prune_seconds"])
        self.diagnostics_seconds = float(state["diagnostics_seconds"])
        self.scorer.load_state_dict(state["scorer"])
