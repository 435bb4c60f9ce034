"""Tables and plots for benchmarks/dense_vs_pl.py, in the paper's formats.

Masked LM (Tables 1/2): train PPL at three checkpoints, final test PPL, ΔPPL. Classification (Tables 3/5):
train loss at two checkpoints, test accuracy at two checkpoints and final. Every table: mean ± std over seeds,
wall time, pruning overhead, the paired ratio to dense (same seed) and when each method reaches dense's
final test metric.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from plprune.bench.plots import plot_curves
from plprune.bench.results import at_step as _at_step
from plprune.bench.results import fmt as _fmt
from plprune.bench.results import mean_std as _mean_std
from plprune.bench.results import metric_family as _metric_family
from plprune.bench.results import periodic as _periodic
from plprune.bench.results import steps_to_reach as _steps_to_reach
from plprune.table import format_table, markdown_section


def load_runs(out: Path, variants: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: summary}}`` of finished runs; a corrupt summary is skipped and named."""
    runs: dict[str, dict[int, dict]] = {}
    for variant in variants:
        for seed in seeds:
            path = out / "runs" / f"{variant}-s{seed}" / "summary.json"
            if not path.exists():
                continue
            try:
                runs.setdefault(variant, {})[seed] = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                print(f"skipping corrupt {path}: {error}")
    return runs


def summarise(runs: dict[str, dict[int, dict]]) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """Table rows (one per variant), their columns, and per-run details for results.json."""
    any_run = next(iter(next(iter(runs.values())).values()))
    family = _metric_family(any_run)
    steps = [r["step"] for r in _periodic(any_run["history"])]
    n = family["train_checkpoints"]
    # n evenly spaced evaluation steps ending at the last one: indices ceil(i·len/n) − 1, i = 1..n
    checkpoints = sorted({steps[math.ceil(i * len(steps) / n) - 1] for i in range(1, n + 1)})
    dense = runs.get("dense", {})
    test_key, higher = family["test_key"], family["higher_is_better"]
    dense_target = _mean_std([s["final"][test_key] for s in dense.values()])[0] if dense else None
    total = any_run["steps"]
    rows, details = [], {}
    for variant, by_seed in runs.items():
        summaries = list(by_seed.values())
        row: dict[str, Any] = {"method": variant, "seeds": len(summaries)}
        for step in checkpoints:
            row[f"{family['train_title']} @{step}"] = _fmt(
                [_at_step(s["history"], step, family["train_key"]) for s in summaries]
            )
        if family["kind"] == "classification":
            for step in checkpoints:
                row[f"test acc @{step}"] = _fmt([_at_step(s["history"], step, test_key) for s in summaries])
        row[f"final {family['test_title']}"] = _fmt([s["final"][test_key] for s in summaries])
        if family["kind"] == "mlm":
            row["ΔPPL"] = _fmt([s["final"]["delta_ppl"] for s in summaries])
        walls = [s["final"]["wall_time"] - s["final"].get("diagnostics_seconds", 0.0) for s in summaries]
        row["train wall (s)"] = _fmt(walls, 0)
        prune = [s["final"].get("prune_seconds", 0.0) for s in summaries]
        row["pruning overhead %"] = _fmt([100 * p / w for p, w in zip(prune, walls, strict=True)])
        if dense:
            row["test / dense (paired)"] = _fmt(
                [
                    s["final"][test_key] / dense[seed]["final"][test_key]
                    for seed, s in by_seed.items()
                    if seed in dense
                ],
                3,
            )
            reach = [_steps_to_reach(s["history"], test_key, dense_target, higher) for s in summaries]
            hits = [r / total for r in reach if r is not None]
            row["reaches dense final (× steps)"] = (
                f"{_fmt(hits)} ({len(hits)}/{len(reach)})" if hits else f"no (0/{len(reach)})"
            )
        rows.append(row)
        details[variant] = {
            str(seed): {
                "final": s["final"],
                "nonzero_parameters": s.get("nonzero_parameters"),
                "parameters": s.get("parameters"),
                "pruning_events": [
                    {
                        k: e.get(k)
                        for k in (
                            "step",
                            "ratio",
                            "pruned_ratio",
                            "before",
                            "after",
                            "scoring_seconds",
                            "mask",
                            "gates",
                        )
                    }
                    for e in s.get("pruning_events", [])
                ],
            }
            for seed, s in by_seed.items()
        }
    columns = list(rows[0])
    for row in rows[1:]:
        columns += [c for c in row if c not in columns]
    return rows, columns, {"family": family, "checkpoints": checkpoints, "runs": details}


