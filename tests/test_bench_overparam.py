"""The over-parameterised suite's plan, its regime test, and the paper-gpu suite end to end at a tiny size
(with the report's paired statistics and PL measurements)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from plprune.bench.compare import run_jobs
from plprune.bench.comparisons import headline, paired_rows, ratio_groups
from plprune.bench.report import write_report
from plprune.bench.results import load_results, metric_family
from plprune.bench.suites import SUITES, RegimeTest, plan_suite
from plprune.errors import PlpruneError
from plprune.pruners.pl import PAPER_SETTINGS


def test_overparam_plan(tmp_path: Path) -> None:
    jobs = plan_suite("overparam", tmp_path, data_dir="/data", tasks=["bert-overparam"])
    variants = {(j.variant, j.seed): j for j in jobs}
    assert len(jobs) == len(variants) == 120  # 6 methods + 10 ratio variants + 8 PL ablations, 5 seeds
    # main comparison first, seed by seed; then each ablation block seed by seed
    assert [(j.variant, j.seed) for j in jobs[:7]][-1] == ("dense", 1)
    assert jobs[30].variant == "pl@r90" and jobs[30].seed == 0
    # PL's setting ablations form one block, seed by seed
    settings = ("lmin-only", "entropy-only", "shuffled", "full-pass", "alpha0", "probes8")
    assert [(j.variant, j.seed) for j in jobs[80:87]] == [
        *(("pl@" + a, 0) for a in settings),
        ("pl@lmin-only", 1),
    ]
    assert variants[("pl@probes8", 2)].config["prune"]["pl"]["num_probes"] == 8
    alpha0 = variants[("pl@r90+alpha0", 4)].config["prune"]
    assert (alpha0["ratio"], alpha0["pl"]["alpha"]) == (0.9, 0.0)
    config = variants[("pl@shuffled", 3)].config
    assert config["prune"]["pl"]["features"] == "shuffled" and config["prune"]["ratio"] == 0.75
    assert variants[("pl@full-pass", 0)].config["prune"]["pl"]["gate_full_pass"] is True
    assert variants[("random@r90", 2)].config["prune"]["ratio"] == 0.9
    data = variants[("dense", 0)].config["data"]
    assert (data["masking"], data["train_fraction"], data["data_dir"]) == ("static", 0.06, "/data")


def test_overparam_cnn_plan(tmp_path: Path) -> None:
    """The VGG half: 400 training samples, baselines again on PL's per-layer allocation, at 50/75/90%."""
    jobs = plan_suite("overparam", tmp_path, tasks=["vgg-overparam"])
    variants = {(j.variant, j.seed): j for j in jobs}
    assert len(jobs) == len(variants) == 140  # 5 methods + 6 per-layer + 8 ratio variants + 9 PL ablations
    dense = variants[("dense", 0)].config
    assert dense["data"]["train_fraction"] == 0.125 and dense["train"]["optimizer"] == "sgd"
    prune = variants[("random@per-layer+r90", 3)].config["prune"]
    assert (prune["allocation"], prune["ratio"], prune["kinds"]) == ("per_layer", 0.9, ["filter"])
    assert variants[("pl@global", 0)].config["prune"]["allocation"] == "global"
    assert "allocation" not in variants[("grad-score", 0)].config["prune"]  # its own (the paper's)
    groups = ratio_groups({v: {0: {}} for v, _ in variants}, 0.75)
    expected = {"dense", "pl", "pl+", "pl@alpha0", "random", "grad-score"}
    expected |= {"random@per-layer", "grad-score@per-layer"}
    assert set(groups[0.9]) == expected
    paper = PAPER_SETTINGS  # the gate-training budget the overparam runs were made with (pinned)
    assert variants[("pl+@alpha0", 2)].config["prune"]["pl+"] == {**paper, "probe_check": 8, "alpha": 0.0}
    assert variants[("pl@probes8", 1)].config["prune"]["pl"] == {**paper, "probe_check": 8, "num_probes": 8}
    r50 = variants[("pl@r50+alpha0", 4)].config["prune"]
    assert (r50["ratio"], r50["pl"]["alpha"]) == (0.5, 0.0)


def test_variant_selection(tmp_path: Path) -> None:
    jobs = plan_suite("overparam", tmp_path, variants=["dense", "pl@r50+alpha0"], seeds=[0, 1], device="cuda")
    assert sorted((j.task, j.variant, j.seed) for j in jobs) == [
        ("bert-overparam", "dense", 0),
        ("bert-overparam", "dense", 1),
        ("bert-overparam", "pl@r50+alpha0", 0),
        ("bert-overparam", "pl@r50+alpha0", 1),
        ("vgg-overparam", "dense", 0),
        ("vgg-overparam", "dense", 1),
        ("vgg-overparam", "pl@r50+alpha0", 0),
        ("vgg-overparam", "pl@r50+alpha0", 1),
    ]
    assert all(j.config["train"]["device"] == "cuda" for j in jobs)
    with pytest.raises(PlpruneError, match=r"unknown variant\(s\) \['pl@r60'\]"):
        plan_suite("overparam", tmp_path, variants=["pl@r60"])


def test_regime_test() -> None:
    test = RegimeTest(max_train_ppl=50, min_test_over_train=10)
    assert test.check({"train_ppl": 30.0, "test_ppl": 2100.0})[0]
    assert not test.check({"train_ppl": 120.0, "test_ppl": 1100.0})[0]  # under-fitted
    assert not test.check({"train_ppl": 40.0, "test_ppl": 100.0})[0]  # fits, but generalises
    assert test.check({"train_accuracy": 100.0})[0] and not test.check({"train_accuracy": 97.0})[0]
    assert test.check({"train_accuracy": 100.0, "test_accuracy": 73.5}) == (
        True,
        "train accuracy 100.00%, test accuracy 73.50%",
    )


