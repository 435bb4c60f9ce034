"""Summarise a finished ``plprune compare --suite sparse-course`` folder: one table per unit kind.

For every plan (unit kind × target ratio) and method it reads each run's ``summary.json``,
``metrics.jsonl`` and ``pruning.jsonl`` and reports

* the final test accuracy, mean ± sample std over seeds, and the paired difference (per seed, same data
  order) to dense and to the plan's reference method (``magnitude`` for single weights, ``pl`` for filters),
  with a 95% paired-t interval; a method "beats" the reference only when that interval excludes 0;
* how much of the removal the regulariser had done by itself: the fraction of units at exactly zero at the
  last evaluation before the final pruning event (the method's ``*_zero_fraction`` metric), beside the
  ratio that the schedule's masks had already imposed at that moment. The difference is the regulariser's
  own share (docs/sparsity.md, "Choosing λ").

Writes ``SUMMARY.md``, ``summary.json`` and ``accuracy.png`` into the suite folder.

    python benchmarks/sparse_course_summary.py benchmarks/results/sparse_course
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from plprune.bench.stats import t_quantile
from plprune.train.metrics import read_jsonl

REFERENCE = {"weight": "magnitude", "filter": "pl"}


def regulariser_share(run_dir: Path) -> tuple[float | None, float | None]:
    """(units at zero, mask ratio in force) at the last evaluation before the final pruning event.

    An event at step ``s`` runs before optimizer step ``s`` (0-based); an evaluation logged with step ``e``
    follows ``e`` steps, so it sees the events with ``s < e``.
    """
    events = read_jsonl(run_dir / "pruning.jsonl")
    if not events:
        return None, None
    last = max(event["step"] for event in events)
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["step"] <= last and not r.get("final")]
    for record in reversed(records):
        keys = [key for key in record if key.endswith("zero_fraction")]
        if keys:
            in_force = [event["ratio"] for event in events if event["step"] < record["step"]]
            return float(record[sorted(keys, key=len)[0]]), (max(in_force) if in_force else 0.0)
    return None, None


def paired_interval(differences: list[float]) -> tuple[float, float, float] | None:
    """Mean of per-seed differences and its 95% paired-t interval (None with fewer than 2 seeds).

    Differences, not :func:`plprune.bench.stats.paired_ratio`'s log-ratios: accuracies near chance make
    ratios misleading, and accuracy points are what the tables show."""
    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = t_quantile(0.975, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return mean, mean - half, mean + half


def _paired(seeds: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]]) -> list[float]:
    """Per-seed accuracy differences ``seeds - base`` over the seeds both have."""
    return [seeds[s]["accuracy"] - base[s]["accuracy"] for s in sorted(seeds) if s in base]


def _interval_to(method: str, other: str, methods: dict[str, dict[int, dict[str, Any]]]):
    """Paired interval of ``method`` − ``other`` (None for the method itself or a missing one)."""
    if method == other or other not in methods:
        return None
    return paired_interval(_paired(methods[method], methods[other]))


def _verdict(interval: tuple[float, float, float] | None) -> str | None:
    if interval is None:
        return None
    return "yes" if interval[1] > 0 else "worse" if interval[2] < 0 else "no difference"


def collect(folder: Path) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """plan label -> method -> seed -> {accuracy, zero, in_force, kind, ratio}."""
    suite = json.loads((folder / "suite.json").read_text(encoding="utf-8"))
    table: dict[str, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for run in suite["runs"]:
        run_dir = folder / run["dir"]
        summary_path = run_dir / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        zero, in_force = regulariser_share(run_dir)
        table[run["task"]][run["variant"]][run["seed"]] = {
            "accuracy": summary["final"]["test_accuracy"],
            "zero": zero,
            "in_force": in_force,
            "kind": config["prune"]["kinds"][0],
            "ratio": config["prune"]["ratio"],
        }
    return table


def _fmt_interval(values: tuple[float, float, float] | None) -> str:
    if values is None:
        return "—"
    mean, low, high = values
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def summarise(folder: Path) -> dict[str, Any]:
    table = collect(folder)
    plans: dict[str, Any] = {}
    for label, methods in sorted(table.items()):
        any_run = next(iter(next(iter(methods.values())).values()))
        kind, ratio = any_run["kind"], any_run["ratio"]
        reference = REFERENCE[kind]
        rows = []
        for method, seeds in methods.items():
            accuracies = [seeds[s]["accuracy"] for s in sorted(seeds)]

            zeros = [seeds[s]["zero"] for s in sorted(seeds) if seeds[s]["zero"] is not None]
            forced = [seeds[s]["in_force"] for s in sorted(seeds) if seeds[s]["in_force"] is not None]
            vs_reference = _interval_to(method, reference, methods)
            rows.append(
                {
                    "method": method,
                    "seeds": sorted(seeds),
                    "accuracy": accuracies,
                    "mean": statistics.fmean(accuracies),
                    "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                    "vs_dense": _interval_to(method, "dense", methods),
                    "vs_reference": vs_reference,
                    "beats_reference": _verdict(vs_reference),
                    "zero_before_last_event": statistics.fmean(zeros) if zeros else None,
                    "mask_in_force": statistics.fmean(forced) if forced else None,
                }
            )
        rows.sort(key=lambda row: (row["method"] != "dense", -row["mean"]))
        main = [row for row in rows if "@" not in row["method"]]
        per_layer = [_per_layer_row(row, methods, reference) for row in rows if "@" in row["method"]]
        plans[label] = {"kind": kind, "ratio": ratio, "reference": reference, "rows": main,
                        "per_layer": per_layer}
    return plans


def _per_layer_row(row: dict[str, Any], methods: dict[str, dict[int, dict[str, Any]]], reference: str):
    """A ``METHOD@per-layer`` run (first seed only) beside the same method's global-allocation run of that
    seed and beside ``REFERENCE@per-layer``."""
    method = row["method"].partition("@")[0]
    seed = row["seeds"][0]
    accuracy = row["accuracy"][0]
    glob = methods.get(method, {}).get(seed)
    ref = methods.get(f"{reference}@per-layer", {}).get(seed)
    return {
        "method": method,
        "seed": seed,
        "accuracy": accuracy,
        "global_allocation": None if glob is None else glob["accuracy"],
        "vs_reference": None if ref is None or method == reference else accuracy - ref["accuracy"],
    }


def markdown(plans: dict[str, Any], folder: Path) -> str:
    lines = [
        "# Sparse-DNN course methods on VGG/MNIST-1D: summary",
        "",
        f"Source: the runs of `{folder}` (see its RESULTS.md for the full `plprune report` tables, commands, "
        "machine and versions). Made by `python benchmarks/sparse_course_summary.py "
        f"{folder}`.",
        "",
        "Final test accuracy (%), mean ± sample std over seeds. Paired differences per seed (same data "
        "order), in accuracy points, with 95% paired-t intervals over the seeds; a method beats the "
        "reference only when the interval excludes 0. *Zeros before last event*: units exactly at zero at "
        "the last evaluation before the final pruning event, beside the share the schedule's masks had "
        "already removed then; the difference is what the regulariser zeroed by itself (gate methods: "
        "expected-ℓ0 / mask zeros).",
    ]
    for kind, title in (("weight", "Unstructured (single weights)"), ("filter", "Structured (conv filters)")):
        lines += ["", f"## {title}"]
        for label, plan in plans.items():
            if plan["kind"] != kind:
                continue
            lines += [
                "",
                f"### {round(plan['ratio'] * 100)}% removed (`{label}`); reference: {plan['reference']}",
                "",
                f"| method | seeds | test acc % | − dense | − {plan['reference']} "
                f"| beats {plan['reference']}? | zeros before last event | masks then |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for row in plan["rows"]:
                zero = row["zero_before_last_event"]
                forced = row["mask_in_force"]
                lines.append(
                    f"| {row['method']} | {len(row['seeds'])} | {row['mean']:.2f} ± {row['std']:.2f} "
                    f"| {_fmt_interval(row['vs_dense'])} | {_fmt_interval(row['vs_reference'])} "
                    f"| {row['beats_reference'] or '—'} "
                    f"| {'—' if zero is None else f'{zero:.3f}'} "
                    f"| {'—' if forced is None else f'{forced:.3f}'} |"
                )
            if plan.get("per_layer"):
                lines += [
                    "",
                    "The same methods with the same fraction removed from every layer (`@per-layer`, first "
                    "seed only), beside the global-allocation run of that seed:",
                    "",
                    "| method | seed | per-layer acc % | global acc % "
                    f"| per-layer − {plan['reference']} per-layer |",
                    "|---|---|---|---|---|",
                ]
                for row in sorted(plan["per_layer"], key=lambda r: -r["accuracy"]):
                    glob, diff = row["global_allocation"], row["vs_reference"]
                    lines.append(
                        f"| {row['method']} | {row['seed']} | {row['accuracy']:.2f} "
                        f"| {'—' if glob is None else f'{glob:.2f}'} "
                        f"| {'—' if diff is None else f'{diff:+.2f}'} |"
                    )
    lines += ["", "![accuracy per method](accuracy.png)", ""]
    return "\n".join(lines)


def plot(plans: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(plans.values(), key=lambda plan: (plan["kind"] != "weight", plan["ratio"]))
    fig, axes = plt.subplots(len(ordered), 1, figsize=(11, 3.2 * len(ordered)), squeeze=False)
    for axis, plan in zip(axes[:, 0], ordered, strict=True):
        rows = plan["rows"]
        names = [row["method"] for row in rows]
        axis.bar(names, [row["mean"] for row in rows], yerr=[row["std"] for row in rows], capsize=3,
                 color=["0.5" if n == "dense" else "C1" if n == plan["reference"] else "C0" for n in names])
        low = min(row["mean"] - row["std"] for row in rows)
        axis.set_ylim(max(0.0, low - 2), 100)
        kind = "single weights" if plan["kind"] == "weight" else "filters"
        axis.set_title(f"{kind}, {round(plan['ratio'] * 100)}% removed (mean ± std over seeds)")
        axis.set_ylabel("test accuracy %")
        axis.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", type=Path, help="the --out folder of `plprune compare --suite sparse-course`"
    )
    folder = parser.parse_args().folder
    plans = summarise(folder)
    (folder / "SUMMARY.md").write_text(markdown(plans, folder), encoding="utf-8")
    (folder / "summary.json").write_text(json.dumps(plans, indent=1), encoding="utf-8")
    plot(plans, folder / "accuracy.png")
    print(f"wrote {folder / 'SUMMARY.md'}")


if __name__ == "__main__":
    main()
