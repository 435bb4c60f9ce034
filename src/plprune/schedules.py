"""Pruning schedules: "at step s, the pruned ratio must be r".

Each schedule lists its pruning events ``(step, ratio)``: before optimizer step ``step`` (0-based,
i.e. after ``step`` updates) the pruned ratio becomes ``ratio``. Ratios never decrease.

* :class:`OneShot` {t, r} — paper: BERT {5 epochs, 75%}, Switch {5, 50%}.
* :class:`AtInit` — one-shot at step 0 (SNIP/GraSP style, paper Table 8 "at 0").
* :class:`Linear` — from ``start`` prune the same number of groups every ``every`` steps (one epoch in
  the paper: VGG from epoch 15, ResNet from epoch 5) until ``final_ratio`` at ``end``.
* :class:`Iterative` — IMP-style rounds; the kept fraction shrinks geometrically,
  ``r_j = 1 − (1 − r_f)^{j/R}`` for rounds j = 1..R.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

from plprune.errors import PlpruneError
from plprune.validation import check_non_negative_int, check_positive_int, check_probability


@dataclass(frozen=True)
class PruneEvent:
    step: int
    ratio: float


class Schedule(ABC):
    """Base class: subclasses list their pruning events."""

    @abstractmethod
    def events(self) -> list[PruneEvent]:
        """The pruning events, in step order."""

    def ratio_at(self, step: int) -> float:
        """The pruned ratio in force during optimizer step ``step`` (0-based)."""
        ratio = 0.0
        for event in self.events():
            if event.step <= step:
                ratio = event.ratio
        return ratio

    def validate(self, total_steps: int) -> None:
        """Raise if an event falls at or after the end of training."""
        for event in self.events():
            if event.step >= total_steps:
                raise PlpruneError(
                    f"pruning at step {event.step} is not before the end of training ({total_steps} steps); "
                    "prune earlier or train longer"
                )


@dataclass(frozen=True)
class OneShot(Schedule):
    step: int
    ratio: float

    def __post_init__(self) -> None:
        check_non_negative_int("prune step", self.step)
        check_probability("prune ratio", self.ratio)

    def events(self) -> list[PruneEvent]:
        return [PruneEvent(self.step, self.ratio)]


class AtInit(OneShot):
    def __init__(self, ratio: float) -> None:
        super().__init__(0, ratio)


@dataclass(frozen=True)
class Linear(Schedule):
    start: int
    end: int
    every: int
    final_ratio: float

    def __post_init__(self) -> None:
        check_non_negative_int("linear schedule start", self.start)
        check_positive_int("linear schedule interval", self.every)
        check_probability("prune ratio", self.final_ratio)
        if self.end < self.start:
            raise PlpruneError(f"linear schedule end ({self.end}) must not precede its start ({self.start})")

    def events(self) -> list[PruneEvent]:
        steps = list(range(self.start, self.end + 1, self.every))
        n = len(steps)
        return [PruneEvent(s, self.final_ratio * (j + 1) / n) for j, s in enumerate(steps)]


@dataclass(frozen=True)
class Iterative(Schedule):
    start: int
    every: int
    rounds: int
    final_ratio: float

    def __post_init__(self) -> None:
        check_non_negative_int("iterative schedule start", self.start)
        check_positive_int("iterative schedule interval", self.every)
        check_positive_int("iterative rounds", self.rounds)
        check_probability("prune ratio", self.final_ratio)

    def events(self) -> list[PruneEvent]:
        keep = 1.0 - self.final_ratio
        return [
            PruneEvent(self.start + j * self.every, 1.0 - keep ** ((j + 1) / self.rounds))
            for j in range(self.rounds)
        ]


_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(e|ep|epoch|epochs|s|step|steps)?\s*$")


def parse_time(text: str | int | float, steps_per_epoch: int) -> int:
    """``"5e"`` / ``"5 epochs"`` → 5·steps_per_epoch; ``"800"`` / ``"800s"`` → 800 steps."""
    match = _TIME.match(str(text))
    if not match:
        raise PlpruneError(f"cannot read time {text!r}; use steps (e.g. 800) or epochs (e.g. 5e or 0.5e)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    if unit.startswith("e"):
        return round(value * steps_per_epoch)
    if value != int(value):
        raise PlpruneError(f"a step count must be an integer, got {text!r}")
    return int(value)


def check_time(name: str, value: str | int) -> str | int:
    """Return ``value`` if :func:`parse_time` can read it (checked before a run starts), else raise naming
    the setting ``name``."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PlpruneError(f"{name} must be steps (e.g. 800) or epochs (e.g. 5e), got {value!r}")
    try:
        parse_time(value, 1)
    except PlpruneError as error:
        raise PlpruneError(f"{name}: {error}") from error
    return value


SCHEDULES = ("one-shot", "at-init", "linear", "iterative")


def build_schedule(
    kind: str,
    ratio: float,
    at: int,
    *,
    end: int | None = None,
    every: int | None = None,
    rounds: int = 3,
) -> Schedule:
    """Build a schedule from CLI-style settings (times already converted to steps)."""
    if kind == "one-shot":
        return OneShot(at, ratio)
    if kind == "at-init":
        return AtInit(ratio)
    if kind == "linear":
        if end is None or every is None:
            raise PlpruneError(
                "the linear schedule needs an end (--prune-end) and an interval (--prune-every)"
            )
        return Linear(at, end, every, ratio)
    if kind == "iterative":
        if every is None:
            raise PlpruneError("the iterative schedule needs an interval (--prune-every)")
        return Iterative(at, every, rounds, ratio)
    raise PlpruneError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