def test_ratio_groups_share_dense() -> None:
    runs = {v: {0: {}} for v in ("dense", "pl", "random", "pl@r90", "random@r90", "pl@shuffled")}
    groups = ratio_groups(runs, 0.75)
    assert groups[0.75] == {"dense": "dense", "pl": "pl", "random": "random", "pl@shuffled": "pl@shuffled"}
    assert groups[0.9] == {"pl": "pl@r90", "random": "random@r90", "dense": "dense"}


def test_paper_gpu_suite_end_to_end_at_tiny_size(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    methods = ["dense", "pl", "random"]
    jobs = plan_suite("paper-gpu-tiny", out, seeds=[0, 1], methods=methods, data_dir=str(tiny_wikitext_dir))
    paper_gpu = SUITES["paper-gpu"].tasks[0].base
    assert paper_gpu["model"] == {"layers": 6, "hidden": 256, "heads": 8, "ffn": 1024}
    assert paper_gpu["data"]["seq_len"] == 128
    records = run_jobs(jobs, out, suite="paper-gpu-tiny", workers=1, command="test")
    assert [r["error"] for r in records] == [None] * 6
    loaded = load_results(out)
    runs = loaded.tasks["bert-paper-gpu"]
    family = metric_family(runs["pl"][0])
    rows = paired_rows(runs, 0.75, family)
    assert {(r["A"], r["B"]) for r in rows} == {("pl", "dense"), ("pl", "random"), ("random", "dense")}
    expected = runs["pl"][0]["final"]["test_ppl"] / runs["random"][0]["final"]["test_ppl"]
    row = next(r for r in rows if r["B"] == "random")
    assert row["_result"].per_seed[0] == expected
    text = write_report(out).read_text(encoding="utf-8")
    assert "Paired comparisons" in text and "What PL's gates saw" in text and "75% pruned" in text
    assert "no difference detected" in text or "beats" in text
    assert "Devices: cpu (6 runs)" in text  # every summary names its device
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["tasks"]["bert-paper-gpu"]["gates"][0]["variant"] == "pl"


ACCURACY_FAMILY = {"test_key": "test_accuracy", "higher_is_better": True}


def _accuracy_runs(accuracy: dict[str, list[float]]) -> dict[str, dict[int, dict]]:
    """``{variant: {seed: run}}`` with only the final test accuracy, seed s taking the s-th value."""
    return {
        v: {s: {"final": {"test_accuracy": a}} for s, a in enumerate(values)}
        for v, values in accuracy.items()
    }


def test_paired_rows_cover_per_layer_baselines_and_pl_plus_ablations() -> None:
    """PL against baselines as their papers run them and on PL's per-layer allocation; pl+'s ablation
    against pl+ and random; ratios computed per seed from the final metric."""
    accuracy = {
        "dense": [70.0, 72.0, 71.0],
        "pl": [60.0, 66.0, 63.0],
        "pl+": [61.0, 65.0, 64.0],
        "random": [58.0, 62.0, 60.0],
        "random@per-layer": [66.0, 68.0, 65.0],
        "pl+@alpha0": [62.0, 64.0, 66.0],
    }
    runs = _accuracy_runs(accuracy)
    rows = {(r["A"], r["B"]): r for r in paired_rows(runs, 0.75, ACCURACY_FAMILY)}
    assert {("pl", "random@per-layer"), ("pl+@alpha0", "pl+"), ("pl+@alpha0", "random")} <= set(rows)
    assert ("pl", "pl+@alpha0") not in rows and ("pl@alpha0", "pl") not in rows
    logs = [math.log(p / r) for p, r in zip(accuracy["pl"], accuracy["random@per-layer"], strict=True)]
    expected = math.exp(sum(logs) / 3)
    assert float(rows[("pl", "random@per-layer")]["A / B (geo. mean)"]) == pytest.approx(expected, abs=5e-4)


def test_paired_rows_compare_each_baseline_with_random_on_its_allocation() -> None:
    """grad-score against random, and grad-score@per-layer against random@per-layer (never across
    allocations); the headline names the best baseline's verdict against random."""
    accuracy = {
        "dense": [70.0, 72.0, 71.0],
        "pl": [60.0, 66.0, 63.0],
        "random": [58.0, 62.0, 60.0],
        "grad-score": [68.0, 71.0, 69.0],
        "random@per-layer": [66.0, 68.0, 65.0],
        "grad-score@per-layer": [67.0, 69.0, 64.0],
    }
    runs = _accuracy_runs(accuracy)
    rows = paired_rows(runs, 0.75, ACCURACY_FAMILY)
    pairs = {(r["A"], r["B"]) for r in rows}
    assert {("grad-score", "random"), ("grad-score@per-layer", "random@per-layer")} <= pairs
    assert ("grad-score@per-layer", "random") not in pairs and ("grad-score", "random@per-layer") not in pairs
    assert {("random", "dense"), ("grad-score", "dense"), ("random@per-layer", "dense")} <= pairs
    expected = math.exp(
        sum(math.log(g / r) for g, r in zip(accuracy["grad-score"], accuracy["random"], strict=True)) / 3
    )
    row = next(r for r in rows if (r["A"], r["B"]) == ("grad-score", "random"))
    assert row["_result"].ratio == pytest.approx(expected)
    assert row["verdict"] == "grad-score beats random"  # every seed +14% to +17%: interval excludes 1
    lines = headline(rows, runs, 0.75, ACCURACY_FAMILY)
    assert "grad-score vs random: grad-score beats random" in lines[0]
