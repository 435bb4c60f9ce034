"""What one PL pruning event costs, in seconds and in training steps of the same model and batch (issue 22).

For heads (plprune BERT on WikiText-2, 8 / 32 / 96 heads), feed-forward neurons (the same BERT, 512 /
2,048 / 8,192 neurons) and convolution filters (VGG-16 on MNIST-1D, 528 / 1,056 / 2,112 filters), each model
built as its ``plprune train`` task builds it (vocabulary, sequence length 128 and batch 16 for BERT, batch
32 for VGG); and the paper's CNN by shape: VGG-16 at full width (4,224 filters, 2-D) on CIFAR-10-shaped
images (3 × 32 × 32, 10 classes; synthetic: Gaussian images labelled by a fixed random linear teacher, as
CIFAR cannot be downloaded here; timing only) at batch 32 (the project's CNN tasks) and 128 (the common CIFAR
recipe):

1. ``--warm-steps`` training steps (the task's optimizer), then the median of ``--step-rounds`` timed steps
   (zero_grad, forward, backward, gradient clipping when the task clips, optimizer step): the step time;
2. one PL event (``Pruner.step``, one-shot ``--ratio``) at the paper's gate-training budget
   (:data:`plprune.pruners.pl.PAPER_SETTINGS`: 10 whole batches, 16 kernel samples; PL's defaults until
   issue 22) with the curvature diagnostics on, as a run did when the issue was filed (**before**), and one
   at PL's defaults (2 batches of 4 samples, 8 kernel samples; diagnostics opt-in: **after**):
   ``scoring_seconds`` (features + gate training + keep rule), ``diagnostics_seconds`` and the PL record's
   per-stage ``seconds`` (:data:`plprune.pruners.pl.STAGES`);
3. the cost knob: the same event (same model state) with another seed or one factor of the paper's budget
   back; each variant's scoring seconds and how its mask agrees with the paper budget's and with the
   defaults' (pruned groups in common / pruned groups; Spearman correlation of the gates). What the cheap
   defaults do to the final quality of a trained model: the ``pl-cost`` suite
   (benchmarks/results/pl_cost_quality).

All timings in one process, one torch thread unless ``--threads``; the step time is measured right before
the events, so the step equivalents are paired ratios. Writes ``OUT/pl_cost.json``, ``OUT/RESULTS.md`` and
``OUT/pl_cost.png`` (log-log: event cost in steps vs number of groups).

Run: ``.venv/bin/python benchmarks/pl_cost.py --out benchmarks/results/pl_cost`` (``--setups heads-32`` for
one; ``--plot-only`` redraws from the JSON).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import plprune
from plprune.data.images import ClassificationData
from plprune.gates import GroupSet
from plprune.pruners.base import Diagnostics
from plprune.pruners.pl import PAPER_SETTINGS, PLConfig, PLScorer, spearman
from plprune.run_config import RunConfig
from plprune.tasks.registry import TASK_DEFAULTS, _build_cnn, build_task
from plprune.train.loop import build_optimizer

DATA = "/work/shared/data/wikitext-2"
BERT = {"task": "bert-wikitext2", "data": {"data_dir": DATA}}
VGG = {"task": "vgg-mnist1d", **TASK_DEFAULTS["vgg-mnist1d"]}
# name -> (kind, raw run config)
SETUPS: dict[str, tuple[str, dict[str, Any]]] = {
    "heads-8": ("head", {**BERT, "model": {"layers": 2, "heads": 4}}),
    "heads-32": ("head", {**BERT, "model": {"layers": 4, "heads": 8}}),
    "heads-96": ("head", {**BERT, "model": {"layers": 6, "heads": 16}}),
    "neurons-512": ("neuron", {**BERT, "model": {"layers": 4, "ffn": 128}}),
    "neurons-2048": ("neuron", {**BERT, "model": {"layers": 4, "ffn": 512}}),
    "neurons-8192": ("neuron", {**BERT, "model": {"layers": 4, "ffn": 2048}}),
    # the paper-gpu suite's shapes (6 × 8 heads, hidden 256, FFN 1024, batch 32): its whole-run overhead
    "heads-48-paper-gpu": (
        "head",
        {**BERT, "model": {"layers": 6, "hidden": 256, "heads": 8, "ffn": 1024}, "train": {"batch_size": 32}},
    ),
    "filters-528": ("filter", {**VGG, "model": {"width_multiplier": 0.125}}),
    "filters-1056": ("filter", {**VGG, "model": {"width_multiplier": 0.25}}),
    "filters-2112": ("filter", {**VGG, "model": {"width_multiplier": 0.5}}),
    # the paper's VGG-16 on CIFAR-10 by shape (synthetic images, see SYNTHETIC_IMAGES): full width, 2-D
    "filters-4224-cifar-shape-b32": ("filter", {**VGG, "model": {"width_multiplier": 1.0}}),
    "filters-4224-cifar-shape-b128": (
        "filter",
        {**VGG, "model": {"width_multiplier": 1.0}, "train": {**VGG["train"], "batch_size": 128}},
    ),
}
#: setups whose data are synthetic CIFAR-10-shaped images (:func:`cifar_shaped_images`), not the task's
SYNTHETIC_IMAGES = ("filters-4224-cifar-shape-b32", "filters-4224-cifar-shape-b128")
#: the setups drawn as lines (one model family each, the number of groups growing)
SERIES = tuple(name for name in SETUPS if "paper-gpu" not in name and name not in SYNTHETIC_IMAGES)
PAPER_GPU_STEPS = 3000  # plprune.bench.suites: paper-gpu, 75% of heads one-shot at epoch 5
GATE_STAGES = ("gate_loss", "hessian_trace", "gate_backward")
# cost-knob variants: settings beside the defaults (the paper's budget and the references its agreement needs)
KNOBS: dict[str, dict[str, Any]] = {
    "defaults, seed 1": {"seed": 1},  # the agreement another seed gives (gate init, probes)
    "paper budget, seed 1": {**PAPER_SETTINGS, "seed": 1},
    "gate_steps=10": {"gate_steps": 10},  # one factor of the paper's budget back at a time
    "gate_batch_size=0 (whole)": {"gate_batch_size": 0},
    "feature_samples=16": {"feature_samples": 16},
}


def cifar_shaped_images(samples: int = 1280, seed: int = 0) -> ClassificationData:
    """CIFAR-10's shapes without its pixels (no download here): ``samples`` Gaussian images 3 × 32 × 32, each
    labelled by the arg-max of a fixed random linear teacher (10 classes, learnable), 80/20 train/test."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, 32, 32, generator=g)
    y = (x.flatten(1) @ torch.randn(3 * 32 * 32, 10, generator=g)).argmax(1)
    train = samples * 4 // 5
    return ClassificationData(x[:train], y[:train], x[train:], y[train:], 10, 3, "cifar-shaped-synthetic")


