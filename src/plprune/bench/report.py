"""``plprune report DIR``: tables in the paper's formats, plots, and which claims hold, from finished runs.

Writes ``DIR/RESULTS.md``, ``DIR/results.json`` (every number in the tables), ``DIR/results.csv`` (one row
per run) and PNGs per task. Tables: Table 1/2 (MLM: train PPL at 3 checkpoints, test PPL, ΔPPL) or
Table 3/5 (CNNs: train loss at 2 checkpoints, test accuracy at 2 checkpoints and final), mean ± std over
seeds, the best mean per column in bold; Table 6 (steps to reach dense's final test metric, wall-clock
saved); ablations (Tables 8-13) on the first seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from plprune.bench.comparisons import gate_rows, headline, paired_rows, ratio_table
from plprune.bench.plots import plot_curvature, plot_curves, plot_kept_heatmap, plot_time_to_target
from plprune.bench.results import (
    LoadedResults,
    Runs,
    at_step,
    checkpoints,
    fmt,
    load_results,
    mean_std,
    metric_family,
    periodic,
    steps_to_reach,
    train_wall,
    wall_at_step,
)
from plprune.curvature import CONDITION_EPS
from plprune.errors import PlpruneError
from plprune.run_config import RunConfig
from plprune.table import markdown_section
from plprune.train.checkpoint import atomic_write_text

WIKITEXT_NOTE = (
    "WikiText-2: trained on valid.txt, evaluated on test.txt (the training split is not available here)"
)
HEATMAP_NOTE = (
    "Heat map: each group's tangent-kernel condition number measured on the PL run (seed {seed}) at its "
    "first pruning event; the dots are the groups each method kept at the end of its run (same seed). "
    "Methods that prune at other times saw other weights."
)

_ABLATION_TITLES = {
    "at-init": "pruning time (Table 8): at initialisation",
    "early": "pruning time (Table 8): early",
    "late": "pruning time (Table 8): late",
    "one-shot": "schedule (Table 9): one-shot",
    "iterative": "schedule (Table 9): iterative",
    "r50": "ratio sweep (Tables 10-13): 50%",
    "r75": "ratio sweep (Tables 10-13): 75%",
    "r90": "ratio sweep (Tables 10-13): 90%",
    "per-layer": "allocation: same fraction per layer",
}


def _order(variants: list[str]) -> list[str]:
    """dense, pl first; then the rest in the registry's order; unknown names last."""
    from plprune.pruners.registry import METHOD_NAMES

    rank = {m: i for i, m in enumerate(METHOD_NAMES)}
    return sorted(variants, key=lambda v: (rank.get(v, len(rank)), v))


def _column(title: str, values: dict[str, list[float | None]], digits: int, better: str | None) -> dict:
    return {"title": title, "values": values, "digits": digits, "better": better}


def _render(columns: list[dict], variants: list[str], lead: dict[str, dict[str, Any]]) -> tuple[list, list]:
    """Rows with ``mean ± std`` cells, the best mean of each column with a ``better`` rule in bold."""
    best: dict[str, str] = {}
    for col in columns:
        if not col["better"]:
            continue
        means = {v: mean_std(col["values"].get(v, []))[0] for v in variants}
        finite = {v: m for v, m in means.items() if math.isfinite(m)}
        if len(finite) > 1:
            pick = min if col["better"] == "min" else max
            best[col["title"]] = pick(finite, key=lambda v: finite[v])
    rows = []
    for variant in variants:
        row = dict(lead[variant])
        for col in columns:
            cell = fmt(col["values"].get(variant, []), col["digits"])
            row[col["title"]] = f"**{cell}**" if best.get(col["title"]) == variant else cell
        rows.append(row)
    return rows, [*next(iter(lead.values())), *(c["title"] for c in columns)]


