"""The report's statistics for suites with several seeds: the over-parameterisation check of the dense runs,
paired comparisons at each pruning ratio (:mod:`plprune.bench.stats`), and what PL's gates saw.

Variants are grouped by ratio: ``METHOD`` runs at the plan's ratio, ``METHOD@r50``/``@r75``/``@r90`` at
that ratio, other ablations (``pl@shuffled``...) at the plan's ratio; dense belongs to every group. In each
group PL and ``pl+`` are compared with every other method (as its paper runs it, and ``METHOD@per-layer``:
on PL's per-layer filter allocation), each ablation of PL (or pl+) with the method itself and random, and
every other baseline with random on the same allocation (does any criterion carry signal here?) and with
dense (does pruning itself help?).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from plprune.bench.results import Runs
from plprune.bench.stats import paired_ratio, verdict

RATIO_ABLATIONS = {"r50": 0.5, "r75": 0.75, "r90": 0.9}
SUBJECTS = ("pl", "pl+")


def ratio_groups(runs: Runs, main_ratio: float) -> dict[float, dict[str, str]]:
    """``{ratio: {label: variant}}``: the label is the method name (``pl``) or, for PL's setting
    ablations, the variant without its ratio part (``pl@shuffled``)."""
    groups: dict[float, dict[str, str]] = {}
    for variant in runs:
        method, _, ablation = variant.partition("@")
        parts = [p for p in ablation.split("+") if p] if ablation else []
        ratio = next((RATIO_ABLATIONS[p] for p in parts if p in RATIO_ABLATIONS), main_ratio)
        rest = [p for p in parts if p not in RATIO_ABLATIONS]
        label = f"{method}@{'+'.join(rest)}" if rest else method
        groups.setdefault(ratio, {})[label] = variant
    if "dense" in runs:
        for members in groups.values():
            members.setdefault("dense", "dense")
    return dict(sorted(groups.items()))


def _is_baseline(label: str) -> bool:
    """A method as its paper runs it (``random``), or on PL's per-layer allocation (``random@per-layer``:
    the same number of groups from every layer as PL takes, so only the ranking differs)."""
    method, _, ablation = label.partition("@")
    return method not in SUBJECTS and ablation in ("", "per-layer")


def _pairs(runs: Runs, a: str, b: str, key: str) -> tuple[list[int], list[float], list[float]]:
    seeds = sorted(set(runs[a]) & set(runs[b]))
    return seeds, [runs[a][s]["final"][key] for s in seeds], [runs[b][s]["final"][key] for s in seeds]


def _mean(runs: Runs, variant: str, key: str) -> float:
    return statistics.fmean(s["final"][key] for s in runs[variant].values())


def paired_rows(runs: Runs, main_ratio: float, family: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (ratio, A, B): geometric-mean ratio A/B of the final test metric, 95% t and bootstrap
    intervals, verdict. Pairs with fewer than 2 common seeds are left out."""
    key, higher = family["test_key"], family["higher_is_better"]
    rows = []
    for ratio, members in ratio_groups(runs, main_ratio).items():
        comparisons: list[tuple[str, str]] = []
        for subject in SUBJECTS:
            if subject in members:
                comparisons += [(subject, o) for o in members if o not in SUBJECTS and _is_baseline(o)]
        if "pl" in members and "pl+" in members:
            comparisons.append(("pl+", "pl"))
        for label in members:  # PL's (and pl+'s) ablations: against the method itself and random
            method, _, ablation = label.partition("@")
            if method in SUBJECTS and ablation:
                comparisons += [(label, o) for o in (method, "random") if o in members]
        for label in members:  # the baselines: against random on the same allocation, and dense
            method, _, ablation = label.partition("@")
            if not _is_baseline(label) or method == "dense":
                continue
            control = "random@per-layer" if ablation == "per-layer" else "random"
            if method != "random" and control in members:
                comparisons.append((label, control))
            if "dense" in members:
                comparisons.append((label, "dense"))
        for a, b in comparisons:
            seeds, x, y = _pairs(runs, members[a], members[b], key)
            if len(seeds) < 2:
                continue
            result = paired_ratio(x, y)
            rows.append(
                {
                    "ratio": f"{ratio:.0%}",
                    "A": a,
                    "B": b,
                    "seeds": len(seeds),
                    "A / B (geo. mean)": f"{result.ratio:.3f}",
                    "95% CI (paired t)": f"[{result.low:.3f}, {result.high:.3f}]",
                    "bootstrap 95%": f"[{result.boot_low:.3f}, {result.boot_high:.3f}]",
                    "verdict": verdict(result, a, b, higher_is_better=higher),
                    "_ratio": ratio,
                    "_result": result,
                }
            )
    return rows