def plot_group_heatmap(summary: dict, path: Path) -> bool:
    """Per-group log10 condition number of the tangent kernel at the (first) PL event, kept groups marked
    (paper Fig. 1d / Fig. 2): one row per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    events = [e for e in summary.get("pruning_events", []) if "features" in e]
    if not events:
        return False
    event = events[0]
    names = event["groups"]
    layers = sorted({name.split(":L")[1].split(".")[0] for name in names}, key=int)
    width = max(int(name.rsplit(".", 1)[1]) for name in names) + 1
    grid = np.full((len(layers), width), np.nan)
    kept = np.zeros((len(layers), width), dtype=bool)
    for name, condition, keep in zip(
        names, event["features"]["condition_number"], event["mask"], strict=True
    ):
        layer, index = name.split(":L")[1].split(".")
        grid[layers.index(layer), int(index)] = math.log10(condition)
        kept[layers.index(layer), int(index)] = keep
    fig, ax = plt.subplots(figsize=(1.5 + min(width, 40) * 0.45, 1.2 + len(layers) * 0.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for (row, col), keep in np.ndenumerate(kept):
        if keep:
            ax.text(col, row, "●", ha="center", va="center", color="white", fontsize=7)
    ax.set_xlabel("group index in layer")
    ax.set_ylabel("layer")
    ax.set_title(f"log10 cond(K_i) at step {event['step']}; ● = kept ({int(kept.sum())}/{len(names)})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(out: Path, variants: list[str], seeds: list[int], meta: dict[str, Any]) -> None:
    runs = load_runs(out, variants, seeds)
    if not runs:
        print("no finished runs yet")
        return
    rows, columns, details = summarise(runs)
    first_variant = next(iter(runs))
    config = json.loads(
        (out / "runs" / f"{first_variant}-s{min(runs[first_variant])}" / "config.json").read_text()
    )
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "config": config, "rows": rows, **details}, indent=2) + "\n"
    )
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{c: r.get(c, "") for c in columns} for r in rows])
    task = config["task"]
    data = (
        "WikiText-2: trained on valid.txt, evaluated on test.txt (the training split is not available "
        "offline)"
        if task.endswith("wikitext2")
        else f"{task.split('-')[1]} (generated/bundled, offline)"
    )
    if config["data"].get("train_fraction", 1.0) < 1.0:
        data += f"; training on the first {config['data']['train_fraction']:.0%} of the training blocks only"
    plot_curves(runs, details["family"], out / "curves.png", f"{task}")
    heatmap = "pl" in runs and plot_group_heatmap(
        runs["pl"][min(runs["pl"])], out / "groups_condition_heatmap.png"
    )
    curvature = []
    for variant, by_seed in runs.items():
        events = [e for s in by_seed.values() for e in s.get("pruning_events", []) if "before" in e]
        if events:
            curvature.append(
                {
                    "method": variant,
                    "events": len(events),
                    "NTK cond before": _fmt([e["before"]["ntk_condition_number"] for e in events], 1),
                    "NTK cond after": _fmt([e["after"]["ntk_condition_number"] for e in events], 1),
                    "Tr(H) before": _fmt([e["before"]["hessian_trace"] for e in events], 3),
                    "Tr(H) after": _fmt([e["after"]["hessian_trace"] for e in events], 3),
                }
            )
    prune = config["prune"]
    schedule = (
        f"one-shot at {prune['prune_at']}"
        if prune["schedule"] == "one-shot"
        else f"{prune['schedule']} from {prune['prune_at']} to {prune.get('prune_end')} every "
        f"{prune.get('prune_every')}"
    )
    lines = [
        f"# Dense vs PL: {task} (CPU scale)",
        "",
        f"Data: {data}.  ",
        f"Model: {config['model']}; training: {config['train']}.  ",
        f"Pruning: {prune.get('kind_ratios') or prune['ratio']} of the groups, {schedule} (e = epochs).  ",
        f"Seeds {seeds}; mean ± std over seeds; ablations run on the first seed only. Wall time: training "
        "steps including pruning work, excluding evaluation and the optional curvature diagnostics; runs "
        "share 2 cores two at a time, so wall times are comparable only roughly.",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}",
        "",
        "## Results",
        "",
        format_table(rows, columns, markdown=True),
        "",
        "Variants: " + "; ".join(f"**{v}**: {meta['variants'][v]}" for v in runs),
        "",
    ]
    if curvature:
        lines += markdown_section(
            "## Curvature around pruning events (group weights; 16 samples, 8 Hutchinson probes)", curvature
        )
    lines += ["![curves](curves.png)", ""]
    if heatmap:
        lines += ["![per-group condition numbers](groups_condition_heatmap.png)", ""]
    (out / "REPORT.md").write_text("\n".join(lines))
    print("\n".join(lines))