def _main_columns(runs: Runs, family: dict[str, Any], marks: list[int]) -> list[dict]:
    test_key = family["test_key"]
    higher = family["higher_is_better"]

    def per(fn) -> dict[str, list]:
        return {v: [fn(s) for s in by_seed.values()] for v, by_seed in runs.items()}

    columns = [
        _column(
            f"{family['train_title']} @{m}",
            per(lambda s, m=m: at_step(s["history"], m, family["train_key"])),
            2,
            "min",
        )
        for m in marks
    ]
    if family["kind"] == "classification":
        columns += [
            _column(f"test acc @{m}", per(lambda s, m=m: at_step(s["history"], m, test_key)), 2, "max")
            for m in marks
        ]
    columns.append(
        _column(
            f"final {family['test_title']}",
            per(lambda s: s["final"][test_key]),
            2,
            "max" if higher else "min",
        )
    )
    if family["kind"] == "mlm":
        columns.append(_column("ΔPPL", per(lambda s: s["final"].get("delta_ppl")), 2, "min"))
    columns.append(
        _column(
            "kept params %",
            per(lambda s: 100 * s.get("nonzero_parameters", 0) / max(1, s.get("parameters", 1))),
            1,
            None,
        )
    )
    columns.append(_column("pruned units %", per(_pruned_percent), 1, None))
    columns.append(_column("train wall (s)", per(train_wall), 0, None))
    columns.append(
        _column(
            "pruning overhead %",
            per(lambda s: 100 * s["final"].get("prune_seconds", 0.0) / max(train_wall(s), 1e-9)),
            2,
            None,
        )
    )
    dense = runs.get("dense", {})
    if dense:
        paired = {
            v: [
                s["final"][test_key] / dense[seed]["final"][test_key]
                for seed, s in by_seed.items()
                if seed in dense
            ]
            for v, by_seed in runs.items()
        }
        columns.append(_column("test / dense (paired)", paired, 3, "max" if higher else "min"))
    return columns


def _reach_table(
    runs: Runs, family: dict[str, Any], target: float, shared: bool = False
) -> list[dict[str, Any]]:
    """Table 6: when each method first matches ``target`` (dense's mean final test metric; needs dense
    runs), and the wall time saved — only when the runs did not share the machine (``shared``: several
    workers at once, whose wall times depend on what ran beside them; then steps only)."""
    dense = runs["dense"]
    test_key, higher = family["test_key"], family["higher_is_better"]
    dense_wall = mean_std([train_wall(s) for s in dense.values()])[0]
    rows = []
    for variant in _order(list(runs)):
        by_seed = runs[variant]
        fractions, saved = [], []
        for summary in by_seed.values():
            hit = steps_to_reach(summary["history"], test_key, target, higher)
            if hit is None:
                continue
            fractions.append(hit / summary["steps"])
            wall = wall_at_step(summary["history"], hit)
            if wall is not None and dense_wall > 0:
                saved.append(100 * (1 - wall / dense_wall))
        rows.append(
            {
                "method": variant,
                "reached": f"{len(fractions)}/{len(by_seed)}",
                "steps to reach (× budget)": fmt(fractions) if fractions else "never",
                "wall-clock saved vs dense %": (
                    "n/a (runs shared the cores: steps only)" if shared else fmt(saved, 1) if saved else "n/a"
                ),
            }
        )
    return rows


