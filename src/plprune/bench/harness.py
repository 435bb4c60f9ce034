"""The benchmarks' shared harness: interleaved timing rounds, machine and version metadata, markdown tables.

Every timing in ``plprune bench-latency`` and in ``benchmarks/*.py`` follows one protocol
(:func:`time_rounds`): the entries to compare (dense vs compacted, masked vs compacted, ...) are called in
*rounds*, each round calling every entry once, the starting entry rotating from round to round, after
``warmup`` untimed rounds. Drift of a shared machine slower than a round then hits all entries alike, and
the *paired* ratio of two entries (:func:`paired_ratios`: the reference's time / the entry's time within
the same round; its median over rounds in :func:`summarize_rounds`) cancels it. Medians and quartiles use
the inclusive method of :func:`statistics.quantiles` (linear interpolation between order statistics).

:func:`machine` and :func:`versions` record where and with what a benchmark ran (CPU model, cores, load
average, Python/torch/plprune and other versions, the git commit); :func:`markdown_table` writes the
GitHub-markdown tables of the reports.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from plprune.errors import PlpruneError

__all__ = [
    "git_commit",
    "load_average",
    "machine",
    "markdown_table",
    "paired_ratios",
    "progress_printer",
    "quartiles",
    "summarize",
    "summarize_rounds",
    "time_rounds",
    "versions",
]


# -- timing -------------------------------------------------------------------------------------------------
def time_rounds(
    calls: Mapping[str, Callable[..., Any]],
    repeats: int,
    warmup: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    inputs: Callable[[int], Sequence[Any]] | None = None,
    rotate: bool = True,
    inference: bool = True,
) -> dict[str, list[float]]:
    """Seconds per call of each entry of ``calls``, timed in interleaved rounds.

    ``warmup`` untimed rounds, then ``repeats`` timed ones; every round calls every entry once
    (``time.perf_counter`` around each call), starting from the entry after the previous round's start
    (``rotate``; else always in the order of ``calls``). ``inputs(r)``: the arguments of round ``r``, the
    same for every entry (warm-up rounds are numbered ``-warmup .. -1``, timed rounds ``0 .. repeats-1``);
    without it the entries are called with none. ``inference``: run under :func:`torch.inference_mode`
    (``False`` for training steps, which need autograd). ``progress`` is told ``"round i/repeats"``.
    """
    if not calls:
        raise PlpruneError("time_rounds needs at least one entry to time")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise PlpruneError(f"time_rounds: repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise PlpruneError(f"time_rounds: warmup must be an integer >= 0, got {warmup!r}")
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    context = torch.inference_mode() if inference else contextlib.nullcontext()
    with context:
        for r in range(-warmup, repeats):
            args = tuple(inputs(r)) if inputs is not None else ()
            shift = r % len(names) if rotate and r >= 0 else 0
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                calls[name](*args)
                if r >= 0:
                    times[name].append(time.perf_counter() - started)
            if progress is not None and r >= 0:
                progress(f"round {r + 1}/{repeats}")
    return times


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(Q1, median, Q3)`` of ``values`` (inclusive method); the quartiles are NaN for a single value."""
    if not values:
        raise PlpruneError("quartiles of no values")
    if len(values) < 2:
        return math.nan, float(values[0]), math.nan
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, statistics.median(values), q3


def summarize(seconds: Sequence[float], per: int = 1) -> dict[str, Any]:
    """Median, quartiles and minimum of ``seconds`` in milliseconds per call (``per``: per sample of a call
    of ``per`` samples), and the number of calls."""
    q1, median, q3 = quartiles(seconds)
    scale = 1000 / per
    return {
        "median_ms": scale * median,
        "q1_ms": scale * q1,
        "q3_ms": scale * q3,
        "min_ms": scale * min(seconds),
        "runs": len(seconds),
    }


def paired_ratios(times: Mapping[str, Sequence[float]], reference: str, name: str) -> list[float]:
    """Per round, ``reference``'s time / ``name``'s time (a speed-up of ``name`` over ``reference``)."""
    if reference not in times or name not in times:
        raise PlpruneError(f"paired_ratios: no times for {reference!r} or {name!r}; have {list(times)}")
    return [r / t for r, t in zip(times[reference], times[name], strict=True)]


def summarize_rounds(
    times: Mapping[str, Sequence[float]], reference: str = "dense", per: int = 1
) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per entry, plus, when ``reference`` was timed, the *paired* speed-up over it: the
    median and quartiles over rounds of the reference's time / the entry's time in the same round."""
    rows = {name: summarize(seconds, per) for name, seconds in times.items()}
    if reference in times:
        for name in times:
            q1, median, q3 = quartiles(paired_ratios(times, reference, name))
            rows[name]["paired_speedup"] = median
            rows[name]["paired_speedup_iqr"] = [q1, q3]
    return rows


def progress_printer(prefix: str, enabled: bool) -> Callable[[str], None]:
    """A one-line progress display on stderr (``prefix: text``, rewritten in place), or a no-op."""

    def say(text: str) -> None:
        if enabled:
            print(f"\r\033[K{prefix}: {text}", end="", file=sys.stderr, flush=True)

    return say


# -- metadata -----------------------------------------------------------------------------------------------
def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01 (NaN where the system has none)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    return [round(x, 2) for x in load]


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(**extra: Any) -> dict[str, Any]:
    """Where a benchmark runs: platform, CPU model, cores, torch's thread count and the load average at the
    start (other jobs sharing the cores show there); ``extra`` entries (e.g. ``note=``) are added."""
    return {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
        **extra,
    }


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The short commit hash of the checkout at ``cwd`` (default: this package's), ``None`` outside git."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    return None


def _version_of_distribution(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _version_of(name: str) -> str:
    with contextlib.suppress(ImportError, AttributeError):
        return str(importlib.import_module(name).__version__)
    with contextlib.suppress(PackageNotFoundError):
        return version(name)
    return "not installed"


def versions(*modules: str) -> dict[str, str]:
    """Python, plprune (the installed distribution), torch and each of ``modules`` (its ``__version__``,
    else its distribution's version, else ``"not installed"``), and the git commit when there is one."""
    found = {"python": platform.python_version(), "plprune": _version_of_distribution("plprune")}
    found["torch"] = torch.__version__
    for name in modules:
        found[name] = _version_of(name)
    commit = git_commit()
    if commit:
        found["git_commit"] = commit
    return found


# -- reports ------------------------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GitHub-markdown table as report lines: the header, the ``|---|`` separator and one line per row
    (cells as ``str``; an empty cell stays empty). Unpadded, for reports whose cells are already formatted
    strings; :func:`plprune.table.format_table` pads dict rows into aligned columns (terminal output and
    the ``plprune compare`` report)."""
    if not header:
        raise PlpruneError("markdown_table needs at least one column")

    def line(cells: Sequence[Any]) -> str:
        return "|" + "|".join(f" {c} " if str(c) != "" else " " for c in cells) + "|"

    lines = [line(header), "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise PlpruneError(f"markdown_table: a row has {len(row)} cells for {len(header)} columns: {row}")
        lines.append(line(row))
    return lines
