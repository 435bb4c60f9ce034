"""Benchmark suites for ``plprune compare``: which tasks, methods, seeds and budgets, and the ablations.

A suite lists, per task, the base config (task defaults < suite base) and the methods that apply. Each
method gets its paper schedule (:data:`plprune.pruners.registry.MethodSpec.paper_schedule`, App. E.3:
SNIP/GraSP at initialisation, IMP and Att/Exp-Score in iterative rounds) on top of the task's base schedule;
every other method uses the task's schedule (one-shot for transformers, linear for CNNs, as the paper).
Every run of a seed sees the same data order and the same number of steps.

Ablations (paper Tables 8-13) are named ``METHOD@ABLATION`` and run on the suite's first seed:
``at-init``/``early``/``late`` (pruning time), ``one-shot``/``iterative`` (schedule), ``r50``/``r75``/``r90``
(final ratio), ``per-layer`` (the same fraction from every layer instead of a global ranking).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plprune.errors import PlpruneError
from plprune.pruners.registry import METHOD_NAMES, check_method_kinds, get_method
from plprune.run_config import RunConfig, deep_merge

_PL_SMALL = {"gate_steps": 5, "feature_samples": 8}


@dataclass(frozen=True)
class TaskPlan:
    """One task of a suite: its base raw config, the methods run on it, and its ablations."""

    task: str
    base: dict[str, Any]
    methods: tuple[str, ...]
    ablations: tuple[str, ...] = ()
    # times of this task's ablations (steps or epochs), and the interval of iterative rounds
    times: dict[str, str] = field(default_factory=dict)
    # the section (run folder and report heading) when one task appears several times in a suite
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or self.task

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this plan prunes: its base config's, else the task's default."""
        from plprune.tasks.registry import DEFAULT_KINDS

        return tuple(self.base.get("prune", {}).get("kinds") or DEFAULT_KINDS[self.task])


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    seeds: tuple[int, ...]
    tasks: tuple[TaskPlan, ...]
    curvature_methods: tuple[str, ...] = ("dense", "pl")


TRANSFORMER_METHODS = ("dense", "pl", "random", "imp", "grad-score", "snip", "grasp")
CNN_METHODS = ("dense", "pl", "random", "imp", "grad-score", "snip", "grasp", "fpgm", "chip", "dpfps")


def _mlm_base(steps: int, eval_every: int, prune_at: int, ratio: float, **model: Any) -> dict[str, Any]:
    return {
        "data": {"seq_len": 64, "min_freq": 2},
        "model": {"layers": 2, "hidden": 128, "heads": 8, "ffn": 512, **model},
        "train": {
            "steps": steps,
            "batch_size": 16,
            "lr": 1e-3,
            "eval_every": eval_every,
            "eval_batches": 20,
            "checkpoint_every": eval_every * 2,
        },
        "prune": {"ratio": ratio, "schedule": "one-shot", "prune_at": str(prune_at)},
    }


_QUICK_MLM = {
    "data": {"seq_len": 64, "min_freq": 2},
    "model": {"layers": 2, "hidden": 64, "heads": 4, "ffn": 256},
    "train": {"steps": 300, "batch_size": 16, "eval_every": 50, "eval_batches": 8, "checkpoint_every": 100},
    "prune": {"ratio": 0.5, "schedule": "one-shot", "prune_at": "60", "pl": _PL_SMALL},
}

SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick",
        "smoke test on offline data (pydoc text, MNIST-1D), 1 seed, short runs; a few minutes on 2 cores",
        (0,),
        (
            TaskPlan("bert-pydoc", _QUICK_MLM, TRANSFORMER_METHODS, times={"every": "40"}),
            # the same BERT as a Hugging Face BertForMaskedLM: the library on a model it did not write
            TaskPlan("hf-bert-pydoc", _QUICK_MLM, ("dense", "pl", "random"), times={"every": "40"}),
            TaskPlan(
                "switch-pydoc",
                deep_merge(_QUICK_MLM, {"model": {"experts": 4, "expert_ffn": 128}}),
                TRANSFORMER_METHODS,
                times={"every": "40"},
            ),
            TaskPlan(
                "vgg-mnist1d",
                {
                    "data": {"num_samples": 2000},
                    "train": {"steps": 600, "eval_every": 100, "eval_batches": 8, "checkpoint_every": 200},
                    "prune": {"prune_at": "100", "prune_end": "300", "prune_every": "50", "pl": _PL_SMALL},
                },
                CNN_METHODS,
                ("pl@at-init", "pl@r75"),
                times={"every": "50", "early": "50", "late": "400"},
            ),
        ),
    ),
    "paper-cpu": Suite(
        "paper-cpu",
        "the paper's comparisons at CPU scale: BERT heads and Switch experts on WikiText-2 (trained on "
        "valid.txt, evaluated on test.txt), VGG filters on MNIST-1D, plus PL ablations on VGG",
        (0, 1),
        (
            TaskPlan(
                "bert-wikitext2",
                _mlm_base(1200, 100, 240, 0.75),
                TRANSFORMER_METHODS,
                times={"every": "1e"},
            ),
            TaskPlan(
                "hf-bert-wikitext2",
                _mlm_base(1200, 100, 240, 0.75),
                ("dense", "pl", "random"),
                times={"every": "1e"},
            ),
            TaskPlan(
                "switch-wikitext2",
                _mlm_base(1200, 100, 240, 0.5, experts=4, expert_ffn=256),
                TRANSFORMER_METHODS,
                times={"every": "1e"},
            ),
            TaskPlan(
                "vgg-mnist1d",
                {
                    "train": {"steps": 2000, "eval_every": 200, "eval_batches": 16, "checkpoint_every": 400},
                    "prune": {"prune_at": "3e", "prune_end": "12e", "prune_every": "1e"},
                },
                CNN_METHODS,
                (
                    "pl@at-init",
                    "pl@early",
                    "pl@late",
                    "pl@one-shot",
                    "pl@iterative",
                    "pl@r75",
                    "pl@r90",
                    "random@r75",
                    "random@r90",
                    "pl@per-layer",
                ),
                times={"every": "1e", "early": "1e", "late": "12e"},
            ),
        ),
    ),
}

def _course_plan(kind: str, ratio: float, methods: tuple[str, ...]) -> TaskPlan:
    """VGG on MNIST-1D, ``ratio`` of the ``kind`` units (``"weight"``: unstructured) removed on a linear
    schedule (epochs 1-4 of 8); the course's regularisers act until the last event, then fine-tuning."""
    base = {
        "train": {"steps": 800, "eval_every": 200, "eval_batches": 16, "checkpoint_every": 400},
        "prune": {
            "kinds": [kind],
            "ratio": ratio,
            "schedule": "linear",
            "prune_at": "1e",
            "prune_end": "4e",
            "prune_every": "1e",
        },
    }
    label = f"vgg-mnist1d-{kind}-r{round(ratio * 100)}"
    # filters: each method again with the same fraction taken from every layer (first seed), since one
    # global ranking can empty a layer (measured: benchmarks/results/sparse_course/SUMMARY.md)
    ablations = tuple(f"{m}@per-layer" for m in methods if m != "dense") if kind == "filter" else ()
    return TaskPlan("vgg-mnist1d", base, methods, ablations, times={"every": "1e"}, label=label)


COURSE_METHODS = (
    *("prox-l1", "prox-lq", "prox-q-shrink", "prox-scad", "prox-mcp", "prox-firm", "prox-l0"),
    *("trimmed-l1", "gsm", "l0-gates", "cont-sparse"),
)

SUITES["sparse-course"] = Suite(
    "sparse-course",
    "the optimisation-based sparsity methods of the sparse-DNN course on VGG/MNIST-1D at 50% and 90%: "
    "unstructured (single weights; magnitude pruning as the baseline) and structured (filters; beside PL "
    "and grad-score, the best filter baseline of paper-cpu), 3 seeds",
    (0, 1, 2),
    tuple(
        _course_plan(kind, ratio, methods)
        for kind, methods in (
            ("weight", ("dense", "magnitude", *COURSE_METHODS)),
            ("filter", ("dense", "pl", "grad-score", *COURSE_METHODS)),
        )
        for ratio in (0.5, 0.9)
    ),
    curvature_methods=(),
)

ABLATIONS = ("at-init", "early", "late", "one-shot", "iterative", "r50", "r75", "r90", "per-layer")


