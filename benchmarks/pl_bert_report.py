"""Tables and plots for benchmarks/pl_bert.py (paper Table 1 format, measured at CPU scale)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from plprune.table import format_table


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: list[float], digits: int = 2) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(mean) else "n/a"


def _at_step(history: list[dict], step: int, key: str) -> float | None:
    for record in history:
        if record["step"] == step and not record.get("final"):
            return record[key]
    return None


def _steps_to_reach(history: list[dict], target: float) -> int | None:
    for record in history:
        if not record.get("final") and record["test_ppl"] <= target:
            return record["step"]
    final = history[-1]
    return final["step"] if final["test_ppl"] <= target else None


def load_runs(out: Path, variants: list[str], seeds: list[int]) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for variant in variants:
        for seed in seeds:
            path = out / "runs" / f"{variant}-s{seed}" / "summary.json"
            if path.exists():
                runs.setdefault(variant, {})[seed] = json.loads(path.read_text())
    return runs


def summarise(runs: dict[str, dict[int, dict]]) -> tuple[list[dict[str, Any]], list[int], dict[str, Any]]:
    any_run = next(iter(next(iter(runs.values())).values()))
    periodic = [r["step"] for r in any_run["history"] if not r.get("final")]
    total = any_run["steps"]
    checkpoints = sorted({periodic[len(periodic) // 3], periodic[(2 * len(periodic)) // 3], periodic[-1]})
    dense = runs.get("dense", {})
    dense_target = _mean_std([s["final"]["test_ppl"] for s in dense.values()])[0] if dense else None
    rows, per_run = [], {}
    for variant, by_seed in runs.items():
        row: dict[str, Any] = {"method": variant, "seeds": len(by_seed)}
        for step in checkpoints:
            row[f"train PPL @{step}"] = _fmt(
                [_at_step(s["history"], step, "train_ppl") for s in by_seed.values()]
            )
        tests = [s["final"]["test_ppl"] for s in by_seed.values()]
        row["test PPL"] = _fmt(tests)
        row["ΔPPL"] = _fmt([s["final"]["delta_ppl"] for s in by_seed.values()])
        walls = [
            s["final"]["wall_time"] - s["final"].get("diagnostics_seconds", 0.0) for s in by_seed.values()
        ]
        row["train wall (s)"] = _fmt(walls, 0)
        prune = [s["final"].get("prune_seconds", 0.0) for s in by_seed.values()]
        row["pruning overhead %"] = _fmt([100 * p / w for p, w in zip(prune, walls, strict=True)])
        if dense:
            ratios = [
                s["final"]["test_ppl"] / dense[seed]["final"]["test_ppl"]
                for seed, s in by_seed.items()
                if seed in dense
            ]
            row["test PPL / dense (paired)"] = _fmt(ratios, 3)
            reach = [_steps_to_reach(s["history"], dense_target) for s in by_seed.values()]
            reached = [r / total for r in reach if r is not None]
            row["steps to dense test PPL (× total)"] = (
                f"{_fmt(reached)} ({len(reached)}/{len(reach)} reach)"
                if reached
                else f"not reached (0/{len(reach)})"
            )
        rows.append(row)
        per_run[variant] = {
            str(seed): {
                "final": s["final"],
                "pruning_events": [
                    {
                        k: e.get(k)
                        for k in ("step", "ratio", "before", "after", "scoring_seconds", "mask", "gates")
                    }
                    for e in s.get("pruning_events", [])
                ],
            }
            for seed, s in by_seed.items()
        }
    return rows, checkpoints, per_run


def plot_curves(runs: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, by_seed in runs.items():
        for ax, key in zip(axes, ("train_ppl", "test_ppl"), strict=True):
            steps = [r["step"] for r in next(iter(by_seed.values()))["history"] if not r.get("final")]
            curves = [[r[key] for r in s["history"] if not r.get("final")] for s in by_seed.values()]
            mean = [statistics.fmean(v) for v in zip(*curves, strict=True)]
            lo = [min(v) for v in zip(*curves, strict=True)]
            hi = [max(v) for v in zip(*curves, strict=True)]
            (line,) = ax.plot(steps, mean, label=variant)
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
    for ax, title in zip(axes, ("train PPL (valid.txt sample)", "test PPL (test.txt subset)"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("BERT on WikiText-2 (train: valid.txt, test: test.txt); mean and min-max over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_head_heatmap(summary: dict, path: Path, layers: int, heads: int) -> None:
    """Per-head log10 condition number of the tangent kernel at the pruning event; kept heads marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    event = summary["pruning_events"][0]
    if "features" not in event:
        return
    condition = np.log10(np.array(event["features"]["condition_number"]).reshape(layers, heads))
    mask = np.array(event["mask"]).reshape(layers, heads)
    fig, ax = plt.subplots(figsize=(1 + heads * 0.7, 1 + layers * 0.6))
    image = ax.imshow(condition, cmap="viridis")
    for layer in range(layers):
        for head in range(heads):
            if mask[layer, head]:
                ax.text(
                    head, layer, "kept", ha="center", va="center", color="white", fontsize=8, weight="bold"
                )
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"log10 cond(K_head) at step {event['step']}; PL kept {int(mask.sum())}/{mask.size}")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, variants: list[str], seeds: list[int], meta: dict[str, Any]) -> None:
    runs = load_runs(out, variants, seeds)
    if not runs:
        print("no finished runs yet")
        return
    rows, checkpoints, per_run = summarise(runs)
    columns = [
        "method",
        "seeds",
        *[f"train PPL @{s}" for s in checkpoints],
        "test PPL",
        "ΔPPL",
        "train wall (s)",
        "pruning overhead %",
    ]
    if "dense" in runs:
        columns += ["test PPL / dense (paired)", "steps to dense test PPL (× total)"]
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "runs": per_run}, indent=2) + "\n"
    )
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows([{c: r.get(c, "") for c in columns} for r in rows])
    plot_curves(runs, out / "curves.png")
    first = next(iter(next(iter(runs.values()))))
    first_variant = next(iter(runs))
    base = json.loads((out / "runs" / f"{first_variant}-s{first}" / "config.json").read_text())
    if "pl" in runs:
        first_seed = min(runs["pl"])
        plot_head_heatmap(
            runs["pl"][first_seed],
            out / "heads_condition_heatmap.png",
            base["model"]["layers"],
            base["model"]["heads"],
        )
    curvature = []
    for variant, by_seed in runs.items():
        events = [e for s in by_seed.values() for e in s.get("pruning_events", []) if "before" in e]
        if events:
            curvature.append(
                {
                    "method": variant,
                    "NTK cond before": _fmt([e["before"]["ntk_condition_number"] for e in events], 0),
                    "NTK cond after": _fmt([e["after"]["ntk_condition_number"] for e in events], 0),
                    "Tr(H) before": _fmt([e["before"]["hessian_trace"] for e in events], 3),
                    "Tr(H) after": _fmt([e["after"]["hessian_trace"] for e in events], 3),
                }
            )
    lines = [
        "# Dense vs PL pruning of BERT heads on WikiText-2 (CPU scale)",
        "",
        f"Data: {meta['data']}. Model: {base['model']}, sequence {base['data']['seq_len']}, batch "
        f"{base['train']['batch_size']}, {base['train']['steps']} steps (full config: results.json).",
        f"Pruning: {int(base['prune']['ratio'] * 100)}% of the "
        f"{base['model']['layers'] * base['model']['heads']} heads, one-shot at {base['prune']['prune_at']} "
        f"(e = epochs; paper: epoch 5, 75%); peak LR {base['train']['lr']}.",
        f"Seeds: {seeds}; mean ± std over seeds. Train PPL: eval-mode PPL on a fixed sample of training "
        "blocks; "
        "test PPL: the whole test split at the end. Wall time: training steps incl. pruning work, excl. "
        "evaluation and optional diagnostics.",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}",
        "",
        "## Table 1 (paper format)",
        "",
        format_table(rows, columns, markdown=True),
        "",
        "Variants: " + "; ".join(f"**{v}**: {meta['variants'][v]}" for v in runs),
        "",
    ]
    if curvature:
        lines += [
            "## Curvature around the pruning event (group weights; 16 samples, 8 probes)",
            "",
            format_table(curvature, list(curvature[0]), markdown=True),
            "",
        ]
    lines += ["![curves](curves.png)", ""]
    if (out / "heads_condition_heatmap.png").exists():
        lines += ["![heat map](heads_condition_heatmap.png)", ""]
    (out / "REPORT.md").write_text("\n".join(lines))
    print("\n".join(lines))