def build(name: str) -> tuple[torch.nn.Module, Any, RunConfig, GroupSet]:
    kind, raw = SETUPS[name]
    config = RunConfig.from_dict(copy.deepcopy(raw))
    if name in SYNTHETIC_IMAGES:  # the VGG task's own builder, on these images instead of MNIST-1D
        model, task = _build_cnn(config, cifar_shaped_images(), "vgg")
    else:
        model, task = build_task(config, Path("/tmp/pl_cost_run"))
    example = (task.train_batch(0)[0][:2],) if kind == "filter" else None
    return model, task, config, GroupSet(model, kinds=(kind,), example_inputs=example)


def train_steps(
    model: torch.nn.Module, task: Any, config: RunConfig, optimizer: Any, steps: range
) -> list[float]:
    """Training steps as the trainer takes them (no evaluation); the seconds of each."""
    model.train()
    seconds = []
    for step in steps:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        task.loss(model, task.train_batch(step)).backward()
        if config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def event(
    model: torch.nn.Module,
    task: Any,
    kind: str,
    groups_example: GroupSet,
    settings: dict[str, Any],
    ratio: float,
    step: int,
    diagnostics: bool,
) -> dict[str, Any]:
    """One PL event on a copy of the model (the caller's model and its groups stay untouched)."""
    settings = dict(settings)
    seed = settings.pop("seed", 0)
    clone = copy.deepcopy(model)
    example = groups_example.example_inputs
    groups = GroupSet(clone, kinds=(kind,), example_inputs=example)
    pruner = plprune.Pruner(
        clone,
        PLScorer(PLConfig(**settings)),
        plprune.OneShot(step, ratio),
        groups=groups,
        task=task,
        diagnostics=Diagnostics() if diagnostics else None,
        seed=seed,
    )
    record = pruner.step(step)[0]
    groups.remove_hooks()
    keys = ("scoring_seconds", "diagnostics_seconds", "seconds", "mask", "gates")
    return {k: record[k] for k in keys}