def _claims(runs: Runs, family: dict[str, Any]) -> list[str]:
    """Plain statements of the paper's claims and whether they hold in these runs."""
    test_key, higher = family["test_key"], family["higher_is_better"]
    title = family["test_title"]
    means = {v: mean_std([s["final"][test_key] for s in by_seed.values()]) for v, by_seed in runs.items()}
    if "pl" not in means:
        return ["PL was not run on this task; no claim checked."]

    def better(a: float, b: float) -> bool:
        return a >= b if higher else a <= b

    pl = means["pl"][0]
    lines = []
    if "dense" in means:
        holds = better(pl, means["dense"][0])
        lines.append(
            f"- PL at least as good as dense on final {title} (paper Tables 1-3, 5): "
            f"**{'holds' if holds else 'does not hold'}** — PL {pl:.2f} ± {means['pl'][1]:.2f} vs dense "
            f"{means['dense'][0]:.2f} ± {means['dense'][1]:.2f}."
        )
    baselines = {v: m for v, m in means.items() if v not in ("pl", "dense") and math.isfinite(m[0])}
    if baselines:
        pick = max if higher else min
        best = pick(baselines, key=lambda v: baselines[v][0])
        holds = better(pl, baselines[best][0])
        lines.append(
            f"- PL beats every baseline on final {title}: **{'holds' if holds else 'does not hold'}** — best "
            f"baseline {best} {baselines[best][0]:.2f} ± {baselines[best][1]:.2f}; PL ranks "
            f"{1 + sum(better(m[0], pl) and m[0] != pl for m in baselines.values())} of "
            f"{len(baselines) + 1} pruning methods."
        )
    if family["kind"] == "mlm" and "dense" in runs:
        gap = {
            v: mean_std([s["final"].get("delta_ppl") for s in runs[v].values()])[0] for v in ("pl", "dense")
        }
        lines.append(
            f"- PL generalises better than dense (smaller ΔPPL = test − train PPL): "
            f"**{'holds' if gap['pl'] <= gap['dense'] else 'does not hold'}** — ΔPPL PL {gap['pl']:.2f} "
            f"vs dense {gap['dense']:.2f}."
        )
    tracked = {}
    for variant in ("pl", "dense"):
        last = [
            next(
                (
                    r["ntk_condition_number"]
                    for r in reversed(periodic(s["history"]))
                    if "ntk_condition_number" in r
                ),
                None,
            )
            for s in runs.get(variant, {}).values()
        ]
        tracked[variant] = mean_std(last)[0]
    if all(math.isfinite(v) for v in tracked.values()):
        claim = (
            "- PL ends better conditioned than dense (NTK condition number at the last tracked evaluation, "
            "Fig. 3/5): "
        )
        if max(tracked.values()) >= 0.1 / CONDITION_EPS:  # λ_min at the floor: the kernel is singular
            verdict = "**cannot be told** — the kernels are singular (condition numbers at the 1/ε cap)"
        else:
            verdict = f"**{'holds' if tracked['pl'] <= tracked['dense'] else 'does not hold'}** —"
        lines.append(f"{claim}{verdict} {tracked['pl']:.3g} vs {tracked['dense']:.3g}.")
    return lines


GATES_NOTE = (
    "gate std, max/min: spread of the final gates (mean 1) across groups; ρ: Spearman correlation of the "
    "final gates with each gate input; 1-probe rel. error: std of one Hutchinson probe's trace over 8 "
    "probes ÷ the mean trace (Alg. 2 uses one probe per batch); batch std / mean Tr: std of the 8-probe "
    "trace over 2 batches ÷ the mean; gate-training Tr rel. std: the single-probe traces seen during gate "
    "training."
)


def _regime_lines(suite: dict[str, Any], runs: Runs) -> list[str]:
    """The suite's over-parameterisation test applied to each dense run (``plprune.bench.suites``)."""
    from plprune.bench.suites import SUITES

    definition = SUITES.get(str(suite.get("suite")))
    test = definition.regime if definition else None
    if test is None or "dense" not in runs:
        return []
    checks = {seed: test.check(s["final"]) for seed, s in sorted(runs["dense"].items())}
    passed = sum(ok for ok, _ in checks.values())
    return [
        "### Over-parameterised regime (checked before comparing)",
        "",
        f"Test: {test.describe()}. Dense runs meeting it: **{passed}/{len(checks)}**"
        + ("" if passed == len(checks) else " — the premise does NOT hold on every seed")
        + ".",
        "",
        *(f"- seed {seed}: {'meets' if ok else 'FAILS'} — {text}" for seed, (ok, text) in checks.items()),
        "",
    ]


