"""Test-only fault injection: ``PLPRUNE_TEST_KILL_AT`` makes the process SIGKILL itself at a named point.

The kill tests (``tests/test_kill_resume.py``) and ``benchmarks/kill_resume.py`` need to die at moments a
timer cannot hit reliably: halfway through writing a checkpoint, between the rename of a checkpoint and the
write of its checksum, in the middle of a pruning event. ``PLPRUNE_TEST_KILL_AT="POINT:N[,POINT:N...]"``
kills the process (``SIGKILL``: no handler, no ``finally``, no flush — as a power cut or the OOM killer would)
the ``N``-th time this process reaches ``POINT``. Points:

- ``step-end``: after an optimizer step, before that step's evaluation and checkpoint;
- ``checkpoint-write``: half of the checkpoint's bytes are in the temp file (fsynced), half are not;
- ``checkpoint-rotate``: the previous checkpoint is rotated, the new one is not yet renamed into place;
- ``checkpoint-digest``: the new checkpoint is in place, its ``.sha256`` is not yet written;
- ``checkpoint-done``: the checkpoint and its checksum are written;
- ``prune-start``: a pruning event is due, nothing of it has run;
- ``prune-logged``: the event's mask is applied and its line appended to ``pruning.jsonl``;
- ``compress-stage``: a ``plprune compress`` stage is finished and recorded in its ``state.json``.

Unset (always, outside tests), :func:`kill_point` returns at once.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV_VAR = "PLPRUNE_TEST_KILL_AT"
POINTS = (
    "step-end",
    "checkpoint-write",
    "checkpoint-rotate",
    "checkpoint-digest",
    "checkpoint-done",
    "prune-start",
    "prune-logged",
    "compress-stage",
)

_reached: Counter[str] = Counter()


def parse_spec(spec: str) -> list[tuple[str, int]]:
    """``"checkpoint-write:2,prune-start"`` → ``[("checkpoint-write", 2), ("prune-start", 1)]``."""
    items = []
    for item in spec.split(","):
        if not item.strip():
            continue
        point, _, count = item.strip().partition(":")
        if point not in POINTS or (count and not count.isdigit()) or (count and int(count) < 1):
            raise ValueError(f"{ENV_VAR}: bad item {item!r}; expected POINT[:N], POINT in {POINTS}, N >= 1")
        items.append((point, int(count or 1)))
    return items


def kill_point(point: str) -> None:
    """SIGKILL this process if ``PLPRUNE_TEST_KILL_AT`` asks for the current occurrence of ``point``."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    _reached[point] += 1
    if (point, _reached[point]) in parse_spec(spec):
        os.kill(os.getpid(), signal.SIGKILL)
