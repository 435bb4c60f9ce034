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
            problem = summary_problem(summary) or _config_problem(run_dir / "config.json")
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            loaded.skipped.append(f"{summary_path}: {error}")
            continue
        loaded.tasks.setdefault(task, {}).setdefault(variant, {})[int(seed_text)] = summary
    return loaded


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bools too: records hold ``"final": true``


def _record_problem(record: Any, where: str) -> str | None:
    if not isinstance(record, dict):
        return f"{where} is not a table"
    if isinstance(record.get("step"), bool) or not isinstance(record.get("step"), int):
        return f"{where} has no integer 'step'"
    bad = [k for k, v in record.items() if v is not None and not _is_number(v)]
    return f"{where} has non-numeric {bad}" if bad else None


def summary_problem(summary: Any) -> str | None:
    """What makes ``summary`` unlike a ``summary.json`` of ``plprune train`` (``None``: nothing), checked
    before the report computes with it: numeric records with integer steps, a final test metric."""
    if not isinstance(summary, dict) or not isinstance(summary.get("final"), dict):
        return "no 'final' table"
    if not isinstance(summary.get("history"), list):
        return "no 'history' list"
    if isinstance(summary.get("steps"), bool) or not isinstance(summary.get("steps"), int):
        return "no integer 'steps'"
    final = summary["final"]
    if not any(_is_number(final.get(k)) for k in ("test_ppl", "test_accuracy")):
        return "the final record has no test_ppl or test_accuracy"
    if not _is_number(final.get("wall_time")):
        return "the final record has no wall_time"
    for index, record in enumerate([final, *summary["history"]]):
        problem = _record_problem(record, "the final record" if index == 0 else f"history record {index}")
        if problem:
            return problem
    events = summary.get("pruning_events", [])
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        return "'pruning_events' is not a list of tables"
    return None


def _config_problem(path: Path) -> str | None:
    from plprune.errors import PlpruneError
    from plprune.run_config import RunConfig

    try:
        RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:  # PlpruneError is a ValueError
        reason = error if isinstance(error, PlpruneError) else f"unreadable ({error})"
        return f"its config.json is not a run config: {reason}"
    return None


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
