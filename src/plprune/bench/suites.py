"""Benchmark suites for ``plprune compare``: which tasks, methods, seeds and budgets, and the ablations.

A suite lists, per task, the base config (task defaults < suite base) and the methods that apply. Each
method gets its paper schedule (:data:`plprune.pruners.registry.MethodSpec.paper_schedule`, App. E.3:
SNIP/GraSP at initialisation, IMP and Att/Exp-Score in iterative rounds) on top of the task's base schedule;
every other method uses the task's schedule (one-shot for transformers, linear for CNNs, as the paper).
Every run of a seed sees the same data order and the same number of steps.

Ablations (paper Tables 8-13) are named ``METHOD@ABLATION`` and run on the suite's first seed:
``at-init``/``early``/``late`` (pruning time), ``one-shot``/``iterative`` (schedule), ``r50``/``r75``/``r90``
(final ratio), ``per-layer`` (the same fraction from every layer instead of a global ranking),
``global`` (one TopK over all groups of a kind), and PL's measurement ablations (docs/pl-method.md, "What
decides PL's ranking"): ``lmin-only``/``entropy-only``/``shuffled`` (the gate inputs), ``full-pass`` (gate
training on one epoch's batches), ``probes8`` (8 Hutchinson probes per gate batch), ``alpha0`` (gates
trained on the loss alone, no trace term). A plan with
``ablation_seeds="all"`` runs its ablations on every seed, so they enter the paired statistics.

A suite may state its **over-parameterisation test** (:class:`RegimeTest`): the dense runs must meet it before
the report compares methods (``plprune report`` checks it per seed).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plprune.errors import PlpruneError
from plprune.pruners.pl import PAPER_SETTINGS
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
    # "first": ablations on the suite's first seed (paper Tables 8-13); "all": on every seed
    ablation_seeds: str = "first"

    @property
    def name(self) -> str:
        return self.label or self.task

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this plan prunes: its base config's, else the task's default."""
        from plprune.tasks.registry import DEFAULT_KINDS

        return tuple(self.base.get("prune", {}).get("kinds") or DEFAULT_KINDS[self.task])


@dataclass(frozen=True)
class RegimeTest:
    """When a dense MLM run counts as over-parameterised (interpolating its training data, the premise of
    the paper's PL argument): final train PPL at most ``max_train_ppl`` and test PPL at least
    ``min_test_over_train`` times the train PPL (the paper's BERT: train PPL 4-6, test PPL ~75, ratio
    ≥ 12). For classification: final train accuracy at least ``min_train_accuracy`` %."""

    max_train_ppl: float = 50.0
    min_test_over_train: float = 10.0
    min_train_accuracy: float = 100.0

    def check(self, final: dict[str, Any]) -> tuple[bool, str]:
        """(passes, one line with the figures) for a dense run's final metrics."""
        if "test_ppl" in final:
            train, test = float(final["train_ppl"]), float(final["test_ppl"])
            ok = train <= self.max_train_ppl and test >= self.min_test_over_train * train
            return ok, f"train PPL {train:.2f}, test PPL {test:.1f}, test/train {test / train:.1f}"
        accuracy = final.get("train_accuracy")
        if accuracy is None:
            return False, "no train accuracy recorded"
        line = f"train accuracy {float(accuracy):.2f}%"
        if final.get("test_accuracy") is not None:
            line += f", test accuracy {float(final['test_accuracy']):.2f}%"
        return float(accuracy) >= self.min_train_accuracy, line

    def describe(self) -> str:
        return (
            f"dense final train PPL ≤ {self.max_train_ppl:g} and test PPL ≥ {self.min_test_over_train:g} × "
            f"train PPL (classification: train accuracy ≥ {self.min_train_accuracy:g}%)"
        )


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    seeds: tuple[int, ...]
    tasks: tuple[TaskPlan, ...]
    curvature_methods: tuple[str, ...] = ("dense", "pl")
    regime: RegimeTest | None = None


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

# the Llama-style causal LM (hf-llama-*: grouped-query attention, 2 key/value heads by the task's defaults)
# at the BERT plan's sizes; its SwiGLU MLP has three matrices, so two thirds of BERT's FFN width
_QUICK_LLAMA = deep_merge(_QUICK_MLM, {"model": {"ffn": 172}})

SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick",
        "smoke test on offline data (pydoc text, MNIST-1D), 1 seed, short runs; a few minutes on 2 cores",
        (0,),
        (
            TaskPlan("bert-pydoc", _QUICK_MLM, TRANSFORMER_METHODS, times={"every": "40"}),
            # the same BERT as a Hugging Face BertForMaskedLM: the library on a model it did not write
            TaskPlan("hf-bert-pydoc", _QUICK_MLM, ("dense", "pl", "random"), times={"every": "40"}),
            # a decoder: next-token LM with grouped-query attention (query heads pruned within KV groups)
            TaskPlan("hf-llama-pydoc", _QUICK_LLAMA, ("dense", "pl", "random"), times={"every": "40"}),
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
                "hf-llama-wikitext2",
                _mlm_base(1200, 100, 240, 0.75, ffn=344),
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

# PL's measurement ablations: settings of the method (its [prune.METHOD] table), not of the schedule
SETTING_ABLATIONS: dict[str, dict[str, Any]] = {
    "lmin-only": {"features": "min_eigenvalue"},
    "entropy-only": {"features": "entropy"},
    "shuffled": {"features": "shuffled"},
    "full-pass": {"gate_full_pass": True},
    "probes8": {"num_probes": 8},
    "alpha0": {"alpha": 0.0},
    # the paper's gate-training budget (10 whole batches, 16 kernel samples) instead of PL's cheap defaults
    "paper-gates": dict(PAPER_SETTINGS),
}


def _overparam_bert(ratio: float) -> dict[str, Any]:
    """The over-parameterised BERT of the ``overparam`` suite (docs/pl-method.md): 2 layers × 8 heads,
    hidden 128, on the first 6% of WikiText-2's valid.txt blocks (~195 blocks of 64 tokens, 12 batches per
    epoch) with static masking, 25 epochs; pruned one-shot at epoch 5 (the paper's time)."""
    base = _mlm_base(300, 50, 0, ratio, dropout=0.1)
    return deep_merge(
        base,
        {
            "data": {"train_fraction": 0.06, "masking": "static"},
            "train": {"eval_batches": 8, "checkpoint_every": 100},
            "prune": {"pl": {"probe_check": 8, "probe_check_batches": 2}, "pl+": {"probe_check": 8}},
        },
    )


OVERPARAM_METHODS = ("dense", "pl", "pl+", "random", "grad-score", "snip")
OVERPARAM_RATIO_ABLATIONS = tuple(
    f"{m}@{r}" for r in ("r90", "r50") for m in ("pl", "pl+", "random", "grad-score", "snip")
)
OVERPARAM_PL_ABLATIONS = (
    *("pl@lmin-only", "pl@entropy-only", "pl@shuffled", "pl@full-pass", "pl@alpha0"),
    *("pl@r50+alpha0", "pl@r90+alpha0", "pl@probes8"),
)


def _overparam_vgg() -> dict[str, Any]:
    """The over-parameterised CNN of the ``overparam`` suite: VGG-16 (BN, ¼ width, 0.3 M parameters) on the
    first 400 of MNIST-1D's 3,200 training samples (``train_fraction`` 0.125; the 800 test samples
    unchanged), 600 SGD steps (50 epochs of 12 batches): the dense model reaches 100% train accuracy.
    75% of the filters
    removed on the paper's linear schedule (E.4), every 2 epochs from epoch 4 to 16."""
    return {
        "data": {"num_samples": 4000, "train_fraction": 0.125},
        "train": {"steps": 600, "eval_every": 100, "eval_batches": 16, "checkpoint_every": 200},
        "prune": {
            "kinds": ["filter"],
            "ratio": 0.75,
            "schedule": "linear",
            "prune_at": "4e",
            "prune_end": "16e",
            "prune_every": "2e",
            "pl": {"probe_check": 8},
            "pl+": {"probe_check": 8},
        },
    }


# the baselines again on PL's per-layer filter allocation, so PL's ranking is compared on equal terms; PL with
# the paper's global TopK, without the trace term, with one or neither kernel feature (shuffled) and with 8
# Hutchinson probes; pl+ (kernel features + magnitude, grad-score, SNIP) with and without the trace term
OVERPARAM_CNN_METHODS = ("dense", "pl", "pl+", "random", "grad-score")
OVERPARAM_CNN_ABLATIONS = (
    *(f"{m}@per-layer{r}" for r in ("", "+r50", "+r90") for m in ("random", "grad-score")),
    *(f"{m}@{r}" for r in ("r50", "r90") for m in ("pl", "random", "grad-score")),
    *("pl@global", "pl@alpha0", "pl@lmin-only", "pl@entropy-only", "pl@shuffled", "pl+@alpha0"),
    # added after the first 115 runs: the probe noise measured on filters (one probe's relative error ≈ 13)
    # asked for 8 probes per gate batch; pl+ and PL without the trace term at 50% and 90%, too
    *("pl@probes8", "pl+@r50", "pl+@r90", "pl@r50+alpha0", "pl@r90+alpha0"),
)

SUITES["overparam"] = Suite(
    "overparam",
    "where PL's premise holds: a BERT that interpolates a small training set (6% of WikiText-2's "
    "valid.txt, static masking; evaluated on test.txt) and a VGG that reaches 100% train accuracy on 400 "
    "MNIST-1D samples; heads/filters pruned at 50/75/90%, 5 seeds, paired statistics; PL's measurement "
    "ablations and pl+ (BERT), baselines on PL's per-layer filter allocation (VGG), on every seed",
    (0, 1, 2, 3, 4),
    (
        TaskPlan(
            "bert-wikitext2",
            deep_merge(_overparam_bert(0.75), {"prune": {"prune_at": "5e"}}),
            OVERPARAM_METHODS,
            OVERPARAM_RATIO_ABLATIONS + OVERPARAM_PL_ABLATIONS,
            times={"every": "1e"},
            label="bert-overparam",
            ablation_seeds="all",
        ),
        TaskPlan(
            "vgg-mnist1d",
            _overparam_vgg(),
            OVERPARAM_CNN_METHODS,
            OVERPARAM_CNN_ABLATIONS,
            times={"every": "2e"},
            label="vgg-overparam",
            ablation_seeds="all",
        ),
    ),
    curvature_methods=(),
    regime=RegimeTest(),
)


def _paper_gpu_plan(tiny: bool) -> TaskPlan:
    """BERT 6 layers × 8 heads, hidden 256, seq 128 on WikiText-2 (valid.txt → test.txt), 75% of heads
    one-shot at epoch 5 (``tiny``: the same plan at a size that runs in seconds on a CPU)."""
    if tiny:
        base = _mlm_base(16, 8, 4, 0.75, layers=2, hidden=16, heads=4, ffn=32)
        base = deep_merge(
            base,
            {
                "data": {"seq_len": 16, "min_freq": 1},
                "train": {"batch_size": 4, "eval_batches": 2, "checkpoint_every": 8},
                "prune": {
                    method: {**_PL_SMALL, "feature_samples": 4, "probe_check": 2} for method in ("pl", "pl+")
                },
            },
        )
    else:
        base = _mlm_base(3000, 300, 300, 0.75, layers=6, hidden=256, heads=8, ffn=1024)
        base = deep_merge(
            base,
            {
                "data": {"seq_len": 128},
                "train": {"batch_size": 32, "checkpoint_every": 300},
                "prune": {"pl": {"probe_check": 8}, "pl+": {"probe_check": 8}},
            },
        )
    return TaskPlan(
        "bert-wikitext2",
        base,
        ("dense", "pl", "pl+", "random", "grad-score", "snip"),
        times={"every": "4" if tiny else "1e"},
        label="bert-paper-gpu",
    )


_PAPER_GPU_DESCRIPTION = (
    "BERT 6×8 heads, hidden 256, seq 128 on WikiText-2 (valid.txt for training, test.txt held out): dense, "
    "PL, pl+, random, grad-score, SNIP; 3 seeds; resumable runs checkpointed every 300 steps, so it can "
    "run in invocations of ≤ 10 minutes (`timeout 600 plprune compare ...`, repeated)"
)
SUITES["paper-gpu"] = Suite(
    "paper-gpu", _PAPER_GPU_DESCRIPTION, (0, 1, 2), (_paper_gpu_plan(False),), curvature_methods=()
)
SUITES["paper-gpu-tiny"] = Suite(
    "paper-gpu-tiny",
    "the paper-gpu suite's plan at a tiny size (2 layers × 4 heads, hidden 16, seq 16, 16 steps): checks "
    "the suite end to end on a CPU",
    (0, 1, 2),
    (_paper_gpu_plan(True),),
    curvature_methods=(),
)


def _llama_units_plan(kinds: tuple[str, ...], ratio: float, methods: tuple[str, ...]) -> TaskPlan:
    """The Llama-style GQA decoder of ``hf-llama-wikitext2`` (2 layers, hidden 128, 8 query / 2 KV heads,
    SwiGLU width 344; trained on WikiText-2's valid.txt, evaluated on test.txt), 800 steps, ``ratio`` of
    each of ``kinds`` removed one-shot at step 160; no pruning-event diagnostics (not compared here)."""
    base = deep_merge(
        _mlm_base(800, 100, 160, ratio, ffn=344),
        {"prune": {"kinds": list(kinds), "diagnostics": False}, "train": {"checkpoint_every": 200}},
    )
    label = f"llama-{'-'.join(k + 's' for k in kinds)}-r{round(ratio * 100)}"
    return TaskPlan("hf-llama-wikitext2", base, methods, times={"every": "1e"}, label=label)


SUITES["transformer-units"] = Suite(
    "transformer-units",
    "which units to remove from a GQA decoder: heads + FFN neurons at 50% each against heads alone at 75%, "
    "against dense, with PL, random and grad-score as criteria (heads alone: PL and random); the "
    "Llama-style LM of hf-llama-wikitext2 (trained on valid.txt, evaluated on test.txt), 3 seeds. Dense "
    "runs once, in the first plan (benchmarks/transformer_quality.py pairs both plans with it)",
    (0, 1, 2),
    (
        _llama_units_plan(("head", "neuron"), 0.5, ("dense", "pl", "random", "grad-score")),
        _llama_units_plan(("head",), 0.75, ("pl", "random")),
    ),
    curvature_methods=(),
)



def _with_paper_gates(suite: Suite) -> Suite:
    """``suite`` with PL's and pl+'s gate-training budget at the paper's (:data:`PAPER_SETTINGS`) under each
    plan's own settings: the suites written before PL's cheap defaults (issue 22) ran with it, and their
    committed results stay reproducible."""
    paper = {"prune": {"pl": dict(PAPER_SETTINGS), "pl+": dict(PAPER_SETTINGS)}}
    plans = tuple(dataclasses.replace(p, base=deep_merge(paper, p.base)) for p in suite.tasks)
    return dataclasses.replace(suite, tasks=plans)


SUITES.update({name: _with_paper_gates(suite) for name, suite in SUITES.items()})


def _pl_cost_llama() -> dict[str, Any]:
    """A GQA decoder (hf-llama-wikitext2: 2 layers, hidden 64, 4 query / 2 KV heads, SwiGLU 172), 400 steps,
    50% of the heads and of the FFN neurons removed one-shot at step 80 (transformer-units' plan at the size
    of the quick suite's, to fit a 2-core machine)."""
    base = _mlm_base(400, 100, 80, 0.5, hidden=64, heads=4, ffn=172)
    return deep_merge(base, {"prune": {"kinds": ["head", "neuron"]}, "train": {"checkpoint_every": 200}})


def _pl_cost_vgg() -> dict[str, Any]:
    """paper-cpu's VGG-16 on MNIST-1D (2,000 steps; filters removed on the linear schedule, epochs 3-12)."""
    return {
        "train": {"steps": 2000, "eval_every": 200, "eval_batches": 16, "checkpoint_every": 400},
        "prune": {"prune_at": "3e", "prune_end": "12e", "prune_every": "1e"},
    }


# after the paper's suites (not pinned): PL at its cheap defaults against the paper's budget
SUITES["pl-cost"] = Suite(
    "pl-cost",
    "what PL's cheap defaults (2 gate batches of 4 samples, 8 kernel samples; issue 22) cost in quality "
    "against the paper's budget (pl@paper-gates: 10 whole batches, 16 samples) and random, 3 seeds on every "
    "variant: a small GQA decoder (2 × 64, heads + neurons 50%, WikiText-2 valid.txt → test.txt) and "
    "paper-cpu's VGG filters on MNIST-1D",
    (0, 1, 2),
    (
        TaskPlan(
            "hf-llama-wikitext2",
            _pl_cost_llama(),
            ("pl", "random"),
            ("pl@paper-gates",),
            times={"every": "1e"},
            label="llama-heads-neurons",
            ablation_seeds="all",
        ),
        TaskPlan(
            "vgg-mnist1d",
            _pl_cost_vgg(),
            ("pl", "random"),
            ("pl@paper-gates",),
            times={"every": "1e"},
            label="vgg-filters",
            ablation_seeds="all",
        ),
    ),
    curvature_methods=(),
)

ABLATIONS = (
    *("at-init", "early", "late", "one-shot", "iterative", "r50", "r75", "r90", "per-layer", "global"),
    *SETTING_ABLATIONS,
)


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
    if name == "global":
        return {"allocation": "global"}
    if name in SETTING_ABLATIONS:
        return {}
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
    for part in ablation.split("+") if ablation else ():  # e.g. "r90+full-pass"
        prune.update(ablation_overrides(part, plan.times, config["prune"]))
        if part in SETTING_ABLATIONS:
            prune[method] = {**prune.get(method, {}), **SETTING_ABLATIONS[part]}
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
    variants: list[str] | None = None,
    device: str | None = None,
) -> list[Job]:
    """All jobs of a suite, optionally restricted to some tasks/methods/variants and with other seeds.

    ``methods`` filters the suite's methods of each task (a method that does not apply to a task's group
    kind is skipped for that task); ``variants`` keeps only these runs (``METHOD`` or ``METHOD@ABLATION``
    names as the suite lists them, e.g. ``pl@r90+alpha0``); unknown names raise, listing the valid ones.
    ``device`` sets every run's ``train.device`` (default: the config's, the CPU).
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
    wanted = set(variants) if variants else None
    if wanted is not None:
        known = {v for p in suite.tasks for v in (*p.methods, *p.ablations)}
        bad = sorted(wanted - known)
        if bad:
            raise PlpruneError(
                f"unknown variant(s) {bad} for suite {suite_name!r}; valid: {', '.join(sorted(known))}"
            )
    jobs = []
    for plan in suite.tasks:
        if tasks and plan.task not in tasks and plan.name not in tasks:
            continue
        chosen = [m for m in plan.methods if not methods or m in methods]
        if methods:  # methods the user asked for that the suite leaves out but that apply to the task
            kinds = plan.kinds
            chosen += [m for m in methods if m not in chosen and all(k in get_method(m).kinds for k in kinds)]
        variant_seeds = [(v, s) for s in seeds for v in chosen]
        if ablations:
            ablation_seeds = seeds if plan.ablation_seeds == "all" else seeds[:1]
            variant_seeds += [
                (a, s)
                for s in ablation_seeds
                for a in plan.ablations
                if not methods or a.partition("@")[0] in methods
            ]
            if plan.ablation_seeds == "all":  # block by block (main, each ratio, PL's settings), seed by seed

                def block(variant: str) -> str:
                    suffix = variant.partition("@")[2]
                    return "settings" if suffix in SETTING_ABLATIONS else suffix

                blocks = list(dict.fromkeys(block(v) for v, _ in variant_seeds))
                variant_seeds.sort(key=lambda v: (blocks.index(block(v[0])), v[1]))
        if wanted is not None:
            variant_seeds = [(v, s) for v, s in variant_seeds if v in wanted]
        for variant, seed in variant_seeds:
            config = variant_config(plan, variant, seed, data_dir, suite.curvature_methods)
            if device is not None:
                config["train"]["device"] = device
            RunConfig.from_dict(config)  # a bad seed (or setting) fails here, before anything is written
            jobs.append(
                Job(plan.name, variant, seed, config, out / "runs" / plan.name / f"{variant}-s{seed}")
            )
    if not jobs:
        raise PlpruneError("the selection leaves no runs; check --tasks, --methods and --seeds")
    return jobs
