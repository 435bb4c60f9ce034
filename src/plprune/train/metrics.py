"""Metrics as JSON lines: one object per evaluation (step, epoch, losses, perplexities, lr, wall time)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from plprune.train.checkpoint import atomic_write_text


def perplexity(mean_loss: float) -> float:
    """exp(mean cross-entropy), capped to avoid overflow to inf in logs."""
    return math.exp(min(mean_loss, 700.0))


def read_jsonl(path: Path, *, torn_tail: bool = False) -> list[dict[str, Any]]:
    """All records of a JSONL file (empty list if it does not exist). ``torn_tail``: skip a last line that
    is not valid JSON or lacks its newline (an append cut short by a crash)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if torn_tail and lines and not text.endswith("\n"):
        lines = lines[:-1]
    records = []
    for index, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if torn_tail and index == len(lines) - 1:
                break
            raise
    return records


class JsonlWriter:
    """Append-only JSONL log; each record is flushed so an interrupted run keeps what it logged."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """Keep only non-final records with ``record['step'] <= step`` (used on resume), atomically. A torn
        last line (the process was killed while appending it) is dropped."""
        records = read_jsonl(self.path, torn_tail=True)
        kept = [r for r in records if r.get("step", 0) <= step and not r.get("final")]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