def headline(rows: list[dict[str, Any]], runs: Runs, main_ratio: float, family: dict[str, Any]) -> list[str]:
    """Per ratio: does PL beat random, the best baseline (best mean among the other pruning methods) and
    dense — each with its interval; does the best baseline beat random; and does pl+ beat PL."""
    key, higher = family["test_key"], family["higher_is_better"]
    by = {(r["_ratio"], r["A"], r["B"]): r for r in rows}
    lines = []
    for ratio, members in ratio_groups(runs, main_ratio).items():
        if "pl" not in members:
            continue
        baselines = [m for m in members if m not in ("pl", "pl+", "dense", "random") and "@" not in m]
        best = None
        if baselines:
            pick = max if higher else min
            best = pick(baselines, key=lambda m: _mean(runs, members[m], key))
        parts = []
        same_allocation = [
            (m, f"{m.partition('@')[0]} on PL's per-layer allocation")
            for m in members
            if m.endswith("@per-layer") and _is_baseline(m)
        ]
        for other, title in (
            ("random", "random"),
            (best, f"the best baseline ({best})"),
            *same_allocation,
            ("dense", "dense"),
        ):
            row = by.get((ratio, "pl", other)) if other else None
            if row:
                parts.append(
                    f"vs {title}: {row['verdict']} (PL/{other} {row['A / B (geo. mean)']}, "
                    f"95% CI {row['95% CI (paired t)']})"
                )
        if best and by.get((ratio, best, "random")):
            row = by[(ratio, best, "random")]
            parts.append(
                f"{best} vs random: {row['verdict']} ({row['A / B (geo. mean)']}, {row['95% CI (paired t)']})"
            )
        plus = by.get((ratio, "pl+", "pl"))
        if plus:
            parts.append(
                f"pl+ vs PL: {plus['verdict']} ({plus['A / B (geo. mean)']}, {plus['95% CI (paired t)']})"
            )
        lines.append(f"- {ratio:.0%} of the groups pruned — " + "; ".join(parts) + ".")
    return lines


def ratio_table(runs: Runs, main_ratio: float, family: dict[str, Any]) -> list[dict[str, Any]]:
    """Final test metric, mean ± std (seeds), of every label at every ratio: one row per label."""
    key = family["test_key"]
    groups = ratio_groups(runs, main_ratio)
    labels = list(dict.fromkeys(label for members in groups.values() for label in members))
    rows = []
    for label in labels:
        row: dict[str, Any] = {"method": label}
        for ratio, members in groups.items():
            values = [s["final"][key] for s in runs[members[label]].values()] if label in members else []
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[f"{ratio:.0%} pruned"] = f"{statistics.fmean(values):.1f} ± {std:.1f} ({len(values)})"
            else:
                row[f"{ratio:.0%} pruned"] = "—"
        rows.append(row)
    return rows


def _event_values(summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    events = summary.get("pruning_events") or []
    if not events:
        return None
    value: Any = events[0]
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


GATE_COLUMNS = (
    ("gate std", ("gate_spread", "std"), 3),
    ("gate max/min", ("gate_spread", "max_over_min"), 3),
    ("ρ(gate, log λ_min)", ("gate_feature_correlation", "log_min_eigenvalue"), 2),
    ("ρ(gate, entropy)", ("gate_feature_correlation", "entropy"), 2),
    ("ρ(gate, magnitude)", ("gate_feature_correlation", "magnitude"), 2),
    ("ρ(gate, grad-score)", ("gate_feature_correlation", "grad_score"), 2),
    ("ρ(gate, SNIP)", ("gate_feature_correlation", "snip"), 2),
    ("1-probe rel. error", ("probe_noise", "single_probe_rel"), 2),
    ("batch std / mean Tr", ("probe_noise", "batch_std"), 2),
    ("gate-training Tr rel. std", ("probe_noise", "training_trace_rel"), 2),
    ("gate batches", ("gate_batches",), 0),
)


def gate_rows(runs: Runs) -> list[dict[str, Any]]:
    """Mean ± std over seeds of PL's measurements at its (first) pruning event, per PL-family variant."""
    rows = []
    for variant in sorted(v for v in runs if v.partition("@")[0] in SUBJECTS):
        row: dict[str, Any] = {"variant": variant, "seeds": len(runs[variant])}
        any_value = False
        for title, path, digits in GATE_COLUMNS:
            values = []
            for summary in runs[variant].values():
                value = _event_values(summary, path)
                if value is not None and path[-1] == "batch_std":
                    mean = _event_values(summary, ("probe_noise", "mean"))
                    value = value / abs(mean) if mean else None
                if value is not None:
                    values.append(value)
            if values:
                any_value = True
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                row[title] = f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"
            else:
                row[title] = "n/a"
        if any_value:
            rows.append(row)
    return rows