def _ablation_rows(runs: Runs, ablations: list[str], family: dict[str, Any]) -> list[dict[str, Any]]:
    test_key = family["test_key"]
    rows = []
    for variant in ablations:
        method, _, name = variant.partition("@")
        for seed, summary in sorted(runs[variant].items()):
            base = runs.get(method, {}).get(seed)
            value = summary["final"][test_key]
            rows.append(
                {
                    "variant": variant,
                    "ablation": _ABLATION_TITLES.get(name, name),
                    "seed": seed,
                    f"final {family['test_title']}": f"{value:.2f}",
                    "main run (same method, seed)": f"{base['final'][test_key]:.2f}" if base else "n/a",
                    "ratio to main run": f"{value / base['final'][test_key]:.3f}" if base else "n/a",
                    "pruned": ", ".join(
                        f"{k} {v:.0%}"
                        for k, v in (
                            summary["pruning_events"][-1]["pruned_ratio"].items()
                            if summary.get("pruning_events")
                            else []
                        )
                    ),
                }
            )
    return rows


def _final_masks(runs: Runs, seed: int) -> dict[str, list[bool]]:
    masks = {}
    for variant in _order(list(runs)):
        summary = runs[variant].get(seed)
        if summary and summary.get("pruning_events"):
            masks[variant] = summary["pruning_events"][-1]["mask"]
    return masks


def _pruned_percent(summary: dict) -> float:
    """The final pruned ratio of the run's units (groups of its kind, or single weights), in %."""
    ratios = [v for k, v in summary["final"].items() if k.startswith("pruned_") and k.endswith("_ratio")]
    return 100 * sum(ratios) / len(ratios) if ratios else 0.0


def _units_note(prune: dict[str, Any]) -> str:
    if list(prune.get("kinds") or []) == ["weight"]:
        return "of the prunable weights (unstructured: every Linear/Conv weight)"
    return "of the groups"


def _data_note(config: dict[str, Any]) -> str:
    task = config["task"]
    if task.endswith("wikitext2"):
        return WIKITEXT_NOTE
    return f"{task.rsplit('-', 1)[1]} (generated or bundled, no download)"


_MODEL_FIELDS = {
    "bert": ("layers", "hidden", "heads", "ffn", "dropout", "pre_layer_norm"),
    "hf-bert": ("layers", "hidden", "heads", "ffn", "dropout"),
    "hf-llama": ("layers", "hidden", "heads", "kv_heads", "ffn", "dropout"),
    "switch": ("layers", "hidden", "heads", "ffn", "dropout", "experts", "expert_ffn", "capacity_factor"),
    "vgg": ("width_multiplier",),
    "resnet": ("width_multiplier", "depth"),
}


def _model_note(config: dict[str, Any]) -> str:
    family = config["task"].rsplit("-", 1)[0]  # e.g. "hf-bert" of "hf-bert-pydoc"
    family = {"hf-bert": "Hugging Face BertForMaskedLM", "hf-llama": "Hugging Face LlamaForCausalLM"}.get(
        family, family
    )
    fields = _MODEL_FIELDS.get(config["task"].rsplit("-", 1)[0], tuple(config["model"]))
    return f"{family}, " + ", ".join(f"{k} {config['model'][k]}" for k in fields if k in config["model"])


def _schedule_note(prune: dict[str, Any]) -> str:
    if prune["schedule"] == "linear":
        return f"linear from {prune['prune_at']} to {prune.get('prune_end')} every {prune.get('prune_every')}"
    if prune["schedule"] == "one-shot":
        return f"one-shot at {prune['prune_at']}"
    return prune["schedule"]


def _threads_per_run(suite: dict[str, Any]) -> str:
    """"one torch thread" or "N torch threads", as suite.json's machine records it (1 where it does not)."""
    machine = suite.get("machine")
    threads = machine.get("threads_per_run", 1) if isinstance(machine, dict) else 1
    return "one torch thread" if threads == 1 else f"{threads} torch threads"


def _devices(loaded: Any) -> str:
    """Which devices the runs trained on, with run counts (``summary["device"]``; older runs: the CPU, as
    the trainer had no device option before)."""
    counts: dict[str, int] = {}
    for runs in loaded.tasks.values():
        for seeds in runs.values():
            for summary in seeds.values():
                device = summary.get("device", "cpu (not recorded)")
                counts[device] = counts.get(device, 0) + 1
    return "; ".join(f"{d} ({n} runs)" for d, n in counts.items()) or "n/a"