def agreement(mask: list[bool], reference: list[bool]) -> float:
    """Pruned groups in common / pruned groups of the reference."""
    pruned = {i for i, m in enumerate(reference) if not m}
    common = {i for i, m in enumerate(mask) if not m} & pruned
    return len(common) / max(1, len(pruned))


def compare(result: dict[str, Any], paper: dict[str, Any], default: dict[str, Any]) -> dict[str, float]:
    """How ``result``'s mask and gates agree with the paper budget's event and with the defaults' event."""
    gates = torch.tensor(result["gates"], dtype=torch.float64)
    return {
        "agreement_paper": agreement(result["mask"], paper["mask"]),
        "spearman_paper": spearman(gates, torch.tensor(paper["gates"], dtype=torch.float64)),
        "agreement_default": agreement(result["mask"], default["mask"]),
        "spearman_default": spearman(gates, torch.tensor(default["gates"], dtype=torch.float64)),
    }


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    kind = SETUPS[name][0]
    torch.manual_seed(0)
    model, task, config, groups = build(name)
    optimizer = build_optimizer(model, config.train)
    train_steps(model, task, config, optimizer, range(args.warm_steps))
    step = args.warm_steps
    step_seconds = train_steps(model, task, config, optimizer, range(step, step + args.step_rounds))
    step_s = statistics.median(step_seconds)
    out: dict[str, Any] = {
        "kind": kind,
        "groups": len(groups),
        "batch": int(task.train_batch(0)[0].shape[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_s": step_s,
        "step_s_all": step_seconds,
    }
    paper = event(model, task, kind, groups, PAPER_SETTINGS, args.ratio, step, diagnostics=True)
    default = event(model, task, kind, groups, {}, args.ratio, step, diagnostics=False)
    out["paper"] = {
        "scoring_s": paper["scoring_seconds"],
        "diagnostics_s": paper["diagnostics_seconds"],
        "stages_s": paper["seconds"],
        "before_steps": (paper["scoring_seconds"] + paper["diagnostics_seconds"]) / step_s,
        "steps": paper["scoring_seconds"] / step_s,
    }
    out["default"] = {
        "scoring_s": default["scoring_seconds"],
        "stages_s": default["seconds"],
        "after_steps": default["scoring_seconds"] / step_s,
        **compare(default, paper, default),
    }
    knobs = {}
    for label, settings in KNOBS.items() if not args.no_knobs else ():
        result = event(model, task, kind, groups, settings, args.ratio, step, diagnostics=False)
        knobs[label] = {
            "scoring_s": result["scoring_seconds"],
            "steps": result["scoring_seconds"] / step_s,
            "stages_s": result["seconds"],
            **compare(result, paper, default),
        }
    out["knobs"] = knobs
    groups.remove_hooks()
    after = train_steps(model, task, config, optimizer, range(step, step + args.step_rounds))
    out["step_s_after_events"] = statistics.median(after)  # drift check: the machine is shared
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    colours = {"head": "tab:blue", "neuron": "tab:orange", "filter": "tab:green"}
    for kind, colour in colours.items():
        rows = sorted(
            (r for name, r in results["setups"].items() if r["kind"] == kind and name in SERIES),
            key=lambda r: r["groups"],
        )
        if not rows:
            continue
        x = [r["groups"] for r in rows]
        ax.plot(x, [r["paper"]["before_steps"] for r in rows], "--o", color=colour, alpha=0.5,
                label=f"{kind}s: before (paper budget + diagnostics)")  # fmt: skip
        ax.plot(x, [r["paper"]["steps"] for r in rows], ":s", color=colour, alpha=0.7,
                label=f"{kind}s: paper budget (diagnostics off)")  # fmt: skip
        ax.plot(x, [r["default"]["after_steps"] for r in rows], "-o", color=colour,
                label=f"{kind}s: after (defaults)")  # fmt: skip
    paper = results["setups"].get("heads-48-paper-gpu")
    if paper:  # another model (hidden 256, batch 32): a point of its own, not on the heads line
        for value, marker in ((paper["paper"]["before_steps"], "*"), (paper["default"]["after_steps"], "P")):
            ax.plot([paper["groups"]], [value], marker, color="tab:purple", ms=9)
        ax.plot([], [], "P", color="tab:purple", label="paper-gpu shapes, after (star: before)")
    for name, marker in zip(SYNTHETIC_IMAGES, ("P", "X"), strict=True):  # the paper's CNN by shape
        r = results["setups"].get(name)
        if r:
            ax.plot([r["groups"]], [r["paper"]["before_steps"]], "*", color="darkgreen", ms=9)
            ax.plot([r["groups"]], [r["default"]["after_steps"]], marker, color="darkgreen", ms=9,
                    label=f"VGG-16 CIFAR-10 shapes, batch {r['batch']}, after (star: before)")  # fmt: skip
    ax.axhline(10, color="grey", lw=0.8)
    ax.axhline(30, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("groups in the model")
    ax.set_ylabel("one PL event, in training steps")
    ax.set_title(f"PL event cost ({results['meta']['threads']} thread(s); lines at 10 and 30 steps)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    setups = results["setups"]
    lines = [
        "# PL's cost per pruning event (issue 22)",
        "",
        f"torch {meta['torch']}, {meta['threads']} thread(s), {meta['machine']}; {meta['note']}",
        f"Command: `{meta['command']}`",
        "",
        "What it means (targets, the knob's agreement read against another seed's, what was tried): "
        "docs/pl-method.md, \"PL's cost\". The plot: `pl_cost.png`. What the defaults do to a trained "
        "model's quality: `benchmarks/results/pl_cost_quality`.",
        "",
        "## Event cost, before and after (one-shot event, 50% of the groups)",
        "",
        "Before: the paper's gate-training budget (10 whole batches, 16 kernel samples; PL's defaults until "
        "issue 22) plus the curvature diagnostics (on by default then). After: PL's defaults (2 batches of 4 "
        "samples, 8 kernel samples; diagnostics opt-in). Steps: training steps of the same model and batch, "
        "timed in the same process. Agreement: pruned groups in common with the paper budget's event / "
        "pruned groups, beside the paper budget's agreement with itself under another seed.",
        "",
        "| setup | groups | step s | before, steps | paper budget, steps | after, steps | after, s "
        "| gate training % (after) | after vs paper: agreement, ρ | paper vs paper seed 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for name, r in setups.items():
        d, p = r["default"], r["paper"]
        gate = sum(d["stages_s"][s] for s in GATE_STAGES) / d["scoring_s"]
        noise = r["knobs"].get("paper budget, seed 1")
        noise_cell = f"{_pct(noise['agreement_paper'])}, ρ {noise['spearman_paper']:.2f}" if noise else "-"
        lines.append(
            f"| {name} | {r['groups']} | {r['step_s']:.3f} | {p['before_steps']:.1f} | {p['steps']:.1f} "
            f"| **{d['after_steps']:.1f}** | {d['scoring_s']:.2f} | {100 * gate:.0f} "
            f"| {_pct(d['agreement_paper'])}, ρ {d['spearman_paper']:.2f} | {noise_cell} |"
        )
    paper = setups.get("heads-48-paper-gpu")
    if paper:
        lines += [
            "",
            f"The paper-gpu suite's runs ({PAPER_GPU_STEPS} steps, one event): PL's scoring is "
            f"{100 * paper['default']['after_steps'] / PAPER_GPU_STEPS:.2f}% of the training steps' time at "
            f"the defaults, {100 * paper['paper']['steps'] / PAPER_GPU_STEPS:.2f}% at the paper's budget "
            f"(which the suite pins), {100 * paper['paper']['before_steps'] / PAPER_GPU_STEPS:.2f}% with the "
            "diagnostics.",
        ]
    cifar = [(name, setups[name]) for name in SYNTHETIC_IMAGES if name in setups]
    small = [r for name, r in setups.items() if r["kind"] == "filter" and name in SERIES]
    if cifar:
        costs = " and ".join(
            f"{r['default']['after_steps']:.1f} steps at batch {r['batch']}" for _, r in cifar
        )
        size = cifar[0][1]["parameters"]
        counts, steps = [r["parameters"] for r in small], [1000 * r["step_s"] for r in small]
        fewer = (
            f"{size / max(counts):.0f}-{size / min(counts):.0f}× fewer parameters and "
            f"{min(steps):.0f}-{max(steps):.0f} ms steps"
            if small
            else "fewer parameters and shorter steps"
        )
        lines += [
            "",
            "The paper's CNN by shape (VGG-16 at full width on CIFAR-10-shaped synthetic images; timing "
            "only, its agreement figures are on a random teacher's labels): one event at the defaults costs "
            f"{costs}. The MNIST-1D VGGs above have {fewer}, beside which an event's "
            "per-operation cost (a third-order pass, a per-sample loop) looms large.",
        ]
    lines += ["", "## Where the scoring time goes (seconds, PL defaults)", ""]
    stages = list(next(iter(setups.values()))["default"]["stages_s"])
    lines.append("| setup | " + " | ".join(stages) + " |")
    lines.append("|---|" + "---:|" * len(stages))
    for name, r in setups.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['default']['stages_s'][s]:.3f}" for s in stages) + " |")
    knobs = [k for k in KNOBS if any(k in r["knobs"] for r in setups.values())]
    if not knobs:  # --no-knobs
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## The cost knob: scoring in steps; agreement with the paper budget's / the defaults' mask",
        "",
        "Each variant is the same event (same model state) with one change from the defaults; the paper "
        "budget is all three changes. Agreement as above; ρ: Spearman of the gates with the paper budget's.",
        "",
    ]
    lines.append("| setup | " + " | ".join(knobs) + " |")
    lines.append("|---|" + "---|" * len(knobs))
    for name, r in setups.items():
        cells = []
        for k in knobs:
            v = r["knobs"].get(k)
            cells.append(
                f"{v['steps']:.1f} steps, {_pct(v['agreement_paper'])} / {_pct(v['agreement_default'])}, "
                f"ρ {v['spearman_paper']:.2f}"
                if v
                else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated names of SETUPS")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warm-steps", type=int, default=30)
    parser.add_argument("--step-rounds", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--no-knobs", action="store_true", help="only the default event")
    parser.add_argument("--note", default="", help="e.g. whether the machine was loaded")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "pl_cost.json"
    if args.plot_only:
        results = json.loads(path.read_text())
    else:
        torch.set_num_threads(args.threads)
        results = json.loads(path.read_text()) if path.exists() else {"setups": {}}
        results["meta"] = {
            "torch": torch.__version__,
            "threads": args.threads,
            "machine": platform.platform(),
            "note": args.note,
            "command": "python benchmarks/pl_cost.py --out OUT "
            + f"--threads {args.threads} --warm-steps {args.warm_steps} --step-rounds {args.step_rounds}",
        }
        for name in args.setups.split(","):
            if name not in SETUPS:
                raise SystemExit(f"unknown setup {name!r}; known: {', '.join(SETUPS)}")
            started = time.perf_counter()
            results["setups"][name] = measure(name, args)
            r = results["setups"][name]
            print(f"{name}: {r['groups']} groups, step {r['step_s']:.3f} s, event before "
                  f"{r['paper']['before_steps']:.1f} / after {r['default']['after_steps']:.1f} steps "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
            results["setups"] = {k: results["setups"][k] for k in SETUPS if k in results["setups"]}
            path.write_text(json.dumps(results, indent=1))
    (args.out / "RESULTS.md").write_text(report(results))
    plot(results, args.out / "pl_cost.png")
    print(report(results))


if __name__ == "__main__":
    main()
