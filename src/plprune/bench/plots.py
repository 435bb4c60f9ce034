"""PNG figures of a comparison (matplotlib, Agg backend): training curves per method, the per-group
condition-number heat map with each method's kept groups (paper Fig. 1d / Fig. 2), and the NTK condition
number and Hessian trace over training, dense vs PL (Fig. 3 / Fig. 5)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from plprune.bench.results import Runs, periodic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: Runs, family: dict[str, Any], path: Path, title: str) -> None:
    """Train and test metric vs step for every variant: mean over seeds, min-max band."""
    plt = _pyplot()
    keys = (family["train_key"], family["test_key"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for variant, by_seed in runs.items():
        histories = [periodic(s["history"]) for s in by_seed.values()]
        length = min(len(h) for h in histories)
        if not length:
            continue
        steps = [r["step"] for r in histories[0][:length]]
        for ax, key in zip(axes, keys, strict=True):
            columns = [[h[i].get(key, math.nan) for h in histories] for i in range(length)]
            (line,) = ax.plot(steps, [statistics.fmean(c) for c in columns], label=variant)
            if len(histories) > 1:
                ax.fill_between(
                    steps,
                    [min(c) for c in columns],
                    [max(c) for c in columns],
                    color=line.get_color(),
                    alpha=0.12,
                )
    for ax, key in zip(axes, keys, strict=True):
        if family["kind"] == "mlm":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle(f"{title}: mean over seeds (band: min-max)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(names: list[str], values: list[float]) -> tuple[list[str], int, Any]:
    import numpy as np

    layers = sorted({n.split(":L")[1].split(".")[0] for n in names}, key=int)
    width = max(int(n.rsplit(".", 1)[1]) for n in names) + 1
    grid = np.full((len(layers), width), np.nan)
    for name, value in zip(names, values, strict=True):
        layer, index = name.split(":L")[1].split(".")
        grid[layers.index(layer), int(index)] = value
    return layers, width, grid


def plot_kept_heatmap(reference: dict, masks: dict[str, list[bool]], path: Path) -> bool:
    """log10 condition number of each group's tangent kernel, measured at the first event of the
    ``reference`` run (PL's), one panel per method with the groups that method kept marked ●.

    Returns ``False`` (no file) when the reference has no per-group features."""
    events = [e for e in reference.get("pruning_events", []) if "features" in e]
    if not events or not masks:
        return False
    plt = _pyplot()
    event = events[0]
    names = event["groups"]
    conditions = [math.log10(max(c, 1e-300)) for c in event["features"]["condition_number"]]
    layers, width, grid = _grid(names, conditions)
    panels = [(m, mask) for m, mask in masks.items() if len(mask) == len(names)]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(7.0, 2 + min(width, 64) * 0.22), 0.9 + len(panels) * (0.35 * len(layers) + 0.6)),
        squeeze=False,
    )
    for ax, (method, mask) in zip(axes[:, 0], panels, strict=True):
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        for name, keep in zip(names, mask, strict=True):
            if keep:
                layer, index = name.split(":L")[1].split(".")
                ax.text(
                    int(index), layers.index(layer), "●", ha="center", va="center", color="white", fontsize=6
                )
        ax.set_ylabel("layer")
        ax.set_yticks(range(len(layers)), layers)
        ax.set_title(f"{method}: kept {sum(mask)}/{len(mask)}", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.9, pad=0.01)
    axes[-1, 0].set_xlabel("group index in layer")
    fig.suptitle(f"log10 cond(K_i) of each group at step {event['step']} (PL run); ● = kept", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_curvature(runs: Runs, path: Path, title: str) -> bool:
    """NTK condition number and Hessian trace at evaluations, every variant that tracked them."""
    plt = _pyplot()
    keys = (("ntk_condition_number", "NTK condition number (log)"), ("hessian_trace", "Hessian trace"))
    tracked = {
        v: by_seed
        for v, by_seed in runs.items()
        if any("ntk_condition_number" in r for s in by_seed.values() for r in s["history"])
    }
    if not tracked:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, by_seed in tracked.items():
        points: dict[int, list[tuple[float, float]]] = {}
        for summary in by_seed.values():
            for r in periodic(summary["history"]):
                if "ntk_condition_number" in r:
                    points.setdefault(r["step"], []).append((r["ntk_condition_number"], r["hessian_trace"]))
        steps = sorted(points)
        for i, (ax, _) in enumerate(zip(axes, keys, strict=True)):
            ax.plot(
                steps, [statistics.fmean(p[i] for p in points[s]) for s in steps], marker="o", label=variant
            )
    for ax, (_, label) in zip(axes, keys, strict=True):
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"{title}: curvature over training (mean over seeds; group weights, 16 samples)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_time_to_target(runs: Runs, family: dict[str, Any], target: float, path: Path, title: str) -> None:
    """Test metric against training wall time (mean over seeds at each evaluation), with dense's final
    test metric as a line: where a curve crosses it is Table 6's "time to reach dense"."""
    plt = _pyplot()
    key = family["test_key"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for variant, by_seed in runs.items():
        histories = [periodic(s["history"]) for s in by_seed.values()]
        length = min(len(h) for h in histories)
        if not length:
            continue
        walls = [statistics.fmean(h[i].get("wall_time", math.nan) for h in histories) for i in range(length)]
        values = [statistics.fmean(h[i].get(key, math.nan) for h in histories) for i in range(length)]
        ax.plot(walls, values, marker=".", label=variant)
    ax.axhline(target, color="black", linestyle="--", linewidth=1, label="dense final")
    if family["kind"] == "mlm":
        ax.set_yscale("log")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"{title}: test metric vs wall time (Table 6)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