def write_report(out: Path) -> Path:
    """Write ``RESULTS.md`` (+ JSON, CSV, PNGs) for the finished runs in ``out``; returns its path."""
    out = Path(out)
    if not out.is_dir():
        raise PlpruneError(f"{out} is not a directory (expected the --out of plprune compare)")
    loaded: LoadedResults = load_results(out)
    for problem in loaded.skipped:
        print(f"skipping {problem}")
    if not loaded.tasks:
        raise PlpruneError(f"{out} has no finished runs (runs/TASK/VARIANT-sSEED/summary.json)")
    suite_path = out / "suite.json"
    suite: dict[str, Any] = {}
    if suite_path.is_file():
        try:
            suite = json.loads(suite_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
            print(f"skipping {suite_path}: {error}")
        if not isinstance(suite, dict):
            print(f"skipping {suite_path}: not a table")
            suite = {}
    lines = [
        f"# plprune comparison: {suite.get('suite', out.name)}",
        "",
        "Commands: "
        + "; ".join(f"`{c}`" for c in suite.get("commands") or [suite.get("command", "n/a")])
        + "  ",
        f"Machine: {suite.get('machine', 'n/a')}  ",
        f"Each run: one process with {_threads_per_run(suite)}; runs of one seed see the same data order and "
        "the same number of steps. Mean ± sample std over seeds; **bold** = best mean in the column. Wall "
        "time: training steps including pruning work, excluding evaluation and curvature diagnostics (runs "
        "share the machine, so wall times compare only roughly).",
        "",
    ]
    lines.insert(-2, f"Devices: {_devices(loaded)}  ")
    if loaded.skipped:
        lines += ["Skipped (unreadable results): " + "; ".join(loaded.skipped), ""]
    if loaded.failed:
        lines += ["Failed runs: " + "; ".join(loaded.failed), ""]
    json_out: dict[str, Any] = {
        "suite": suite,
        "tasks": {},
        "skipped": loaded.skipped,
        "failed": loaded.failed,
    }
    csv_rows = []
    for task, runs in loaded.tasks.items():
        any_run = next(iter(next(iter(runs.values())).values()))
        family = metric_family(any_run)
        main = _order([v for v in runs if "@" not in v])
        ablations = sorted(v for v in runs if "@" in v)
        main_runs = {v: runs[v] for v in main}
        config_path = (
            out / "runs" / task / f"{main[0] if main else ablations[0]}-s{min(runs[(main or ablations)[0]])}"
        )
        # load_results checked it; from_dict fills in what an older or hand-written config.json leaves out
        config = RunConfig.from_dict(json.loads((config_path / "config.json").read_text(encoding="utf-8")))
        config = config.to_dict()
        lines += [f"## {task}", "", f"Data: {_data_note(config)}.  "]
        lines += [
            f"Model: {_model_note(config)}.  ",
            f"Training: {config['train']}.  ",
            f"Pruning: {config['prune'].get('kind_ratios') or config['prune']['ratio']} "
            f"{_units_note(config['prune'])}, "
            f"{_schedule_note(config['prune'])} for methods on the task schedule; SNIP/GraSP at "
            "initialisation; IMP and grad-score in 3 iterative rounds (IMP rewinding to 5% of training). "
            "e = epochs.",
            "",
        ]
        task_json: dict[str, Any] = {}
        if main:
            marks = checkpoints(any_run, family["train_checkpoints"])
            columns = _main_columns(main_runs, family, marks)
            lead = {v: {"method": v, "seeds": len(main_runs[v])} for v in main}
            rows, titles = _render(columns, main, lead)
            lines += markdown_section("### Results", rows, titles)
            lines += ["### Which claims hold here", "", *_claims(main_runs, family), ""]
            lines += _regime_lines(suite, main_runs)
            reach = []
            if "dense" in main_runs:
                target = mean_std([s["final"][family["test_key"]] for s in main_runs["dense"].values()])[0]
                shared = int((suite.get("machine") or {}).get("workers", 1)) > 1
                reach = _reach_table(main_runs, family, target, shared)
                lines += markdown_section("### Time to reach dense's final test metric (Table 6)", reach)
                if shared:
                    lines += [
                        "Timing: steps only. These runs shared the cores with other runs (several workers), "
                        "so their wall-clock times are not comparable and no wall-clock saving is claimed.",
                        "",
                    ]
                plot_time_to_target(main_runs, family, target, out / f"{task}_time_to_dense.png", task)
                lines += [f"![test metric vs wall time]({task}_time_to_dense.png)", ""]
            task_json.update(
                rows=rows, reach=reach, checkpoints=marks, columns={c["title"]: c["values"] for c in columns}
            )
            plot_curves(main_runs, family, out / f"{task}_curves.png", task)
            lines += [f"![training curves]({task}_curves.png)", ""]
            if plot_curvature(main_runs, out / f"{task}_curvature.png", task):
                lines += [f"![curvature over training]({task}_curvature.png)", ""]
            if "pl" in main_runs:
                seed = min(main_runs["pl"])
                if plot_kept_heatmap(
                    main_runs["pl"][seed], _final_masks(main_runs, seed), out / f"{task}_kept.png"
                ):
                    lines += [
                        f"![kept groups on the condition-number map]({task}_kept.png)",
                        "",
                        HEATMAP_NOTE.format(seed=seed),
                        "",
                    ]
        stats = paired_rows(runs, float(config["prune"]["ratio"]), family) if main else []
        if stats:
            lines += markdown_section(
                f"### Final {family['test_title']} at each ratio (mean ± std (seeds); dense: unpruned)",
                ratio_table(runs, float(config["prune"]["ratio"]), family),
            )
            lines += [
                "### Paired comparisons (final " + family["test_title"] + ", per seed A/B, 95% intervals)",
                "",
                "Per seed s the ratio r_s = A(s)/B(s) of two runs with the same data order and steps; the "
                "table gives the geometric mean of r_s with a paired-t 95% interval on log r_s (and a "
                "percentile bootstrap, too narrow with 5 seeds). The verdict says 'A beats B' only when the "
                "t interval excludes 1; otherwise 'no difference detected'. Dense belongs to every ratio.",
                "",
                *headline(stats, runs, float(config["prune"]["ratio"]), family),
                "",
            ]
            shown = [{k: v for k, v in r.items() if not k.startswith("_")} for r in stats]
            lines += markdown_section("", shown)[2:]  # the table under the paragraph above, no heading
            task_json["paired"] = [
                {k: v for k, v in r.items() if not k.startswith("_")} | {"per_seed": r["_result"].per_seed}
                for r in stats
            ]
        gates = gate_rows(runs)
        if gates:
            lines += markdown_section(
                "### What PL's gates saw (first pruning event; mean ± std over seeds)", gates
            )
            lines += [GATES_NOTE, ""]
            task_json["gates"] = gates
        if ablations:
            rows = _ablation_rows(runs, ablations, family)
            lines += markdown_section(
                "### Ablations (against the same method's main run of the same seed)", rows
            )
            task_json["ablations"] = rows
        json_out["tasks"][task] = task_json
        for variant, by_seed in runs.items():
            for seed, summary in sorted(by_seed.items()):
                csv_rows.append(
                    {
                        "task": task,
                        "variant": variant,
                        "seed": seed,
                        "final_test": summary["final"][family["test_key"]],
                        "final_train": summary["final"].get(family["train_key"]),
                        "metric": family["test_key"],
                        "train_wall_s": round(train_wall(summary), 2),
                        "prune_s": round(summary["final"].get("prune_seconds", 0.0), 3),
                        "parameters": summary.get("parameters"),
                        "nonzero_parameters": summary.get("nonzero_parameters"),
                    }
                )
    # atomically (temp file + rename): a killed report never leaves a half-written table
    atomic_write_text(out / "results.json", json.dumps(json_out, indent=2, default=str) + "\n")
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(csv_rows[0]))
    writer.writeheader()
    writer.writerows(csv_rows)
    atomic_write_text(out / "results.csv", table.getvalue())
    path = out / "RESULTS.md"
    atomic_write_text(path, "\n".join(lines))
    return path
