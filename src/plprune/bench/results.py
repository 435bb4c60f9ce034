"""Reading finished runs of a results directory and the statistics the report tables use.

Metric families follow the paper's tables: masked LM (Tables 1/2: train PPL at three checkpoints, test PPL,
ΔPPL) and classification (Tables 3/5: train loss at two checkpoints, test accuracy at two checkpoints and
final). Means ± sample standard deviations over seeds; ratios are paired by seed.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Runs = dict[str, dict[int, dict[str, Any]]]  # variant -> seed -> summary


@dataclass
class LoadedResults:
    """``tasks[task][variant][seed]`` = the run's ``summary.json``; unreadable files and failed runs named."""

    tasks: dict[str, Runs] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def load_results(out: Path) -> LoadedResults:
    """Every ``runs/TASK/VARIANT-sSEED/summary.json`` under ``out``; a corrupt one is skipped and named."""
    loaded = LoadedResults()
    runs_dir = Path(out) / "runs"
    if not runs_dir.is_dir():
        return loaded
    for run_dir in sorted(p for p in runs_dir.glob("*/*") if p.is_dir()):
        task, name = run_dir.parent.name, run_dir.name
        variant, sep, seed_text = name.rpartition("-s")
        if not sep or not seed_text.isdigit():
            loaded.skipped.append(f"{run_dir}: not a VARIANT-sSEED run directory")
            continue
        failed = run_dir / "failed.txt"
        summary_path = run_dir / "summary.json"
        if not summary_path.is_file():
            if failed.is_file():
                first = failed.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
                loaded.failed.append(f"{task}/{name}: {first[0] if first else 'failed'}")
            continue
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if not isinstance(summary, dict) or "final" not in summary or "history" not in summary:
                raise ValueError("no 'final' and 'history' entries")
        except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError
            loaded.skipped.append(f"{summary_path}: {error}")
            continue
        loaded.tasks.setdefault(task, {}).setdefault(variant, {})[int(seed_text)] = summary
    return loaded


def mean_std(values: list[float | None]) -> tuple[float, float]:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def fmt(values: list[float | None], digits: int = 2) -> str:
    """``mean ± std`` of the finite values, or ``n/a``."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(mean) else "n/a"


def periodic(history: list[dict]) -> list[dict]:
    """The periodic evaluations (not the final full-test record)."""
    return [r for r in history if not r.get("final")]


def at_step(history: list[dict], step: int, key: str) -> float | None:
    return next((r.get(key) for r in periodic(history) if r["step"] == step), None)


def steps_to_reach(history: list[dict], key: str, target: float, higher_is_better: bool) -> int | None:
    """First evaluated step whose ``key`` is at least as good as ``target`` (``None``: never)."""

    def reached(value: float | None) -> bool:
        if value is None:
            return False
        return value >= target if higher_is_better else value <= target

    hit = next((r["step"] for r in periodic(history) if reached(r.get(key))), None)
    if hit is None and history and reached(history[-1].get(key)):
        hit = history[-1]["step"]
    return hit


def wall_at_step(history: list[dict], step: int) -> float | None:
    return next((r.get("wall_time") for r in history if r["step"] == step), None)


def metric_family(summary: dict) -> dict[str, Any]:
    """Which columns a run's task reports (paper Tables 1/2 for MLM, 3/5 for classification)."""
    if "test_ppl" in summary["final"]:
        return {
            "kind": "mlm",
            "train_key": "train_ppl",
            "train_title": "train PPL",
            "test_key": "test_ppl",
            "test_title": "test PPL",
            "higher_is_better": False,
            "train_checkpoints": 3,
        }
    return {
        "kind": "classification",
        "train_key": "train_loss",
        "train_title": "train loss",
        "test_key": "test_accuracy",
        "test_title": "test acc %",
        "higher_is_better": True,
        "train_checkpoints": 2,
    }


def checkpoints(summary: dict, count: int) -> list[int]:
    """``count`` evenly spaced periodic evaluation steps ending at the last one."""
    steps = [r["step"] for r in periodic(summary["history"])]
    if not steps:
        return []
    return sorted({steps[math.ceil(i * len(steps) / count) - 1] for i in range(1, count + 1)})


def train_wall(summary: dict) -> float:
    """Training wall time (pruning work included, curvature diagnostics excluded)."""
    final = summary["final"]
    return float(final["wall_time"]) - float(final.get("diagnostics_seconds", 0.0))
