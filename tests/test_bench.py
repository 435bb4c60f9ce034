"""The comparison harness: suite planning, resumable runs, refusing mixed configs, and the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from plprune.bench import suites
from plprune.bench.compare import check_existing, pending, run_jobs
from plprune.bench.report import write_report
from plprune.bench.results import (
    at_step,
    checkpoints,
    fmt,
    load_results,
    metric_family,
    periodic,
    steps_to_reach,
)
from plprune.bench.suites import SUITES, Suite, TaskPlan, plan_suite
from plprune.cli import main
from plprune.errors import PlpruneError, RunDirError

_TINY_MLM = {
    "data": {"seq_len": 32, "min_freq": 2},
    "model": {"layers": 2, "hidden": 32, "heads": 4, "ffn": 64},
    "train": {"steps": 12, "batch_size": 8, "eval_every": 4, "eval_batches": 2, "checkpoint_every": 4},
    "prune": {
        "ratio": 0.5,
        "schedule": "one-shot",
        "prune_at": "4",
        "diagnostics": False,
        "pl": {"gate_steps": 2, "feature_samples": 4},
    },
}


@pytest.fixture
def tiny_suite(monkeypatch: pytest.MonkeyPatch) -> str:
    suite = Suite(
        "tiny",
        "test suite",
        (0,),
        (
            TaskPlan(
                "bert-pydoc", _TINY_MLM, ("dense", "pl", "random", "imp", "snip"), ("pl@r75",), {"every": "2"}
            ),
            TaskPlan(
                "vgg-mnist1d",
                {"data": {"num_samples": 200}, "model": {"width_multiplier": 0.125}},
                ("dense", "fpgm"),
            ),
        ),
        curvature_methods=(),
    )
    monkeypatch.setitem(SUITES, "tiny", suite)
    return "tiny"


def test_plan_applies_paper_schedules_and_ablations(tiny_suite: str, tmp_path: Path) -> None:
    jobs = {(j.task, j.variant): j for j in plan_suite(tiny_suite, tmp_path, tasks=["bert-pydoc"])}
    assert set(jobs) == {("bert-pydoc", v) for v in ("dense", "pl", "random", "imp", "snip", "pl@r75")}
    assert jobs[("bert-pydoc", "snip")].config["prune"]["schedule"] == "at-init"
    imp = jobs[("bert-pydoc", "imp")].config["prune"]
    assert (imp["schedule"], imp["rounds"], imp["prune_every"]) == ("iterative", 3, "2")
    assert jobs[("bert-pydoc", "pl")].config["prune"]["schedule"] == "one-shot"
    assert jobs[("bert-pydoc", "pl@r75")].config["prune"]["ratio"] == 0.75
    assert jobs[("bert-pydoc", "pl@r75")].run_dir == tmp_path / "runs" / "bert-pydoc" / "pl@r75-s0"
    assert all(j.config["train"]["seed"] == 0 for j in jobs.values())


def test_plan_seeds_and_method_filter(tiny_suite: str, tmp_path: Path) -> None:
    jobs = plan_suite(tiny_suite, tmp_path, methods=["dense", "fpgm"], seeds=[3, 4], ablations=False)
    # fpgm prunes filters only: it is not planned on the transformer task
    assert sorted((j.task, j.variant, j.seed) for j in jobs) == [
        ("bert-pydoc", "dense", 3),
        ("bert-pydoc", "dense", 4),
        ("vgg-mnist1d", "dense", 3),
        ("vgg-mnist1d", "dense", 4),
        ("vgg-mnist1d", "fpgm", 3),
        ("vgg-mnist1d", "fpgm", 4),
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tasks": ["gpt-imagenet"]}, "unknown task(s) ['gpt-imagenet'] for suite 'tiny'; valid: bert-pydoc"),
        ({"methods": ["magic"]}, "unknown method(s) ['magic']; valid: dense, pl, pl+, random, imp"),
    ],
)
def test_plan_bad_names(tiny_suite: str, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(PlpruneError, match=re.escape(message)):
        plan_suite(tiny_suite, tmp_path, **kwargs)


def test_unknown_suite_lists_valid(tmp_path: Path) -> None:
    with pytest.raises(PlpruneError, match="unknown suite 'nope'; valid: quick, paper-cpu"):
        plan_suite("nope", tmp_path)


def test_every_suite_plans(tmp_path: Path) -> None:
    """The shipped suites build valid configs for every run (no training)."""
    from plprune.run_config import RunConfig

    for name in ("quick", "paper-cpu"):
        jobs = plan_suite(name, tmp_path, data_dir=str(tmp_path))
        assert len({j.run_dir for j in jobs}) == len(jobs)
        for job in jobs:
            RunConfig.from_dict(job.config)


def test_runs_resume_without_rerunning(tiny_suite: str, tmp_path: Path, capsys) -> None:
    jobs = plan_suite(
        tiny_suite, tmp_path, tasks=["bert-pydoc"], methods=["dense", "pl", "imp"], ablations=False
    )
    records = run_jobs(jobs, tmp_path, suite=tiny_suite, workers=1, command="test")
    assert [r["error"] for r in records] == [None, None, None]
    assert pending(jobs) == []
    stamps = {j.variant: (j.run_dir / "summary.json").stat().st_mtime_ns for j in jobs}
    (jobs[1].run_dir / "summary.json").unlink()  # as if interrupted after its last checkpoint
    records = run_jobs(jobs, tmp_path, suite=tiny_suite, workers=1, command="test")
    assert [r["run"] for r in records] == ["bert-pydoc pl s0"]
    for job in (jobs[0], jobs[2]):
        assert (job.run_dir / "summary.json").stat().st_mtime_ns == stamps[job.variant]
    assert "3 runs in the plan, 2 already finished, 1 to run" in capsys.readouterr().out
    imp = json.loads((jobs[2].run_dir / "summary.json").read_text())
    assert [e["step"] for e in imp["pruning_events"]] == [4, 6, 8]  # 3 rounds, every 2 steps


def test_refuses_results_of_a_different_config(tiny_suite: str, tmp_path: Path) -> None:
    jobs = plan_suite(tiny_suite, tmp_path, tasks=["bert-pydoc"], methods=["dense"], ablations=False)
    run_jobs(jobs, tmp_path, suite=tiny_suite, workers=1, command="test")
    other = plan_suite(tiny_suite, tmp_path, tasks=["bert-pydoc"], methods=["dense"], ablations=False)
    other[0].config["train"]["lr"] = 0.5
    with pytest.raises(RunDirError, match=r"(?s)different config.*dense-s0: train.lr: 0.001 -> 0.5"):
        check_existing(other)


def test_failed_run_is_recorded_and_suite_continues(tiny_suite: str, tmp_path: Path) -> None:
    jobs = plan_suite(
        tiny_suite, tmp_path, tasks=["bert-pydoc"], methods=["dense", "random"], ablations=False
    )
    jobs[0].config["prune"]["prune_at"] = "500"  # after training ends: this run fails at start
    jobs[0].config["prune"]["method"] = "pl"
    records = run_jobs(jobs, tmp_path, suite=tiny_suite, workers=1, command="test")
    assert records[0]["error"] and "end of training" in records[0]["error"]
    assert records[1]["error"] is None
    assert (jobs[0].run_dir / "failed.txt").is_file()
    assert any("dense-s0" in f for f in load_results(tmp_path).failed)


# -- the report from fixture results -----------------------------------------------------------------


def _summary(test_ppl: float, train_ppls: list[float], wall: float, mask: list[bool] | None = None) -> dict:
    history = [
        {
            "step": 10 * (i + 1),
            "train_ppl": p,
            "test_ppl": test_ppl + 10 * (3 - i),
            "wall_time": wall * (i + 1) / 3,
        }
        for i, p in enumerate(train_ppls)
    ]
    final = {
        "step": 30,
        "train_ppl": train_ppls[-1],
        "test_ppl": test_ppl,
        "delta_ppl": test_ppl - train_ppls[-1],
        "wall_time": wall,
        "final": True,
    }
    events = []
    if mask is not None:
        events = [
            {
                "step": 10,
                "mask": mask,
                "pruned_ratio": {"head": 0.5},
                "groups": ["head:L0.0", "head:L0.1"],
                "features": {"condition_number": [10.0, 1000.0]},
            }
        ]
    return {
        "task": "bert-pydoc",
        "steps": 30,
        "parameters": 100,
        "nonzero_parameters": 80,
        "final": final,
        "history": [*history, final],
        "pruning_events": events,
    }


def _write(out: Path, variant: str, seed: int, summary: dict | str) -> None:
    run = out / "runs" / "bert-pydoc" / f"{variant}-s{seed}"
    run.mkdir(parents=True)
    config = {
        "task": "bert-pydoc",
        "data": {},
        "model": {"layers": 1},
        "train": {"steps": 30},
        "prune": {"ratio": 0.5, "schedule": "one-shot", "prune_at": "10"},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))


def test_report_tables_claims_and_corrupt_files(tmp_path: Path) -> None:
    _write(tmp_path, "dense", 0, _summary(100.0, [300, 200, 90], 10.0))
    _write(tmp_path, "dense", 1, _summary(110.0, [310, 210, 95], 10.0))
    _write(tmp_path, "pl", 0, _summary(95.0, [290, 190, 88], 11.0, [True, False]))
    _write(tmp_path, "pl", 1, _summary(99.0, [300, 200, 92], 11.0, [True, False]))
    _write(tmp_path, "random", 0, _summary(120.0, [320, 230, 100], 10.0, [False, True]))
    _write(tmp_path, "random", 1, "{ not json")
    path = write_report(tmp_path)
    text = path.read_text()
    # PL: mean 97.00, std sqrt(8) = 2.83; best (lowest) test PPL in bold
    assert "**97.00 ± 2.83**" in text
    assert "105.00 ± 7.07" in text  # dense
    assert "PL at least as good as dense on final test PPL (paper Tables 1-3, 5): **holds**" in text
    assert "PL beats every baseline on final test PPL: **holds** — best baseline random 120.00" in text
    # paired ratios: 95/100 and 99/110 → mean 0.925
    assert "0.925 ± 0.035" in text
    assert "random-s1" in text and "summary.json" in text  # the corrupt file is named, not fatal
    assert (tmp_path / "bert-pydoc_curves.png").stat().st_size > 0
    assert (tmp_path / "bert-pydoc_kept.png").stat().st_size > 0
    assert (tmp_path / "bert-pydoc_time_to_dense.png").stat().st_size > 0
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 5
    assert json.loads((tmp_path / "results.json").read_text())["skipped"]


def test_report_of_an_empty_or_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(PlpruneError, match="has no finished runs"):
        write_report(tmp_path)
    with pytest.raises(PlpruneError, match="is not a directory"):
        write_report(tmp_path / "missing")


def test_steps_to_reach() -> None:
    history = [{"step": 10, "x": 5.0}, {"step": 20, "x": 3.0}, {"step": 30, "x": 2.0, "final": True}]
    assert steps_to_reach(history, "x", 3.0, higher_is_better=False) == 20
    assert steps_to_reach(history, "x", 1.0, higher_is_better=False) is None
    assert steps_to_reach(history, "x", 4.0, higher_is_better=True) == 10


def test_results_helpers_by_hand() -> None:
    """The report's per-seed statistics and checkpoints (formerly tested through the retired
    benchmarks/dense_vs_pl_report.py), against values computed by hand."""
    history = [
        {"step": 100, "train_ppl": 450.0, "test_ppl": 500.0},
        {"step": 200, "train_ppl": 350.0, "test_ppl": 400.0},
        {"step": 300, "train_ppl": 250.0, "test_ppl": 300.0},
        {"step": 300, "train_ppl": 250.0, "test_ppl": 300.0, "final": True},
    ]
    summary = {"final": history[-1], "history": history}
    assert periodic(history) == history[:3]
    assert at_step(history, 200, "train_ppl") == 350.0 and at_step(history, 250, "train_ppl") is None
    family = metric_family(summary)
    assert family["kind"] == "mlm" and family["train_checkpoints"] == 3 and not family["higher_is_better"]
    assert checkpoints(summary, 3) == [100, 200, 300]  # three evaluations: all of them
    assert checkpoints(summary, 2) == [200, 300]  # ceil(i * 3 / 2) - 1 = 1, 2
    # mean 310, sample std sqrt(((300-310)^2 + (320-310)^2) / 1) = 14.142...; None and NaN are left out
    assert fmt([300.0, 320.0, None, float("nan")]) == "310.00 ± 14.14"
    assert fmt([1.0]) == "1.00 ± 0.00" and fmt([None]) == "n/a"


def test_cli_compare_and_report(tiny_suite: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--suite",
            tiny_suite,
            "--tasks",
            "bert-pydoc",
            "--methods",
            "dense,random",
            "--no-ablations",
            "--workers",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "RESULTS.md").is_file() and (out / "suite.json").is_file()
    assert main(["report", str(out)]) == 0
    assert "## bert-pydoc" in capsys.readouterr().out
    # --workers 1 runs in this process with its torch threads: suite.json and the report say how many
    threads = torch.get_num_threads()
    assert json.loads((out / "suite.json").read_text())["machine"]["threads_per_run"] == threads
    said = "one torch thread" if threads == 1 else f"{threads} torch threads"
    assert f"Each run: one process with {said};" in (out / "RESULTS.md").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--suite", "quick", "--methods", "magic"], "unknown method(s) ['magic']"),
        (["compare", "--suite", "quick", "--tasks", "gpt"], "unknown task(s) ['gpt']"),
        (["compare", "--suite", "quick"], "compare needs --out"),
    ],
)
def test_cli_compare_bad_input(capsys, tmp_path: Path, argv: list[str], message: str) -> None:
    if "--out" not in argv and "needs" not in message:
        argv = [*argv, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("plprune: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_suites_module_lists_methods() -> None:
    assert set(suites.CNN_METHODS) >= {
        "fpgm",
        "chip",
        "dpfps",
        "imp",
        "snip",
        "grasp",
        "pl",
        "random",
        "dense",
    }
    assert set(suites.TRANSFORMER_METHODS) >= {"grad-score", "imp", "snip", "grasp", "pl", "random", "dense"}


def test_report_states_the_runs_thread_count() -> None:
    from plprune.bench.report import _threads_per_run

    assert _threads_per_run({}) == "one torch thread"  # suite.json written before the count was recorded
    assert _threads_per_run({"machine": {"workers": 2, "threads_per_run": 1}}) == "one torch thread"
    assert _threads_per_run({"machine": {"workers": 1, "threads_per_run": 2}}) == "2 torch threads"
    assert _threads_per_run({"machine": "n/a"}) == "one torch thread"