def ablation_overrides(name: str, times: dict[str, str], base_prune: dict[str, Any]) -> dict[str, Any]:
    """Prune-table overrides of ablation ``name`` (Tables 8-13)."""
    if name == "at-init":
        return {"schedule": "at-init"}
    if name in ("early", "late"):
        return {"schedule": "one-shot", "prune_at": times[name]}
    if name == "one-shot":
        return {"schedule": "one-shot", "prune_at": base_prune["prune_at"]}
    if name == "iterative":
        return {"schedule": "iterative", "rounds": 3, "prune_every": times["every"]}
    if name in ("r50", "r75", "r90"):
        return {"ratio": int(name[1:]) / 100}
    if name == "per-layer":
        return {"allocation": "per_layer"}
    raise PlpruneError(f"unknown ablation {name!r}; valid: {', '.join(ABLATIONS)}")


@dataclass(frozen=True)
class Job:
    """One run of a suite: task × variant × seed, its full raw config and its run directory."""

    task: str
    variant: str
    seed: int
    config: dict[str, Any]
    run_dir: Path


def variant_config(
    plan: TaskPlan, variant: str, seed: int, data_dir: str | None, curvature_methods: tuple[str, ...]
) -> dict[str, Any]:
    """The raw config of ``variant`` (``METHOD`` or ``METHOD@ABLATION``) of ``plan`` for ``seed``."""
    from plprune.tasks.registry import TASK_DEFAULTS

    method, _, ablation = variant.partition("@")
    spec = get_method(method)
    check_method_kinds(method, plan.kinds)
    config = deep_merge({"task": plan.task, **TASK_DEFAULTS.get(plan.task, {})}, plan.base)
    config = json.loads(json.dumps(config))  # a deep copy
    prune = config.setdefault("prune", {})
    paper = dict(spec.paper_schedule)
    if paper.get("schedule") == "iterative":
        paper["prune_every"] = plan.times.get("every", paper.get("prune_every", "1e"))
    prune.update(paper)
    if ablation:
        prune.update(ablation_overrides(ablation, plan.times, config["prune"]))
    prune["method"] = method
    if method in curvature_methods and not ablation:
        prune["curvature_every"] = config["train"]["eval_every"] * 2
    config["train"]["seed"] = seed
    if plan.task.endswith("wikitext2") and data_dir is not None:
        config.setdefault("data", {})["data_dir"] = data_dir
    return config


def plan_suite(
    suite_name: str,
    out: Path,
    *,
    tasks: list[str] | None = None,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    data_dir: str | None = None,
    ablations: bool = True,
) -> list[Job]:
    """All jobs of a suite, optionally restricted to some tasks/methods and with other seeds.

    ``methods`` filters the suite's methods of each task (a method that does not apply to a task's group
    kind is skipped for that task); unknown names raise, listing the valid ones.
    """
    if suite_name not in SUITES:
        raise PlpruneError(f"unknown suite {suite_name!r}; valid: {', '.join(SUITES)}")
    suite = SUITES[suite_name]
    known_tasks = list(dict.fromkeys(n for p in suite.tasks for n in (p.task, p.name)))
    if tasks:
        bad = [t for t in tasks if t not in known_tasks]
        if bad:
            raise PlpruneError(
                f"unknown task(s) {bad} for suite {suite_name!r}; valid: {', '.join(known_tasks)}"
            )
    if methods:
        bad = [m for m in methods if m not in METHOD_NAMES]
        if bad:
            raise PlpruneError(f"unknown method(s) {bad}; valid: {', '.join(METHOD_NAMES)}")
    seeds = list(seeds) if seeds else list(suite.seeds)
    jobs = []
    for plan in suite.tasks:
        if tasks and plan.task not in tasks and plan.name not in tasks:
            continue
        chosen = [m for m in plan.methods if not methods or m in methods]
        if methods:  # methods the user asked for that the suite leaves out but that apply to the task
            kinds = plan.kinds
            chosen += [m for m in methods if m not in chosen and all(k in get_method(m).kinds for k in kinds)]
        variants = [(v, s) for s in seeds for v in chosen]
        if ablations:
            variants += [
                (a, seeds[0]) for a in plan.ablations if not methods or a.partition("@")[0] in methods
            ]
        for variant, seed in variants:
            config = variant_config(plan, variant, seed, data_dir, suite.curvature_methods)
            RunConfig.from_dict(config)  # a bad seed (or setting) fails here, before anything is written
            jobs.append(
                Job(plan.name, variant, seed, config, out / "runs" / plan.name / f"{variant}-s{seed}")
            )
    if not jobs:
        raise PlpruneError("the selection leaves no runs; check --tasks, --methods and --seeds")
    return jobs
